"""Serving latency and throughput: Encore's Ray Serve application against a plain FastAPI app.

Both answer ``POST /v1/recommend`` from the same stored popularity model on the bundled Last.fm
sample, with the same pseudonymisation and error handling; the reference runs the model inside a
single uvicorn process (what a team would write by hand), Encore goes through Serve's proxy, the
ingress replica and the batched recommender replica. Requests come from this process over
loopback HTTP, first one at a time, then from concurrent clients. One run prints one table.

    python -m benchmarks.serving [--requests 300] [--clients 8]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lastfm-hetrec2k"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_store(store: Path) -> None:
    """Ingest the sample in-process and store a popularity model as production."""
    from encore import hetrec
    from encore.ids import id_key, key_fingerprint
    from encore.interactions import InteractionDataset, SplitConfig, merge_duplicates, parse_file
    from encore.models import Popularity
    from encore.serving import RecommenderBundle, preprocessing
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
    model = Popularity().fit(dataset.matrix("train", "validation"))
    with tempfile.TemporaryDirectory() as folder:
        RecommenderBundle.from_dataset(model, dataset, "train", "validation").save(folder)
        ModelStore(store).save(
            folder,
            kind="popularity",
            config={},
            metrics={},
            data_fingerprint="benchmark",
            preprocessing=preprocessing(key_fingerprint(key)),
            aliases=["production"],
        )


def reference_app(store: str):
    """The hand-written alternative: FastAPI + the model in one process."""
    from encore.api import RecommendRequest, RecommendResponse, create_app
    from encore.ids import id_key, pseudonymize
    from encore.serving import RecommenderBundle
    from encore.store import ModelStore

    loaded = ModelStore(store).load("production")
    bundle = RecommenderBundle.load(loaded.path, loaded.manifest.kind)
    info = {"kind": loaded.manifest.kind, "version": loaded.manifest.version}
    key = id_key()
    app = create_app()

    @app.post("/v1/recommend", response_model=RecommendResponse)
    def recommend(request: RecommendRequest) -> dict:
        return {**bundle.recommend(pseudonymize(request.user_id, key), request.n, request.exclude_seen), "model": info}

    return app


def wait_for(url: str, seconds: float = 120, headers: dict | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}/v1/recommend", json={"user_id": "2", "n": 1}, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: {url} did not answer within {seconds:.0f} s")


def measure(url: str, requests: int, clients: int, headers: dict | None = None) -> dict:
    bodies = [{"user_id": str(2 + i % 2000), "n": 10} for i in range(requests)]
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        for body in bodies[:20]:  # warm-up
            client.post("/v1/recommend", json=body).raise_for_status()
        latencies = []
        for body in bodies:
            started = time.perf_counter()
            client.post("/v1/recommend", json=body).raise_for_status()
            latencies.append(1000 * (time.perf_counter() - started))

    def worker(chunk):
        with httpx.Client(base_url=url, timeout=30, headers=headers) as own:
            for body in chunk:
                own.post("/v1/recommend", json=body).raise_for_status()

    chunks = [bodies[i::clients] for i in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, chunks))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50 ms (sequential)": statistics.median(latencies),
        "p99 ms (sequential)": latencies[int(0.99 * (len(latencies) - 1))],
        f"req/s ({clients} clients)": requests / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--serve-reference", metavar="STORE", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_reference:
        import uvicorn

        uvicorn.run(reference_app(args.serve_reference), host="127.0.0.1", port=args.port, log_level="warning")
        return

    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        build_store(store)
        port = free_port()
        reference = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serving", "--serve-reference", str(store), "--port", str(port)], cwd=REPO
        )
        try:
            wait_for(f"http://127.0.0.1:{port}")
            plain = measure(f"http://127.0.0.1:{port}", args.requests, args.clients)
        finally:
            reference.terminate()
            reference.wait()

        from ray import serve

        from encore.access import create_key
        from encore.runtime import init_ray
        from serve_apps.app import app_builder

        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        started = time.perf_counter()
        init_ray()
        serve_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        keys_file = Path(store) / "api_keys.json"
        headers = {"X-API-Key": create_key(keys_file, "benchmark", ["recommend"], rate="1000000/second")}
        serve.run(app_builder({"store_uri": str(store), "api_keys_file": str(keys_file)}), name="encore")
        wait_for(f"http://127.0.0.1:{serve_port}", headers=headers)
        startup = time.perf_counter() - started
        encore = measure(f"http://127.0.0.1:{serve_port}", args.requests, args.clients, headers)
        serve.shutdown()

    print(
        f"\nServing {args.requests} requests of POST /v1/recommend (n=10), popularity on Last.fm HetRec, "
        f"{os.cpu_count()} CPUs; Encore start-up (Ray + Serve) {startup:.1f} s, not counted below\n"
    )
    print(f"| {'metric':<22} | {'plain FastAPI':>13} | {'Encore on Serve':>15} | {'Encore / plain':>14} |")
    print(f"|{'-' * 24}|{'-' * 14}:|{'-' * 16}:|{'-' * 15}:|")
    for name in plain:
        print(f"| {name:<22} | {plain[name]:>13.1f} | {encore[name]:>15.1f} | {encore[name] / plain[name]:>14.2f} |")


if __name__ == "__main__":
    main()
