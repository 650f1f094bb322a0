"""The pipeline on Ray and the Serve application over real HTTP, from one planted dataset.

The dataset's user ids are distinctive strings; the last test greps every file the run wrote and
every log line (ours and Ray's) for them.
"""

import json
import logging
import select
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import free_port, shutdown_serve

PLANTED_PREFIX = "PLANTEDUSER-q7x3"
N_USERS, N_ITEMS = 30, 40
BAD_LINES = {  # line number -> expected reason
    4: "weight is not a number (found text)",
    9: "weight is negative",
    15: "missing item id",
    21: "expected 3 fields, found 2",
}


def planted_csv(path: Path) -> tuple[int, dict[str, set[str]]]:
    """Write interactions with planted user ids and bad rows; return good row count and histories."""
    rng = np.random.default_rng(5)
    lines, histories = ["user,item,weight"], {}
    for user in range(N_USERS):
        raw = f"{PLANTED_PREFIX}-{user:04d}"
        # Popular items are the low ids, so a popularity model has something to find.
        items = rng.choice(
            N_ITEMS, size=12, replace=False, p=np.linspace(2, 1, N_ITEMS) / np.linspace(2, 1, N_ITEMS).sum()
        )
        histories[raw] = {f"track-{item}" for item in items}
        lines += [f"{raw},track-{item},{rng.integers(1, 30)}" for item in items]
    good = len(lines) - 1
    for line_number, reason in sorted(BAD_LINES.items()):
        user = f"{PLANTED_PREFIX}-bad{line_number}"
        bad = {
            "weight is not a number (found text)": f"{user},track-1,lots",
            "weight is negative": f"{user},track-1,-2",
            "missing item id": f"{user},,3",
            "expected 3 fields, found 2": f"{user},track-1",
        }[reason]
        lines.insert(line_number - 1, bad)
    path.write_text("\n".join(lines) + "\n")
    return good, histories


@pytest.fixture(scope="module")
def pipeline_run(ray_local, tmp_path_factory):
    """Ingest and train as jobs.pipeline does, in-process on the session's Ray instance, logging into a list."""
    from encore.recsys.ingest import ingest
    from encore.recsys.interactions import SplitConfig
    from encore.recsys.train import train

    root = tmp_path_factory.mktemp("e2e")
    good_rows, histories = planted_csv(root / "plays.csv")
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(handler.format(record))
    logging.getLogger().addHandler(handler)
    try:
        summary = ingest(str(root / "plays.csv"), str(root / "dataset"), SplitConfig())
        version = train(str(root / "dataset"), "popularity", {}, str(root / "store"), ["latest", "production"])
        result = {"ingest": summary, "version": version}
    finally:
        logging.getLogger().removeHandler(handler)
    return {"root": root, "result": result, "good_rows": good_rows, "histories": histories, "log": records}


def test_ingest_reports_every_bad_row_and_keeps_every_good_one(pipeline_run):
    import pandas as pd

    summary = pipeline_run["result"]["ingest"]
    assert summary["rejected"] == len(BAD_LINES)
    assert summary["accepted"] == pipeline_run["good_rows"] == summary["interactions"]
    rejects = pd.read_csv(summary["rejects"])
    assert dict(zip(rejects["line"], rejects["reason"])) == BAD_LINES
    logged = "\n".join(pipeline_run["log"])
    for line_number, reason in BAD_LINES.items():
        assert f"line {line_number}: {reason}" in logged


def test_pipeline_stores_an_evaluated_version_as_production(pipeline_run):
    from encore.store import ModelStore

    store = ModelStore(pipeline_run["root"] / "store")
    version = pipeline_run["result"]["version"]
    assert store.resolve("production") == store.resolve("latest") == version
    manifest = store.show(version)
    assert manifest.kind == "popularity"
    assert manifest.data_fingerprint == pipeline_run["result"]["ingest"]["fingerprint"]
    assert 0 < manifest.metrics["test"]["ndcg@10"] <= 1
    assert {"users.parquet", "items.parquet", "config.json", "state.npz"} <= set(manifest.files)


def test_a_rerun_reuses_the_version_trained_on_the_same_data_with_the_same_settings(pipeline_run):
    from encore.recsys.train import train
    from encore.store import ModelStore

    root = pipeline_run["root"]
    dataset, store = str(root / "dataset"), str(root / "store")
    served = pipeline_run["result"]["version"]
    assert train(dataset, "popularity", {}, store, ["latest", "production"], reuse=True) == served
    assert ModelStore(store).list(kind="popularity")[0].version == served  # nothing new was saved
    other = train(dataset, "popularity", {"by": "weight"}, store, ["candidate"], reuse=True)
    assert other != served
    assert train(dataset, "popularity", {"by": "weight"}, store, ["candidate"], reuse=True) == other
    assert train(dataset, "popularity", {}, store, ["candidate"], reuse=True) not in (served, other)
    assert ModelStore(store).resolve("production") == served


@pytest.fixture(scope="module")
def api(pipeline_run, api_keys):
    from ray import serve

    from encore.serving.config import ServeAppArgs
    from serve_apps.app import app_builder

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    store = str(pipeline_run["root"] / "store")
    serve.run(app_builder(ServeAppArgs(store_uri=store, poll_seconds=1, api_keys_file=api_keys["file"])), name="encore")
    headers = {"X-API-Key": api_keys["suite"]}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers) as client:
        yield client
    shutdown_serve()


def test_healthz_names_the_served_version(api, pipeline_run):
    answer = api.get("/healthz").json()
    model = {"kind": "popularity", "version": pipeline_run["result"]["version"]}
    arms = [{"alias": "production", "weight": 1.0, **model}]
    assert answer == {"status": "ok", "model": model, "arms": arms, "refused": []}


def test_known_user_gets_unseen_items(api, pipeline_run):
    raw, history = next(iter(pipeline_run["histories"].items()))
    answer = api.post("/v1/recommend", json={"user_id": raw, "n": 5})
    assert answer.status_code == 200
    body = answer.json()
    assert body["fallback"] is None and len(body["items"]) == 5
    recommended = {item["item_id"] for item in body["items"]}
    # Exclusion covers the items the stored model was fitted on (train + validation).
    assert len(recommended & history) < 5
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    with_seen = api.post("/v1/recommend", json={"user_id": raw, "n": 5, "exclude_seen": False}).json()
    assert {item["item_id"] for item in with_seen["items"]} != recommended or not (recommended & history)


def test_unknown_user_gets_popular_items(api):
    body = api.post("/v1/recommend", json={"user_id": "nobody-we-know", "n": 3}).json()
    assert body["fallback"] == "popular"
    assert [item["item_id"] for item in body["items"]][:1] == ["track-0"] or len(body["items"]) == 3
    assert all(item["name"] for item in body["items"])


@pytest.mark.parametrize(
    "body, field",
    [
        ({"n": 3}, "user_id"),
        ({"user_id": "x", "n": 0}, "n"),
        ({"user_id": "x", "n": "many"}, "n"),
        ({"user_id": "", "n": 3}, "user_id"),
        ({"user_id": "x", "colour": "blue"}, "colour"),
    ],
)
def test_malformed_requests_get_422_naming_the_field(api, body, field):
    answer = api.post("/v1/recommend", json=body)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == field and field in error["message"]


def test_invalid_json_and_unknown_routes_use_the_error_shape(api):
    answer = api.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_request"
    missing = api.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_openapi_describes_the_api(api):
    spec = api.get("/openapi.json").json()
    assert {"/healthz", "/v1/recommend"} <= set(spec["paths"])
    assert api.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "method, path, request_args, status",
    [
        ("post", "/v1/recommend", {"json": {"user_id": "x", "n": 0}}, 422),
        ("post", "/v1/recommend", {"json": {"user_id": "x", "model": "als"}}, 404),
        ("post", "/v1/recommend", {"json": {"user_id": f"{PLANTED_PREFIX}-0003", "explain": True}}, 400),
        ("post", "/v1/recommend/history", {"json": {"items": ["no-such-track"]}}, 404),
        ("get", "/v1/items/{item_id}/similar", {}, 400),
        ("post", "/v1/classify", {"json": {"file": "x"}}, 415),
        ("post", "/v1/similar", {"content": b"x" * 10, "headers": {"content-type": "multipart/form-data; b=1"}}, 400),
        ("post", "/v1/compose", {"json": {"bars": 0}}, 422),
        ("get", "/v1/tracks/{track_id}/similar", {"params": {"n": 0}}, 422),
        ("post", "/v1/recommend", {"json": {}, "headers": {"X-API-Key": "enc_wrong"}}, 401),
        ("post", "/v1/compose", {"json": {}, "headers": {"X-API-Key": "enc_wrong"}}, 401),
        ("post", "/v1/classify", {"headers": {"X-API-Key": "enc_wrong"}}, 401),
        ("post", "/v1/recommend", {"json": {"user_id": "x" * 2_000_000}}, 413),
    ],
)
def test_openapi_lists_the_error_statuses_each_operation_answers(api, method, path, request_args, status):
    url = path.format(item_id="track-0", track_id="0123456789abcdef")
    answer = api.request(method.upper(), url, **request_args)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["request_id"] == answer.headers["x-request-id"]
    responses = api.get("/openapi.json").json()["paths"][path][method]["responses"]
    assert str(status) in responses and "ErrorResponse" in json.dumps(responses[str(status)])


def test_new_production_version_is_picked_up_without_restart(api, pipeline_run):
    from encore.recsys.train import train

    root = pipeline_run["root"]
    new_version = train(str(root / "dataset"), "popularity", {"by": "weight"}, str(root / "store"), ["production"])
    deadline = time.monotonic() + 30
    while api.get("/healthz").json()["model"]["version"] != new_version:
        assert time.monotonic() < deadline, "the Serve app did not load the new production version"
        time.sleep(0.5)
    body = api.post("/v1/recommend", json={"user_id": "nobody-we-know", "n": 2}).json()
    assert body["model"]["version"] == new_version


def test_one_clients_bad_request_never_fails_another_clients_request(api):
    """Requests batched together: clients naming a model that does not exist, among clients asking as usual."""
    from concurrent.futures import ThreadPoolExecutor

    secret = "nope-secret-model"

    def client_session(bad: bool) -> list[tuple[int, str]]:
        body = {"user_id": "attacker" if bad else "listener", "n": 3, **({"model": secret} if bad else {})}
        with httpx.Client(base_url=api.base_url, timeout=60, headers=api.headers) as client:
            return [(answer.status_code, answer.text) for answer in
                    (client.post("/v1/recommend", json=body) for _ in range(25))]  # fmt: skip

    with ThreadPoolExecutor(max_workers=7) as pool:
        sessions = list(pool.map(client_session, [True, False, True, False, True, False, False]))
    bad = [answer for session in sessions[0:5:2] for answer in session]
    good = [answer for session in (sessions[1], sessions[3], *sessions[5:]) for answer in session]
    assert all(status == 404 and "unknown_model" in text for status, text in bad)
    assert all(status == 200 and secret not in text for status, text in good), [a for a in good if a[0] != 200][:3]


def test_a_wrong_promote_leaves_the_service_answering(api, pipeline_run, tmp_path):
    from encore.store import ModelStore

    store = ModelStore(pipeline_run["root"] / "store")
    serving = api.get("/healthz").json()["model"]
    (tmp_path / "composer.json").write_text("{}")
    composer = store.save(tmp_path, kind="composer", config={}, metrics={}, data_fingerprint="test",
                          preprocessing={}, aliases=[]).version  # fmt: skip
    store.set_alias("production", composer)
    try:
        deadline = time.monotonic() + 30
        while not (health := api.get("/healthz").json()).get("refused"):
            assert time.monotonic() < deadline, f"the refusal never showed: {health}"
            time.sleep(0.5)
        assert health["model"] == serving and health["refused"][0]["version"] == composer
        assert str(pipeline_run["root"]) not in json.dumps(health)
        for _ in range(5):
            answer = api.post("/v1/recommend", json={"user_id": "someone", "n": 2})
            assert answer.status_code == 200 and answer.json()["model"] == serving
            time.sleep(0.3)
    finally:
        store.set_alias("production", serving["version"])


def _stalled_upload(port: int, key: str) -> socket.socket:
    """An upload that declares 100 kB, sends its part headers and then nothing more."""
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    connection.sendall(head.encode())
    return connection


def _answer(connection: socket.socket, json_body: bool = True) -> tuple[int, dict, dict | bytes]:
    """Status, headers and body (parsed as JSON by default) of the one answer on ``connection``."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = connection.recv(65536)
        assert chunk, f"connection closed without a whole answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if json_body else body


def _content_length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].decode().lower()
    return next((int(line.split(":")[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0)


def test_slow_uploads_never_hold_up_other_requests(api):
    """Six uploads that stall after their headers, against four upload slots: two are turned away at once,
    recommendations answer while four hold their slots, and the four get 408 when the body deadline ends."""
    from conftest import BODY_TIMEOUT_S

    port = api.base_url.port
    started = time.monotonic()
    stalled = [_stalled_upload(port, api.headers["x-api-key"]) for _ in range(6)]
    try:
        for _ in range(10):
            answer = api.post("/v1/recommend", json={"user_id": "someone", "n": 2})
            assert answer.status_code == 200
        assert time.monotonic() - started < BODY_TIMEOUT_S / 2, "recommendations waited on the uploads"
        answers = [_answer(connection) for connection in stalled]
    finally:
        for connection in stalled:
            connection.close()
    busy = [(headers, body) for status, headers, body in answers if status == 503]
    timed_out = [body for status, _, body in answers if status == 408]
    assert len(busy) == 2 and len(timed_out) == 4, [status for status, _, _ in answers]
    assert all(headers["retry-after"] == "1" and body["error"]["code"] == "busy" for headers, body in busy)
    assert all(body["error"] == {**body["error"], "code": "body_timeout", "field": "file"} for body in timed_out)
    assert time.monotonic() - started >= BODY_TIMEOUT_S


def test_requests_beyond_the_ingress_bound_are_shed_at_once_and_the_service_recovers(api):
    """More stalled requests than the ingress works on and queues: each one beyond is answered 503 with
    Retry-After while the others still hold their places, and once they leave, requests are answered again."""
    from serve_apps.app import EncoreAPI

    from conftest import BODY_TIMEOUT_S

    bound = EncoreAPI.max_ongoing_requests + EncoreAPI.max_queued_requests
    head = (
        f"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {api.headers['x-api-key']}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"user_id": "'
    )
    stalled = [socket.create_connection(("127.0.0.1", api.base_url.port), timeout=60) for _ in range(bound + 3)]
    try:
        for connection in stalled:
            connection.sendall(head.encode())
        answered = []
        deadline = time.monotonic() + BODY_TIMEOUT_S / 2  # before any stalled body's deadline frees a place
        while len(answered) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([c for c in stalled if c not in answered], [], [], 0.5)
            answered += ready
        shed = [_answer(connection, json_body=False) for connection in answered]
        assert len(shed) == 3, "requests beyond the bound were not answered at once"
        assert all(status == 503 and headers["retry-after"] == "1" for status, headers, _ in shed), shed
    finally:
        for connection in stalled:
            connection.close()
    deadline = time.monotonic() + BODY_TIMEOUT_S
    while (answer := api.post("/v1/recommend", json={"user_id": "someone", "n": 2})).status_code == 503:
        assert time.monotonic() < deadline, "the places of requests that left were not freed"
        time.sleep(0.2)
    assert answer.status_code == 200


def test_api_keys_identify_clients_and_bound_what_they_may_do(api, api_keys):
    """No key or a wrong one: 401, even for a malformed body; a key without the scope, or selecting a model
    beyond the service's aliases: 403; past its rate: 429 with Retry-After; revoked: 401 within seconds."""
    from encore.serving.access import revoke_key

    def ask(key: str | None, body: dict | None = None, path: str = "/v1/recommend") -> httpx.Response:
        headers = {"X-API-Key": key} if key is not None else {}
        with httpx.Client(base_url=api.base_url, timeout=30, headers=headers) as client:
            return client.post(path, json=body if body is not None else {"user_id": "someone", "n": 2})

    for key, body in [(None, None), ("enc_not-a-key", None), (None, {"n": "many"})]:
        answer = ask(key, body)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized", answer.text
        assert answer.headers["www-authenticate"].startswith("Bearer")
    bearer = api.post("/v1/recommend", json={"user_id": "someone"}, headers={"X-API-Key": "", "Authorization":
                      f"Bearer {api_keys['listener-app']}"})  # fmt: skip
    assert bearer.status_code == 200
    assert ask(api_keys["listener-app"]).status_code == 200
    no_scope = ask(api_keys["audio-app"])
    assert no_scope.status_code == 403 and "recommend" in no_scope.json()["error"]["message"]
    assert ask(api_keys["audio-app"], {"bars": 1}, "/v1/compose").status_code == 403
    for model in ("popularity", "latest", "nope-secret-model"):  # a kind, another alias, a name made up
        refused = ask(api_keys["listener-app"], {"user_id": "someone", "model": model})
        assert refused.status_code == 403 and refused.json()["error"]["field"] == "model"
    assert ask(api_keys["listener-app"], {"user_id": "someone", "model": "production"}).status_code == 200
    assert ask(api_keys["suite"], {"user_id": "someone", "model": "popularity"}).status_code == 200  # admin

    statuses = [ask(api_keys["metered"]).status_code for _ in range(5)]  # 3 a minute
    assert statuses == [200, 200, 200, 429, 429]
    limited = ask(api_keys["metered"])
    assert limited.json()["error"]["code"] == "rate_limited" and 1 <= int(limited.headers["retry-after"]) <= 61
    assert ask(api_keys["listener-app"]).status_code == 200  # one client's limit is not another's

    assert ask(api_keys["revoked"]).status_code == 200
    revoke_key(Path(api_keys["file"]), "revoked")
    deadline = time.monotonic() + 30
    while ask(api_keys["revoked"]).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still answers"
        time.sleep(1)
    assert api.get("/healthz").status_code == 200 and httpx.get(f"{api.base_url}/healthz").status_code == 200


def test_tune_search_selects_on_validation_and_stores_the_best(pipeline_run):
    from ray import tune

    from encore.recsys.search import main
    from encore.store import ModelStore

    root = pipeline_run["root"]
    outcome = main(
        "popularity",
        [
            "--dataset",
            str(root / "dataset"),
            "--store",
            str(root / "tuned-store"),
        ],
    )
    # Read back what Tune saved: the results must be on disk, not only in memory.
    saved = tune.ExperimentAnalysis(outcome["results"])
    trials = {trial.config["by"]: trial.last_result for trial in saved.trials}
    assert set(trials) == {"users", "weight"}
    best_by = max(trials, key=lambda by: trials[by]["ndcg@10"])
    assert outcome["best_config"] == {"by": best_by}
    manifest = ModelStore(root / "tuned-store").show("tuned-popularity")
    assert manifest.version == outcome["version"]
    assert manifest.config["params"] == {"by": best_by}
    assert manifest.config["tuning"]["trials"] == 2
    assert manifest.metrics["validation"]["ndcg@10"] == pytest.approx(trials[best_by]["ndcg@10"])


def test_evaluation_compares_fitted_and_stored_models(pipeline_run):
    from encore.core.reports import report
    from encore.recsys.evaluate import evaluate_all, markdown_table
    from encore.recsys.metrics import COLD_MAX_LISTENERS

    root = pipeline_run["root"]
    models = ["popularity", 'popularity:{"by": "weight"}']
    version = pipeline_run["result"]["version"]
    rows = evaluate_all(str(root / "dataset"), models, [version], str(root / "store"), COLD_MAX_LISTENERS)
    report(rows, markdown_table(rows), str(root / "report"))
    by_name = {row["model"]: row for row in rows}
    assert set(by_name) == {"popularity", 'popularity {"by": "weight"}', pipeline_run["result"]["version"]}
    # The stored version was fitted on the same data with the same settings as "popularity".
    assert by_name["popularity"]["ndcg@10"] == pytest.approx(by_name[pipeline_run["result"]["version"]]["ndcg@10"])
    low, high = by_name["popularity"]["ndcg@10_ci95"]
    assert low <= by_name["popularity"]["ndcg@10"] <= high
    assert [row["ndcg@10"] for row in rows] == sorted((row["ndcg@10"] for row in rows), reverse=True)
    saved = json.loads((root / "report" / "evaluation.json").read_text())
    assert len(saved) == 3 and "| popularity |" in (root / "report" / "evaluation.md").read_text()


def test_history_recommendations_for_a_new_listener(api, pipeline_run):
    history = ["track-0", "track-1"]
    body = api.post("/v1/recommend/history", json={"items": history, "n": 4}).json()
    assert len(body["items"]) == 4 and not {item["item_id"] for item in body["items"]} & set(history)
    unknown = api.post("/v1/recommend/history", json={"items": ["track-0", "no-such-track"], "n": 4})
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["code"] == "unknown_item" and error["field"] == "items"
    assert error["message"] == "unknown item ids, 1: 'no-such-track'"


def test_errors_summarise_and_carry_a_request_id(api):
    """A history of a thousand long unknown ids: the error counts them and shows a few, cut short."""
    history = [f"no-such-track-{i:04d}-" + "x" * 180 for i in range(1000)]
    answer = api.post("/v1/recommend/history", json={"items": history, "n": 4})
    error = answer.json()["error"]
    assert answer.status_code == 404 and error["field"] == "items" and "1000" in error["message"]
    assert len(answer.content) < 1000 and "no-such-track-0999" not in answer.text
    assert error["request_id"] and answer.headers["x-request-id"] == error["request_id"]
    wrong_method = api.put("/v1/recommend", json={})
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_a_500_carries_a_request_id_that_finds_its_traceback_in_the_log(api, pipeline_run, ray_local, tmp_path):
    """A version that loads but cannot answer (its item scores cut to one item) fails a known user's request."""
    import shutil

    from encore.store import ModelStore

    store = ModelStore(pipeline_run["root"] / "store")
    loaded = store.load("production")
    folder = tmp_path / "broken"
    shutil.copytree(loaded.path, folder, ignore=shutil.ignore_patterns("MANIFEST.json"))
    with np.load(folder / "state.npz") as state:
        arrays = dict(state)
    arrays["item_scores_"] = arrays["item_scores_"][:1]
    np.savez(folder / "state.npz", **arrays)
    manifest = loaded.manifest
    broken = store.save(folder, kind=manifest.kind, config=manifest.config, metrics={}, data_fingerprint="test",
                        preprocessing=manifest.preprocessing, aliases=[]).version  # fmt: skip
    user = f"{PLANTED_PREFIX}-0004"
    answer = api.post("/v1/recommend", json={"user_id": user, "n": 3, "model": broken})
    error = answer.json()["error"]
    assert answer.status_code == 500 and error["code"] == "internal_error" and error["request_id"]
    assert str(pipeline_run["root"]) not in answer.text and "Traceback" not in answer.text
    session_logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    deadline = time.monotonic() + 30
    while not any(
        error["request_id"] in text and "Traceback" in text
        for text in (p.read_text(errors="replace") for p in session_logs.rglob("*") if p.is_file())
    ):
        assert time.monotonic() < deadline, "the request id of the 500 is in no log with a traceback"
        time.sleep(1)


def test_verbs_a_model_cannot_do_say_so(api):
    similar = api.get("/v1/items/track-0/similar", params={"n": 3})
    assert similar.status_code == 400
    assert similar.json()["error"]["code"] == "not_supported" and "similarity" in similar.json()["error"]["message"]
    user = f"{PLANTED_PREFIX}-0003"
    explained = api.post("/v1/recommend", json={"user_id": user, "n": 3, "explain": True})
    assert explained.status_code == 400 and explained.json()["error"]["field"] == "explain"
    assert api.get("/v1/items/no-such-track/similar").json()["error"]["code"] == "unknown_item"
    assert api.get("/v1/items/track-0/similar", params={"n": 0}).json()["error"]["field"] == "n"


def test_a_batch_answers_each_user_in_order_with_its_own_error(api, pipeline_run):
    from encore.serving.api import BatchResponse

    raws = list(pipeline_run["histories"])[:3]
    users = [raws[0], 42, "", "nobody-we-know", raws[1], "x" * 300, raws[2], None]
    answer = api.post("/v1/recommend/batch", json={"users": users, "n": 4})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert BatchResponse.model_validate(answer.json()).model_dump(mode="json") == answer.json()  # the documented shape
    assert len(results) == len(users)
    for position in (1, 2, 5, 7):
        assert results[position]["items"] is None
        assert results[position]["error"]["code"] == "invalid_user_id"
        assert results[position]["error"]["field"] == f"users[{position}]"
    for position, raw in ((0, raws[0]), (4, raws[1]), (6, raws[2])):
        alone = api.post("/v1/recommend", json={"user_id": raw, "n": 4}).json()
        assert results[position]["items"] == alone["items"] and results[position]["error"] is None
        assert results[position]["model"] == alone["model"] and results[position]["arm"] == "production"
    assert results[3]["fallback"] == "popular" and len(results[3]["items"]) == 4
    assert not any(raw in answer.text for raw in raws)  # results are by position: no id is echoed


def test_a_batch_is_bounded_and_a_model_it_names_must_exist(api):
    too_many = api.post("/v1/recommend/batch", json={"users": ["u"] * 1001})
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "users"
    missing = api.post("/v1/recommend/batch", json={"users": ["u"], "model": "no-such-model"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"
    named = api.post("/v1/recommend/batch", json={"users": ["u", "v"], "model": "popularity"}).json()
    assert [result["arm"] for result in named["results"]] == [None, None]


def test_requests_choose_the_model_by_alias_version_or_kind(api, pipeline_run):
    version = pipeline_run["result"]["version"]
    for ref in (version, "latest", "popularity"):
        body = api.post("/v1/recommend", json={"user_id": "x", "n": 1, "model": ref}).json()
        assert body["model"]["kind"] == "popularity", body
    assert api.post("/v1/recommend", json={"user_id": "x", "model": version}).json()["model"]["version"] == version
    missing = api.post("/v1/recommend", json={"user_id": "x", "model": "als"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"


def test_a_model_that_explains_answers_because_and_similar_items(api, pipeline_run):
    from encore.recsys.train import train

    root = pipeline_run["root"]
    params = {"factors": 8, "iterations": 5, "regularization": 0.1}
    version = train(str(root / "dataset"), "als", params, str(root / "store"), ["latest"])
    user = f"{PLANTED_PREFIX}-0004"
    request = {"user_id": user, "n": 3, "model": "als", "explain": True}
    deadline = time.monotonic() + 30  # a name the store lacked at the last poll is looked up at the next one
    while (answer := api.post("/v1/recommend", json=request)).status_code == 404:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.5)
    body = answer.json()
    assert body["model"] == {"kind": "als", "version": version} and body["fallback"] is None, body
    history_names = {f"track-{i}" for i in range(N_ITEMS)}  # names default to the item ids here
    assert all(item["because"] and set(item["because"]) <= history_names for item in body["items"])
    similar = api.get("/v1/items/track-0/similar", params={"n": 3, "model": version}).json()
    assert len(similar["items"]) == 3 and "track-0" not in {item["item_id"] for item in similar["items"]}
    history = api.post("/v1/recommend/history", json={"items": ["track-0", "track-5"], "n": 3, "model": "als"})
    assert history.status_code == 200 and history.json()["model"]["version"] == version


def test_als_search_reports_every_sweep_and_asha_stops_early(pipeline_run):
    from ray import tune

    from encore.recsys.search import main
    from encore.recsys.spaces import ALS_ITERATIONS
    from encore.store import ModelStore

    root = pipeline_run["root"]
    fixed = '{"factors": 8, "log_scaling": true}'
    arguments = ["--dataset", str(root / "dataset"), "--store", str(root / "als-search"), "--num-samples", "6"]
    outcome = main("als", [*arguments, "--fixed", fixed])
    trials = tune.ExperimentAnalysis(outcome["results"]).trials
    iterations = sorted(trial.last_result["iterations"] for trial in trials)
    assert len(trials) == 6 and iterations[-1] == ALS_ITERATIONS
    assert iterations[0] < ALS_ITERATIONS, "ASHA stopped no trial early"
    assert all((trial.config["factors"], trial.config["log_scaling"]) == (8, True) for trial in trials)
    assert len({trial.config["regularization"] for trial in trials}) == 6
    stored = ModelStore(root / "als-search").show("tuned-als").config["params"]
    assert (stored["factors"], stored["log_scaling"]) == (8, True)


def _publish_tiny_composer(store_uri: str) -> str:
    """A composer trained in seconds on two Bach chorales of the music21 corpus, as composer-production."""
    import tempfile

    import torch

    from encore.composer import Composer, ComposerConfig, TrainConfig, fit
    from encore.composer.compose import ComposerBundle
    from encore.composer.corpus import TERMS, parse_corpus_file
    from encore.composer.tokens import conditioning_tokens
    from encore.store import ModelStore

    pieces = [parse_corpus_file(f"music21:bach/{name}.mxl", 0.5)[0] for name in ("bwv66.6", "bwv269")]
    steps = [piece.steps[:48] for piece in pieces]
    conditions = [conditioning_tokens(0, piece.key, 100.0, piece.meter) for piece in pieces]
    torch.manual_seed(0)
    model = Composer(ComposerConfig(n_layer=1, n_head=2, d_model=32, d_ff=64, dropout=0.0, max_steps=64, max_notes=4))
    state = fit(model, steps, steps, TrainConfig(epochs=6, batch_size=2, lr=1e-2, warmup_steps=2),
                train_conditions=conditions, valid_conditions=conditions)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        ComposerBundle(model, ["bach"], "bach", 0.5, conditioned=True).save(folder)
        manifest = ModelStore(store_uri).save(
            folder, kind="composer", config={"pieces": 2, "styles": ["bach"], "terms": TERMS},
            metrics={"valid_nll_per_step": state["best"]["valid_nll_per_step"]},
            data_fingerprint="test", preprocessing={}, aliases=["composer-production"],
        )  # fmt: skip
    return manifest.version


def test_compose_answers_midi_and_audio_over_http(api, pipeline_run):
    import base64
    import io

    import soundfile

    from encore.composer.midi import RELEASE_SECONDS, midi_bytes, read_midi, steps_to_midi

    # Before any composer is published, the composer's alias has nothing to answer with.
    unavailable = api.post("/v1/compose", json={})
    assert unavailable.status_code == 503 and unavailable.json()["error"]["code"] == "model_unavailable"

    version = _publish_tiny_composer(str(pipeline_run["root"] / "store"))
    primer = [[57, 64, 69, 73], [57, 64, 69, 73], [59, 62, 68, 74], [54, 61, 69, 73]]
    request = {
        "style": "bach", "key": "A major", "tempo": 90, "meter": "3/4", "bars": 4, "temperature": 0.9,
        "top_k": 20, "top_p": 0.95, "seed": 11, "constrain_to_key": True, "audio": True,
        "primer_midi": base64.b64encode(midi_bytes(steps_to_midi(primer, 90, 0.5))).decode(),
    }  # fmt: skip
    deadline = time.monotonic() + 30
    while (answer := api.post("/v1/compose", json=request)).status_code == 503:
        assert time.monotonic() < deadline, "the Composer replica did not pick up composer-production"
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == {"kind": "composer", "version": version}
    settings = body["settings"]
    assert settings["steps"] == 24 and settings["primer_steps"] == 4 and settings["seed"] == 11
    assert settings["key"] == "A major" and settings["top_k"] == 20 and settings["step_beats"] == 0.5
    steps = read_midi(base64.b64decode(body["midi"]), 0.5).steps
    assert steps[:4] == primer and len(steps) <= 28
    assert {pitch % 12 for step in steps[4:] for pitch in step} <= {9, 11, 1, 2, 4, 6, 8}  # A major only
    audio, rate = soundfile.read(io.BytesIO(base64.b64decode(body["wav"])))
    assert len(audio) / rate == pytest.approx(len(steps) * 0.5 * 60 / 90 + RELEASE_SECONDS, abs=0.01)
    assert np.abs(audio).max() > 0.1 and body["renderer"]
    again = api.post("/v1/compose", json={**request, "audio": False}).json()
    assert again["midi"] == body["midi"] and again["wav"] is None  # same seed, same music

    refused = api.post("/v1/compose", json={"style": "grunge"})
    assert refused.status_code == 422
    assert refused.json()["error"] == {
        "code": "unknown_style", "message": "unknown style 'grunge'; this model knows: bach", "field": "style",
        "request_id": refused.headers["x-request-id"],
    }  # fmt: skip
    for bad, field in [({"bars": 0}, "bars"), ({"bars": 10_000}, "bars"), ({"temperature": 0}, "temperature"),
                       ({"top_p": 1.5}, "top_p"), ({"key": "H major"}, "key"), ({"tempo": 1000}, "tempo"),
                       ({"meter": "4/5"}, "meter"), ({"bars": 40}, "bars"), ({"primer_midi": "%%%"}, "primer_midi"),
                       ({"program": 128}, "program"),
                       ({"primer_midi": base64.b64encode(b"MThd junk").decode()}, "primer_midi")]:  # fmt: skip
        answer = api.post("/v1/compose", json=bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["error"]["field"] == field, (bad, answer.text)


def test_a_primer_that_would_cost_too_much_to_read_is_refused(api):
    """9,000 notes held 5,000 beats: 54 kB of MIDI that took 8.8 s to read, refused from a scan of its
    messages (a composer was published by the compose test above)."""
    import base64

    from test_composer_io import stacked_notes

    primer_midi = base64.b64encode(stacked_notes(9_000, 5_000)).decode()
    deadline = time.monotonic() + 30
    while (answer := api.post("/v1/compose", json={"primer_midi": primer_midi})).status_code == 503:
        assert time.monotonic() < deadline, answer.text  # until the replica finds its alias
        time.sleep(0.5)
    error = answer.json()["error"]
    assert (answer.status_code, error["code"], error["field"]) == (413, "too_large", "primer_midi"), answer.text


def test_an_erased_listener_is_answered_as_an_unknown_user(api, pipeline_run, tmp_path):
    """After every test that reads the planted listeners: the erasure republishes the aliased versions."""
    from encore.privacy.erasure import erase
    from encore.privacy.ids import pseudonymize

    from conftest import TEST_ID_KEY

    raw = f"{PLANTED_PREFIX}-0007"
    before = api.post("/v1/recommend", json={"user_id": raw, "n": 5}).json()
    assert before["fallback"] is None
    served = before["model"]["version"]
    report = erase(pseudonymize(raw, TEST_ID_KEY.encode()), str(pipeline_run["root"] / "store"),
                   report_uri=str(tmp_path / "erasure.json"))  # fmt: skip
    (new,) = [entry["new"] for entry in report["versions"]["republished"] if entry["old"] == served]
    deadline = time.monotonic() + 30
    while (body := api.post("/v1/recommend", json={"user_id": raw, "n": 5}).json())["model"]["version"] != new:
        assert time.monotonic() < deadline, f"the Serve app did not move to the republished version: {body}"
        time.sleep(0.5)
    assert body == api.post("/v1/recommend", json={"user_id": "a-listener-never-seen", "n": 5}).json()
    assert body["fallback"] == "popular"
    top = api.post("/v1/users/top", json={"user_id": raw})
    assert top.status_code == 404 and top.json()["error"]["code"] == "unknown_user"
    erased = api.post("/v1/recommend", json={"user_id": raw, "model": served})
    assert erased.status_code == 404 and erased.json()["error"]["code"] == "unknown_model"


def _scrape(port: int) -> tuple[str, list]:
    """Ray's Prometheus endpoint on this node: its text, and its samples."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return text, [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def test_request_and_model_metrics_reach_rays_prometheus_endpoint(api, pipeline_run, ray_local):
    """The ingress's request metrics and the recommender's model metrics, as Prometheus scrapes them from Ray
    (encore.serving.telemetry; the names are the ones infra/grafana/encore-dashboard.json queries). Ray exports
    what its processes recorded every few seconds (RAY_metrics_report_interval_ms, 10 s by default): the
    endpoint is polled until everything is there, for two minutes at most."""
    raw = f"{PLANTED_PREFIX}-0011"
    answer = api.post("/v1/recommend", json={"user_id": raw, "n": 3})
    assert answer.status_code == 200
    version = answer.json()["model"]["version"]
    assert api.post("/v1/recommend", json={"user_id": raw, "n": 0}).status_code == 422
    not_supported = api.get("/v1/items/track-1/similar", params={"model": "popularity"})  # cannot do similarity
    assert not_supported.status_code == 400 and not_supported.json()["error"]["code"] == "not_supported"
    assert api.get(f"/v1/no-such-route/{raw}").status_code == 404
    wanted = {  # (name, labels it must carry): each must count at least one
        ("ray_encore_requests_total", ("endpoint", "/v1/recommend"), ("status", "200"), ("model_version", version)),
        ("ray_encore_requests_total", ("endpoint", "/v1/recommend"), ("status", "422"), ("model_version", "none")),
        ("ray_encore_request_seconds_count", ("endpoint", "/v1/recommend"), ("model_version", version)),
        ("ray_encore_errors_total", ("endpoint", "/v1/recommend"), ("code", "invalid_request")),
        ("ray_encore_errors_total", ("endpoint", "/v1/items/{item_id}/similar"), ("code", "not_supported")),
        ("ray_encore_errors_total", ("endpoint", "unmatched"), ("code", "not_found")),
        ("ray_encore_model_cache_total", ("family", "recommender"), ("result", "miss")),
        ("ray_encore_model_load_seconds_count", ("family", "recommender"), ("kind", "popularity")),
    }
    port = ray_local._private.worker.global_worker.node.metrics_export_port
    deadline = time.monotonic() + 120
    while True:
        text, samples = _scrape(port)
        missing = {
            want
            for want in wanted
            if not any(s.name == want[0] and set(want[1:]) <= set(s.labels.items()) and s.value >= 1 for s in samples)
        }
        if not missing:
            break
        assert time.monotonic() < deadline, f"not exported within 2 minutes: {sorted(missing)}"
        time.sleep(2)
    ours = [s for s in samples if s.name.startswith("ray_encore_")]
    latencies = [
        s for s in ours if s.name == "ray_encore_request_seconds_bucket" and s.labels["endpoint"] == "/v1/recommend"
    ]
    assert {s.labels["le"] for s in latencies} >= {"0.05", "1.0", "+Inf"}
    endpoints = {s.labels["endpoint"] for s in ours if "endpoint" in s.labels}
    assert all(e == "unmatched" or e.startswith("/") and "track-1" not in e for e in endpoints), endpoints
    assert PLANTED_PREFIX not in text


# Last in the module: it checks every file and log line the tests above produced.
def _strings_in_parquet(path: Path) -> str:
    return json.dumps(pq.read_table(path).to_pylist(), default=str)


def test_a_traffic_split_answers_each_user_from_one_arm_and_names_it(api, pipeline_run, api_keys):
    from ray import serve

    from encore.recsys.train import train
    from encore.serving.config import ServeAppArgs
    from encore.store import ModelStore
    from serve_apps.app import app_builder

    root = pipeline_run["root"]
    store = str(root / "store")
    production = ModelStore(store).resolve("production")  # earlier tests moved it
    treatment = train(str(root / "dataset"), "popularity", {"by": "weight"}, store, ["treatment"], reuse=True)
    args = {"store_uri": store, "poll_seconds": 1, "api_keys_file": api_keys["file"]}
    # Redeployed for good: the tests after this one hold for any split (the module's last deployment).
    serve.run(app_builder(ServeAppArgs(**args, traffic_split={"production": 3, "treatment": 1})), name="encore")
    arms = [(arm["alias"], arm["weight"], arm["version"]) for arm in api.get("/healthz").json()["arms"]]
    assert arms == [("production", 3, production), ("treatment", 1, treatment)]
    users, arm_of = [f"listener-{i}" for i in range(200)], {}
    for user in users:
        body = api.post("/v1/recommend", json={"user_id": user, "n": 3}).json()
        assert body["model"]["version"] == {"production": production, "treatment": treatment}[body["arm"]]
        arm_of[user] = body["arm"]
    assert 0.15 < sum(arm == "treatment" for arm in arm_of.values()) / len(users) < 0.35
    batch = api.post("/v1/recommend/batch", json={"users": users, "n": 3}).json()["results"]
    assert [result["arm"] for result in batch] == [arm_of[user] for user in users]  # a user keeps their arm
    named = api.post("/v1/recommend", json={"user_id": users[0], "n": 3, "model": "treatment"}).json()
    assert named["arm"] is None and named["model"]["version"] == treatment


def test_no_raw_user_id_in_any_artifact_or_log(pipeline_run, api, ray_local):
    # The requests above sent raw planted ids through the API; now look everywhere for them.
    api.post("/v1/recommend", json={"user_id": f"{PLANTED_PREFIX}-0001", "n": 2})
    api.post("/v1/recommend", json={"user_id": f"{PLANTED_PREFIX}-0002", "n": -1})
    written = [p for p in pipeline_run["root"].rglob("*") if p.is_file() and p.name != "plays.csv"]
    session_logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    logs = [p for p in session_logs.rglob("*") if p.is_file()]
    assert len(written) > 10 and len(logs) > 10
    for path in written + logs:
        content = path.read_bytes().decode("utf-8", errors="replace")
        if path.suffix == ".parquet":
            content += _strings_in_parquet(path)
        assert PLANTED_PREFIX not in content, f"raw user id found in {path}"
    assert not any(PLANTED_PREFIX in line for line in pipeline_run["log"])
