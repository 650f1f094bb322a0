"""A change of pseudonymisation key under load: the Serve application holds both keys (step 1 of the README's
procedure), clients keep asking for recommendations while jobs.rotate_key runs and the service picks up the
rotated versions, and every request succeeds with the answer it got before the rotation."""

import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import TEST_ID_KEY, free_port, shutdown_serve

OLD, NEW = TEST_ID_KEY, "rotation-serving-new-key"  # the session's workers ingest and train under TEST_ID_KEY
RAW_PREFIX = "ROTATEDLISTENER-p4m8"
N_USERS, N_ITEMS, CLIENTS = 16, 24, 3
UNKNOWN = "a-listener-nobody-knows"


def write_plays(path: Path) -> list[str]:
    rng = np.random.default_rng(11)
    users = [f"{RAW_PREFIX}-{u:03d}" for u in range(N_USERS)]
    lines = ["user,item,weight"]
    for user in users:
        lines += [f"{user},track-{i},{rng.integers(1, 30)}" for i in rng.choice(N_ITEMS, 9, replace=False)]
    path.write_text("\n".join(lines) + "\n")
    return users


def with_env(app, env: dict):
    """``app`` with ``env`` in the runtime environment of every deployment, as a deployment with new
    environment variables would run: the session's Ray workers hold only ENCORE_ID_KEY=TEST_ID_KEY."""
    from ray.serve import Application

    deployment = app._bound_deployment

    def bound(value):
        return with_env(value, env) if isinstance(value, Application) else value

    options = dict(deployment.ray_actor_options or {})
    options["runtime_env"] = {**options.get("runtime_env", {}), "env_vars": env}
    args = [bound(value) for value in deployment.init_args]
    kwargs = {name: bound(value) for name, value in deployment.init_kwargs.items()}
    return deployment.options(ray_actor_options=options).bind(*args, **kwargs)


def serve_app(setting: dict, env: dict) -> None:
    """Deploy (or deploy again, as a rolling update) the application over the store with ``env``."""
    from ray import serve

    from encore.serving.config import ServeAppArgs
    from serve_apps.app import app_builder

    args = {"store_uri": str(setting["root"] / "store"), "poll_seconds": 1, "api_keys_file": setting["api_keys_file"]}
    serve.run(with_env(app_builder(ServeAppArgs(**args)), env), name="encore")


@pytest.fixture(scope="module")
def setting(ray_local, api_keys, tmp_path_factory):
    """A dataset ingested and an ALS model trained under the old key, and the Serve application over the
    store, deployed with the new key in ENCORE_ID_KEY and the old one in ENCORE_ID_KEY_PREVIOUS."""
    from ray import serve

    from encore.recsys.ingest import ingest
    from encore.recsys.interactions import SplitConfig
    from encore.recsys.train import train

    root = tmp_path_factory.mktemp("rotation")
    users = write_plays(root / "plays.csv")
    ingest(str(root / "plays.csv"), str(root / "dataset"), SplitConfig(min_items=3))
    version = train(str(root / "dataset"), "als", {"factors": 8, "iterations": 4}, str(root / "store"),
                    ["latest", "production"])  # fmt: skip

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    setting = {"root": root, "users": users, "version": version, "url": f"http://127.0.0.1:{port}",
               "headers": {"X-API-Key": api_keys["suite"]}, "api_keys_file": api_keys["file"]}  # fmt: skip
    serve_app(setting, {"ENCORE_ID_KEY": NEW, "ENCORE_ID_KEY_PREVIOUS": OLD})  # step 1 of the procedure
    try:
        yield setting
    finally:
        shutdown_serve()


def answer_of(client: httpx.Client, user: str) -> tuple[int, dict]:
    """A user's recommendations and top items as the service answers them, without the model's version."""
    recommended = client.post("/v1/recommend", json={"user_id": user, "n": 5})
    top = client.post("/v1/users/top", json={"user_id": user, "n": 5})
    if recommended.status_code != 200 or top.status_code not in (200, 404):
        return recommended.status_code, {}
    body = recommended.json()
    return 200, {"items": body["items"], "fallback": body["fallback"], "top": top.json().get("items"),
                 "version": body["model"]["version"]}  # fmt: skip


class Clients:
    """``CLIENTS`` threads asking for every user in turn until stopped; each answer is checked against the one
    recorded before the rotation, and the version that gave it counted."""

    def __init__(self, setting: dict, expected: dict):
        self.setting, self.expected = setting, expected
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests, self.failures, self.differences = 0, [], []
        self.answered_by: Counter = Counter()  # (user, version) -> answers
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CLIENTS)]

    def _run(self, offset: int) -> None:
        users = [*self.setting["users"], UNKNOWN]
        with httpx.Client(base_url=self.setting["url"], headers=self.setting["headers"], timeout=60) as client:
            index = offset
            while not self.stop.is_set():
                user = users[index % len(users)]
                index += 1
                try:
                    status, answer = answer_of(client, user)
                except httpx.HTTPError as error:
                    status, answer = repr(error), {}
                with self.lock:
                    self.requests += 1
                    if status != 200:
                        self.failures.append((user, status))
                        continue
                    version = answer.pop("version")
                    self.answered_by[user, version] += 1
                    if answer != self.expected[user]:
                        self.differences.append((user, version))

    def __enter__(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def wait(self, condition, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if condition():
                    return
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)


def test_rotation_under_load_fails_no_request_and_changes_no_answer(setting, monkeypatch):
    from encore.privacy.rotation import rotate, rotation_keys
    from encore.store import ModelStore

    users = [*setting["users"], UNKNOWN]
    with httpx.Client(base_url=setting["url"], headers=setting["headers"], timeout=60) as client:
        before = {user: answer_of(client, user) for user in users}
        assert all(status == 200 for status, _ in before.values()), before
        assert {answer.pop("version") for _, answer in before.values()} == {setting["version"]}
        expected = {user: answer for user, (_, answer) in before.items()}
        assert all(expected[user]["fallback"] is None and expected[user]["top"] for user in setting["users"])
        assert expected[UNKNOWN]["fallback"] == "popular"

        with Clients(setting, expected) as clients:
            clients.wait(lambda: clients.requests >= 2 * len(users), "the clients to get going")
            # Step 2 of the procedure, while the clients ask: the job's keys come from its environment.
            monkeypatch.setenv("ENCORE_ID_KEY", NEW)
            monkeypatch.setenv("ENCORE_ID_KEY_PREVIOUS", OLD)
            root = setting["root"]
            previous, new = rotation_keys(dict(os.environ))
            summary = rotate(
                str(root / "plays.csv"), previous, new, [str(root / "dataset")], str(root / "store"), False
            )
            rotated = summary["versions"][setting["version"]]
            assert summary["aliases"] == {"latest": rotated, "production": rotated}
            assert ModelStore(str(root / "store")).resolve("production") == rotated

            # Until every user has been answered by the rotated version, which the replica picks up on its poll.
            def served_by_rotated() -> bool:
                return all(clients.answered_by[user, rotated] for user in users)

            clients.wait(served_by_rotated, "the rotated version to answer every user")
            answered_before_rotation = sum(clients.answered_by[user, setting["version"]] for user in users)
        assert client.get("/healthz").json()["model"]["version"] == rotated
        # Both keys serve: a request may still name the version built under the old one.
        old_version = client.post("/v1/recommend", json={"user_id": users[0], "model": setting["version"]})
        assert old_version.status_code == 200, old_version.text

        # Step 3, under load again: the service is deployed again without the previous key.
        with Clients(setting, expected) as without_previous:
            without_previous.wait(lambda: without_previous.requests >= len(users), "the clients to get going")
            serve_app(setting, {"ENCORE_ID_KEY": NEW})
            done = without_previous.requests
            without_previous.wait(lambda: without_previous.requests >= done + 2 * len(users), "answers after it")
        refused = client.post("/v1/recommend", json={"user_id": users[0], "model": setting["version"]})
        assert refused.status_code == 404 and "other preprocessing" in refused.json()["error"]["message"]
        after = {user: answer_of(client, user) for user in users}

    assert clients.failures == without_previous.failures == [], (clients.failures + without_previous.failures)[:5]
    assert clients.differences == without_previous.differences == [], clients.differences[:5]
    assert answered_before_rotation > 0 and clients.requests > 3 * len(users)
    assert all(status == 200 for status, _ in after.values())
    assert {answer.pop("version") for _, answer in after.values()} == {rotated}
    assert {user: answer for user, (_, answer) in after.items()} == expected
