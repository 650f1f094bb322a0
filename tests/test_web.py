"""The web page at ``/``, driven in a real browser (Debian's Chromium through Playwright) against a real
Serve application over a small store: an ALS recommender as ``production`` (it explains), a popularity
model beside it (it cannot), a genre model, a sound-alike index of the bundled audio samples and a tiny
composer. Each test asserts what a person would see, and leaves a screenshot in ``SCREENSHOTS``."""

import os
import re
import shutil
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO, free_port, shutdown_serve

# The extraction workers and the Serve replicas keep librosa's numba cache here (see test_audio_features).
_NUMBA_CACHE = tempfile.TemporaryDirectory(prefix="encore-test-numba-")
os.environ.setdefault("NUMBA_CACHE_DIR", _NUMBA_CACHE.name)

CHROMIUM = os.environ.get("ENCORE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("ENCORE_SCREENSHOTS", REPO / "artifacts" / "screenshots"))
SAMPLES = REPO / "data" / "audio-samples"
DASHBOARD_URL = "http://127.0.0.1:18265/"
ARTISTS = [f"artist-{i:02d}" for i in range(24)]
LISTENER = "listener-07"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM}: run scripts/install_chromium.sh"
)


def _plays_csv(path: Path) -> None:
    """Thirty listeners, each with a dozen artists: low-numbered artists are the popular ones."""
    rng = np.random.default_rng(17)
    weights = np.linspace(3, 1, len(ARTISTS))
    lines = ["user,item,plays"]
    for user in range(30):
        for artist in rng.choice(len(ARTISTS), size=12, replace=False, p=weights / weights.sum()):
            lines.append(f"listener-{user:02d},{ARTISTS[artist]},{rng.integers(1, 40)}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def store(ray_local, tmp_path_factory) -> Path:
    """Every family's model in one store, each under the alias the service serves it from."""
    from test_end_to_end import _publish_tiny_composer

    from encore.audio.extract import extract_features
    from encore.genre.train import train_genre
    from encore.recsys.ingest import ingest
    from encore.recsys.interactions import SplitConfig
    from encore.recsys.train import train
    from encore.soundalike.build import index_tracks

    root = tmp_path_factory.mktemp("web")
    store = root / "store"
    _plays_csv(root / "plays.csv")
    ingest(str(root / "plays.csv"), str(root / "dataset"), SplitConfig())
    train(str(root / "dataset"), "popularity", {}, str(store), ["popular"])
    train(str(root / "dataset"), "als", {"factors": 8, "iterations": 5, "regularization": 0.1}, str(store),
          ["production"])  # fmt: skip
    train_genre(str(store), {"members": 2, "epochs": 20}, ["genre-production"])
    audio = root / "audio"
    audio.mkdir()
    for name in ("flute-A4.wav", "sax-phrase-short.wav", "sine-440.wav"):
        shutil.copy(SAMPLES / name, audio / name)
    extract_features(str(audio), str(root / "features"), workers=1, numba_cache_dir=os.environ["NUMBA_CACHE_DIR"])
    index_tracks(str(root / "features"), str(store), ["soundalike-production"])
    _publish_tiny_composer(str(store))
    return store


@pytest.fixture(scope="module")
def service(store, api_keys):
    """The Serve application over ``store``: its base URL."""
    from ray import serve

    from encore.serving.config import ServeAppArgs
    from serve_apps.app import app_builder

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "store_uri": str(store),
        "poll_seconds": 1,
        "api_keys_file": api_keys["file"],
        "dashboard_url": DASHBOARD_URL,
    }
    serve.run(app_builder(ServeAppArgs(**args)), name="encore")
    yield f"http://127.0.0.1:{port}"
    shutdown_serve()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the web page: {SCREENSHOTS}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, service):
    """A fresh tab on the page, with no key yet; the browser's console errors fail the test."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # a composition or an upload's analysis takes seconds on a busy machine
    context = browser.new_context(base_url=service, viewport={"width": 1200, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    errors = []
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto("/")
    yield tab
    context.close()
    # A 4xx the page asked for on purpose shows in the console as a failed resource; nothing else may.
    assert [error for error in errors if "the server responded with a status of 4" not in error] == []


def _use_key(page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use this key").click()
    page.get_by_text("A key is in use in this tab.").wait_for()


def _tab_to(page, element_id: str, limit: int = 40) -> None:
    """Press Tab until ``element_id`` has the focus, and check that the focus can be seen there."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == element_id:
            outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", f"the focus on #{element_id} cannot be seen"
            return
    raise AssertionError(f"#{element_id} is not reached with Tab")


def _screenshot(page, name: str) -> None:
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def test_page_is_served_from_the_repository_with_a_strict_policy(service):
    answer = httpx.get(f"{service}/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert f'href="{DASHBOARD_URL}"' in answer.text and "127.0.0.1:8265" not in answer.text
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{service}/web/{asset}").content == (REPO / "serve_apps" / "web" / asset).read_bytes()


def test_new_endpoints_answer_the_users_top_items_and_the_catalogue(service, store, api_keys):
    from encore.privacy.ids import id_key, pseudonymize
    from encore.recsys.bundle import RecommenderBundle
    from encore.store import ModelStore

    headers = {"X-API-Key": api_keys["suite"]}
    top = httpx.post(f"{service}/v1/users/top", json={"user_id": LISTENER, "n": 3}, headers=headers).json()
    loaded = ModelStore(store).load("production")
    bundle = RecommenderBundle.load(loaded.path, loaded.manifest.kind)
    assert top["items"] == bundle.top_items(pseudonymize(LISTENER, id_key()), 3)["items"]
    plays = [item["plays"] for item in top["items"]]
    assert len(plays) == 3 and plays == sorted(plays, reverse=True)
    unknown = httpx.post(f"{service}/v1/users/top", json={"user_id": "nobody"}, headers=headers)
    assert unknown.status_code == 404 and unknown.json()["error"] == {
        **unknown.json()["error"], "code": "unknown_user", "field": "user_id"}  # fmt: skip
    assert "nobody" not in unknown.text

    catalogue = httpx.get(f"{service}/v1/models", headers=headers).json()
    aliases = {alias["alias"]: alias for alias in catalogue["aliases"]}
    assert {name: aliases[name]["family"] for name in ("production", "popular", "genre-production")} == {
        "production": "recommender", "popular": "recommender", "genre-production": "genre"}  # fmt: skip
    assert catalogue["versions_total"] == len(catalogue["versions"]) == 5
    als = next(version for version in catalogue["versions"] if version["kind"] == "als")
    assert als["aliases"] == ["production"] and 0 <= als["metrics"]["test.ndcg@10"] <= 1
    refused = httpx.get(f"{service}/v1/models", headers={"X-API-Key": api_keys["listener-app"]})
    assert refused.status_code == 403 and "catalogue" in refused.json()["error"]["message"]


def test_listen_with_the_keyboard_only(page, api_keys):
    """Key, user, reasons, a start from artists of one's own: every step by keyboard, each result as read."""
    from playwright.sync_api import expect

    _tab_to(page, "api-key")
    page.keyboard.type(api_keys["suite"])
    page.keyboard.press("Enter")
    expect(page.locator("#key-status")).to_contain_text("A key is in use in this tab.")
    expect(page.locator("#listen-model option[value=popular]")).to_have_count(1)  # the choices, from /v1/models

    _tab_to(page, "user-id")
    page.keyboard.type(LISTENER)
    page.keyboard.press("Enter")
    top = page.locator("#user-top li")
    expect(top).to_have_count(5)
    expect(top.first).to_contain_text("plays")
    recommended = page.locator("#recommendations li")
    expect(recommended).to_have_count(5)
    for line in recommended.all():
        expect(line).to_contain_text("score")
        expect(line).to_contain_text("because you listened to artist-")
    expect(page.locator("#listen-note")).to_contain_text("From als")

    _tab_to(page, "history-items")
    page.keyboard.type("artist-01, artist-02")
    page.keyboard.press("Enter")
    expect(page.locator("#history-results li")).to_have_count(5)
    _screenshot(page, "listen")

    page.locator("#history-items").fill("artist-01, no-such-artist")
    page.keyboard.press("Enter")
    expect(page.locator("#history-error")).to_contain_text("unknown item ids, 1: 'no-such-artist'")
    expect(page.locator("#history-error")).to_contain_text("The field at fault: “items”")


def test_listen_says_when_a_model_cannot_explain_and_when_it_does_not_know_the_user(page, api_keys):
    from playwright.sync_api import expect

    _use_key(page, api_keys["suite"])
    page.get_by_label("Model", exact=True).select_option("popular")
    page.get_by_label("User").fill(LISTENER)
    page.get_by_role("button", name="Recommend", exact=True).click()
    note = page.locator("#listen-note")
    expect(note).to_contain_text("This model cannot say why it recommends an item")
    expect(note).to_contain_text("popularity cannot explain its recommendations")
    expect(page.locator("#recommendations li")).to_have_count(5)
    expect(page.locator("#recommendations")).not_to_contain_text("because")
    _screenshot(page, "listen-popularity")

    page.get_by_label("User").fill("someone-new")
    page.get_by_role("button", name="Recommend", exact=True).click()
    expect(page.locator("#user-top")).to_contain_text("This model has no listening history for this user.")
    expect(note).to_contain_text("The model does not know this user: these are the most popular artists.")


def test_hear_shows_genres_key_tempo_pitch_classes_and_sound_alikes(page, api_keys, tmp_path):
    from playwright.sync_api import expect

    _use_key(page, api_keys["suite"])
    page.get_by_label("Audio file").set_input_files(SAMPLES / "flute-A4.wav")
    page.get_by_role("button", name="Analyse").click()
    expect(page.locator("#hear-summary")).to_contain_text(re.compile(r"^2\.\d s of audio, tempo \d+ BPM, key [A-G]"))
    expect(page.locator("#hear-summary")).to_contain_text("Most likely genre:")
    genres = page.locator("#genre-bars li")
    expect(genres).to_have_count(10)
    widths = [bar.bounding_box()["width"] for bar in page.locator("#genre-bars .bar").all()]
    assert widths[0] > 0 and widths == sorted(widths, reverse=True), widths
    expect(page.locator("#chroma-bars li")).to_have_count(12)
    chroma = dict(zip(page.locator("#chroma-bars .label").all_inner_texts(),
                      (bar.bounding_box()["width"] for bar in page.locator("#chroma-bars .bar").all())))  # fmt: skip
    assert max(chroma, key=chroma.get) == "A"  # a flute playing A4
    expect(page.locator("#similar-tracks li").first).to_contain_text("flute-A4.wav — distance 0.00")
    _screenshot(page, "hear")

    (tmp_path / "notes.wav").write_text("these are not the sounds you are looking for\n" * 20)
    page.get_by_label("Audio file").set_input_files(tmp_path / "notes.wav")
    page.get_by_role("button", name="Analyse").click()
    error = page.locator("#hear-error")
    expect(error).to_contain_text("The service could not answer: the file is not usable audio")
    expect(error).to_contain_text("The field at fault: “file”")


def test_compose_draws_plays_and_offers_the_music(page, api_keys, tmp_path):
    from playwright.sync_api import expect

    from encore.composer.midi import midi_bytes, steps_to_midi

    _use_key(page, api_keys["suite"])
    about = page.locator("#composer-about")
    expect(about).to_contain_text("learnt from 2 pieces in the styles bach")
    expect(about).to_contain_text("Terms of its data: music21 corpus")
    primer = [[57, 64, 69, 73], [57, 64, 69, 73], [59, 62, 68, 74], [54, 61, 69, 73]]
    (tmp_path / "primer.mid").write_bytes(midi_bytes(steps_to_midi(primer, 90, 0.5)))
    page.get_by_label("Key", exact=True).select_option("A major")
    page.get_by_label("Tempo").fill("90")
    page.get_by_label("Bars").fill("2")
    page.get_by_label("Temperature").fill("0.9")
    page.get_by_label("Continue from a MIDI file").set_input_files(tmp_path / "primer.mid")
    page.get_by_role("button", name="Compose").click()
    expect(page.locator("#compose-summary")).to_contain_text("2 bars in A major at 90 quarter notes a minute")
    roll = page.locator("#piano-roll svg")
    expect(roll).to_have_attribute("aria-label", re.compile(r"^Piano roll: \d+ notes over [\d.]+ beats"))
    assert roll.locator("rect.primer").count() >= 8  # the primer's chords (grey), then the new music
    assert roll.locator("rect.note").count() > 0 and roll.bounding_box()["height"] > 50
    expect(page.locator("#compose-audio")).to_have_attribute("src", re.compile("^blob:"))
    page.wait_for_function("document.getElementById('compose-audio').duration > 0")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the MIDI").click()
    assert Path(download.value.path()).read_bytes()[:4] == b"MThd"
    _screenshot(page, "compose")

    page.get_by_label("Style").fill("no-such-style")
    page.get_by_role("button", name="Compose").click()
    expect(page.locator("#compose-error")).to_contain_text("The field at fault: “style”")
    expect(page.locator("#compose-error")).to_contain_text("bach")


def test_operate_shows_each_alias_with_its_metrics_and_the_links(page, api_keys):
    from playwright.sync_api import expect

    _use_key(page, api_keys["suite"])
    page.get_by_role("button", name="Show the models").click()
    rows = page.locator("#alias-table tbody tr")
    expect(rows).to_have_count(5)
    production = rows.filter(has=page.get_by_role("rowheader", name="production", exact=True))
    expect(production).to_contain_text("als")
    expect(production).to_contain_text("test.ndcg@10: 0.")
    expect(rows.filter(has_text="genre-production")).to_contain_text("test.accuracy: 0.")
    expect(page.locator("#versions-summary")).to_contain_text("5 versions in the store")
    expect(page.get_by_role("link", name="Ray dashboard")).to_have_attribute("href", DASHBOARD_URL)
    docs = page.get_by_role("link", name="API documentation")
    assert httpx.get(page.url.rstrip("/") + docs.get_attribute("href")).status_code == 200
    _screenshot(page, "operate")

    _use_key(page, api_keys["listener-app"])
    page.get_by_role("button", name="Show the models").click()
    error = page.locator("#operate-error")
    expect(error).to_contain_text("The service could not answer: this key lacks the 'catalogue' scope.")
    expect(error).to_contain_text("This key is not allowed to do this")
