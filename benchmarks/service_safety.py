"""Service safety under hostile clients (issue 14): four attacks against a real local Ray + Serve app.

1. ``batch``: clients naming a model that does not exist, batched with clients asking as usual.
2. ``uploads``: uploads that send their headers and stall, while others ask for recommendations.
3. ``primer``: a small MIDI primer that decodes to a huge piece, and a FLAC that declares hours of
   8 channels at 96 kHz.
4. ``outage``: a VersionCache over an S3 store (moto) that stops answering (SIGSTOP) under load.

Attacks 1-3 run against ``serve_apps.app:app_builder`` over a store built in a temporary folder
(popularity as ``production``, a tiny composer as ``composer-production``, a tiny genre model as
``genre-production``); attack 4 needs no Ray. The "before" column quotes issue 14's figures for the
old code; this run measures only the "now" column. The application's key file holds one admin key,
created by the run, which every request carries.

    python -m benchmarks.service_safety [--only batch uploads primer outage] [--outage-seconds 30]
"""

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.serve_load import REPO, build_store, free_port

ATTACKS = ("batch", "uploads", "primer", "outage")
SECRET_MODEL = "nope-secret-model"
# (attack, figure, before) of issue 14, quoted, in the order of the table; the measured "now" is keyed by figure.
BEFORE = {
    "batch": "115 of 240 failed (404 naming the other client's model)",
    "uploads": "a POST /v1/recommend took 36.1 s",
    "primer": "8.8 s to decode",
    "flac": "decoded whole before the check (tens of GB)",
    "outage": "each request waits on boto3's timeouts (60 s connect/read by default, retried)",
}


def say(message: str) -> None:
    print(f"[service_safety {time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f}] {message}", flush=True)


def api_headers() -> dict:
    key = os.environ.get("ENCORE_API_KEY")
    return {"X-API-Key": key} if key else {}


def span(values: list[float]) -> str:
    low, high = f"{min(values):.1f}", f"{max(values):.1f}"
    return low if low == high else f"{low}–{high}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * (len(ordered) - 1) + 0.5))]


# ---- the store and the application ---------------------------------------------------------------


def publish_tiny_composer(store_uri: str) -> None:
    """A composer trained in seconds on two Bach chorales (as tests/test_end_to_end.py), as composer-production."""
    import torch

    from encore.composer import Composer, ComposerConfig, TrainConfig, fit
    from encore.composer.compose import ComposerBundle
    from encore.composer.corpus import parse_corpus_file
    from encore.composer.tokens import conditioning_tokens
    from encore.store import ModelStore

    pieces = [parse_corpus_file(f"music21:bach/{name}.mxl", 0.5)[0] for name in ("bwv66.6", "bwv269")]
    steps = [piece.steps[:48] for piece in pieces]
    conditions = [conditioning_tokens(0, piece.key, 100.0, piece.meter) for piece in pieces]
    torch.manual_seed(0)
    model = Composer(ComposerConfig(n_layer=1, n_head=2, d_model=32, d_ff=64, dropout=0.0, max_steps=64, max_notes=4))
    train = TrainConfig(epochs=6, batch_size=2, lr=1e-2, warmup_steps=2)
    fit(model, steps, steps, train, train_conditions=conditions, valid_conditions=conditions)
    with tempfile.TemporaryDirectory() as folder:
        ComposerBundle(model, ["bach"], "bach", 0.5, conditioned=True).save(folder)
        ModelStore(store_uri).save(
            folder,
            kind="composer",
            config={},
            metrics={},
            data_fingerprint="benchmark",
            preprocessing={},
            aliases=["composer-production"],
        )


def publish_tiny_genre_model(store_uri: str) -> None:
    """A logistic regression (one member, two epochs) on the GTZAN feature table, as genre-production."""
    from encore.genre.classifier import GenreClassifier
    from encore.genre.data import load_table, preprocessing
    from encore.store import ModelStore

    table = load_table()
    model = GenreClassifier(hidden=0, members=1, epochs=2).fit(table, table["label"])
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        ModelStore(store_uri).save(
            folder,
            kind="genre",
            config={},
            metrics={},
            data_fingerprint="benchmark",
            preprocessing=preprocessing(),
            aliases=["genre-production"],
        )


def start_app(store: Path, temp: Path, body_timeout_s: float) -> str:
    """Local Ray (loopback, 2 CPUs) and the Serve application; returns its base URL."""
    import ray
    from ray import serve

    from encore.serving.access import SCOPES, create_key
    from encore.serving.config import ServeAppArgs
    from serve_apps.app import app_builder

    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_worker_niceness"] = "0"  # workers share the machine with the driver as equals
    os.environ["ENCORE_BODY_TIMEOUT_S"] = str(body_timeout_s)  # read by the ingress replica
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp / "ray"),
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # An admin key, so that attack 1's made-up model reaches the batched replica rather than a 403 at the door.
    keys_file = temp / "api_keys.json"
    os.environ["ENCORE_API_KEY"] = create_key(keys_file, "benchmark", SCOPES, rate="1000000/second")
    args = ServeAppArgs(store_uri=str(store), poll_seconds=1, api_keys_file=str(keys_file))
    serve.run(app_builder(args), name="encore")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while httpx.post(f"{url}/v1/recommend", json={"user_id": "2", "n": 1}, headers=api_headers()).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit("error: the application did not answer within 120 s")
        time.sleep(0.5)
    return url


def stop_app() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


# ---- 1. batched bad requests ---------------------------------------------------------------------


def batched_bad_requests(url: str, normal_requests: int = 240, good_clients: int = 4, bad_clients: int = 3) -> dict:
    """Bad clients ask for a model that does not exist, as fast as they can, while good clients ask as usual."""
    done = threading.Event()
    per_client = normal_requests // good_clients

    def good(index: int) -> list[tuple[int, str]]:
        with httpx.Client(base_url=url, timeout=60, headers=api_headers()) as client:
            bodies = [{"user_id": str(2 + index * per_client + i), "n": 10} for i in range(per_client)]
            return [
                (answer.status_code, answer.text) for answer in (client.post("/v1/recommend", json=b) for b in bodies)
            ]

    def bad() -> list[tuple[int, str]]:
        answers = []
        with httpx.Client(base_url=url, timeout=60, headers=api_headers()) as client:
            while not done.is_set():
                answer = client.post("/v1/recommend", json={"user_id": "x", "model": SECRET_MODEL})
                answers.append((answer.status_code, answer.text))
        return answers

    with ThreadPoolExecutor(good_clients + bad_clients) as pool:
        attackers = [pool.submit(bad) for _ in range(bad_clients)]
        started = time.perf_counter()
        goods = [answer for session in pool.map(good, range(good_clients)) for answer in session]
        elapsed = time.perf_counter() - started
        done.set()
        bads = [answer for attacker in attackers for answer in attacker.result()]
    failed = [answer for answer in goods if answer[0] != 200]
    leaked = [answer for answer in goods if SECRET_MODEL in answer[1]]
    refused = sum(status == 404 and "unknown_model" in text for status, text in bads)
    say(
        f"batch: {len(goods)} normal answers in {elapsed:.1f} s, {len(failed)} failed, {len(leaked)} named the model; "
        f"bad clients: {refused} of {len(bads)} answered 404 unknown_model"
    )
    return {
        "normal requests failed": f"{len(failed)} of {len(goods)}",
        "normal answers naming the other client's model": f"{len(leaked)} of {len(goods)}",
        "bad requests answered 404 `unknown_model`": f"{refused} of {len(bads)}",
    }


# ---- 2. slow uploads -----------------------------------------------------------------------------


def stalled_upload(port: int) -> socket.socket:
    """An upload that declares 100 kB, sends its part headers and then nothing more (tests/test_end_to_end.py)."""
    key = "".join(f"X-API-Key: {value}\r\n" for value in api_headers().values())
    head = (
        "POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"{key}Content-Length: 100000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    connection = socket.create_connection(("127.0.0.1", port), timeout=120)
    connection.sendall(head.encode())
    return connection


def answer_status(connection: socket.socket) -> tuple[int, str]:
    """Status and error code of the one answer on ``connection``."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < content_length(data):
        chunk = connection.recv(65536)
        if not chunk:
            return 0, "connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = body[:40].decode(errors="replace")
    return int(head.split()[1]), code


def content_length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].decode().lower()
    return next((int(line.split(":")[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0)


def slow_uploads(url: str, body_timeout_s: float, uploads: int = 6, requests: int = 20) -> dict:
    port = int(url.rsplit(":", 1)[1])
    started = time.perf_counter()
    stalled = [stalled_upload(port) for _ in range(uploads)]

    def timed_answer(connection: socket.socket) -> tuple[int, str, float]:
        status, code = answer_status(connection)
        return status, code, time.perf_counter() - started

    with ThreadPoolExecutor(uploads) as pool:
        try:
            answers = [pool.submit(timed_answer, connection) for connection in stalled]
            time.sleep(0.5)  # the uploads reach the ingress and take their slots
            latencies, statuses = [], Counter()
            with httpx.Client(base_url=url, timeout=120, headers=api_headers()) as client:
                for i in range(requests):
                    began = time.perf_counter()
                    status = client.post("/v1/recommend", json={"user_id": str(2 + i), "n": 10}).status_code
                    latencies.append(time.perf_counter() - began)
                    statuses[status] += 1
            during = time.perf_counter() - started
            outcomes = [answer.result() for answer in answers]
        finally:
            for connection in stalled:
                connection.close()
    by_status = Counter(f"{status} {code}" for status, code, _ in outcomes)
    when = {key: [t for s, c, t in outcomes if f"{s} {c}" == key] for key in by_status}
    described = ", ".join(f"{count} × {key} after {span(when[key])} s" for key, count in sorted(by_status.items()))
    say(
        f"uploads: {requests} recommendations within {during:.1f} s of the stall, "
        f"p50 {1000 * statistics.median(latencies):.0f} ms, max {1000 * max(latencies):.0f} ms; "
        f"uploads: {described}"
    )
    return {
        f"POST /v1/recommend during {uploads} stalled uploads, p50 / max of {requests}": (
            f"{1000 * statistics.median(latencies):.0f} ms / {1000 * max(latencies):.0f} ms "
            f"({', '.join(f'{n} × {status}' for status, n in sorted(statuses.items()))}, "
            f"all within {during:.1f} s of the stall)"
        ),
        f"how the {uploads} stalled uploads were answered (body deadline {body_timeout_s:g} s)": described,
    }


# ---- 3. costly primer and a FLAC declaring hours -------------------------------------------------


def stacked_notes(notes: int, beats: int) -> bytes:
    """``notes`` notes all starting at beat 0 and held ``beats`` beats, on 60 pitches (tests/test_composer_io.py)."""
    import mido

    on = [mido.Message("note_on", note=40 + i % 60, velocity=80, time=0) for i in range(notes)]
    off = [mido.Message("note_off", note=40 + i % 60, time=beats * 480 if i == 0 else 0) for i in range(notes)]
    file = mido.MidiFile(ticks_per_beat=480)
    file.tracks.append(mido.MidiTrack(on + off))
    buffer = io.BytesIO()
    file.save(file=buffer)
    return buffer.getvalue()


def flac_declaring_two_hours(channels: int, sample_rate: int) -> bytes:
    """One second of ``channels`` at ``sample_rate`` as FLAC, whose STREAMINFO declares 2 hours
    (as tests/test_audio_features.py)."""
    import numpy as np
    import soundfile

    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(sample_rate) / sample_rate)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.tile(tone[:, None], channels), sample_rate, format="FLAC")
    flac = buffer.getvalue()
    fields = int.from_bytes(flac[18:26], "big")  # the total frames: the last 36 bits before the MD5
    return flac[:18] + ((fields >> 36 << 36) | 7_200 * sample_rate).to_bytes(8, "big") + flac[26:]


def error_of(answer: httpx.Response) -> str:
    try:
        error = answer.json()["error"]
        return f"{answer.status_code} `{error['code']}` naming `{error.get('field')}`"
    except (ValueError, KeyError, TypeError):
        return f"{answer.status_code}"


def costly_inputs(url: str) -> dict:
    with httpx.Client(base_url=url, timeout=120, headers=api_headers()) as client:
        # Both replicas load their model on the first request that asks: not counted below.
        deadline = time.monotonic() + 60
        while client.post("/v1/compose", json={"bars": 1}).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        warm = client.post("/v1/classify", files={"file": ("x.flac", b"fLaC junk", "audio/flac")})
        say(f"primer: composer and genre replicas warm (a junk upload: {error_of(warm)})")

        midi = stacked_notes(9_000, 5_000)
        primer = base64.b64encode(midi).decode()
        began = time.perf_counter()
        answer = client.post("/v1/compose", json={"primer_midi": primer})
        primer_s = time.perf_counter() - began
        say(
            f"primer: {len(midi) / 1000:.0f} kB of MIDI ({len(primer) / 1000:.0f} kB base64) answered "
            f"{error_of(answer)} in {1000 * primer_s:.0f} ms"
        )
        primer_result = f"{error_of(answer)} in {1000 * primer_s:.0f} ms"

        uploads = {}
        for channels, rate in ((8, 96_000), (2, 44_100)):
            flac = flac_declaring_two_hours(channels, rate)
            began = time.perf_counter()
            answer = client.post("/v1/classify", files={"file": ("long.flac", flac, "audio/flac")})
            took = time.perf_counter() - began
            what = f"{len(flac) / 1000:.0f} kB FLAC declaring 2 h of {channels} channels at {rate / 1000:g} kHz"
            uploads[f"POST /v1/classify, {what}"] = f"{error_of(answer)} in {1000 * took:.0f} ms"
            say(f"primer: a {what}: answered {error_of(answer)} in {1000 * took:.0f} ms")
    return {
        f"POST /v1/compose, {len(midi) / 1000:.0f} kB primer of 9,000 stacked notes held 5,000 beats": primer_result,
        **uploads,
    }


# ---- 4. store outage -----------------------------------------------------------------------------


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server as a process of its own on a free loopback port (as tests/conftest.py)."""
    port = free_port()
    binary = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"error: moto server did not start: {log.read_text()}") from None
            time.sleep(0.2)


async def gets_for(versions, seconds: float, clients: int = 8) -> dict:
    """``clients`` loops of ``get()`` for ``seconds``: latencies (s), versions answered, errors."""
    latencies, served, errors = [], Counter(), Counter()
    end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < end:
            began = time.perf_counter()
            try:
                served[(await versions.get(None))[1]["version"]] += 1
            except Exception as error:
                errors[type(error).__name__] += 1
            latencies.append(time.perf_counter() - began)
            await asyncio.sleep(0.005)

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"latencies": latencies, "served": served, "errors": errors}


def store_outage(temp: Path, outage_seconds: float, baseline_seconds: float = 5.0) -> dict:
    import boto3

    from encore.serving.versions import VersionCache
    from encore.store import ModelStore

    proc, endpoint = start_moto(temp / "moto.log")
    saved_env = dict(os.environ)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        ENCORE_CACHE_DIR=str(temp / "s3-cache"),
    )
    stopped = False
    try:
        boto3.session.Session().client("s3").create_bucket(Bucket="outage")
        store = ModelStore("s3://outage/models")
        source = temp / "tiny-model"
        source.mkdir()
        (source / "model.txt").write_text("a model")
        version = store.save(
            source,
            kind="genre",
            config={},
            metrics={},
            data_fingerprint="benchmark",
            preprocessing={},
            aliases=["genre-production"],
        ).version
        refreshes = []  # (started, ended or None, failed): one resolution per refresh the cache starts
        resolve = store.resolve

        def counted(ref: str) -> str:
            entry = [time.monotonic(), None, False]
            refreshes.append(entry)
            try:
                return resolve(ref)
            except Exception:
                entry[2] = True
                raise
            finally:
                entry[1] = time.monotonic()

        store.resolve = counted
        # As the deployments build it (store timeouts and retries: ENCORE_S3_* defaults), polling every second.
        versions = VersionCache(
            store,
            "genre-production",
            kinds={"genre"},
            poll_seconds=1,
            capacity=2,
            load=lambda loaded: (loaded.path / "model.txt").read_text(),
        )

        async def run() -> tuple[dict, dict, list[tuple]]:
            await versions.get(None)  # loaded
            say(f"outage: {version} loaded from S3; {baseline_seconds:g} s of gets with the store up")
            before = await gets_for(versions, baseline_seconds)
            nonlocal stopped
            os.kill(proc.pid, signal.SIGSTOP)
            stopped = True
            stopped_at = time.monotonic()
            say(f"outage: moto stopped (SIGSTOP) for {outage_seconds:g} s, gets go on")
            during = await gets_for(versions, outage_seconds)
            ended_at = time.monotonic()
            # As they stood when the outage ended: a refresh still waiting then is not ended by what follows.
            return before, during, [tuple(r) for r in refreshes if stopped_at <= r[0] < ended_at or r[1] is None]

        before, during, outage_refreshes = asyncio.run(run())
    finally:
        if stopped:
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)
        os.environ.clear()
        os.environ.update(saved_env)

    def latency(phase: dict) -> str:
        values = phase["latencies"]
        return f"p50 {1e6 * statistics.median(values):.0f} µs, p99 {1e6 * percentile(values, 0.99):.0f} µs"

    failed = sum(during["errors"].values())
    gave_up = [f"{ended - began:.1f} s" for began, ended, failing in outage_refreshes if failing and ended]
    refreshes_done = (
        f"{len(outage_refreshes)} started, {len(gave_up)} gave up (after {', '.join(gave_up) or '—'}), "
        f"{sum(ended is None for _, ended, _ in outage_refreshes)} still waiting at the end"
    )
    answered = sum(during["served"].values())
    say(
        f"outage: before {latency(before)} over {len(before['latencies'])} gets; during {latency(during)}, "
        f"max {1000 * max(during['latencies']):.1f} ms over {len(during['latencies'])} gets; "
        f"{failed} errors {dict(during['errors'])}; refreshes during the outage: {refreshes_done}"
    )
    return {
        "`get()` latency, store up": f"{latency(before)} ({len(before['latencies']):,} gets)",
        f"`get()` latency, store stopped {outage_seconds:g} s": (
            f"{latency(during)}, max {1000 * max(during['latencies']):.1f} ms ({len(during['latencies']):,} gets)"
        ),
        "gets answered with the loaded version during the outage": f"{answered:,} of {answered + failed:,}",
        "refreshes of the store during the outage (poll 1 s)": refreshes_done,
    }


# ---- wiring --------------------------------------------------------------------------------------


def table(results: dict) -> str:
    """One markdown table: each attack's figures, the issue's "before" on its first row."""
    lines = ["| attack | figure | before (issue) | now |", "|---|---|---|---|"]
    names = {
        "batch": "1. batched bad requests",
        "uploads": "2. slow uploads",
        "primer": "3. costly primer",
        "flac": "3. costly upload (FLAC)",
        "outage": "4. store outage",
    }
    for attack, figures in results.items():
        for row, (figure, now) in enumerate(figures.items()):
            before = BEFORE[attack] if row == 0 else "—"
            lines.append(f"| {names[attack] if row == 0 else ''} | {figure} | {before} | {now} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=ATTACKS, default=list(ATTACKS), help="attacks to run")
    parser.add_argument("--outage-seconds", type=float, default=30.0, help="how long the S3 server is stopped")
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=5.0,
        help="ENCORE_BODY_TIMEOUT_S of the ingress (30 s in service): stalled uploads wait it out",
    )
    args = parser.parse_args()

    results = {}
    started = time.perf_counter()
    say(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="encore-safety-") as folder:
        temp = Path(folder)
        if {"batch", "uploads", "primer"} & set(args.only):
            store = temp / "store"
            build_store(store, "popularity", ["production"])
            say("store: popularity model as production")
            if "primer" in args.only:
                publish_tiny_composer(str(store))
                publish_tiny_genre_model(str(store))
                say("store: tiny composer as composer-production, tiny genre model as genre-production")
            try:
                began = time.perf_counter()
                url = start_app(store, temp, args.body_timeout)
                say(f"app: answering at {url} after {time.perf_counter() - began:.1f} s (Ray + Serve start-up)")
                if "batch" in args.only:
                    results["batch"] = batched_bad_requests(url)
                if "uploads" in args.only:
                    results["uploads"] = slow_uploads(url, args.body_timeout)
                if "primer" in args.only:
                    figures = list(costly_inputs(url).items())
                    results["primer"], results["flac"] = dict(figures[:1]), dict(figures[1:])
            finally:
                stop_app()
                say("app: Serve and Ray shut down")
        if "outage" in args.only:
            results["outage"] = store_outage(temp, args.outage_seconds)
    say(f"done in {time.perf_counter() - started:.0f} s; load average at the end: {os.getloadavg()[0]:.2f}")
    print("\n" + table(results))
    print('\n"before (issue)": quoted from issue 14 (the old code), not measured by this run.')


if __name__ == "__main__":
    main()
