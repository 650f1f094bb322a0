"""Checks of the operations files: cluster.yaml, infra/k8s, infra/docker and infra/s3.

Nothing here reaches AWS, Kubernetes or a Docker engine. Each file is checked against what the
real tool checks it with: Ray's cluster-launcher schema and config preparation (`ray up`),
KubeRay's CRD schemas (read from ../shared/schemas/kuberay, with unknown fields rejected as
`kubectl apply` does by default), Serve's config schema, and cfn-lint. On top of that, the
files must agree with each other and with the code: secret and ServiceAccount names, the
instance profiles, the Ray version, and the modules and flags the jobs and the Serve app use.
"""

import ast
import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
K8S = REPO / "infra" / "k8s"
CFN_TEMPLATE = REPO / "infra" / "s3" / "bucket.yaml"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
IMAGE = "ghcr.io/encore-music/encore"
NAMESPACE = "encore"
JOB_ACCOUNT = "encore-ray"  # read-write store access (NodeAccessPolicy)
SERVE_ACCOUNT = "encore-serve"  # read-only store access (ServeReadPolicy)
API_KEYS_SECRET, API_KEYS_ITEM = "encore-api-keys", "api_keys.json"
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def pinned(package: str) -> str:
    """The version pyproject.toml pins ``package`` to."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(rf"{package}(\[|=)", d)]
    return pin.split("==")[1]


RAY_VERSION = pinned("ray")
TORCH_VERSION = pinned("torch")


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", doc) for p in sorted(K8S.glob("*.yaml")) for i, doc in enumerate(load_all(p))]


def of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc.get("kind") == kind]


# ---------------------------------------------------------------------------------------------
# (a) cluster.yaml: the Ray cluster launcher config


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_matches_ray_cluster_schema(cluster):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_cluster_yaml_passes_ray_up_config_preparation(cluster):
    """What `ray up` does before it contacts AWS: merge the AWS defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    assert any("g5" in t["node_config"]["InstanceType"] for t in workers.values()), "no GPU worker type"
    assert any(t["node_config"]["InstanceType"].startswith(("m", "c")) for t in workers.values()), "no CPU worker type"
    for name, node_type in workers.items():
        assert 0 <= node_type.get("min_workers", 0) <= node_type["max_workers"], name


def test_cluster_yaml_images_and_install(cluster):
    assert cluster["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-cpu"
    gpu_images = [t.get("docker", {}).get("worker_image") for t in cluster["available_node_types"].values()]
    assert f"rayproject/ray:{RAY_VERSION}-py311-gpu" in gpu_images
    assert cluster["file_mounts"]["~/encore"] == "."
    installs = [cluster["setup_commands"]] + [
        t["worker_setup_commands"] for t in cluster["available_node_types"].values() if "worker_setup_commands" in t
    ]
    for commands in installs:
        assert any("-c ~/encore/constraints.txt ~/encore" in c for c in commands), commands
        assert "bash ~/encore/scripts/install_fluidsynth.sh" in commands  # the composer's audio renderer
        # torch first, from the PyTorch index, in the pinned version
        assert any("download.pytorch.org" in c and f"torch=={TORCH_VERSION}" in c for c in commands), commands


def test_cluster_yaml_keeps_dashboard_private_and_auth_on(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in yaml.safe_dump(cluster)
    run_options = " ".join(cluster["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options
    assert "RAY_USAGE_STATS_ENABLED=0" in run_options
    assert "disabled" not in run_options
    # every node gets the same token
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_yaml_instance_profiles_are_the_ones_cloudformation_creates(cluster):
    template = load_cfn(CFN_TEMPLATE)
    created = {
        r["Properties"]["InstanceProfileName"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::InstanceProfile"
    }
    for name, node_type in cluster["available_node_types"].items():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert arn.rsplit("/", 1)[1] in created, f"{name}: {arn} is not created by {CFN_TEMPLATE.name}"


# ---------------------------------------------------------------------------------------------
# (b) KubeRay manifests against the CRD schemas


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict]:
    """kind -> openAPIV3Schema of version v1, from the KubeRay CRD files in shared/."""
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {KUBERAY_SCHEMAS} (shared/ is not beside the repo)")
    schemas = {}
    for path in sorted(KUBERAY_SCHEMAS.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=FAST_LOADER)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[crd["spec"]["names"]["kind"]] = v1["schema"]["openAPIV3Schema"]
    assert {"RayCluster", "RayJob", "RayService"} <= schemas.keys(), sorted(schemas)
    return schemas


def strict(schema):
    """The schema with unknown fields rejected wherever Kubernetes would drop or refuse them.

    A CRD schema lists known fields but does not forbid others: the API server prunes them and
    `kubectl apply` (strict field validation, the default) refuses them, so a misspelt field is
    an error there. JSON Schema needs additionalProperties: false to say the same.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


_validators: dict[str, jsonschema.protocols.Validator] = {}


def strict_validator(crd_schemas: dict, kind: str):
    if kind not in _validators:
        _validators[kind] = jsonschema.Draft202012Validator(strict(crd_schemas[kind]))
    return _validators[kind]


RAY_KINDS = ("RayCluster", "RayJob", "RayService")


def cluster_spec(doc: dict) -> dict:
    return {
        "RayCluster": lambda: doc["spec"],
        "RayJob": lambda: doc["spec"]["rayClusterSpec"],
        "RayService": lambda: doc["spec"]["rayClusterConfig"],
    }[doc["kind"]]()


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]


def test_every_ray_kind_has_a_manifest():
    kinds = [doc["kind"] for _, doc in manifests()]
    for kind in RAY_KINDS:
        assert kind in kinds, f"no {kind} in {K8S}"


@pytest.mark.parametrize("name,doc", manifests(), ids=[n for n, _ in manifests()])
def test_manifest_matches_its_schema(name, doc, crd_schemas):
    assert doc.get("metadata", {}).get("name"), f"{name}: no metadata.name"
    if doc.get("kind") not in RAY_KINDS:
        assert doc["apiVersion"] == "v1" and doc["kind"] in {"Namespace", "ServiceAccount", "Secret"}, name
        return
    assert doc["apiVersion"] == "ray.io/v1", name  # the schema checks only that it is a string
    validator = strict_validator(crd_schemas, doc["kind"])
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_strict_schema_rejects_a_misspelt_field(crd_schemas):
    doc = copy.deepcopy(of_kind("RayCluster")[0])
    doc["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    validator = strict_validator(crd_schemas, "RayCluster")
    assert any("maxReplica" in e.message for e in validator.iter_errors(doc))


@pytest.mark.parametrize("kind", RAY_KINDS)
def test_ray_clusters_are_consistent(kind):
    """Token auth on, the pinned Ray, our image, and replica bounds that make sense."""
    for doc in of_kind(kind):
        spec = cluster_spec(doc)
        assert doc["metadata"].get("namespace") == NAMESPACE
        assert spec["rayVersion"] == RAY_VERSION
        assert spec["authOptions"]["mode"] == "token"
        for group in spec.get("workerGroupSpecs", []):
            replicas = group.get("replicas", group["minReplicas"])
            assert group["minReplicas"] <= replicas <= group["maxReplicas"], group["groupName"]
        for template in pod_templates(spec):
            for container in template["spec"]["containers"]:
                image, tag = container["image"].rsplit(":", 1)
                assert image == IMAGE and tag.startswith("0.1.0"), container["image"]
                if "nvidia.com/gpu" in container.get("resources", {}).get("limits", {}):
                    assert tag.endswith("-gpu"), f"GPU container with CPU image {container['image']}"


def test_references_point_at_defined_objects():
    """Secret and ServiceAccount names used by the Ray pods exist, in the same namespace."""
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in of_kind("Secret")}
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of_kind("ServiceAccount")}
    assert {NAMESPACE} == {d["metadata"]["name"] for d in of_kind("Namespace")}
    # KubeRay names Services after the object: <name>-head-svc for both kinds
    services = {d["metadata"]["name"] for d in of_kind("RayService")}
    assert not services & {d["metadata"]["name"] for d in of_kind("RayCluster")}, "head Service names collide"
    for kind in RAY_KINDS:
        for doc in of_kind(kind):
            ns, spec = doc["metadata"]["namespace"], cluster_spec(doc)
            auth_secret = secrets.get((ns, spec["authOptions"]["secretName"]))
            assert auth_secret and "auth_token" in auth_secret["stringData"], "authOptions.secretName"
            for template in pod_templates(spec):
                assert (ns, template["spec"]["serviceAccountName"]) in accounts
                for container in template["spec"]["containers"]:
                    refs = [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e]
                    assert any(e["name"] == "ENCORE_ID_KEY" for e in container.get("env", [])), container["name"]
                    for ref in refs:
                        assert ref["key"] in secrets[(ns, ref["name"])]["stringData"], ref


def test_service_accounts_use_irsa():
    accounts = {a["metadata"]["name"]: a for a in of_kind("ServiceAccount")}
    assert set(accounts) == {JOB_ACCOUNT, SERVE_ACCOUNT}
    arns = {name: a["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] for name, a in accounts.items()}
    for arn in arns.values():
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), arn
    assert arns[JOB_ACCOUNT] != arns[SERVE_ACCOUNT], "serving must not share the read-write role of jobs"
    # the role the CloudFormation stack creates for serving
    (serve_role,) = [
        r
        for r in load_cfn(CFN_TEMPLATE)["Resources"].values()
        if r["Type"] == "AWS::IAM::Role" and r["Properties"]["RoleName"].startswith("encore-serve")
    ]
    assert arns[SERVE_ACCOUNT].rsplit("/", 1)[1] == serve_role["Properties"]["RoleName"]


def test_serving_runs_as_the_read_only_account_and_jobs_as_the_read_write_one():
    for kind, account in (("RayService", SERVE_ACCOUNT), ("RayJob", JOB_ACCOUNT), ("RayCluster", JOB_ACCOUNT)):
        docs = of_kind(kind)
        assert docs, kind
        for doc in docs:
            for template in pod_templates(cluster_spec(doc)):
                assert template["spec"]["serviceAccountName"] == account, (kind, doc["metadata"]["name"])


def test_serving_pods_read_api_keys_from_the_mounted_secret():
    (secret,) = [s for s in of_kind("Secret") if s["metadata"]["name"] == API_KEYS_SECRET]
    assert API_KEYS_ITEM in secret["stringData"]
    for doc in of_kind("RayService"):
        for template in pod_templates(cluster_spec(doc)):
            volumes = {
                v["name"]: v["secret"]
                for v in template["spec"].get("volumes", [])
                if v.get("secret", {}).get("secretName") == API_KEYS_SECRET
            }
            assert volumes, f"{doc['metadata']['name']}: no volume of Secret {API_KEYS_SECRET}"
            for container in template["spec"]["containers"]:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                keys_file = env.get("ENCORE_API_KEYS_FILE")
                assert keys_file, f"{container['name']}: no ENCORE_API_KEYS_FILE"
                float(env.get("ENCORE_BODY_TIMEOUT_S", "30"))
                mounts = [m for m in container.get("volumeMounts", []) if m["name"] in volumes]
                assert mounts, f"{container['name']}: the API keys volume is not mounted"
                for mount in mounts:
                    assert mount.get("readOnly") is True, mount
                    # kubelet never updates a subPath mount: revoked keys would stay valid
                    assert "subPath" not in mount, mount
                (mount,) = [m for m in mounts if keys_file.startswith(m["mountPath"].rstrip("/") + "/")]
                relative = keys_file[len(mount["mountPath"].rstrip("/")) + 1 :]
                items = volumes[mount["name"]].get("items")
                files = {i["path"]: i["key"] for i in items} if items else {API_KEYS_ITEM: API_KEYS_ITEM}
                assert files.get(relative) == API_KEYS_ITEM, f"{keys_file} is not key {API_KEYS_ITEM} of the Secret"


def test_no_real_secret_is_committed():
    for secret in of_kind("Secret"):
        assert "data" not in secret, "use stringData with ${VARIABLE} placeholders"
        for key, value in secret["stringData"].items():
            placeholder = re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*\}", value)
            assert placeholder, f"{secret['metadata']['name']}.{key} is not a ${{VARIABLE}} placeholder"
    files = [REPO / "cluster.yaml", REPO / ".dockerignore", *(REPO / "infra").rglob("*")]
    for path in (p for p in files if p.is_file()):
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----", text), path


# ---------------------------------------------------------------------------------------------
# (c) The manifests name code that exists: the Serve application and the job entrypoints


def serve_config(doc: dict) -> dict:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def module_file(module: str) -> Path:
    return REPO.joinpath(*module.split(".")).with_suffix(".py")


def unknown_keys(model, data: dict, where: str) -> list[str]:
    return [f"{where}.{k}" for k in data if k not in model.model_fields]


@pytest.mark.parametrize("doc", of_kind("RayService"), ids=lambda d: d["metadata"]["name"])
def test_serve_config_is_valid_for_serve(doc):
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    config = serve_config(doc)
    ServeDeploySchema.model_validate(config)
    # Serve ignores fields it does not know: a misspelt option would silently do nothing.
    unknown = unknown_keys(ServeDeploySchema, config, "serveConfigV2")
    unknown += unknown_keys(HTTPOptionsSchema, config.get("http_options", {}), "http_options")
    for app in config["applications"]:
        unknown += unknown_keys(ServeApplicationSchema, app, app["name"])
        for dep in app.get("deployments", []):
            unknown += unknown_keys(DeploymentSchema, dep, f"{app['name']}.{dep['name']}")
            if "autoscaling_config" in dep:
                autoscaling = dep["autoscaling_config"]
                unknown += unknown_keys(AutoscalingConfig, autoscaling, f"{dep['name']}.autoscaling_config")
                AutoscalingConfig(**autoscaling)  # min <= max and the other checks Serve makes
    assert not unknown, unknown
    # Inside the cluster the proxies must listen on every interface for the Kubernetes Service.
    assert config["http_options"]["host"] == "0.0.0.0"
    assert config["http_options"]["port"] == 8000


@pytest.mark.parametrize("doc", of_kind("RayService"), ids=lambda d: d["metadata"]["name"])
def test_serve_application_exists_in_the_repo(doc):
    for app in serve_config(doc)["applications"]:
        module, attribute = app["import_path"].split(":")
        path = module_file(module)
        assert path.is_file(), f"import_path {app['import_path']}: {path.relative_to(REPO)} does not exist"
        tree = ast.parse(path.read_text())
        names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert attribute in names, f"{path.relative_to(REPO)} defines no {attribute}"


@pytest.mark.parametrize("doc", of_kind("RayService"), ids=lambda d: d["metadata"]["name"])
def test_serve_config_mirrors_the_repo_serve_config(doc):
    """serve_apps/config.yaml is the reference: same applications, deployment names and arguments."""
    reference_path = REPO / "serve_apps" / "config.yaml"
    assert reference_path.is_file(), "serve_apps/config.yaml does not exist"
    reference = {a["name"]: a for a in yaml.safe_load(reference_path.read_text())["applications"]}
    for app in serve_config(doc)["applications"]:
        assert app["name"] in reference, f"application {app['name']} is not in serve_apps/config.yaml"
        ref = reference[app["name"]]
        assert app["import_path"] == ref["import_path"]
        assert app["route_prefix"] == ref["route_prefix"]
        known = {d["name"] for d in ref.get("deployments", [])}
        assert {dep["name"] for dep in app.get("deployments", [])} == known
        assert set(app["args"]) == set(ref["args"]) | {"store_uri"}
        assert app["args"]["store_uri"].startswith("s3://")


def job_entrypoints() -> list[tuple[str, str]]:
    return [(d["metadata"]["name"], d["spec"]["entrypoint"]) for d in of_kind("RayJob")]


def argparse_flags(path: Path) -> tuple[set[str], set[str]]:
    """(all option strings, required option strings) of add_argument calls in a file."""
    flags, required = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
            flags |= names
            if any(k.arg == "required" and getattr(k.value, "value", False) is True for k in node.keywords):
                required |= names
    return flags, required


@pytest.mark.parametrize("name,entrypoint", job_entrypoints(), ids=[n for n, _ in job_entrypoints()])
def test_job_entrypoint_exists_and_takes_these_flags(name, entrypoint):
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], entrypoint
    module = argv[2]
    assert module.startswith("jobs."), module
    path = module_file(module)
    assert path.is_file(), f"{name}: {path.relative_to(REPO)} does not exist"
    flags, required = argparse_flags(path)
    # options the module takes from the library (from encore.recsys.ingest import add_split_arguments)
    for node in ast.walk(ast.parse(path.read_text())):
        borrowed = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("encore.")
        if borrowed and module_file(f"src.{node.module}").is_file():
            flags |= argparse_flags(module_file(f"src.{node.module}"))[0]
    given = {a.split("=", 1)[0] for a in argv[3:] if a.startswith("--")}
    assert given <= flags, f"{name}: {sorted(given - flags)} not accepted by {module}"
    assert required <= given, f"{name}: {module} requires {sorted(required - given)}"
    for value in (a for a in argv[3:] if "://" in a):
        assert value.startswith("s3://"), value


# ---------------------------------------------------------------------------------------------
# (d) The CloudFormation template


class CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that also reads CloudFormation's short-form tags (!Ref, !Sub, !GetAtt, ...)
    as {"Fn::X": value} / {"Ref": value}, the long form they stand for."""


def _cfn_tag(loader, tag_suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _cfn_tag)


def load_cfn(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=CloudFormationLoader)


@pytest.fixture(scope="module")
def template() -> dict:
    return load_cfn(CFN_TEMPLATE)


def resolve(template: dict, value):
    """A literal, or the default of a parameter named by {"Ref": ...}."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def test_loader_reads_short_form_tags():
    text = "a: !Ref B\nb: !GetAtt C.Arn\nc: !Sub 'x-${D}'\nd: !Equals [!Ref E, 'true']"
    doc = yaml.load(text, Loader=CloudFormationLoader)
    assert doc == {
        "a": {"Ref": "B"},
        "b": {"Fn::GetAtt": ["C", "Arn"]},
        "c": {"Fn::Sub": "x-${D}"},
        "d": {"Fn::Equals": [{"Ref": "E"}, "true"]},
    }


def test_bucket_is_versioned_private_encrypted_and_expires_old_versions(template):
    buckets = [r for r in template["Resources"].values() if r["Type"] == "AWS::S3::Bucket"]
    assert len(buckets) == 1
    bucket = buckets[0]
    props = bucket["Properties"]
    assert bucket.get("DeletionPolicy") == "Retain"
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    block = props["PublicAccessBlockConfiguration"]
    for key in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
        assert block[key] is True, key
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms", "aws:kms:dsse"}
    rules = [r for r in props["LifecycleConfiguration"]["Rules"] if r["Status"] == "Enabled"]
    noncurrent = [
        resolve(template, r["NoncurrentVersionExpiration"]["NoncurrentDays"])
        for r in rules
        if "NoncurrentVersionExpiration" in r
    ]
    assert noncurrent == [30]
    assert any("AbortIncompleteMultipartUpload" in r for r in rules)


def test_node_policy_grants_read_write_and_is_an_output(template):
    resources = template["Resources"]
    name = "NodeAccessPolicy"
    assert resources[name]["Type"] == "AWS::IAM::ManagedPolicy"
    statements = resources[name]["Properties"]["PolicyDocument"]["Statement"]
    actions = {a for s in statements if s["Effect"] == "Allow" for a in s["Action"]}
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
    for s in statements:
        assert "s3:*" not in s["Action"] and s["Resource"] != "*", s
    outputs = template["Outputs"]
    assert {"Ref": name} in [o["Value"] for o in outputs.values()]
    assert {"BucketName", "ModelStoreUri"} <= outputs.keys()


READ_ONLY_S3_ACTIONS = {"s3:GetObject", "s3:ListBucket"}


def sub_text(value) -> str:
    """The text of a !Sub (or a literal), ${...} left in; a !Ref as ${Name}."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return "${" + value["Ref"] + "}"
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        return value["Fn::Sub"]
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        return "${" + ".".join(value["Fn::GetAtt"]) + "}"
    assert isinstance(value, str), value
    return value


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_serve_policy_only_reads_the_model_store(template):
    resources = template["Resources"]
    policy = resources["ServeReadPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert actions == READ_ONLY_S3_ACTIONS, actions
    assert not any(word in a for a in actions for word in ("Put", "Delete", "*", "Abort", "Restore"))
    for s in statements:
        assert "NotAction" not in s and "NotResource" not in s, s
        resources_ = {sub_text(r) for r in as_list(s["Resource"])}
        if "s3:ListBucket" in as_list(s["Action"]):
            assert as_list(s["Action"]) == ["s3:ListBucket"], s  # key names only: a missing key reads as 404
            assert resources_ == {"${ModelBucket.Arn}"}, s
        else:
            assert resources_ == {"${ModelBucket.Arn}/${ModelPrefix}", "${ModelBucket.Arn}/${ModelPrefix}/*"}, s
    # jobs keep write access
    node_actions = {
        a
        for s in resources["NodeAccessPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        for a in as_list(s["Action"])
    }
    assert {"s3:PutObject", "s3:DeleteObject"} <= node_actions
    assert {"Ref": "ServeReadPolicy"} in [o["Value"] for o in template["Outputs"].values()]


def test_serve_role_is_assumed_only_by_the_serve_service_account(template):
    role = template["Resources"]["ServeRole"]
    assert role["Type"] == "AWS::IAM::Role"
    assert role["Properties"]["ManagedPolicyArns"] == [{"Ref": "ServeReadPolicy"}]
    assert "Policies" not in role["Properties"]
    condition = role.get("Condition")
    if condition:  # created only when the OIDC provider is given
        parameter = template["Conditions"][condition]["Fn::Not"][0]["Fn::Equals"][0]["Ref"]
        assert template["Parameters"][parameter]["Default"] == ""
    trust = sub_text(role["Properties"]["AssumeRolePolicyDocument"])
    provider = "oidc.eks.us-west-2.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
    values = {"EksOidcProvider": provider, "AWS::Partition": "aws", "AWS::AccountId": "123456789012"}
    trust = json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], trust))
    (statement,) = trust["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {"Federated": f"arn:aws:iam::123456789012:oidc-provider/{provider}"}
    assert statement["Condition"]["StringEquals"] == {
        f"{provider}:sub": f"system:serviceaccount:{NAMESPACE}:{SERVE_ACCOUNT}",
        f"{provider}:aud": "sts.amazonaws.com",
    }
    outputs = {
        o["Value"].get("Fn::GetAtt", [None])[0] for o in template["Outputs"].values() if isinstance(o["Value"], dict)
    }
    assert "ServeRole" in outputs


def test_template_passes_cfn_lint():
    cfnlint_api = pytest.importorskip("cfnlint.api", reason="cfn-lint is not installed")
    matches = cfnlint_api.lint_file(CFN_TEMPLATE)
    assert not matches, "\n".join(str(m) for m in matches)


# ---------------------------------------------------------------------------------------------
# The image


def test_dockerfile_builds_from_the_pinned_ray_and_installs_with_constraints():
    text = DOCKERFILE.read_text()
    assert f"ARG RAY_VERSION={RAY_VERSION}" in text
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{VARIANT\}$", text, re.M)
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert "pip install --no-cache-dir -c constraints.txt ." in text
    assert f"torch=={TORCH_VERSION}" in text
    assert "RUN bash /tmp/install_fluidsynth.sh" in text and "midi.fluidsynth_available()" in text
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".git", "artifacts", "**/__pycache__"} <= ignored


def test_serve_application_leaves_a_cpu_for_jobs_on_a_two_cpu_node():
    """At its minimum replicas the application must reserve under one CPU, or the 1-CPU tasks of jobs
    and Tune trials on the demo's 2-CPU node wait for ever beside it."""
    import serve_apps.app as application

    config = yaml.safe_load((REPO / "serve_apps" / "config.yaml").read_text())
    (app,) = config["applications"]
    reserved = 0.0
    for deployment in app["deployments"]:
        replicas = deployment.get("autoscaling_config", {}).get("min_replicas", deployment.get("num_replicas", 1))
        options = getattr(application, deployment["name"]).ray_actor_options
        reserved += replicas * options["num_cpus"]
    assert reserved < 1.0, f"the Serve application reserves {reserved} CPUs at its minimum replicas"
