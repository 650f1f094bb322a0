"""Serving under load: Encore's Ray Serve application against a plain FastAPI process, in one run.

Both servers answer ``POST /v1/recommend`` (n=10) from the same stored model on the bundled Last.fm
sample (ALS with 128 factors by default, ``--model popularity`` or ``hybrid`` for the others), with the
same pseudonymisation and validation. The reference runs the model inside one uvicorn process, what a
team would write by hand. Closed-loop clients (each sends its next request when the last is answered)
run for ``--seconds`` per level and at most ``--max-requests``, over loopback only, from this process.
Answered throughput and latency count 200s; shed requests (503) are counted with their own latency,
since shedding is only useful when it is fast.

Scenarios (``--scenarios``, all by default):
- ``load``: both servers at each ``--clients`` level, side by side with the ratio;
- ``rollout``: Encore under 8 clients while ``production`` moves between two versions four times;
- ``bulk``: ``POST /v1/recommend/batch`` with 1,000 users a request, recommendations per second;
- ``multiplex``: 8 clients naming one of ``--versions`` stored versions, through the multiplexed replicas;
- ``large``: a synthetic 1,000,000-item ALS model served through its approximate index, p99 at 8
  clients beside the HetRec figure and the index's recall@10.

    python -m benchmarks.serve_load [--clients 1,8,32,64] [--seconds 8] [--model als]
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from encore.core.runtime import free_port

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lastfm-hetrec2k"
MAX_RETRY_AFTER_S = 2.0
WORKER_NICENESS = 15  # Ray's default for its worker processes (its `worker_niceness`)
N_USERS = 1892  # the sample's listeners; ids run from 2 to 2100 with gaps, unknown ones get the fallback
LARGE_USERS = 2000  # the synthetic model's listeners, ids "0" to "1999"


def build_store(store: Path, model_kind: str, aliases: list[str], seed: int = 0) -> str:
    """Ingest the sample in-process, fit ``model_kind`` and save it under ``aliases``; its version id."""
    import json

    from encore.privacy.ids import id_key, key_fingerprint
    from encore.recsys import hetrec
    from encore.recsys.bundle import RecommenderBundle, preprocessing
    from encore.recsys.interactions import InteractionDataset, SplitConfig, merge_duplicates, parse_file
    from encore.recsys.models import model_class
    from encore.store import ModelStore

    key = id_key()
    parsed = parse_file((SAMPLE / "user_artists.dat").read_bytes(), "user_artists.dat", key)
    dataset = InteractionDataset.build(
        merge_duplicates(parsed),
        hetrec.load_catalogue(str(SAMPLE)),
        SplitConfig(),
        {},
        hetrec.read_taggings(str(SAMPLE), key),
    )
    if model_kind == "hybrid":
        config = json.loads((REPO / "configs" / "hetrec-hybrid.json").read_text())
        kind, params = config["kind"], config["params"]
    else:
        kind, params = (
            model_kind,
            {"factors": 128, "iterations": 10, "random_state": seed} if model_kind == "als" else {},
        )
    model = model_class(kind)(**params).fit(dataset.matrix("train", "validation"), dataset.items)
    with tempfile.TemporaryDirectory() as folder:
        RecommenderBundle.from_dataset(model, dataset, "train", "validation").save(folder)
        manifest = ModelStore(store).save(
            folder,
            kind=kind,
            config=params,
            metrics={},
            data_fingerprint=f"benchmark-{seed}",
            preprocessing=preprocessing(key_fingerprint(key)),
            aliases=aliases,
        )
    return manifest.version


def reference_app(store: str):
    """The hand-written alternative: FastAPI and the model in one process."""
    import torch
    from threadpoolctl import threadpool_limits

    from encore.privacy.ids import id_key, pseudonymize
    from encore.recsys.bundle import RecommenderBundle
    from encore.serving.api import RecommendRequest, RecommendResponse, create_app
    from encore.store import ModelStore

    # One BLAS thread, as in Encore's replicas: with more, the threads of concurrent requests fight over the cores.
    threadpool_limits(1)
    torch.set_num_threads(1)
    loaded = ModelStore(store).load("production")
    bundle = RecommenderBundle.load(loaded.path, loaded.manifest.kind)
    info = {"kind": loaded.manifest.kind, "version": loaded.manifest.version}
    key = id_key()
    app = create_app()

    @app.post("/v1/recommend", response_model=RecommendResponse)
    def recommend(request: RecommendRequest) -> dict:
        answer = bundle.recommend(pseudonymize(request.user_id, key), request.n, request.exclude_seen)
        return {**answer, "model": info}

    return app


@dataclass
class Level:
    clients: int
    seconds: float = 0.0
    answered: list[float] = field(default_factory=list)  # latencies in ms
    shed: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.answered) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float, latencies: list[float] | None = None) -> float:
        values = self.answered if latencies is None else latencies
        return float(np.percentile(values, q)) if values else float("nan")


async def _client(session, url, body_of, deadline, budget, level, index, honour_retry_after) -> None:
    sent = index
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        started = time.perf_counter()
        retry_after = 0.0
        try:
            async with session.post(url, json=body_of(sent)) as response:
                await response.read()
                status = response.status
                if status == 503:
                    retry_after = min(float(response.headers.get("Retry-After", 0)), MAX_RETRY_AFTER_S)
        except (TimeoutError, aiohttp.ClientError):
            status = 0
        elapsed = 1000 * (time.perf_counter() - started)
        level.statuses[status] = level.statuses.get(status, 0) + 1
        if status == 200:
            level.answered.append(elapsed)
        elif status == 503:
            level.shed.append(elapsed)
            if honour_retry_after:
                await asyncio.sleep(min(retry_after, max(0.0, deadline - time.perf_counter())))
        else:
            level.errors += 1
        sent += level.clients


async def _run_level(url, clients, seconds, max_requests, headers, body_of, honour_retry_after) -> Level:
    level = Level(clients)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as session:
        for i in range(min(20, max_requests)):  # warm-up: connections open, caches filled
            async with session.post(url, json=body_of(i)) as response:
                await response.read()
        budget = [max_requests]
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(_client(session, url, body_of, deadline, budget, level, i, honour_retry_after) for i in range(clients))
        )
        level.seconds = time.perf_counter() - started
    return level


def run_level(url, clients, seconds, max_requests, headers=None, body_of=None, honour_retry_after=True) -> Level:
    """One level of load; a client told 503 waits as Retry-After says (capped) before its next request, as a
    client should: one that does not is held off by its key's rate limit (429) instead."""
    body_of = body_of or (lambda i: {"user_id": str(2 + i % N_USERS), "n": 10})
    return asyncio.run(_run_level(url, clients, seconds, max_requests, headers, body_of, honour_retry_after))


def wait_for(url: str, headers: dict | None = None, seconds: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            answer = httpx.post(f"{url}/v1/recommend", json={"user_id": "2", "n": 1}, headers=headers, timeout=30)
            if answer.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: {url} did not answer within {seconds:.0f} s")


def start_reference(store: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serve_load", "--serve-reference", str(store), "--port", str(port)],
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(url)
    return process, url


def start_encore(store: Path) -> tuple[str, dict, float]:
    """Deploy ``serve_apps/config.yaml`` on an in-process Ray over ``store``; its URL, the headers of a
    key made for this run, and the seconds it took to answer."""
    from ray import serve

    from encore.core.runtime import init_ray
    from encore.serving.access import create_key

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    started = time.perf_counter()
    init_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    keys_file = store / "api_keys.json"
    headers = {"X-API-Key": create_key(keys_file, "benchmark", ["recommend"], rate="1000000/second", models=["*"])}
    url = f"http://127.0.0.1:{port}"
    deploy(store, keys_file, url)
    return url, headers, time.perf_counter() - started


def deploy(store: Path, keys_file: Path, url: str, seconds: float = 600) -> None:
    """(Re)deploy ``serve_apps/config.yaml``, its deployment options included, over ``store``, the way
    ``serve deploy`` hands a config to Serve's controller; return once every deployment runs and ``/healthz``
    names its production."""
    import httpx
    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from encore.store import ModelStore

    config = yaml.safe_load((REPO / "serve_apps" / "config.yaml").read_text())
    config.pop("http_options")
    config["applications"][0]["args"].update(store_uri=str(store), api_keys_file=str(keys_file))
    serve.context._get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    production = ModelStore(store).resolve("production")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            # Every deployment running, not only the ingress: replicas still starting take the cores from the load.
            running = serve.status().applications["encore"].status == "RUNNING"
            if running and httpx.get(f"{url}/healthz", timeout=30).json().get("model", {}).get("version") == production:
                return
        except (httpx.TransportError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise SystemExit(f"error: {url} did not serve {production} within {seconds:.0f} s")


def level_row(name: str, level: Level) -> str:
    shed_p99 = level.percentile(99, level.shed) if level.shed else float("nan")
    return (
        f"| {name} | {level.clients} | {level.throughput:.0f} | {level.percentile(50):.1f} | "
        f"{level.percentile(95):.1f} | {level.percentile(99):.1f} | {level.errors} | {len(level.shed)} | "
        f"{shed_p99:.1f} |"
    )


def load_scenario(store: Path, url: str, headers: dict, args) -> dict[int, Level]:
    """Both servers at every level, side by side; Encore's levels."""
    encore = {c: run_level(f"{url}/v1/recommend", c, args.seconds, args.max_requests, headers) for c in args.clients}
    plain = {c: Level(c) for c in args.clients}
    if not args.encore_only:
        reference, reference_url = start_reference(store)
        try:
            plain = {
                c: run_level(f"{reference_url}/v1/recommend", c, args.seconds, args.max_requests) for c in args.clients
            }
        finally:
            reference.terminate()
            reference.wait()
    print(
        f"\n### POST /v1/recommend (n=10), {args.model} on Last.fm HetRec, {os.cpu_count()} CPUs, "
        f"{args.seconds:.0f} s a level\n"
    )
    print("| server | clients | answered req/s | p50 ms | p95 ms | p99 ms | errors | shed (503) | shed p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clients in args.clients:
        print(level_row("plain FastAPI", plain[clients]))
        print(level_row("Encore on Serve", encore[clients]))
    print("\n| clients | Encore / plain throughput | Encore / plain p99 |")
    print("|---:|---:|---:|")
    for c in args.clients:
        ratio = encore[c].throughput / plain[c].throughput if plain[c].throughput else float("nan")
        p99_ratio = encore[c].percentile(99) / plain[c].percentile(99) if plain[c].answered else float("nan")
        print(f"| {c} | {ratio:.2f} | {p99_ratio:.2f} |")
    return encore


def rollout_scenario(store: Path, url: str, headers: dict, args) -> None:
    """8 clients for ``4 * --seconds`` while ``production`` moves between two versions four times."""
    import threading

    from encore.store import ModelStore

    versions = [ModelStore(store).resolve("production"), ModelStore(store).resolve("previous")]
    stop = threading.Event()

    def move() -> None:
        for step in range(4):
            if stop.wait(args.seconds * 0.8):
                return
            ModelStore(store).set_alias("production", versions[(step + 1) % 2])

    mover = threading.Thread(target=move)
    mover.start()
    level = run_level(f"{url}/v1/recommend", 8, 4 * args.seconds, 10 * args.max_requests, headers)
    stop.set()
    mover.join()
    print(f"\n### Rollout: `production` moved 4 times between two {args.model} versions under 8 clients\n")
    print("| requests | answered | failed (not 200) | of which shed (503) | p99 ms |")
    print("|---:|---:|---:|---:|---:|")
    total = sum(level.statuses.values())
    failed = total - len(level.answered)
    print(f"| {total} | {len(level.answered)} | {failed} | {len(level.shed)} | {level.percentile(99):.1f} |")


def bulk_scenario(store: Path, url: str, headers: dict, args) -> None:
    """``POST /v1/recommend/batch`` of 1,000 users (top-10) from 1 and 2 clients, against the model called
    in-process on 1 and 2 threads (one BLAS and torch thread each, as in a replica): 2 threads on 2 cores are
    what this machine computes with no HTTP, no JSON and no load generator."""
    import torch
    from threadpoolctl import threadpool_limits

    from encore.privacy.ids import id_key, pseudonymize
    from encore.recsys.bundle import RecommenderBundle
    from encore.store import ModelStore

    users = [str(2 + i % N_USERS) for i in range(1000)]
    loaded = ModelStore(store).load("production")
    bundle = RecommenderBundle.load(loaded.path, loaded.manifest.kind)
    keys = [pseudonymize(user, id_key()) for user in users]
    torch.set_num_threads(1)
    with threadpool_limits(1):
        bundle.recommend_many(keys, 10)
        in_process = {threads: _in_process_rate(bundle, keys, threads, args.seconds) for threads in (1, 2)}
    print(f"\n### Bulk: POST /v1/recommend/batch, 1,000 users a request, top-10, {args.model}\n")
    print(
        "| clients | users/s over HTTP | p50 ms a request | p99 ms | users/s in-process, as many threads "
        "| HTTP / in-process |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for clients in (1, 2):
        level = run_level(
            f"{url}/v1/recommend/batch", clients, args.seconds, args.max_requests, headers, lambda i: {"users": users}
        )
        rate = level.throughput * len(users)
        print(
            f"| {clients} | {rate:,.0f} | {level.percentile(50):.0f} | {level.percentile(99):.0f} | "
            f"{in_process[clients]:,.0f} | {rate / in_process[clients]:.2f} |"
        )
    if hasattr(bundle.model, "item_factors_"):
        with threadpool_limits(1):
            _top_k_table(bundle, keys, args.seconds)


def _top_k_table(bundle, keys: list[str], seconds: float) -> None:
    """In-process, one thread: the top 10 of a factor model's users found by ranking every item, against
    ``ExactTopK`` with each first pass this CPU runs well, in ``recommend_many``'s chunks; the answers compared."""
    from encore.recsys.bundle import BULK_CHUNK
    from encore.recsys.metrics import played
    from encore.recsys.models.base import Recommender
    from encore.recsys.models.exact import ExactTopK, native_bfloat16

    model = bundle.model
    rows = np.array([row for row in map(bundle.user_index, keys) if row is not None])  # the rest get the fallback
    chunks = [rows[start : start + BULK_CHUNK] for start in range(0, len(rows), BULK_CHUNK)]
    every_item = "every item ranked (float32 product, `torch.topk`)"
    methods = {every_item: lambda users: Recommender._recommend(model, users, 10, True)}
    for name, bfloat16 in [("float32", False), ("bfloat16", True)][: 1 + native_bfloat16()]:
        search = ExactTopK(model.item_factors_, bfloat16=bfloat16)
        methods[f"`ExactTopK`, {name} first pass"] = lambda users, search=search: search.top_k(
            model.user_factors_[users], 10, played(model.user_items_, users)
        )
    reference = np.concatenate([methods[every_item](users)[0] for users in chunks])
    print(
        f"\n#### In-process, one thread: the top 10 of the {len(rows)} of those users the model knows, "
        f"{len(model.item_factors_):,} items\n"
    )
    print("| found by | users/s | against every item ranked | same 10 items, in order, as every item ranked |")
    print("|---|---:|---:|---:|")
    rates = {}
    for name, method in methods.items():
        answers = np.concatenate([method(users)[0] for users in chunks])
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for users in chunks:
                method(users)
            done += len(rows)
        rates[name] = done / (time.perf_counter() - started)
        same = (answers == reference).all(axis=1).mean()
        print(f"| {name} | {rates[name]:,.0f} | {rates[name] / rates[every_item]:.2f} | {same:.1%} of users |")


def _in_process_rate(bundle, keys: list[str], threads: int, seconds: float) -> float:
    """Users a second that ``threads`` threads recommending for ``keys`` over and over reach together."""
    from concurrent.futures import ThreadPoolExecutor

    def rounds() -> int:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            bundle.recommend_many(keys, 10)
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: rounds(), range(threads)))
    return total * len(keys) / (time.perf_counter() - started)


def multiplex_scenario(store: Path, url: str, headers: dict, args) -> None:
    """8 clients naming one of ``--versions`` versions each request (not the service's alias), so they go through
    the multiplexed Recommender replicas, which hold at most ``MODELS_PER_REPLICA`` each."""
    from encore.store import ModelStore
    from serve_apps.app import MODELS_PER_REPLICA

    named = [manifest.version for manifest in ModelStore(store).list(kind=args.model)][: args.versions]
    print(
        f"\n### Request-selected versions: 8 clients, each request naming one of {len(named)} {args.model} "
        f"versions (at most {MODELS_PER_REPLICA} loaded per Recommender replica)\n"
    )
    print("| versions named | answered req/s | p50 ms | p95 ms | p99 ms | errors | shed (503) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for count in sorted({1, len(named)}):
        level = run_level(
            f"{url}/v1/recommend",
            8,
            args.seconds,
            args.max_requests,
            headers,
            lambda i, count=count: {"user_id": str(2 + i % N_USERS), "n": 10, "model": named[i % count]},
        )
        print(
            f"| {count} | {level.throughput:.0f} | {level.percentile(50):.1f} | {level.percentile(95):.1f} | "
            f"{level.percentile(99):.1f} | {level.errors} | {len(level.shed)} |"
        )


def large_scenario(folder: Path, url: str, headers: dict, args) -> None:
    """The application over a store whose production is a synthetic ALS model of ``--large-items`` items (answered
    through its approximate index), at 8 clients beside the HetRec model, with the recall@10 of its answers
    against exact scoring."""
    import httpx

    from benchmarks.ann import build_large_store
    from encore.privacy.ids import id_key, pseudonymize
    from encore.recsys.bundle import RecommenderBundle
    from encore.recsys.metrics import top_k
    from encore.store import ModelStore

    hetrec = run_level(f"{url}/v1/recommend", 8, args.seconds, args.max_requests, headers)
    started = time.perf_counter()
    store = folder / "store"
    build_large_store(store, n_items=args.large_items)
    built = time.perf_counter() - started
    deploy(store, store.parent.parent / "store" / "api_keys.json", url)
    users = [str(i % LARGE_USERS) for i in range(LARGE_USERS)]
    large = run_level(
        f"{url}/v1/recommend", 8, args.seconds, args.max_requests, headers, lambda i: {"user_id": users[i % len(users)]}
    )
    loaded = ModelStore(store).load("production")
    bundle = RecommenderBundle.load(loaded.path, loaded.manifest.kind)
    model, key, hits = bundle.model, id_key(), 0
    sample = users[: args.recall_users]
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for user in sample:
            served = [item["item_id"] for item in client.post("/v1/recommend", json={"user_id": user}).json()["items"]]
            row = bundle.user_index(pseudonymize(user, key))
            scores = model.score(np.array([row])).astype(np.float64)
            scores[0, model.user_items_[row].indices] = -np.inf
            exact = set(bundle._item_ids[top_k(scores, 10)[0]])
            hits += len(exact & set(served))
    recall = hits / (10 * len(sample))
    print(
        f"\n### Large catalogue: ALS with {args.large_items:,} items x 128 factors (built and stored in "
        f"{built:.0f} s), 8 clients\n"
    )
    print("| model | answered req/s | p50 ms | p99 ms | p99 / HetRec p99 | recall@10 against exact |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {args.model} on HetRec (17,632 items) | {hetrec.throughput:.0f} | {hetrec.percentile(50):.1f} | "
        f"{hetrec.percentile(99):.1f} | 1.00 | exact |"
    )
    print(
        f"| synthetic ALS, {args.large_items:,} items | {large.throughput:.0f} | {large.percentile(50):.1f} | "
        f"{large.percentile(99):.1f} | {large.percentile(99) / hetrec.percentile(99):.2f} | {recall:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32,64", type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--seconds", type=float, default=8.0, help="per level")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per level")
    parser.add_argument("--model", choices=["als", "popularity", "hybrid"], default="als")
    parser.add_argument("--scenarios", default="load,rollout,bulk,multiplex,large", type=lambda s: s.split(","))
    parser.add_argument("--large-items", type=int, default=1_000_000)
    parser.add_argument("--recall-users", type=int, default=200, help="users whose answers are checked against exact")
    parser.add_argument("--versions", type=int, default=6, help="versions stored, for the multiplexed scenario")
    parser.add_argument("--encore-only", action="store_true", help="skip the plain FastAPI process")
    parser.add_argument("--serve-reference", metavar="STORE", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_reference:
        import uvicorn

        uvicorn.run(reference_app(args.serve_reference), host="127.0.0.1", port=args.port, log_level="warning")
        return

    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        started = time.perf_counter()
        for seed in range(1, args.versions):  # older versions, for the rollout and the multiplexed scenarios
            build_store(store, args.model, ["previous"], seed)
        build_store(store, args.model, ["production"])
        print(f"stored {args.versions} {args.model} versions in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        url, headers, startup = start_encore(store)
        print(f"Encore started (Ray and Serve) in {startup:.1f} s, not counted below", file=sys.stderr)
        # The load and the plain reference run at the niceness Ray gives its workers, Serve's replicas and HAProxy
        # included: at the default 0 the load generator would take the cores first.
        os.nice(WORKER_NICENESS - os.nice(0))
        if "load" in args.scenarios:
            load_scenario(store, url, headers, args)
        for name, scenario in [
            ("rollout", rollout_scenario),
            ("bulk", bulk_scenario),
            ("multiplex", multiplex_scenario),
        ]:
            if name in args.scenarios:
                scenario(store, url, headers, args)
        if "large" in args.scenarios:
            large_scenario(Path(folder) / "large", url, headers, args)


if __name__ == "__main__":
    main()
