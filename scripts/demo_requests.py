"""Send a few real requests to the Serve application and print them with their answers."""

import argparse
import json
import sys
import time

import httpx

REQUESTS = [
    ("GET", "/healthz", None),
    ("POST", "/v1/recommend", {"user_id": "2", "n": 5}),
    ("POST", "/v1/recommend", {"user_id": "someone-new", "n": 3}),
    ("POST", "/v1/recommend", {"user_id": "2", "n": 0}),
]


def wait_until_healthy(client: httpx.Client, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"error: {client.base_url}/healthz did not answer within {seconds:.0f} s; see `serve status`")
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for the application")
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=30) as client:
        wait_until_healthy(client, args.wait)
        for method, path, body in REQUESTS:
            response = client.request(method, path, json=body)
            print(f"\n$ {method} {args.url}{path}" + (f"  {json.dumps(body)}" if body else ""))
            print(f"HTTP {response.status_code}")
            print(json.dumps(response.json(), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
