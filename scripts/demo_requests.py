"""Send a few real requests to the Serve application, print them with their answers, and exit non-zero
when one does not get the answer it expects (CI runs this after `make demo`)."""

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path

import httpx

# (method, path, body, expected HTTP status, what to notice)
REQUESTS = [
    ("GET", "/healthz", None, 200, "the recommender version production serves: the hybrid validation chose"),
    ("POST", "/v1/recommend", {"user_id": "2", "n": 5, "explain": True}, 200,
     "a listener of the dataset: their own top 5, each 'because' of artists they played"),
    ("POST", "/v1/recommend/history", {"items": ["81", "53", "64"], "n": 5}, 200,
     "a new listener who played Portishead, Air and Röyksopp: recommendations folded in from those alone"),
    ("GET", "/v1/items/238/similar?n=5", None, 200, "the artists most like Massive Attack"),
    ("POST", "/v1/recommend", {"user_id": "someone-new", "n": 3}, 200,
     "an unknown listener: the most popular artists, marked as the fallback"),
    ("POST", "/v1/recommend", {"user_id": "2", "n": 0}, 422, "a bad request: a JSON error naming the field"),
    ("POST", "/v1/compose", {"style": "bach", "key": "A major", "bars": 2, "temperature": 9}, 422,
     "an out-of-range setting is refused before any work"),
]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "audio-samples" / "sax-phrase-short.wav"  # CC BY 4.0, see its README
# No sampling settings: the composer's own, chosen when it was evaluated (models/README.md).
COMPOSE = {"style": "bach", "key": "G major", "tempo": 84, "meter": "4/4", "bars": 8, "seed": 7, "audio": True}


class Unexpected(Exception):
    """An answer other than the one the demo expects."""


def check(response: httpx.Response, expected: int) -> dict:
    body = response.json()
    if response.status_code != expected:
        raise Unexpected(f"HTTP {response.status_code}, expected {expected}")
    if expected >= 400 and not body.get("error", {}).get("field"):
        raise Unexpected("an error answer without the field it is about")
    return body


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


def post_when_published(client: httpx.Client, path: str, seconds: float, **request) -> httpx.Response:
    """503 until the replica's next look at the store finds its production alias: ask again until then."""
    deadline = time.monotonic() + seconds
    while (response := client.post(path, **request)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(2)
    return response


def compose(client: httpx.Client, out: Path, seconds: float) -> None:
    """Ask for a piece with audio, write it as .mid and .wav under ``out``, and print the answer (files elided)."""
    response = post_when_published(client, "/v1/compose", seconds, json=COMPOSE)
    print(f"\n$ POST {client.base_url}/v1/compose  {json.dumps(COMPOSE)}")
    print(f"HTTP {response.status_code}")
    body = check(response, 200)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"encore-{COMPOSE['style']}-{COMPOSE['key'].replace(' ', '-')}-seed{COMPOSE['seed']}"
    (out / f"{stem}.mid").write_bytes(base64.b64decode(body["midi"]))
    (out / f"{stem}.wav").write_bytes(base64.b64decode(body["wav"]))
    shown = {**body, "midi": f"<{len(body['midi'])} base64 chars>", "wav": f"<{len(body['wav'])} base64 chars>"}
    print(json.dumps(shown, indent=2))
    print(f"\nwrote {out / stem}.mid and {out / stem}.wav ({body['renderer']})")
    # One piece of 8 bars says little of a model: eight more with the next seeds, measured together.
    more = [body] + [
        check(client.post("/v1/compose", json={**COMPOSE, "audio": False, "seed": COMPOSE["seed"] + seed}), 200)
        for seed in range(1, 9)
    ]
    for pieces, figures in (("this piece", musical_figures(more[:1])), ("it and 8 more", musical_figures(more))):
        print(
            f"# {pieces}: {figures['notes_per_step']:.1f} voices a step, a range of {figures['pitch_range']:.0f} "
            f"semitones, {figures['in_key']:.0%} of the notes in {COMPOSE['key']}"
        )
    print(
        "# (held-out Bach chorales, whole pieces: 4.0 voices a step, a range of 35 semitones, 95% of the notes in "
        "their key; the model measured over 128 pieces: benchmarks/RESULTS.md, 'The shipped composer')"
    )


def musical_figures(answers: list[dict]) -> dict:
    """The musical checks of ``encore.composer.checks`` on the notes of compose answers."""
    from encore.composer.checks import statistics
    from encore.core.keys import parse_key

    pieces = []
    for answer in answers:
        settings = answer["settings"]
        steps = [[] for _ in range(settings["primer_steps"] + settings["steps"])]
        for note in answer["notes"]:
            first, last = (round(note[edge] / settings["step_beats"]) for edge in ("start", "end"))
            for step in steps[first:last]:
                step.append(note["pitch"])
        pieces.append(steps)
    return statistics(pieces, [parse_key(answer["settings"]["key"]) for answer in answers])


def classify(client: httpx.Client, clip: Path, seconds: float) -> None:
    """Upload a bundled clip to /v1/classify and print the genre probabilities of the whole track."""
    files = {"file": (clip.name, clip.read_bytes(), "audio/wav")}
    response = post_when_published(client, "/v1/classify", seconds, files=files)
    print(f"\n$ POST {client.base_url}/v1/classify  (multipart: file={clip.relative_to(REPO)})")
    print(f"HTTP {response.status_code}")
    print(json.dumps(check(response, 200), indent=2))


def sound_alike(client: httpx.Client, clip: Path, seconds: float) -> None:
    """Upload a bundled clip to /v1/similar, then ask for the tracks like the nearest indexed one."""
    files = {"file": (clip.name, clip.read_bytes(), "audio/wav")}
    response = post_when_published(client, "/v1/similar", seconds, files=files, params={"n": 3})
    print(f"\n$ POST {client.base_url}/v1/similar?n=3  (multipart: file={clip.relative_to(REPO)})")
    print("# the indexed instrument clips that sound most like a saxophone phrase, nearest first")
    print(f"HTTP {response.status_code}")
    nearest = check(response, 200)
    print(json.dumps(nearest, indent=2))
    track = nearest["tracks"][0]
    response = client.get(f"/v1/tracks/{track['track_id']}/similar", params={"n": 3})
    print(f"\n$ GET {client.base_url}/v1/tracks/{track['track_id']}/similar?n=3")
    print(f"# the indexed clips that sound most like {track['name']}")
    print(f"HTTP {response.status_code}")
    print(json.dumps(check(response, 200), indent=2))


def run(client: httpx.Client, args: argparse.Namespace) -> list[str]:
    """Every request in turn; the failures, described."""
    failures = []
    for method, path, body, expected, notice in REQUESTS:
        response = client.request(method, path, json=body)
        print(f"\n$ {method} {args.url}{path}" + (f"  {json.dumps(body)}" if body else "") + f"\n# {notice}")
        print(f"HTTP {response.status_code}")
        print(json.dumps(response.json(), indent=2, ensure_ascii=False))
        try:
            check(response, expected)
        except Unexpected as error:
            failures.append(f"{method} {path}: {error}")
    steps = [
        ("POST /v1/classify", lambda: classify(client, CLIP, args.wait)),
        ("POST /v1/similar", lambda: sound_alike(client, CLIP, args.wait)),
    ]
    if args.out:
        steps.append(("POST /v1/compose", lambda: compose(client, Path(args.out), args.wait)))
    for name, step in steps:
        try:
            step()
        except (Unexpected, httpx.HTTPError) as error:
            failures.append(f"{name}: {type(error).__name__}: {error}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for the application")
    parser.add_argument("--out", default=None, help="folder for the composed .mid and .wav (default: no compose)")
    parser.add_argument("--api-key", default=os.environ.get("ENCORE_API_KEY"), help="default: $ENCORE_API_KEY")
    args = parser.parse_args()
    if not args.api_key:
        sys.exit("error: the service needs an API key: pass --api-key or set ENCORE_API_KEY")
    # The first classification waits for librosa's compilation in its replica: most of a minute on a busy machine.
    headers = {"X-API-Key": args.api_key}
    with httpx.Client(base_url=args.url, timeout=httpx.Timeout(120, connect=10), headers=headers) as client:
        wait_until_healthy(client, args.wait)
        failures = run(client, args)
    if failures:
        sys.exit("\nerror: the demo did not get the answers it expects:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
