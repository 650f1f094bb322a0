"""Send a few real requests to the Serve application and print them with their answers."""

import argparse
import base64
import json
import sys
import time
from pathlib import Path

import httpx

REQUESTS = [
    ("GET", "/healthz", None),
    ("POST", "/v1/recommend", {"user_id": "2", "n": 5}),
    ("POST", "/v1/recommend", {"user_id": "someone-new", "n": 3}),
    ("POST", "/v1/recommend", {"user_id": "2", "n": 0}),
    ("POST", "/v1/compose", {"style": "bach", "key": "A major", "bars": 2, "temperature": 9}),
]
REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "audio-samples" / "sax-phrase-short.wav"  # CC BY 4.0, see its README
COMPOSE = {"style": "bach", "key": "G major", "tempo": 84, "meter": "4/4", "bars": 8, "temperature": 0.9,
           "top_p": 0.95, "seed": 7, "audio": True}  # fmt: skip


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


def compose(client: httpx.Client, out: Path, seconds: float) -> None:
    """Ask for a piece with audio, write it as .mid and .wav under ``out``, and print the answer (files elided)."""
    deadline = time.monotonic() + seconds
    # 503 until the Composer replica's next look at the store finds composer-production.
    while (response := client.post("/v1/compose", json=COMPOSE)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(2)
    print(f"\n$ POST {client.base_url}/v1/compose  {json.dumps(COMPOSE)}")
    print(f"HTTP {response.status_code}")
    body = response.json()
    if response.status_code != 200:
        sys.exit(json.dumps(body, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    stem = f"encore-{COMPOSE['style']}-{COMPOSE['key'].replace(' ', '-')}-seed{COMPOSE['seed']}"
    (out / f"{stem}.mid").write_bytes(base64.b64decode(body["midi"]))
    (out / f"{stem}.wav").write_bytes(base64.b64decode(body["wav"]))
    shown = {**body, "midi": f"<{len(body['midi'])} base64 chars>", "wav": f"<{len(body['wav'])} base64 chars>"}
    print(json.dumps(shown, indent=2))
    print(f"\nwrote {out / stem}.mid and {out / stem}.wav ({body['renderer']})")


def classify(client: httpx.Client, clip: Path, seconds: float) -> None:
    """Upload a bundled clip to /v1/classify and print the genre probabilities of the whole track."""
    deadline = time.monotonic() + seconds
    # 503 until the GenreClassifier replica's next look at the store finds genre-production.
    while True:
        files = {"file": (clip.name, clip.read_bytes(), "audio/wav")}
        response = client.post("/v1/classify", files=files)
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(f"\n$ POST {client.base_url}/v1/classify  (multipart: file={clip.relative_to(REPO)})")
    print(f"HTTP {response.status_code}")
    print(json.dumps(response.json(), indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for the application")
    parser.add_argument("--out", default=None, help="folder for the composed .mid and .wav (default: no compose)")
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=30) as client:
        wait_until_healthy(client, args.wait)
        for method, path, body in REQUESTS:
            response = client.request(method, path, json=body)
            print(f"\n$ {method} {args.url}{path}" + (f"  {json.dumps(body)}" if body else ""))
            print(f"HTTP {response.status_code}")
            print(json.dumps(response.json(), indent=2, ensure_ascii=False))
        classify(client, CLIP, args.wait)
        if args.out:
            compose(client, Path(args.out), args.wait)


if __name__ == "__main__":
    main()
