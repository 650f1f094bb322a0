"""The genre classifier: data and split, the model, its metrics, the training, tuning and classify jobs."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encore.audio.schema import GTZAN_FEATURES
from encore.audio.vectors import FeatureScaler
from encore.genre.classifier import GenreClassifier, evaluate
from encore.genre.data import SPLIT_FILE, SPLITS, data_dir, load_splits, load_table, preprocessing, split_table

# The extraction workers and the Serve replicas keep librosa's numba cache here (see test_audio_features).
_NUMBA_CACHE = tempfile.TemporaryDirectory(prefix="encore-test-numba-")
os.environ.setdefault("NUMBA_CACHE_DIR", _NUMBA_CACHE.name)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "audio-samples"
SMALL = {"members": 2, "epochs": 20}  # a few seconds to fit, still far above chance


@pytest.fixture(scope="module")
def parts() -> dict[str, pd.DataFrame]:
    return split_table(load_table(), load_splits())


def test_bundled_files_are_the_published_ones():
    for line in (data_dir() / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((data_dir() / name).read_bytes()).hexdigest() == digest, name


def test_an_installed_package_finds_the_data_by_its_variable_or_says_how(tmp_path):
    """As in a non-editable install (the Docker image): the package without the repository around it."""
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "src" / "encore", site / "encore", ignore=shutil.ignore_patterns("__pycache__"))
    script = "from encore.genre.data import load_splits as s, load_table as t; print(len(t()), len(s()['test']))"

    def run(**variables):
        environment = {key: value for key, value in os.environ.items() if key != "ENCORE_GTZAN_DIR"}
        environment.update(PYTHONPATH=str(site), **variables)
        return subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True
        )

    found = run(ENCORE_GTZAN_DIR=str(data_dir()))
    assert found.returncode == 0 and found.stdout.split() == ["1000", "290"], found.stderr
    missing = run()
    assert missing.returncode != 0 and "set ENCORE_GTZAN_DIR" in missing.stderr
    wrong = run(ENCORE_GTZAN_DIR=str(tmp_path))
    assert wrong.returncode != 0 and f"ENCORE_GTZAN_DIR={tmp_path}: no features_30_sec.csv" in wrong.stderr


def test_split_is_disjoint_and_identical_audio_never_straddles_it(parts):
    """Artist-disjointness is a property of the published lists (checked by their checksums above);
    here: no file in two parts, and no two files of the split with identical features (GTZAN's
    exact repetitions, one of them across genres), so the same recording cannot sit in train and test."""
    assert {part: len(frame) for part, frame in parts.items()} == {"train": 443, "valid": 197, "test": 290}
    names = [set(frame["filename"]) for frame in parts.values()]
    assert all(not (a & b) for i, a in enumerate(names) for b in names[i + 1 :])
    used = pd.concat(parts.values())
    assert not used.duplicated(subset=list(GTZAN_FEATURES)).any()
    # ...while the whole table does hold such repetitions, which random folds put on both sides.
    table = load_table()
    assert table.duplicated(subset=list(GTZAN_FEATURES)).sum() == 14
    assert set(used["label"]) == set(table["label"]) and len(set(table["label"])) == 10


def test_bad_split_and_table_files_are_named(tmp_path):
    (tmp_path / "splits").mkdir()
    for part in SPLITS:
        (tmp_path / SPLIT_FILE.format(part)).write_text("blues/blues.00001.wav\n")
    with pytest.raises(ValueError, match=r"valid\.txt, line 1: blues\.00001\.wav is also in the train split"):
        load_splits(tmp_path)
    (tmp_path / SPLIT_FILE.format("test")).write_text("blues.00002.wav\n")
    (tmp_path / SPLIT_FILE.format("valid")).write_text("")
    with pytest.raises(ValueError, match=r"test\.txt, line 1: expected 'genre/genre\.NNNNN\.wav'"):
        load_splits(tmp_path)

    table = load_table()
    with pytest.raises(ValueError, match="the train split names 1 file"):
        split_table(table, {"train": ["jazz.99999.wav"]})
    broken = table.copy()
    broken.loc[7, "mfcc3_var"] = np.nan
    broken.to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(ValueError, match=r"broken\.csv: row 7 has nan in mfcc3_var"):
        load_table(tmp_path / "broken.csv")


def test_metrics_known_answers():
    classes = ["a", "b", "c"]
    labels = ["a", "a", "b", "b", "c"]
    probabilities = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0, 1, 0], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    metrics = evaluate(labels, probabilities, classes, bootstrap=200)
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["per_genre"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert metrics["per_genre"]["b"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_genre"]["b"]["f1"] == pytest.approx(0.8)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1.0) / 3)
    assert metrics["confusion"] == {"labels": classes, "matrix": [[1, 1, 0], [0, 2, 0], [0, 0, 1]]}
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 1.0, 0.8, 0.8])))
    low, high = metrics["accuracy_ci"]
    assert 0 <= low <= 0.8 <= high <= 1

    perfect = evaluate(labels, np.eye(3)[[0, 0, 1, 1, 2]], classes)
    assert perfect["accuracy_ci"] == perfect["macro_f1_ci"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="labels the model does not know: \\['d'\\]"):
        evaluate(["d"], np.array([[1, 0, 0]]), classes)


def test_scaler_logs_positive_columns_and_clips_below_the_training_range():
    X = np.array([[1.0, -1.0, 5.0], [100.0, 1.0, 5.0]])
    scaler = FeatureScaler().fit(X)
    assert scaler.log_columns_.tolist() == [0, 2]
    assert scaler.transform(X)[:, 0].tolist() == [-1.0, 1.0]  # log 1 and log 100, standardised
    assert scaler.transform(X)[:, 2].tolist() == [0.0, 0.0]  # a constant column stays at zero
    below = scaler.transform(np.array([[0.0, 0.0, 5.0]]))
    assert np.isfinite(below).all() and below[0, 0] == -1.0


def test_fit_predict_save_load_round_trip(parts, tmp_path):
    train, valid = parts["train"], parts["valid"]
    model = GenreClassifier(**SMALL).fit(train, train["label"])
    probabilities = model.predict_proba(valid)
    assert probabilities.shape == (len(valid), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert np.mean(model.predict(valid) == valid["label"]) > 0.3  # chance is 0.1

    model.save(tmp_path / "model")
    again = GenreClassifier.load(tmp_path / "model")
    np.testing.assert_array_equal(again.predict_proba(valid), probabilities)
    assert again.get_params() == model.get_params()
    track = again.predict_track(valid.head(3))
    assert list(track) == model.classes_.tolist()
    assert track["blues"] == pytest.approx(probabilities[:3, 0].mean())

    # Same seed, same model: a search compares configurations, not luck.
    twin = GenreClassifier(**SMALL).fit(train, train["label"])
    np.testing.assert_array_equal(twin.predict_proba(valid), probabilities)
    with pytest.raises(ValueError, match="training features: missing feature column\\(s\\) tempo"):
        GenreClassifier(**SMALL).fit(train.drop(columns="tempo"), train["label"])


def test_windows_of_a_track():
    from encore.audio.features import DecodedAudio, analyse_windows

    rate = 22_050
    t = np.arange(int(2.5 * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    # Whole windows only: 2.5 s in windows of 1 s gives two...
    assert len(analyse_windows(DecodedAudio(tone, rate, rate, 1, 2.5), seconds=1.0).windows) == 2
    # ...and a track shorter than one window is one window, the whole track.
    short = analyse_windows(DecodedAudio(tone[: rate // 2], rate, rate, 1, 0.5), seconds=1.0)
    assert len(short.windows) == 1 and list(short.windows[0]) == list(GTZAN_FEATURES)
    # The key and pitch classes of a 440 Hz tone: A sounds loudest, in a key on A.
    assert short.pitch_classes.index(max(short.pitch_classes)) == 9 and short.key.startswith("A ")


def test_windows_are_whole_30_second_segments_or_the_whole_short_track():
    from encore.genre.classify import windows_of_tracks

    def rows(paths, value):
        return pd.DataFrame({"path": paths, **dict.fromkeys(GTZAN_FEATURES, value)})

    tracks = rows(["long.wav", "short.wav"], 1.0)
    # Segments of a file outside this input (an earlier run into the same folder) are left out.
    segments = rows(["long.wav", "long.wav", "elsewhere.wav"], 2.0).rename(columns={"path": "track_path"})
    windows = windows_of_tracks(tracks, segments)
    assert windows["path"].tolist() == ["long.wav", "long.wav", "short.wav"]
    assert windows["tempo"].tolist() == [2.0, 2.0, 1.0]


@pytest.fixture(scope="module")
def stored(ray_local, tmp_path_factory):
    """A small genre model trained as the job trains it, the sample folder classified, the tracks indexed."""
    from encore.genre.classify import classify
    from encore.genre.train import train_genre
    from encore.soundalike.build import index_tracks

    root = tmp_path_factory.mktemp("genre")
    store = root / "store"
    version = train_genre(str(store), {"members": 2, "epochs": 20}, ["genre-latest", "genre-production"])
    audio = root / "audio"
    audio.mkdir()
    for name in ("flute-A4.wav", "sax-phrase-short.wav", "sine-440.wav"):
        (audio / name).write_bytes((SAMPLES / name).read_bytes())
    whole = (SAMPLES / "sax-phrase-short.wav").read_bytes()
    (audio / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    (audio / "notes.mp3").write_bytes(b"these are not the sounds you are looking for\n" * 20)
    summary = classify(
        str(audio), str(root / "genres"), str(store), "genre-production",
        workers=1, numba_cache_dir=os.environ["NUMBA_CACHE_DIR"],
    )  # fmt: skip
    index_version = index_tracks(str(root / "genres" / "features"), str(store), ["soundalike-production"])
    return {"root": root, "store": store, "version": version, "classify": summary, "index": index_version}


def test_training_job_stores_an_evaluated_genre_model(stored):
    from encore.store import ModelStore

    store = ModelStore(stored["store"])
    manifest = store.show(stored["version"])
    assert manifest.kind == "genre"
    assert store.resolve("genre-production") == stored["version"]
    assert "latest" not in store.aliases()  # the recommenders' alias is left alone
    for split, size in (("validation", 197), ("test", 290)):
        metrics = manifest.metrics[split]
        assert metrics["n"] == size and metrics["accuracy"] > 0.3
        low, high = metrics["accuracy_ci"]
        assert low < metrics["accuracy"] < high
        assert sum(map(sum, metrics["confusion"]["matrix"])) == size
        assert set(metrics["per_genre"]) == set(metrics["confusion"]["labels"])
    assert manifest.config["params"]["members"] == 2
    assert manifest.preprocessing == preprocessing()
    assert {"config.json", "state.pt"} == set(manifest.files)


def test_search_selects_on_validation_and_stores_the_best(ray_local, tmp_path):
    from ray import tune

    from encore.genre.train import search_and_train
    from encore.store import ModelStore

    fixed = {"members": 1, "epochs": 20}
    outcome = search_and_train(str(tmp_path / "store"), "tuned-genre", num_samples=2, fixed=fixed)
    # Read back what Tune saved: the results must be on disk, not only in memory.
    trials = [trial.last_result for trial in tune.ExperimentAnalysis(outcome["results"]).trials]
    assert len(trials) == 2 and all(trial["config"]["members"] == 1 for trial in trials)
    best = min(trials, key=lambda trial: trial["log_loss"])
    assert outcome["best_config"] == best["config"]
    manifest = ModelStore(tmp_path / "store").show("tuned-genre")
    assert manifest.version == outcome["version"] and manifest.kind == "genre"
    assert manifest.config["params"] == {**GenreClassifier().get_params(), **best["config"]}
    assert manifest.config["tuning"]["trials"] == 2
    assert manifest.config["tuning"]["best_validation"]["log_loss"] == pytest.approx(best["log_loss"])
    assert manifest.metrics["validation"]["accuracy"] == pytest.approx(best["accuracy"])


def test_classify_job_predicts_every_good_file_and_reports_the_bad_ones(stored):
    summary, audio = stored["classify"], stored["root"] / "audio"
    assert (summary["files"], summary["classified"], summary["errors"]) == (5, 3, 2)
    predictions = pd.read_parquet(summary["predictions_uri"])
    assert predictions["path"].tolist() == [
        str(audio / n) for n in ("flute-A4.wav", "sax-phrase-short.wav", "sine-440.wav")
    ]
    probabilities = predictions.filter(like="prob_")
    assert probabilities.shape[1] == 10
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert (predictions["windows"] == 1).all()  # every sample is shorter than 30 s: one window, the whole track
    assert (predictions["top_genre"] == probabilities.idxmax(axis=1).str.removeprefix("prob_")).all()
    assert (predictions["model_version"] == stored["version"]).all()
    sha = hashlib.sha256((audio / "sine-440.wav").read_bytes()).hexdigest()
    assert predictions.set_index("path").loc[str(audio / "sine-440.wav"), "sha256"] == sha

    errors = pd.read_parquet(summary["errors_uri"]).set_index("path")["reason"]
    assert errors[str(audio / "truncated.wav")].startswith("truncated: ")
    assert errors[str(audio / "notes.mp3")].startswith("unsupported: ")


def test_ingested_audio_features_feed_the_content_recommender(stored, tmp_path):
    from encore.audio.schema import GTZAN_FEATURES
    from encore.recsys.ingest import audio_catalogue, ingest
    from encore.recsys.interactions import AUDIO_PREFIX, InteractionDataset, SplitConfig
    from encore.recsys.models import fit_model

    plays = "user,item,plays\nalice,flute-A4,5\nalice,x1,2\nbob,sine-440,3\nbob,x1,1\ncarol,flute-A4,2\n"
    (tmp_path / "plays.csv").write_text(plays)
    features = stored["root"] / "genres" / "features"
    ingest(str(tmp_path / "plays.csv"), str(tmp_path / "dataset"), SplitConfig(), str(features))
    dataset = InteractionDataset.load(tmp_path / "dataset")
    assert dataset.manifest["audio_features"]["tracks"] == 3
    items = dataset.items.set_index("item_id")
    audio = items[[f"{AUDIO_PREFIX}{name}" for name in GTZAN_FEATURES]]
    # The unplayed track joins the catalogue; the item without a file has no audio features.
    assert sorted(items.index) == ["flute-A4", "sax-phrase-short", "sine-440", "x1"]
    assert audio.drop(index="x1").notna().all().all() and audio.loc["x1"].isna().all()
    assert dataset.matrix("train", "validation", "test")[:, items.loc["sax-phrase-short", "item_idx"]].nnz == 0

    model = fit_model("content", {"features": "audio"}, dataset.matrix("train"), dataset.items)
    flute = items.loc["flute-A4", "item_idx"]
    ids, scores = model.similar_items(flute, n=3)
    vectors = audio.drop(index="x1").to_numpy()
    standard = (vectors - vectors.mean(axis=0)) / np.where(vectors.std(axis=0) > 0, vectors.std(axis=0), 1)
    unit = dict(zip(audio.drop(index="x1").index, standard / np.linalg.norm(standard, axis=1, keepdims=True)))
    expected = {name: float(unit["flute-A4"] @ unit[name]) for name in ("sax-phrase-short", "sine-440")}
    expected["x1"] = 0.0  # no audio, no likeness
    names = dataset.items.set_index("item_idx").loc[ids, "item_id"].tolist()
    assert names == sorted(expected, key=expected.get, reverse=True)
    np.testing.assert_allclose(scores, [expected[name] for name in names], atol=1e-6)

    # Two files with one name in different folders would be one item: refused, both named.
    table = pq.read_table(features / "tracks.parquet")
    twin = table.slice(0, 1).to_pandas().assign(path=lambda rows: "/elsewhere/" + rows["path"].str.rsplit("/").str[-1])
    (tmp_path / "twins").mkdir()
    pq.write_table(pa.concat_tables([table, pa.Table.from_pandas(twin, schema=table.schema)]),
                   tmp_path / "twins" / "tracks.parquet")  # fmt: skip
    with pytest.raises(ValueError, match=r"/elsewhere/.* would both be item"):
        audio_catalogue(str(tmp_path / "twins"))


def test_classify_refuses_a_model_of_another_kind(stored, tmp_path):
    from encore.genre.classify import classify
    from encore.store import ModelStore

    ModelStore(stored["store"]).set_alias("not-genre", stored["index"])
    with pytest.raises(ValueError, match="a soundalike model, not a genre model"):
        classify(str(SAMPLES), str(tmp_path), str(stored["store"]), "not-genre")


@pytest.fixture(scope="module")
def api(stored, api_keys):
    import httpx
    from ray import serve

    from encore.serving.config import ServeAppArgs
    from serve_apps.app import app_builder

    from conftest import free_port, shutdown_serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # 0.3 MB: the samples fit, a planted 400 kB upload does not.
    args = {"store_uri": str(stored["store"]), "poll_seconds": 1, "max_upload_mb": 0.3}
    args["api_keys_file"] = api_keys["file"]
    serve.run(app_builder(ServeAppArgs(**args)), name="encore")
    headers = {"X-API-Key": api_keys["suite"]}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers) as client:
        yield client
    shutdown_serve()


def upload(client, path: str, data: bytes, **params):
    return client.post(path, files={"file": ("upload.wav", data, "audio/wav")}, params=params)


def test_classify_endpoint_answers_genre_probabilities_of_the_whole_track(api, stored):
    response = upload(api, "/v1/classify", (SAMPLES / "flute-A4.wav").read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"kind": "genre", "version": stored["version"]}
    assert len(body["genres"]) == 10 and sum(body["genres"].values()) == pytest.approx(1, rel=1e-5)
    assert body["top_genre"] == max(body["genres"], key=body["genres"].get)
    assert body["windows"] == 1 and body["duration"] == pytest.approx(2.15, abs=0.01)
    # The batch job saw the same file the same way.
    predictions = pd.read_parquet(stored["classify"]["predictions_uri"]).set_index("path")
    row = predictions.loc[str(stored["root"] / "audio" / "flute-A4.wav")]
    assert body["genres"]["jazz"] == pytest.approx(row["prob_jazz"], rel=1e-4)


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"", 400, "empty_file"),
        (b"plain text, no audio here\n" * 10, 415, "not_audio"),
        ((SAMPLES / "sax-phrase-short.wav").read_bytes()[:60_000], 422, "invalid_audio"),
        (os.urandom(400_000), 413, "too_large"),
    ],
    ids=["empty", "not-audio", "truncated", "oversize"],
)
def test_bad_uploads_get_clear_errors(api, data, status, code):
    for path in ("/v1/classify", "/v1/similar"):
        response = upload(api, path, data)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert (error["code"], error["field"]) == (code, "file")
    if code == "invalid_audio":
        assert error["message"].startswith("the file is not usable audio: truncated: ")


def test_audio_that_would_cost_too_much_to_decode_is_refused_from_its_header(api):
    """Small files declaring two hours of stereo, or eight channels: refused before a sample is decoded."""
    from test_audio_features import declaring_frames, encoded, tone

    stereo = encoded(np.stack([tone(69, 1.0, sr=44_100)] * 2, axis=1), 44_100, "FLAC")
    eight = encoded(np.tile(tone(69, 0.5, sr=8_000)[:, None], 8), 8_000, "FLAC")
    for data, status, code in [(declaring_frames(stereo, 7_200 * 44_100), 413, "too_long"),
                               (eight, 422, "unsupported_audio")]:  # fmt: skip
        for path in ("/v1/classify", "/v1/similar"):
            response = upload(api, path, data)
            error = response.json()["error"]
            assert (response.status_code, error["code"], error["field"]) == (status, code, "file"), response.text


def test_uploads_must_be_multipart_with_a_file(api):
    response = api.post("/v1/classify", json={"file": "x"})
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    response = api.post("/v1/classify", files={"other": ("a.wav", b"RIFF")})
    assert response.status_code == 422 and response.json()["error"]["field"] == "file"
    response = upload(api, "/v1/classify", (SAMPLES / "sine-440.wav").read_bytes(), model="no-such-model")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_model"


def test_similar_tracks_by_id_and_by_upload(api, stored):
    from encore.soundalike.index import SoundalikeIndex
    from encore.store import ModelStore

    index = SoundalikeIndex.load(ModelStore(stored["store"]).load("soundalike-production").path)
    flute = index.tracks_.set_index("name").loc["flute-A4.wav", "track_id"]
    response = api.get(f"/v1/tracks/{flute}/similar", params={"n": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"kind": "soundalike", "version": stored["index"]}
    assert sorted(track["name"] for track in body["tracks"]) == ["sax-phrase-short.wav", "sine-440.wav"]
    assert body["tracks"][0]["distance"] <= body["tracks"][1]["distance"]

    response = upload(api, "/v1/similar", (SAMPLES / "flute-A4.wav").read_bytes(), n=1)
    assert response.status_code == 200, response.text
    nearest = response.json()["tracks"]
    assert [track["track_id"] for track in nearest] == [flute] and nearest[0]["distance"] < 1e-6

    response = api.get("/v1/tracks/0123456789abcdef/similar")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_track"
