"""Request and model metrics (encore.serving.telemetry) without Ray: what the middleware and the model cache record,
with which tags, and the Grafana dashboard's queries against the names the code defines. The same metrics on
Ray's Prometheus endpoint, from the real Serve application: tests/test_end_to_end.py."""

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from encore.core.errors import ServingError
from encore.serving import telemetry
from encore.serving.api import create_app, error_response

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "infra" / "grafana" / "encore-dashboard.json"
PLANTED = "PLANTEDUSER-telemetry-5k2"


class Recorded:
    """Stands in for a ray.util.metrics object: keeps what was recorded."""

    def __init__(self, name: str):
        self.name, self.points = name, []

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        self.points.append((value, tags))

    observe = inc


@pytest.fixture
def recorded(monkeypatch) -> dict[str, Recorded]:
    fakes = {name: Recorded(name) for name in telemetry.METRICS}
    monkeypatch.setattr(telemetry, "_metrics", fakes)
    monkeypatch.setattr(telemetry, "_seen_versions", set())
    monkeypatch.setattr(telemetry, "_seen_codes", set())
    return fakes


def tags(recorded: dict[str, Recorded], name: str) -> list[dict]:
    return [t for _, t in recorded[name].points]


@pytest.fixture
def client() -> TestClient:
    app = create_app()

    @app.post("/v1/things/{thing_id}")
    async def thing(thing_id: str, body: dict) -> dict:
        model = {"kind": "popularity", "version": body["version"]}
        return telemetry.served({"thing": thing_id, "model": model, "arm": body.get("arm")})

    @app.get("/v1/refused/{code}")
    async def refused(code: str) -> dict:
        status = {"rate_limited": 429, "overloaded": 503, "unknown_user": 404}[code]
        error = ServingError("no", None)
        error.status, error.code = status, code
        raise error

    @app.get("/v1/fails")
    async def fails() -> dict:
        raise RuntimeError("boom")

    @app.get("/v1/plain")
    async def plain() -> dict:
        return {"model": None}

    app.add_exception_handler(KeyError, lambda request, exc: error_response(request, 400, "bad_key", "no"))
    return TestClient(app, raise_server_exceptions=False)


def test_requests_are_tagged_by_route_template_status_and_served_version(client, recorded):
    body = {"version": "popularity-v1", "arm": "candidate"}
    assert client.post(f"/v1/things/{PLANTED}", json=body).status_code == 200
    assert client.get("/v1/plain").status_code == 200
    assert tags(recorded, "encore_requests") == [
        {"endpoint": "/v1/things/{thing_id}", "status": "200", "model_version": "popularity-v1", "arm": "candidate"},
        {"endpoint": "/v1/plain", "status": "200", "model_version": "none", "arm": "none"},
    ]
    (seconds, first), _ = recorded["encore_request_seconds"].points
    assert first == {"endpoint": "/v1/things/{thing_id}", "model_version": "popularity-v1", "arm": "candidate"}
    assert 0 < seconds < 5
    assert recorded["encore_errors"].points == recorded["encore_shed"].points == []


def test_errors_are_counted_by_code_and_shed_requests_by_reason(client, recorded):
    for code in ("rate_limited", "overloaded", "unknown_user"):
        client.get(f"/v1/refused/{code}")
    assert client.post("/v1/things/x", json=[1]).status_code == 422  # invalid body
    assert client.post("/v1/things/x", json={}).status_code == 400  # KeyError, handled as bad_key
    assert client.get(f"/no/such/route/{PLANTED}").status_code == 404
    assert client.get("/v1/fails").status_code == 500
    assert tags(recorded, "encore_errors") == [
        {"endpoint": "/v1/refused/{code}", "code": "rate_limited"},
        {"endpoint": "/v1/refused/{code}", "code": "overloaded"},
        {"endpoint": "/v1/refused/{code}", "code": "unknown_user"},
        {"endpoint": "/v1/things/{thing_id}", "code": "invalid_request"},
        {"endpoint": "/v1/things/{thing_id}", "code": "bad_key"},
        {"endpoint": "unmatched", "code": "not_found"},
        {"endpoint": "/v1/fails", "code": "internal_error"},
    ]
    assert tags(recorded, "encore_shed") == [
        {"endpoint": "/v1/refused/{code}", "reason": "rate_limited"},
        {"endpoint": "/v1/refused/{code}", "reason": "overloaded"},
    ]
    statuses = [t["status"] for t in tags(recorded, "encore_requests")]
    assert statuses == ["429", "503", "404", "422", "400", "404", "500"]
    assert PLANTED not in repr({name: r.points for name, r in recorded.items()})


def test_tag_values_stay_few_and_never_echo_what_a_client_sent(client, recorded, monkeypatch):
    monkeypatch.setattr(telemetry, "MAX_TAG_VALUES", 3)
    for version in ["v1", "v2", "v1", "v3", "v4", PLANTED + " <script>", ""]:
        client.post("/v1/things/x", json={"version": version})
    versions = [t["model_version"] for t in tags(recorded, "encore_requests")]
    assert versions == ["v1", "v2", "v1", "v3", "other", "other", "none"]


def test_nothing_is_recorded_without_ray(client, monkeypatch):
    monkeypatch.setattr(telemetry, "_metrics", None)
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance of this session is up")
    assert client.get("/v1/plain").status_code == 200
    assert telemetry._metrics is None


def test_the_model_cache_counts_hits_misses_refusals_and_times_loads(recorded, tmp_path):
    import asyncio

    from encore.serving.versions import FAMILIES, VersionCache
    from encore.store import ModelStore

    store = ModelStore(tmp_path / "store")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "model.bin").write_bytes(b"x")
    saved = {
        alias: store.save(
            tmp_path / "files",
            kind=kind,
            config={},
            metrics={},
            data_fingerprint="f",
            preprocessing={},
            aliases=[alias],
        ).version  # fmt: skip
        for alias, kind in [("production", "popularity"), ("other", "popularity"), ("wrong", "composer")]
    }
    clock = [0.0]
    kinds = FAMILIES["recommender"].kinds
    cache = VersionCache(
        store, "production", kinds, load=lambda loaded: "model", capacity=1, clock=lambda: clock[0],
        refresh_wait_seconds=None,  # each request waits for its refresh: the lookups come in order
    )  # fmt: skip

    async def ask(*refs):
        for ref in refs:
            try:
                await cache.get(ref)
            except ServingError:
                pass

    asyncio.run(ask("production", "production", "other", "wrong", f"no-such-{PLANTED}"))
    clock[0] += 60  # every name is due for a refresh
    asyncio.run(ask("other", "production"))
    results = [t["result"] for t in tags(recorded, "encore_model_cache")]
    # production: miss; other: miss (evicts production, capacity 1); wrong: refused (a composer); the
    # unknown name is no lookup; after the poll: other is loaded (hit), production was evicted (miss).
    assert results == ["miss", "miss", "refused", "hit", "miss"]
    assert {t["family"] for t in tags(recorded, "encore_model_cache")} == {"recommender"}
    loads = recorded["encore_model_load_seconds"].points
    assert [t["version"] for _, t in loads] == [saved["production"], saved["other"], saved["production"]]
    assert all(t["family"] == "recommender" and t["kind"] == "popularity" and s >= 0 for s, t in loads)


def test_overhead_of_the_middleware_is_small(recorded):
    """Per request, against the same app without it (a microbenchmark: see benchmarks/telemetry.py)."""
    from benchmarks.telemetry import overhead_us

    assert overhead_us(requests=3000) < 100


# ---- the Grafana dashboard -----------------------------------------------------------------------------


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_parses_and_queries_only_metrics_the_code_defines():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    queries = dashboard_queries()
    assert queries
    queried = {name for q in queries for name in re.findall(r"\b(ray_[a-z_]+)\b", q)}
    encore = {name for name in queried if name.startswith("ray_encore_")}
    assert encore <= telemetry.exported_names(), encore - telemetry.exported_names()
    # Every metric of the code is on the dashboard, and nothing else is queried but Serve's own.
    assert {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in encore} == {f"ray_{n}" for n in telemetry.METRICS}
    assert queried - encore <= {"ray_serve_num_http_error_requests_total", "ray_serve_num_http_requests_total"}
    for query in queries:  # tags queried are tags the metric has
        for name, labels in re.findall(r"(ray_encore_[a-z_]+)\{([^}]*)\}", query):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)[len("ray_") :]
            keys = set(re.findall(r"([a-z_]+)\s*[=!~]", labels))
            assert keys <= {*telemetry.METRICS[base][2], "le"}, (query, keys)


def test_a_mounted_folder_is_one_endpoint_whatever_file_is_asked(recorded, tmp_path):
    from fastapi.staticfiles import StaticFiles

    (tmp_path / "app.js").write_text("//")
    app = create_app()
    app.mount("/web", StaticFiles(directory=tmp_path), name="web")
    client = TestClient(app)
    assert client.get("/web/app.js").status_code == 200
    assert client.get(f"/web/{PLANTED}.js").status_code == 404
    assert client.get("/docs").status_code == 200
    assert [(t["endpoint"], t["status"]) for t in tags(recorded, "encore_requests")] == [
        ("/web/{path}", "200"),
        ("/web/{path}", "404"),
        ("/docs", "200"),
    ]
    assert tags(recorded, "encore_errors") == [{"endpoint": "/web/{path}", "code": "not_found"}]
