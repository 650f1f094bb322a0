"""Feature-extraction throughput: the Ray Data job against a plain single-process librosa loop.

Both compute the same features (``encore.audio.features.analyze_bytes``: the GTZAN schema of each
track and of its 3-second segments, key, tempo, beats) of the same files. The input is real clips
(the bundled CC BY samples, or ``--source``) tiled into one stream of at least ``--minutes`` of
audio and cut into WAV files (44.1 kHz, 16-bit mono, like CD rips after down-mixing), at least 8 of
them, so that two workers have work to share.

- numba compiles librosa's code once, into a fresh cache (timed on its own line); every run below
  loads it, as runs on a node do after the first one.
- The loop runs in a separate process with BLAS, OpenMP and numba threads pinned to one
  (threadpoolctl, ``NUMBA_NUM_THREADS``); its warm-up is timed apart from the loop.
- The job runs with 1 and then 2 CPUs: a fresh local Ray instance with ``num_cpus=N`` and N actors
  each time, one file per batch. Ray's start and the workers' warm-up are reported apart; its
  "analysing" time runs from the first batch begun to the last one done.

Throughput is seconds of audio per wall second, over everything and while analysing. One run
prints one table.

    python -m benchmarks.features [--minutes 20] [--source data/audio-samples]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TILE_RATE = 44_100
MIN_FILES = 8
PINNED_THREADS = {
    name: "1" for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
}


def tile(source: Path, folder: Path, minutes: float) -> tuple[int, float]:
    """Write the clips under ``source``, repeated in turn, as consecutive WAV files; returns (files, seconds)."""
    import numpy as np
    import soundfile as sf

    from encore.audio import AudioDecodeError
    from encore.audio.features import decode
    from encore.audio.schema import AUDIO_SUFFIXES

    clips = []
    for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            clips.append(decode(path.read_bytes(), TILE_RATE).samples)
        except AudioDecodeError as error:
            print(f"left out {path}: {error}", file=sys.stderr)
    if not clips:
        raise SystemExit(f"error: {source}: no usable audio clips")
    period = np.concatenate(clips)
    total = int(minutes * 60 * TILE_RATE)
    stream = np.tile(period, math.ceil(total / len(period)))[:total]
    files = max(MIN_FILES, math.ceil(minutes))  # about a minute each for the default 20 minutes
    folder.mkdir(parents=True)
    for index, piece in enumerate(np.array_split(stream, files)):
        sf.write(folder / f"tile-{index:03d}.wav", piece, TILE_RATE, subtype="PCM_16")
    return files, total / TILE_RATE


def baseline(folder: Path) -> dict:
    """The plain loop, in this process: called through ``--baseline`` with threads pinned in the environment."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        started = time.perf_counter()
        from encore.audio.features import analyze_bytes, warm_up

        warm_up()
        warmup_s = time.perf_counter() - started
        started = time.perf_counter()
        for path in sorted(folder.glob("*.wav")):
            analyze_bytes(path.read_bytes())
        return {"warmup_s": warmup_s, "wall_s": time.perf_counter() - started}


def compile_numba(cache: Path) -> float:
    """Seconds for a fresh process to compile librosa's numba code into the empty folder ``cache``."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from encore.audio.features import warm_up; warm_up()"],
        cwd=REPO,
        env={**os.environ, **PINNED_THREADS, "NUMBA_CACHE_DIR": str(cache)},
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def run_baseline(folder: Path, cache: Path) -> dict:
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.features", "--baseline", str(folder)],
        cwd=REPO,
        env={**os.environ, **PINNED_THREADS, "NUMBA_CACHE_DIR": str(cache)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_job(folder: Path, output: Path, cache: Path, cpus: int) -> dict:
    import ray

    from encore.audio.extract import extract_features

    started = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
    ray_start_s = time.perf_counter() - started
    try:
        summary = extract_features(str(folder), str(output), workers=cpus, batch_size=1, numba_cache_dir=str(cache))
    finally:
        ray.shutdown()
    if summary["errors"]:
        raise SystemExit(f"error: the job reported errors: {summary['first_errors']}")
    return {
        "ray_start_s": ray_start_s,
        "warmup_s": summary["worker_warmup_s"],
        "wall_s": summary["wall_s"],
        "analysis_s": summary["analysis_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="minutes of audio to analyse")
    parser.add_argument("--source", type=Path, default=REPO / "data" / "audio-samples", help="folder of real clips")
    parser.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        print(json.dumps(baseline(args.baseline)))
        return

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray's workers import ``jobs`` from the repository, wherever this was started.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="encore-bench-") as work:
        work = Path(work)
        # This process decodes the clips to tile them: its numba cache stays apart from the runs measured.
        os.environ["NUMBA_CACHE_DIR"] = str(work / "numba-tiling")
        files, seconds = tile(args.source, work / "audio", args.minutes)
        cache = work / "numba"
        compile_s = compile_numba(cache)
        loop = run_baseline(work / "audio", cache)
        jobs = {cpus: run_job(work / "audio", work / f"features-{cpus}", cache, cpus) for cpus in (1, 2)}

    rows = [("librosa loop, one process", 1, f"{loop['warmup_s']:.1f} warm-up", loop["warmup_s"] + loop["wall_s"])]
    analysing = [loop["wall_s"]]
    for cpus, job in jobs.items():
        startup = f"{job['ray_start_s']:.1f} Ray + {job['warmup_s']:.1f} warm-up"
        rows.append(("Ray Data job", cpus, startup, job["ray_start_s"] + job["wall_s"]))
        analysing.append(job["analysis_s"])
    print(
        f"\nFeature extraction (GTZAN schema of tracks and 3-s segments, key, beats): {seconds / 60:.1f} min of "
        f"audio in {files} WAV files tiled from {args.source}; {os.cpu_count()} CPUs on this machine.\n"
        f"numba compiling librosa's code into an empty cache, once per node: {compile_s:.1f} s (not in the runs)\n"
    )
    print(
        f"| {'run':<25} | CPUs | {'start-up s':>22} | {'wall s':>7} | {'audio s/s, all':>14} "
        f"| {'audio s/s, analysing':>20} | {'vs loop':>7} |"
    )
    print(f"|{'-' * 27}|-----:|{'-' * 23}:|{'-' * 8}:|{'-' * 15}:|{'-' * 21}:|{'-' * 8}:|")
    loop_rate = seconds / analysing[0]
    for (name, cpus, startup, wall_s), analysis_s in zip(rows, analysing):
        print(
            f"| {name:<25} | {cpus:>4} | {startup:>22} | {wall_s:>7.1f} | {seconds / wall_s:>14.1f} "
            f"| {seconds / analysis_s:>20.1f} | {seconds / analysis_s / loop_rate:>7.2f} |"
        )
    print(
        "\n'wall s' counts everything: the loop with its warm-up; Ray's start and the whole job "
        "(listing, reading, hashing, warm-up, analysis, Parquet). 'analysing' leaves out start-up and writing."
    )


if __name__ == "__main__":
    main()
