"""What the request metrics cost per request: an ASGI app that answers at once, called directly (no server,
no network), with and without ``encore.serving.telemetry.RequestMetrics`` around it; the app notes a served
version as a handler does. The difference is the middleware's own time: timing, the route's template,
the served version, and recording a counter and a histogram.

    python -m benchmarks.telemetry [--requests 20000] [--ray]

Without ``--ray`` the metric objects record nothing (no Ray in the process: the middleware's own Python);
with ``--ray`` a local Ray instance is started and the real ``ray.util.metrics`` objects record.
"""

import argparse
import asyncio
import statistics
import time

from encore.serving import telemetry


class _Route:
    path = "/v1/recommend"


async def _answer(scope, receive, send) -> None:
    scope["route"] = _Route
    telemetry.served({"model": {"version": "popularity-20260101T000000.000000Z-0123456789ab"}})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message) -> None:
    pass


async def _per_request_us(app, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        await app({"type": "http", "method": "POST", "path": "/v1/recommend"}, _receive, _send)
    return 1e6 * (time.perf_counter() - started) / requests


def overhead_us(requests: int = 20000, rounds: int = 5) -> float:
    """Microseconds the middleware adds to one request: the median of ``rounds`` paired measurements."""
    wrapped = telemetry.RequestMetrics(_answer)

    async def measure() -> list[float]:
        await _per_request_us(wrapped, 200)  # warm up (and make the metric objects)
        differences = []
        for _ in range(rounds):
            differences.append(await _per_request_us(wrapped, requests) - await _per_request_us(_answer, requests))
        return differences

    return statistics.median(asyncio.run(measure()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--ray", action="store_true", help="record into real ray.util.metrics objects")
    args = parser.parse_args(argv)
    if args.ray:
        import ray

        ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        recording = "ray.util.metrics" if telemetry._instruments() is not None else "nothing (no Ray)"
        print(f"middleware overhead: {overhead_us(args.requests):.1f} µs per request, recording into {recording}")
    finally:
        if args.ray:
            ray.shutdown()


if __name__ == "__main__":
    main()
