"""Audio features: known answers on synthetic and real clips, decode errors, crash isolation, and
the Ray Data extraction job (planted bad files, rerun, an injected worker crash, S3 input)."""

import io
import math
import os
import signal
import tempfile
import time
from pathlib import Path

# librosa's numba cache beside its sources is shared by every process of the environment, and two
# processes compiling into one cache at once left it crashing every later process (seen here): this
# session compiles into a folder of its own, which the job's workers reuse. Set before librosa loads.
_NUMBA_CACHE = tempfile.TemporaryDirectory(prefix="encore-test-numba-")
os.environ.setdefault("NUMBA_CACHE_DIR", _NUMBA_CACHE.name)

import boto3  # noqa: E402
import librosa  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

from encore.audio import (  # noqa: E402
    AudioDecodeError,
    extract,  # noqa: E402
    features,
)
from encore.audio.isolation import ChildCrashed, ChildRaised, ChildTimedOut, run_forked  # noqa: E402
from encore.audio.schema import GTZAN_FEATURES, SAMPLE_RATE  # noqa: E402
from encore.core import fs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "audio-samples"
GTZAN_30S = REPO.parent / "shared" / "data" / "gtzan-features" / "features_30_sec.csv"
SR = SAMPLE_RATE
C, A = 0, 9  # pitch classes


def tone(midi: int, seconds: float, amplitude: float = 0.3, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * 440 * 2 ** ((midi - 69) / 12) * t)).astype(np.float32)


def click_track(bpm: float, seconds: float) -> np.ndarray:
    y = np.zeros(int(seconds * SR), np.float32)
    click = np.random.default_rng(0).standard_normal(441) * np.exp(-np.arange(441) / 60) * 0.8
    for start in range(0, len(y) - len(click), int(60 / bpm * SR)):
        y[start : start + len(click)] += click
    return y


def encoded(y: np.ndarray, sr: int = SR, format: str = "WAV", **options) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, y, sr, format=format, **options)
    return buffer.getvalue()


def analyze(y: np.ndarray):
    return features.analyze(features.DecodedAudio(y, SR, SR, 1, len(y) / SR))


def test_schema_is_the_gtzan_header():
    if not GTZAN_30S.exists():
        pytest.skip(f"{GTZAN_30S} is not here")
    header = GTZAN_30S.read_text().split("\n", 1)[0].split(",")
    assert header[:2] == ["filename", "length"] and header[-1] == "label"
    assert list(GTZAN_FEATURES) == header[2:-1]


def test_sine_440_has_its_chroma_peak_at_a_and_its_centroid_near_440():
    analysis = analyze(tone(69, 4.0, 0.5))
    assert np.argmax(analysis.pitch_classes) == A
    assert analysis.features["spectral_centroid_mean"] == pytest.approx(440, rel=0.03)
    assert list(analysis.features) == list(GTZAN_FEATURES)
    assert analysis.length == 4 * SR and len(analysis.segments) == 1


def test_click_track_at_120_bpm():
    analysis = analyze(click_track(120, 10.0))
    # librosa's tempo lies on a lag grid (60 * 22050 / 512 / k): 117.5 and 123.0 are the two nearest 120.
    assert analysis.tempo == pytest.approx(120, abs=3.5)
    assert np.median(np.diff(analysis.beat_times)) == pytest.approx(0.5, abs=0.03)
    assert len(analysis.segments) == 3
    assert [segment["tempo"] for segment in analysis.segments] == pytest.approx([120] * 3, abs=3.5)


@pytest.mark.parametrize(
    ("notes", "chord", "key"),
    [
        ([60, 62, 64, 65, 67, 69, 71, 72], [60, 64, 67], "C major"),
        ([57, 59, 60, 62, 64, 65, 68, 69], [57, 60, 64], "A minor"),
    ],
)
def test_scale_and_chord_give_the_key(notes, chord, key):
    y = np.concatenate([tone(m, 0.4) for m in notes] + [sum(tone(m, 1.2) for m in chord)])
    name, confidence = features.estimate_key(librosa.feature.chroma_stft(y=y, sr=SR))
    assert name == key and confidence > 0.7
    assert analyze(y).key == key


def test_an_even_chromagram_has_no_key():
    name, confidence = features.estimate_key(np.ones((12, 10)))
    assert name == "" and math.isnan(confidence)


def test_features_equal_the_gtzan_recipe_of_separate_librosa_calls():
    """The shared STFT gives what one librosa call per feature gives (../shared/data/gtzan-features/SOURCE.md)."""
    y, sr = librosa.load(SAMPLES / "sax-phrase-short.wav")
    harmonic, percussive = librosa.effects.hpss(y)
    matrices = {
        "chroma_stft": librosa.feature.chroma_stft(y=y, sr=sr),
        "rms": librosa.feature.rms(y=y),
        "spectral_centroid": librosa.feature.spectral_centroid(y=y, sr=sr),
        "spectral_bandwidth": librosa.feature.spectral_bandwidth(y=y, sr=sr),
        "rolloff": librosa.feature.spectral_rolloff(y=y, sr=sr),
        "zero_crossing_rate": librosa.feature.zero_crossing_rate(y),
        "harmony": harmonic,
        "perceptr": percussive,
        **{f"mfcc{i}": row for i, row in enumerate(librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20), start=1)},
    }
    expected = {"tempo": float(librosa.beat.beat_track(y=y, sr=sr)[0][0])}
    for name, values in matrices.items():
        expected[f"{name}_mean"], expected[f"{name}_var"] = float(np.mean(values)), float(np.var(values))

    analysis = features.analyze_bytes((SAMPLES / "sax-phrase-short.wav").read_bytes())
    assert analysis.features == pytest.approx(expected, rel=1e-6)
    assert analysis.length == len(y) and analysis.sample_rate == 44_100


def test_real_clips():
    sine = features.analyze_bytes((SAMPLES / "sine-440.wav").read_bytes())
    assert (sine.duration, sine.sample_rate, sine.length) == (1.0, 44_100, SR)
    assert np.argmax(sine.pitch_classes) == A
    assert sine.features["spectral_centroid_mean"] == pytest.approx(440, rel=0.03)
    assert sine.segments == []  # shorter than one 3-s segment

    flute = features.analyze_bytes((SAMPLES / "flute-A4.wav").read_bytes())
    assert np.argmax(flute.pitch_classes) == A
    assert flute.duration == pytest.approx(2.15, abs=0.01)

    sax = features.analyze_bytes((SAMPLES / "sax-phrase-short.wav").read_bytes())
    assert len(sax.segments) == 1 and len(sax.beat_times) >= 2
    assert np.isfinite(list(sax.features.values())).all()
    assert sax.segments[0]["rms_mean"] > 0 and sax.segments[0]["spectral_centroid_mean"] > 200


LIBROSA_EXAMPLES = REPO.parent / "shared" / "data" / "librosa-example-audio"


@pytest.mark.skipif(not LIBROSA_EXAMPLES.is_dir(), reason="../shared/data/librosa-example-audio is not beside the repo")
def test_librosa_trumpet_loop_is_in_f_at_90_bpm():
    # Its attribution (attribution/sorohanro_-_solo-trumpet-06.txt) says: F, 90 bpm.
    trumpet = features.analyze_bytes((LIBROSA_EXAMPLES / "music" / "sorohanro_-_solo-trumpet-06.ogg").read_bytes())
    assert trumpet.key == "F major"
    # Beat trackers may lock onto twice or half the notated tempo (MIREX scores those as right too).
    assert min(abs(trumpet.features["tempo"] / (90 * factor) - 1) for factor in (0.5, 1, 2)) < 0.05


@pytest.mark.parametrize("format", ["FLAC", "OGG", "MP3", "AU"])
def test_every_listed_format_decodes(format):
    audio = features.decode(encoded(tone(69, 1.5, 0.5, 44_100), 44_100, format))
    assert audio.sample_rate == SR and audio.native_sample_rate == 44_100
    assert audio.duration == pytest.approx(1.5, abs=0.06)  # MP3 frames pad a little
    assert np.argmax(librosa.feature.chroma_stft(y=audio.samples, sr=SR).mean(axis=1)) == A


def test_stereo_is_averaged_to_mono():
    left = tone(69, 1.0, 0.5)
    audio = features.decode(encoded(np.stack([left, np.zeros_like(left)], axis=1)))
    assert audio.channels == 2
    assert np.abs(audio.samples).max() == pytest.approx(0.25, abs=0.01)


GOOD_WAV = encoded(tone(69, 1.0))
BAD_FILES = {
    "empty": (b"", "empty"),
    "truncated": (GOOD_WAV[: len(GOOD_WAV) // 3], "truncated"),
    "header only": (GOOD_WAV[:44], "truncated"),
    "random bytes": (np.random.default_rng(0).bytes(6000), "unsupported"),
    "text": (b"not audio at all\n" * 50, "unsupported"),
    "cut flac": (encoded(tone(69, 2.0), format="FLAC")[:4000], "corrupt"),
    "cut ogg": (encoded(tone(69, 2.0), format="OGG")[:3000], "corrupt"),
    "silent": (encoded(np.zeros(SR, np.float32)), "silent"),
    "dither only": (encoded(np.full(SR, 3e-5, np.float32), subtype="FLOAT"), "silent"),
    "too short": (encoded(tone(69, 0.2)), "too_short"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_unusable_audio_raises_with_its_reason(name):
    data, reason = BAD_FILES[name]
    with pytest.raises(AudioDecodeError) as error:
        features.decode(data)
    assert error.value.reason == reason and str(error.value).startswith(f"{reason}: ")


def declaring_frames(flac: bytes, frames: int) -> bytes:
    """A FLAC whose STREAMINFO declares ``frames`` frames: its last 36 bits before the MD5, after the block header."""
    fields = int.from_bytes(flac[18:26], "big")
    return flac[:18] + ((fields >> 36 << 36) | frames).to_bytes(8, "big") + flac[26:]


def fail_if_decoded(monkeypatch):
    monkeypatch.setattr(features, "read_mono", lambda *args: pytest.fail("decoded before the header's limits"))


def long_silence(seconds: float, sr: int) -> bytes:
    """``seconds`` of near silence at ``sr``, written by blocks: FLAC keeps a long track small."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", sr, 1, format="FLAC") as out:
        for _ in range(int(seconds // 10)):
            out.write(np.full(10 * sr, 0.01, np.float32))
    return buffer.getvalue()


def upload_error(data: bytes, **options):
    from encore.serving.uploads import UploadError, decode_upload

    with pytest.raises(UploadError) as refused:
        decode_upload(data, **options)
    return refused.value


def test_upload_declaring_two_hours_of_eight_channels_at_96_khz_is_refused_from_its_header(monkeypatch):
    from encore.serving.uploads import MAX_TRACK_SECONDS

    eight = encoded(np.tile(tone(69, 1.0, sr=96_000)[:, None], 8), 96_000, "FLAC")
    fail_if_decoded(monkeypatch)
    refused = upload_error(declaring_frames(eight, 7_200 * 96_000))
    assert (refused.status, refused.code, refused.field) == (422, "unsupported_audio", "file")
    assert "8 channels; at most 2 are decoded" in refused.message
    high_rate = encoded(tone(69, 1.0, sr=192_000), 192_000, "FLAC")
    refused = upload_error(high_rate)
    assert refused.code == "unsupported_audio" and "192,000 Hz; at most 96,000 Hz is decoded" in refused.message
    stereo = encoded(np.stack([tone(69, 1.0, sr=44_100)] * 2, axis=1), 44_100, "FLAC")
    refused = upload_error(declaring_frames(stereo, 7_200 * 44_100))
    assert (refused.status, refused.code, refused.field) == (413, "too_long", "file")
    assert f"7200 s of audio, at most {MAX_TRACK_SECONDS:.0f} s are analysed" in refused.message


def test_upload_over_the_duration_is_refused_before_decoding(monkeypatch):
    data = long_silence(610, 8_000)  # over 600 s at a low rate: a few kB of FLAC
    assert len(data) < 100_000
    fail_if_decoded(monkeypatch)
    refused = upload_error(data)
    assert (refused.status, refused.code, refused.field) == (413, "too_long", "file")
    assert "610 s of audio, at most 600 s are analysed" in refused.message


def test_channels_are_averaged_a_block_at_a_time(monkeypatch):
    monkeypatch.setattr(features, "_BLOCK_SAMPLES", 1_000)
    reads = []
    read = sf.SoundFile.read
    monkeypatch.setattr(
        sf.SoundFile, "read", lambda self, frames, **kw: reads.append(frames) or read(self, frames, **kw)
    )
    left = tone(69, 1.0, 0.5)
    audio = features.decode(encoded(np.stack([left, np.zeros_like(left)], axis=1)))
    assert max(reads) == 500 and len(audio.samples) == SR  # 500 frames of 2 channels at a time, all of them
    assert np.abs(audio.samples).max() == pytest.approx(0.25, abs=0.01)


def test_similar_analyses_the_middle_excerpt_of_a_long_upload(monkeypatch):
    from encore.serving import uploads

    decoded, analysed = [], []
    read_mono = features.read_mono
    monkeypatch.setattr(features, "read_mono", lambda audio, frames: decoded.append(frames) or read_mono(audio, frames))
    monkeypatch.setattr(features, "gtzan_features", lambda y, sr: analysed.append(len(y)) or {})

    class Index:
        def similar_to_features(self, frame, n):
            return []

    # 100 s: a 440 Hz tone in the middle 30 s only, silence around it
    y = np.zeros(100 * 8_000, np.float32)
    y[35 * 8_000 : 65 * 8_000] = tone(69, 30.0, sr=8_000)
    assert uploads.similar_to_upload(Index(), encoded(y, 8_000, "FLAC"), 5) == {"tracks": []}
    assert decoded == [uploads.SIMILAR_EXCERPT_SECONDS * 8_000]  # only the excerpt was decoded
    assert analysed == [30 * SR]
    audio = uploads.decode_upload(encoded(y, 8_000, "FLAC"), excerpt=30.0)
    rms = np.sqrt((audio.samples[: 29 * SR].reshape(29, SR) ** 2).mean(axis=1))
    assert audio.duration == 30.0 and (rms > 0.15).all()  # every second of it is the tone, none the silence


@pytest.mark.parametrize("name", ["random bytes", "text", "cut flac", "empty"])
def test_garbage_uploads_get_a_clean_error_naming_the_file(name):
    refused = upload_error(BAD_FILES[name][0])
    assert 400 <= refused.status < 500 and refused.field == "file" and refused.message


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def test_run_forked_returns_the_result_and_survives_the_child_dying():
    assert run_forked(sum, [1, 2, 3], timeout_s=30) == 6
    with pytest.raises(ChildCrashed, match="killed by signal SIGSEGV"):
        run_forked(segfault, timeout_s=30)
    with pytest.raises(ChildCrashed, match="exited with status 3"):
        run_forked(os._exit, 3, timeout_s=30)
    with pytest.raises(ChildRaised, match="ZeroDivisionError"):
        run_forked(divmod, 1, 0, timeout_s=30)
    started = time.monotonic()
    with pytest.raises(ChildTimedOut, match="timed out after 0.5 s"):
        run_forked(time.sleep, 30, timeout_s=0.5)
    assert time.monotonic() - started < 10


def _read(uri: str):
    filesystem, path = fs.resolve(uri)
    return pq.read_table(path, filesystem=filesystem).to_pandas()


def _plant(folder: Path) -> None:
    folder.mkdir()
    for sample in SAMPLES.glob("*.wav"):
        (folder / sample.name).write_bytes(sample.read_bytes())
    (folder / "clicks-120.flac").write_bytes(encoded(click_track(120, 7.0), format="FLAC"))
    (folder / "bad").mkdir()
    (folder / "bad" / "empty.wav").write_bytes(b"")
    (folder / "bad" / "truncated.wav").write_bytes(GOOD_WAV[: len(GOOD_WAV) // 3])
    (folder / "bad" / "noise.ogg").write_bytes(np.random.default_rng(2).bytes(5000))
    (folder / "bad" / "silent.wav").write_bytes(encoded(np.zeros(2 * SR, np.float32)))
    (folder / "bad" / "notes.mp3").write_bytes(b"liner notes, not audio\n" * 40)
    (folder / "cover.txt").write_text("not an audio suffix: not listed")


def test_job_reports_bad_files_and_a_rerun_skips_done_ones(ray_local, tmp_path):
    source, output = tmp_path / "audio", tmp_path / "features"
    _plant(source)
    numba_cache_dir = os.environ["NUMBA_CACHE_DIR"]

    summary = extract.extract_features(str(source), str(output), numba_cache_dir=numba_cache_dir, workers=2)

    assert (summary["files"], summary["analysed"], summary["errors"], summary["skipped"]) == (9, 4, 5, 0)
    tracks, segments, errors = (_read(str(output / f"{name}.parquet")) for name in ("tracks", "segments", "errors"))
    good = {"sine-440.wav", "flute-A4.wav", "sax-phrase-short.wav", "clicks-120.flac"}
    assert set(tracks["path"].map(lambda p: Path(p).name)) == good
    reasons = dict(zip(errors["path"].map(lambda p: Path(p).name), errors["reason"]))
    assert {name: reason.split(":")[0] for name, reason in reasons.items()} == {
        "empty.wav": "empty",
        "truncated.wav": "truncated",
        "noise.ogg": "unsupported",
        "silent.wav": "silent",
        "notes.mp3": "unsupported",
    }
    clicks = tracks.set_index(tracks["path"].map(lambda p: Path(p).name)).loc["clicks-120.flac"]
    assert clicks["tempo"] == pytest.approx(120, abs=3.5) and clicks["duration"] == pytest.approx(7.0)
    assert len(clicks["beat_times"]) >= 10 and len(clicks["pitch_classes"]) == 12
    assert sorted(segments["track_path"].map(lambda p: Path(p).name)) == ["clicks-120.flac"] * 2 + [
        "sax-phrase-short.wav"
    ]
    assert segments[list(GTZAN_FEATURES)].notna().all().all()
    assert summary["audio_hours"] == pytest.approx(tracks["duration"].sum() / 3600)

    # A changed file is analysed again and replaces its row; the rest is skipped.
    (source / "sine-440.wav").write_bytes(encoded(tone(60, 1.0)))
    rerun = extract.extract_features(str(source), str(output), numba_cache_dir=numba_cache_dir, workers=1)

    assert (rerun["analysed"], rerun["skipped"], rerun["errors"]) == (1, 3, 5)
    tracks2, segments2, errors2 = (_read(str(output / f"{name}.parquet")) for name in ("tracks", "segments", "errors"))
    assert len(tracks2) == 4 and tracks2["path"].is_unique
    assert len(segments2) == len(segments) and len(errors2) == len(errors)
    sine = tracks2[tracks2["path"].str.endswith("sine-440.wav")].iloc[0]
    assert np.argmax(sine["pitch_classes"]) == C
    columns = ["path", "sha256", *GTZAN_FEATURES]
    unchanged = tracks2[~tracks2["path"].str.endswith("sine-440.wav")][columns].reset_index(drop=True)
    assert unchanged.equals(tracks[~tracks["path"].str.endswith("sine-440.wav")][columns].reset_index(drop=True))


def test_job_reports_a_file_that_crashes_its_worker(ray_local, tmp_path):
    source = tmp_path / "audio"
    source.mkdir()
    # Listed last, so that the batch dies after the good files in it were analysed.
    for name in ("flute-A4.wav", "sine-440.wav", "tail-crash.wav"):
        (source / name).write_bytes((SAMPLES / name.replace("tail-crash", "sine-440")).read_bytes())

    calls = tmp_path / "calls.log"

    def crash_on_one_file(path, data, sample_rate):
        with open(calls, "a") as log:
            log.write(Path(path).name + "\n")
        if path.endswith("tail-crash.wav"):
            os.kill(os.getpid(), signal.SIGSEGV)  # what a bad numba cache did to librosa here
        return extract.analyze_track(path, data, sample_rate)

    summary = extract.extract_features(
        str(source),
        str(tmp_path / "features"),
        numba_cache_dir=os.environ["NUMBA_CACHE_DIR"],
        workers=1,
        batch_size=3,  # the crash takes down a batch with two good files in it
        process_file=crash_on_one_file,
    )

    assert (summary["analysed"], summary["errors"]) == (2, 1)
    errors = _read(summary["errors_uri"])
    assert errors["path"].tolist() == [str(source / "tail-crash.wav")]
    assert errors["reason"].iloc[0] == "worker crashed while decoding/processing (killed by signal SIGSEGV)"
    assert sorted(_read(summary["tracks_uri"])["path"]) == [str(source / "flute-A4.wav"), str(source / "sine-440.wav")]
    # Each file was tried in the batch, then alone.
    assert calls.read_text().split() == ["flute-A4.wav", "sine-440.wav", "tail-crash.wav"] * 2


def test_job_reads_an_s3_prefix(ray_local, s3_bucket, tmp_path):
    s3 = boto3.client("s3")
    for name in ("sine-440.wav", "flute-A4.wav"):
        s3.put_object(Bucket=s3_bucket, Key=f"incoming/{name}", Body=(SAMPLES / name).read_bytes())
    output = f"s3://{s3_bucket}/features"

    summary = extract.extract_features(
        f"s3://{s3_bucket}/incoming", output, workers=1, numba_cache_dir=os.environ["NUMBA_CACHE_DIR"]
    )

    assert (summary["analysed"], summary["errors"]) == (2, 0)
    tracks = _read(f"{output}/tracks.parquet")
    assert sorted(tracks["path"]) == [
        f"s3://{s3_bucket}/incoming/flute-A4.wav",
        f"s3://{s3_bucket}/incoming/sine-440.wav",
    ]
    assert (tracks["sample_rate"] == 44_100).all()
    assert _read(f"{output}/errors.parquet").empty


class CrashAtPart(Exception):
    """Raised from ``on_part``: the job dies with parts written, as a killed driver would leave them."""


def _tables(output: Path) -> dict:
    return {name: pq.read_table(output / f"{name}.parquet") for name in ("tracks", "segments", "errors")}


def test_a_crashed_extraction_resumes_from_the_parts_it_wrote(ray_local, tmp_path):
    source, output = tmp_path / "audio", tmp_path / "features"
    source.mkdir()
    for name in ("flute-A4.wav", "sine-440.wav", "sax-phrase-short.wav"):
        (source / name).write_bytes((SAMPLES / name).read_bytes())
    (source / "empty.wav").write_bytes(b"")  # an error row is a result too
    listed = sorted(path.name for path in source.iterdir())

    def counting(run: str):
        """Analysis that counts the files it decodes in a file of ``run``'s own: the crashed run's actor may
        still finish a file after the crash, and must not count as the rerun's."""

        def analyse(path, data, sample_rate):  # in the actors' forked children: counted in a file
            with open(tmp_path / f"{run}.log", "a") as log:
                log.write(Path(path).name + "\n")
            return extract.analyze_track(path, data, sample_rate)

        return analyse

    def analysed(run: str) -> list[str]:
        calls = tmp_path / f"{run}.log"
        return sorted(calls.read_text().split() if calls.exists() else [])

    # One file per part, so that the crash lands between files.
    options = dict(numba_cache_dir=os.environ["NUMBA_CACHE_DIR"], workers=1, batch_size=1)
    reference = extract.extract_features(
        str(source), str(tmp_path / "uninterrupted"), **options, process_file=counting("reference")
    )
    assert analysed("reference") == listed and reference["parts"] == 4 and reference["resumed"] == 0
    assert not (tmp_path / "uninterrupted" / "_parts").exists()  # removed once the tables are written

    def crash_after_the_second_part(number, uri, rows):
        assert fs.exists(uri) and len(rows) == 1
        if number == 1:
            raise CrashAtPart(uri)

    with pytest.raises(CrashAtPart):
        extract.extract_features(
            str(source), str(output), on_part=crash_after_the_second_part, **options, process_file=counting("crashed")
        )
    assert not (output / "tracks.parquet").exists()  # nothing published: the run did not finish
    parts = sorted((output / "_parts").glob("*/part-*.parquet"))
    assert len(parts) == 2
    in_parts = sorted(Path(path).name for part in parts for path in pq.read_table(part)["path"].to_pylist())
    assert len(in_parts) == 2 and set(in_parts) <= set(analysed("crashed"))

    resumed = extract.extract_features(str(source), str(output), **options, process_file=counting("resumed"))

    # The files the parts held were not decoded again; the others were, once each.
    assert analysed("resumed") == sorted(set(listed) - set(in_parts))
    assert (resumed["resumed"], resumed["parts"]) == (2, 2)
    for figure in ("files", "analysed", "errors", "segments", "skipped"):
        assert resumed[figure] == reference[figure], figure
    uninterrupted, after_crash = _tables(tmp_path / "uninterrupted"), _tables(output)
    for name, table in uninterrupted.items():
        assert after_crash[name].equals(table, check_metadata=True), name
    assert (len(uninterrupted["tracks"]), len(uninterrupted["segments"]), len(uninterrupted["errors"])) == (3, 1, 1)
    assert not (output / "_parts").exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_result_parts_are_written_whole_and_read_back_newest_first(where, tmp_path, request):
    output = str(tmp_path / "out") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/out"

    def rows(*entries):
        return pa.Table.from_pylist(
            [extract._result_row(path, size, "h") for path, size in entries], extract.RESULT_SCHEMA
        )

    first = extract.ResultParts(output, "run1")
    assert first.read({"a"}).num_rows == 0  # nothing written yet
    first.write(rows(("a", 1), ("b", 1)))
    second = extract.ResultParts(output, "run1")  # a later attempt: its parts sort after the first's
    assert second.read({"a", "b"}, columns=["path", "size"]).to_pylist() == [
        {"path": "a", "size": 1},
        {"path": "b", "size": 1},
    ]
    second.write(rows(("b", 2), ("c", 2)))
    # Names it never writes are not opened: a part's name in a subfolder, another name.
    fs.write_bytes(fs.join(second.uri, "sub", "part-20991231T000000.000000Z-abcdef12-00000.parquet"), b"x")
    fs.write_bytes(fs.join(second.uri, "notes.parquet"), b"not a part")
    read = second.read({"a", "b"}).sort_by("path")
    assert list(zip(read["path"].to_pylist(), read["size"].to_pylist())) == [("a", 1), ("b", 2)]
    assert extract.ResultParts(output, "run2").read({"a"}).num_rows == 0  # another run's parts are its own
    second.remove()
    assert second.read({"a", "b", "c"}).num_rows == 0 and not fs.exists(second.uri)
