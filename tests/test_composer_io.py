"""The composer's music in and out: MIDI round trips and errors, audio render, the music21 corpus,
the prepare job on Ray Data (S3, with planted bad files), conditioned training on its pieces,
composing with primers and seeds, and the musical checks on answers known by hand."""

import base64
import io
import json
import math
import time
from dataclasses import replace

import boto3
import mido
import numpy as np
import pretty_midi
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from encore.composer import Composer, ComposerConfig, DataError, TrainConfig
from encore.composer import checks as C
from encore.composer import midi as M
from encore.composer.compose import BUNDLE_FILE, DEFAULT_SAMPLING, ComposerBundle, CompositionError
from encore.composer.corpus import corpus_files, parse_corpus_file, style_program
from encore.composer.data import PIECE_SCHEMA, load_corpus, piece_row, read_pieces, row_piece, split_of
from encore.composer.service import (
    PRIMER_LIMITS,
    CompositionRequestError,
    PrimerTooLarge,
    UnknownStyleError,
    compose_answer,
)
from encore.core import fs
from encore.core.keys import MODES, find_key, key_name, parse_key
from encore.store import ModelStore

# Held notes, a rest in the middle, a chord change under a held top voice, a lone low note at the end.
PIECE = [[48, 64, 67, 72], [48, 64, 67, 72], [53, 65, 69, 72], [], [55, 62, 67, 71], [55, 62, 65, 71], [36]]
C_MAJOR_SCALE = [[pitch] for pitch in (60, 62, 64, 65, 67, 69, 71, 72)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("tempo, step_beats", [(100, 1.0), (137.5, 0.5), (61, 1 / 3), (240, 0.25), (45, 1.5)])
def test_midi_round_trip_gives_the_same_steps(tempo, step_beats):
    midi = M.steps_to_midi(PIECE, tempo, step_beats, meter=(3, 4))
    # A pitch held over steps is one note, as a DAW should show it.
    assert sum(note.pitch == 72 for note in midi.instruments[0].notes) == 1
    read = M.read_midi(M.midi_bytes(midi), step_beats)
    assert read.steps == PIECE
    assert read.tempo == pytest.approx(tempo, rel=1e-3) and read.meter == (3, 4)


def test_off_grid_notes_land_in_the_steps_they_sound_in():
    notes = [(60, 0.0, 1.0), (64, 0.1, 0.3), (67, 0.9, 2.05), (72, 2.5, 2.6)]
    # 64 is short but starts in step 0; 67 starts late in step 0 and sounds at step 1's midpoint.
    assert M.notes_to_steps(notes, 1.0) == [[60, 64, 67], [67], [72]]


def test_bad_midi_gets_an_error_naming_the_file(tmp_path):
    garbage = tmp_path / "broken.mid"
    garbage.write_bytes(b"this is not a MIDI file at all")
    with pytest.raises(M.MidiError, match=r"broken\.mid: not a readable MIDI file"):
        M.read_midi(garbage)
    truncated = tmp_path / "truncated.mid"
    truncated.write_bytes(M.midi_bytes(M.steps_to_midi(PIECE, 100))[:30])
    with pytest.raises(M.MidiError, match=r"truncated\.mid: .*truncated"):
        M.read_midi(truncated)
    silent = tmp_path / "silent.mid"
    pretty_midi.PrettyMIDI().write(str(silent))
    with pytest.raises(M.MidiError, match=r"silent\.mid: holds no notes"):
        M.read_midi(silent)
    with pytest.raises(M.MidiError, match=r"missing\.mid: no such file"):
        M.read_midi(tmp_path / "missing.mid")


@pytest.fixture
def needs_fluidsynth():
    """The real renderer: the project's setup installs it (make install), so its absence is a failure."""
    if not M.fluidsynth_available():
        pytest.fail('libfluidsynth is not installed: README.md, "MIDI and audio", says what to run')


# A melody of held notes and rests (tempo 120, a step is half a second): (start, end, pitch) of each note.
MELODY = [[60], [60], [], [], [64], [64], [67], [67], [], [], [72], [72], [76], [76]]
NOTES = [(0, 1, 60), (2, 3, 64), (3, 4, 67), (5, 6, 72), (6, 7, 76)]
RESTS = [(1, 2), (4, 5)]
OCARINA = 79  # General MIDI: close to a sine, so a held note's loudest frequency is its fundamental


def loudest_frequency(audio: np.ndarray, rate: int) -> float:
    """Peak of the Hann-windowed spectrum, zero-padded to 0.02 Hz bins (a cent at middle C is 0.15 Hz)."""
    n = 1 << 20
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n=n))
    return float(np.fft.rfftfreq(n, 1 / rate)[spectrum.argmax()])


def test_fluidsynth_renders_what_a_listener_hears(needs_fluidsynth):
    """The real FluidSynth with the General MIDI soundfont the setup installs: each held note sounds at
    its pitch, rests are silent once the note has rung out, the audio lasts as long as the music and
    never clips."""
    midi = M.steps_to_midi(MELODY, tempo=120, step_beats=1.0, program=OCARINA)
    wav, renderer = M.render_wav(midi)
    assert renderer == f"fluidsynth ({M.find_soundfont().resolve().name})"
    pcm, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == M.SAMPLE_RATE and len(pcm) / rate == pytest.approx(7.0 + M.RELEASE_SECONDS, abs=1e-3)
    assert np.abs(pcm.astype(np.int32)).max() < 32_767  # no sample at full scale
    audio = pcm / 32_768
    for start, end, pitch in NOTES:
        held = audio[int((start + 0.15) * rate) : int((end - 0.05) * rate)]  # past the attack, before the next note
        assert np.sqrt(np.mean(held**2)) > 0.1, pitch
        cents = 1200 * math.log2(loudest_frequency(held, rate) / (440 * 2 ** ((pitch - 69) / 12)))
        assert abs(cents) < 5, (pitch, cents)
    for start, end in RESTS:
        assert np.abs(audio[int((start + 0.5) * rate) : int(end * rate)]).max() < 0.01, (start, end)


def test_builtin_synthesiser_renders_where_fluidsynth_is_absent(monkeypatch):
    monkeypatch.setattr(M, "fluidsynth_available", lambda: False)
    a4 = M.steps_to_midi([[69]] * 4, tempo=120, step_beats=1.0)  # 2 seconds of A4
    wav, renderer = M.render_wav(a4, sample_rate=16_000)
    audio, rate = soundfile.read(io.BytesIO(wav))
    assert renderer == "built-in additive synthesiser" and rate == 16_000
    assert len(audio) / rate == pytest.approx(2.0 + M.RELEASE_SECONDS, abs=1e-3)
    sounding = audio[: 2 * rate]
    assert np.sqrt(np.mean(sounding**2)) > 0.05
    assert loudest_frequency(sounding, rate) == pytest.approx(440, abs=1)
    rest = M.steps_to_midi([[69], [], [], [69]], tempo=120)  # a rest long enough for the note to die away
    quiet, _ = M.render_wav(rest, sample_rate=16_000)
    audio, _ = soundfile.read(io.BytesIO(quiet))
    assert np.abs(audio[int(1.2 * 16_000) : int(1.45 * 16_000)]).max() < 0.02


def test_soundfont_is_the_configured_one_else_the_systems(monkeypatch, tmp_path):
    monkeypatch.delenv("ENCORE_SOUNDFONT", raising=False)
    assert M.find_soundfont().is_file()  # the system's default GM soundfont, or the one inside pretty_midi
    monkeypatch.setenv("ENCORE_SOUNDFONT", str(tmp_path / "missing.sf2"))
    with pytest.raises(FileNotFoundError, match="ENCORE_SOUNDFONT=.*missing.sf2"):
        M.find_soundfont()
    (tmp_path / "gm.sf2").write_bytes(b"RIFF")
    monkeypatch.setenv("ENCORE_SOUNDFONT", str(tmp_path / "gm.sf2"))
    assert M.find_soundfont() == tmp_path / "gm.sf2"


def test_render_is_bounded_before_any_work():
    too_long = M.steps_to_midi([[60]] * (int(M.MAX_RENDER_SECONDS) + 1), tempo=60)  # a second a step
    with pytest.raises(ValueError, match=f"at most {M.MAX_RENDER_SECONDS:g} s are rendered"):
        M.render_wav(too_long)
    for rate in (M.MIN_SAMPLE_RATE - 1, M.MAX_SAMPLE_RATE + 1):
        with pytest.raises(ValueError, match="sample rate"):
            M.render_wav(M.steps_to_midi([[60]], tempo=120), sample_rate=rate)


def test_musical_checks_known_answers():
    assert C.in_key_share(C_MAJOR_SCALE, 0, "major") == 1.0
    assert C.in_key_share(C_MAJOR_SCALE, 7, "major") == pytest.approx(7 / 8)  # F is not in G major
    cadence = [[48, 64, 67, 72], [53, 65, 69, 72], [55, 62, 67, 71], [48, 64, 67, 72]] * 4
    assert C.estimate_key(cadence) == (0, "major")
    assert C.estimate_key([[57, 60, 64], [62, 65, 69], [56, 59, 64], [57, 60, 64]] * 4) == (9, "minor")

    stats = C.statistics([C_MAJOR_SCALE + [[]], [[60, 64, 67], []]], keys=[(0, "major"), (0, "major")])
    assert stats["steps"] == 11 and stats["notes_per_step"] == pytest.approx(11 / 11)
    assert stats["empty_steps"] == pytest.approx(2 / 11)
    assert stats["pitch_range"] == pytest.approx((12 + 7) / 2)
    assert stats["in_key"] == 1.0
    histogram = np.array(stats["pitch_class_histogram"])
    assert histogram.sum() == pytest.approx(1.0) and histogram[0] == pytest.approx(3 / 11, abs=1e-4)
    assert C.histogram_distance(histogram, histogram) == 0.0
    assert C.histogram_distance(np.eye(12)[0], np.eye(12)[1]) == 1.0
    compared = C.compare(stats, C.statistics([[[61, 66]]]))
    assert compared["pitch_class_distance"] == pytest.approx(1.0)  # no pitch class in common
    assert compared["in_key"]["generated"] == 1.0
    with pytest.raises(ValueError, match="nothing sounds"):
        C.statistics([[[], []]])


def test_keys_are_spelled_by_their_signature_and_an_even_spread_has_none():
    assert [key_name(tonic, "major") for tonic in (1, 6, 8, 10)] == ["Db major", "F# major", "Ab major", "Bb major"]
    assert [key_name(tonic, "minor") for tonic in (1, 3, 8, 10)] == ["C# minor", "Eb minor", "G# minor", "Bb minor"]
    assert all(parse_key(key_name(tonic, mode)) == (tonic, mode) for tonic in range(12) for mode in MODES)
    assert parse_key("f# minor") == (6, "minor") and parse_key("D# minor") == parse_key("Eb minor") == (3, "minor")
    with pytest.raises(ValueError, match="not a key"):
        parse_key("H major")
    assert find_key(np.zeros(12)) is None and find_key(np.ones(12)) is None
    assert C.estimate_key([[], []]) is None and C.estimate_key([list(range(60, 72))]) is None
    assert math.isnan(C.statistics([[list(range(60, 72))]])["in_key"])  # no key, so no share in it


def test_music21_corpus_gives_labelled_pieces():
    files = corpus_files(["bach"], limit=3)
    assert len(files) == 3 and all(source.startswith("music21:bach/") and style == "bach" for source, style in files)
    (piece,) = parse_corpus_file("music21:bach/bwv66.6.mxl", step_beats=0.5)
    assert piece.meter == (4, 4) and piece.key == (6, "minor")  # the chorale is in F# minor
    assert 60 < len(piece.steps) < 100 and max(map(len, piece.steps)) == 4
    assert piece.source == "music21:bach/bwv66.6.mxl" and piece.step_beats == 0.5
    assert row_piece(piece_row(piece)) == piece  # as the prepared table holds it
    with pytest.raises(DataError, match="unknown music21 corpus style.*known: bach"):
        corpus_files(["bach", "grunge"])


def tiny_bundle(styles=("folk", "jazz"), conditioned=True, seed=0, max_steps=64) -> ComposerBundle:
    torch.manual_seed(seed)
    config = ComposerConfig(n_layer=1, n_head=2, d_model=32, d_ff=64, dropout=0.0, max_steps=max_steps, max_notes=6)
    model = Composer(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return ComposerBundle(model, list(styles), styles[0] if styles else None, 0.5, conditioned)


def test_compose_samples_as_the_bundle_says_unless_the_request_says_otherwise(tmp_path):
    bundle = tiny_bundle()
    bundle.sampling = {"temperature": 0.5, "top_k": None, "top_p": 0.9}
    bundle.save(tmp_path)
    loaded = ComposerBundle.load(tmp_path)
    assert loaded.sampling == bundle.sampling
    own = loaded.compose(style="jazz", bars=4, seed=3)
    assert (own.settings["temperature"], own.settings["top_p"]) == (0.5, 0.9)
    assert own.steps == loaded.compose(style="jazz", bars=4, seed=3, temperature=0.5, top_p=0.9).steps
    asked = loaded.compose(style="jazz", bars=4, seed=3, top_k=5)  # its own cut, the bundle's temperature
    assert (asked.settings["temperature"], asked.settings["top_k"], asked.settings["top_p"]) == (0.5, 5, None)
    with pytest.raises(ValueError, match="temperature > 0"):
        ComposerBundle(bundle.model, sampling={"temperature": 0})
    with pytest.raises(ValueError, match="unknown sampling settings"):
        ComposerBundle(bundle.model, sampling={"min_p": 0.1})


def test_compose_is_seeded_continues_the_primer_and_honours_the_key():
    bundle = tiny_bundle()
    first = bundle.compose(style="jazz", key="D major", tempo=120, meter="3/4", bars=4, seed=5)
    assert first.settings["steps"] == 24  # 4 bars of 3 quarter notes in eighth-note steps
    assert len(first.steps) == 24
    assert bundle.compose(style="jazz", key="D major", tempo=120, meter="3/4", bars=4, seed=5).steps == first.steps
    assert bundle.compose(style="jazz", key="D major", tempo=120, meter="3/4", bars=4, seed=6).steps != first.steps
    assert bundle.compose(style="folk", key="D major", tempo=120, meter="3/4", bars=4, seed=5).steps != first.steps

    primer = [[62, 66, 69], [62, 66, 69], [64, 67, 71], []]
    continued = bundle.compose(key="D major", bars=2, seed=1, primer=primer, constrain_to_key=True)
    assert continued.steps[:4] == primer and len(continued.steps) == 4 + 16
    assert continued.settings["primer_steps"] == 4 and continued.settings["style"] == "folk"  # the default style
    in_d_major = {pitch % 12 for step in continued.steps[4:] for pitch in step}
    assert in_d_major and in_d_major <= {2, 4, 6, 7, 9, 11, 1}

    with pytest.raises(CompositionError, match="unknown style 'grunge'.*folk, jazz") as refused:
        bundle.compose(style="grunge")
    assert refused.value.field == "style"
    with pytest.raises(CompositionError, match="at most|fit the model") as too_long:
        bundle.compose(bars=17)  # 17 bars of 4/4 in eighths is 136 steps; the model covers 64
    assert too_long.value.field == "bars"
    with pytest.raises(CompositionError, match="primer is 64 steps") as long_primer:
        bundle.compose(primer=[[60]] * 64)
    assert long_primer.value.field == "primer_midi"


def test_compose_answer_reads_a_midi_primer_and_renders(tmp_path, needs_fluidsynth):
    bundle = tiny_bundle()
    bundle.model.save(tmp_path)  # a composer stored before bundles: JSB-trained, unconditioned, quarter notes
    old = ComposerBundle.load(tmp_path)
    assert (old.conditioned, old.styles, old.step_beats, old.program(None)) == (False, [], 1.0, M.PIANO)
    bundle.programs = {"folk": M.VIOLIN, "jazz": M.PIANO}
    bundle.save(tmp_path)
    bundle = ComposerBundle.load(tmp_path)
    assert (bundle.conditioned, bundle.styles, bundle.step_beats) == (True, ["folk", "jazz"], 0.5)
    assert bundle.programs == {"folk": M.VIOLIN, "jazz": M.PIANO}
    primer = [[60, 64, 67], [60, 64, 67], [62, 65, 69], [59, 62, 67]]
    primer_midi = base64.b64encode(M.midi_bytes(M.steps_to_midi(primer, 90, 0.5))).decode()
    request = {"style": "folk", "key": "C major", "tempo": 90, "meter": "2/4", "bars": 2, "seed": 3}
    answer = compose_answer(bundle, {**request, "primer_midi": primer_midi, "audio": True}, time_budget_s=30)
    midi = pretty_midi.PrettyMIDI(io.BytesIO(base64.b64decode(answer["midi"])))
    assert answer["settings"]["program"] == midi.instruments[0].program == M.VIOLIN  # as the version records
    steps = M.read_midi(base64.b64decode(answer["midi"]), 0.5).steps
    assert steps[:4] == primer and answer["settings"]["primer_steps"] == 4
    assert answer["renderer"].startswith("fluidsynth (")
    audio, rate = soundfile.read(io.BytesIO(base64.b64decode(answer["wav"])))
    assert len(audio) / rate == pytest.approx(len(steps) * 0.5 * 60 / 90 + M.RELEASE_SECONDS, abs=0.01)
    assert np.abs(audio).max() > 0.1
    again = compose_answer(bundle, {**request, "primer_midi": primer_midi, "program": M.FLUTE}, time_budget_s=30)
    assert again["settings"]["program"] == M.FLUTE and again["wav"] is None
    assert M.read_midi(base64.b64decode(again["midi"]), 0.5).steps == steps  # another instrument, the same music

    # A version saved before programs were recorded: its styles get the usual instrument.
    described = json.loads((tmp_path / BUNDLE_FILE).read_text())
    del described["programs"]
    (tmp_path / BUNDLE_FILE).write_text(json.dumps(described))
    older = ComposerBundle.load(tmp_path)
    assert compose_answer(older, request, time_budget_s=30)["settings"]["program"] == style_program("folk") == M.FLUTE

    with pytest.raises(CompositionRequestError, match="primer_midi: not a readable MIDI") as bad:
        compose_answer(bundle, {**request, "primer_midi": base64.b64encode(b"MThd nonsense").decode()}, 30)
    assert bad.value.field == "primer_midi"
    with pytest.raises(UnknownStyleError, match="knows: folk, jazz"):
        compose_answer(bundle, {**request, "style": "polka"}, 30)


def test_music_too_long_to_render_is_refused_before_it_is_composed():
    bundle = tiny_bundle(max_steps=512)
    bundle.model.generate = lambda *args, **kwargs: pytest.fail("composed music it then refused to render")
    slow = {"tempo": 20, "meter": "4/4", "bars": 40, "audio": True}  # 320 eighths at 20 quarter notes a minute
    with pytest.raises(CompositionRequestError, match="last 480 s; audio is rendered for at most 300 s") as refused:
        compose_answer(bundle, slow, time_budget_s=30)
    assert refused.value.field == "bars"


def midi_file(tracks: list[list[mido.Message]], ticks_per_beat: int = 480) -> bytes:
    file = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    file.tracks.extend(mido.MidiTrack(track) for track in tracks)
    buffer = io.BytesIO()
    file.save(file=buffer)
    return buffer.getvalue()


def stacked_notes(notes: int, beats: int) -> bytes:
    """``notes`` notes all starting at beat 0 and held ``beats`` beats, on 60 pitches: the attack on the primer."""
    on = [mido.Message("note_on", note=40 + i % 60, velocity=80, time=0) for i in range(notes)]
    off = [mido.Message("note_off", note=40 + i % 60, time=beats * 480 if i == 0 else 0) for i in range(notes)]
    return midi_file([on + off])


def fail_if_read_as_music(monkeypatch):
    """Make pretty_midi's reading and the step making fail: a limit must refuse the file before either."""
    monkeypatch.setattr(M.pretty_midi, "PrettyMIDI", lambda *a, **k: pytest.fail("read as music before the limits"))
    monkeypatch.setattr(M, "notes_to_steps", lambda *a, **k: pytest.fail("made steps before the limits"))


def test_stacked_notes_primer_is_refused_from_the_scan_before_it_is_read(monkeypatch):
    from encore.serving.api import MAX_PRIMER_BYTES

    bundle = tiny_bundle()  # 64 steps of half a beat
    bundle.model.generate = lambda *args, **kwargs: pytest.fail("composed from a primer over the limits")
    primer_midi = base64.b64encode(stacked_notes(9_000, 5_000)).decode()
    assert len(primer_midi) <= MAX_PRIMER_BYTES  # the API admits it: 8.8 s of decoding before the limits
    fail_if_read_as_music(monkeypatch)
    with pytest.raises(
        PrimerTooLarge, match=r"10,000 steps of 0.5 beats \(5000 beats\), over the limit of 63"
    ) as refused:
        compose_answer(bundle, {"primer_midi": primer_midi}, time_budget_s=30)
    assert (refused.value.status, refused.value.code, refused.value.field) == (413, "too_large", "primer_midi")


def test_stacked_notes_make_steps_in_time_linear_in_the_steps():
    """A corpus file may be long: its stacked notes fill each pitch's steps once, not once a note (8.7 s before)."""
    began = time.process_time()
    piece = M.read_midi(stacked_notes(9_000, 5_000), 1.0)
    assert time.process_time() - began < 2.0
    assert len(piece.steps) == 5_000 and all(step == list(range(40, 100)) for step in piece.steps)


def many_events(count: int) -> list[mido.Message]:
    return [mido.Message("note_on", note=60, velocity=80 * (i % 2 == 0), time=1) for i in range(count)]


OVER_THE_PRIMER_LIMITS = {
    "tracks": ([many_events(2)] * 65, "65 tracks, over the limit of 64"),
    "events": ([many_events(60_000)], "60,00[0-9] events, over the limit of 50,000"),
    "notes": ([many_events(42_000)], "21,000 notes, over the limit of 20,000"),
    "length": (
        [many_events(1) + [mido.Message("note_off", note=60, time=300 * 480)]],
        "601 steps of 0.5 beats .300 beats., over the limit of 511",
    ),
}


@pytest.mark.parametrize("limit", OVER_THE_PRIMER_LIMITS)
def test_primer_over_a_limit_is_refused_naming_the_field_and_the_limit(limit, monkeypatch):
    tracks, message = OVER_THE_PRIMER_LIMITS[limit]
    data = midi_file(tracks)
    fail_if_read_as_music(monkeypatch)
    with pytest.raises(PrimerTooLarge, match=message) as refused:
        compose_answer(tiny_bundle(max_steps=512), {"primer_midi": base64.b64encode(data).decode()}, 30)
    assert refused.value.field == "primer_midi" and refused.value.message.startswith("primer_midi: ")
    assert PRIMER_LIMITS.tracks == 64 and PRIMER_LIMITS.events == 50_000 and PRIMER_LIMITS.notes == 20_000


def test_midi_of_no_time_division_is_unreadable():
    data = midi_file([many_events(2)], ticks_per_beat=0)
    with pytest.raises(M.MidiError, match="time division is 0 ticks a beat"):
        M.read_midi(data, name="zero.mid")


def test_reading_the_primer_spends_the_time_budget(monkeypatch):
    bundle = tiny_bundle()
    read = M.read_midi

    def slow_read(*args, **kwargs):
        time.sleep(0.5)
        return read(*args, **kwargs)

    budgets = []
    compose = bundle.compose
    monkeypatch.setattr("encore.composer.service.read_midi", slow_read)
    monkeypatch.setattr(
        bundle, "compose", lambda **kwargs: budgets.append(kwargs["time_budget_s"]) or compose(**kwargs)
    )
    primer_midi = base64.b64encode(M.midi_bytes(M.steps_to_midi(PIECE, 100, 0.5))).decode()
    compose_answer(bundle, {"primer_midi": primer_midi, "bars": 1}, time_budget_s=30)
    assert budgets and budgets[0] <= 29.5


def test_compose_request_bounds_the_instrument():
    from pydantic import ValidationError

    from encore.serving.api import ComposeRequest

    assert ComposeRequest().program is None  # the composer's instrument for the style
    assert ComposeRequest(program=127).program == 127
    for bad in (-1, 128, "organ"):
        with pytest.raises(ValidationError) as refused:
            ComposeRequest(program=bad)
        assert refused.value.errors()[0]["loc"] == ("program",)  # the API's 422 names this field


def _upload_midi_folder(bucket: str) -> dict[str, list[list[int]]]:
    """Three good MIDI files in style folders, a garbage file and a silent one; returns the good pieces."""
    s3 = boto3.client("s3")
    good = {
        "midi/folk/reel.mid": [[62], [66], [69], [66], [62, 74], [], [64], [67]] * 3,
        "midi/folk/air.mid": [[60, 67], [64], [67, 72], [65], [64], [62], [60, 64]] * 3,
        "midi/jazz/ballad.mid": [[48, 64, 70, 74], [48, 64, 70, 74], [53, 63, 69, 72], [], [55, 65, 71, 74]] * 3,
    }
    for key, steps in good.items():
        s3.put_object(Bucket=bucket, Key=key, Body=M.midi_bytes(M.steps_to_midi(steps, 96, 0.5, (4, 4))))
    s3.put_object(Bucket=bucket, Key="midi/jazz/broken.mid", Body=b"MThd\x00\x00\x00\x06 definitely not MIDI")
    silent = io.BytesIO()
    pretty_midi.PrettyMIDI().write(silent)
    s3.put_object(Bucket=bucket, Key="midi/silent.mid", Body=silent.getvalue())
    s3.put_object(Bucket=bucket, Key="midi/notes.txt", Body=b"not a MIDI name, not listed")
    return {f"s3://{bucket}/{key}": steps for key, steps in good.items()}


def test_prepare_job_reports_bad_files_and_trains_a_conditioned_composer(ray_local, s3_bucket, tmp_path):

    from encore.composer.evaluate import evaluate_version, markdown_table
    from encore.composer.prepare import prepare
    from encore.composer.ray_train import train_composer

    good = _upload_midi_folder(s3_bucket)
    output = f"s3://{s3_bucket}/prepared"
    summary = prepare(f"s3://{s3_bucket}/midi", output, step_beats=0.5)
    assert (summary["files"], summary["files_read"], summary["errors"], summary["pieces"]) == (5, 3, 2, 3)
    assert summary["pieces_per_style"] == {"folk": 2, "jazz": 1}
    pieces = read_pieces(output)
    assert {piece.source: piece.steps for piece in pieces} == good
    ballad = next(piece for piece in pieces if piece.source == f"s3://{s3_bucket}/midi/jazz/ballad.mid")
    assert ballad.meter == (4, 4) and ballad.style == "jazz" and ballad.title == "ballad"
    filesystem, path = fs.resolve(summary["errors_uri"])
    errors = pq.read_table(path, filesystem=filesystem)
    reasons = dict(zip(errors["source"].to_pylist(), errors["reason"].to_pylist()))
    assert set(reasons) == {f"s3://{s3_bucket}/midi/jazz/broken.mid", f"s3://{s3_bucket}/midi/silent.mid"}
    assert "broken.mid: not a readable MIDI file" in reasons[f"s3://{s3_bucket}/midi/jazz/broken.mid"]
    assert "silent.mid: holds no notes" in reasons[f"s3://{s3_bucket}/midi/silent.mid"]

    # Three pieces are too few to split; repeat them under new names (the split hashes the names, so
    # they leave out the bucket's random name: the same three splits on every run).
    local = tmp_path / "prepared"
    local.mkdir()
    many = [
        replace(piece, source=piece.source.removeprefix(f"s3://{s3_bucket}/") + f"#{copy}")
        for copy in range(12)
        for piece in pieces
    ]
    pq.write_table(pa.Table.from_pylist([piece_row(piece) for piece in many], PIECE_SCHEMA), local / "pieces.parquet")
    assert {split_of(piece.source, 0) for piece in many} == {"train", "valid", "test"}
    corpus = load_corpus(str(local), max_steps=16, max_notes=4)
    assert corpus.styles == ["folk", "jazz"] and corpus.default_style == "folk"
    assert all(len(window) <= 16 for windows in corpus.steps.values() for window in windows)

    store = ModelStore(tmp_path / "store")
    config = ComposerConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, dropout=0.0, max_steps=16, max_notes=4)
    train = TrainConfig(epochs=1, batch_size=8, warmup_steps=2)
    options = {"storage": str(tmp_path / "ray-train"), "max_failures": 0}
    version = train_composer(str(local), store.uri, config, train, **options)
    manifest = store.show(version)
    assert manifest.config["styles"] == ["folk", "jazz"] and manifest.config["step_beats"] == 0.5
    assert manifest.config["programs"] == {"folk": M.FLUTE, "jazz": M.PIANO}  # a MIDI folder's style: piano
    assert manifest.config["format"] == "pieces" and "terms" not in manifest.config  # no music21 corpus here
    assert math.isfinite(manifest.metrics["test_nll_per_step"])
    bundle = ComposerBundle.load(store.load(version).path)
    assert bundle.conditioned and bundle.styles == ["folk", "jazz"] and bundle.programs == manifest.config["programs"]
    conditioned = bundle.model.nll_per_step(corpus.steps["test"], conditions=corpus.conditions["test"])
    assert conditioned == pytest.approx(manifest.metrics["test_nll_per_step"])
    assert len(bundle.compose(style="jazz", bars=1).steps) == 8
    assert bundle.sampling == DEFAULT_SAMPLING

    # The same command with other sampling resumes the finished run: the same weights, saved with it.
    cooler = train_composer(str(local), store.uri, config, train, **options, sampling={"temperature": 0.5})
    assert store.show(cooler).metrics["history"] == manifest.metrics["history"]
    cooler_bundle = ComposerBundle.load(store.load(cooler).path)
    assert cooler_bundle.sampling == {"temperature": 0.5, "top_k": None, "top_p": None}
    assert torch.equal(cooler_bundle.model.head.weight, bundle.model.head.weight)

    # What evaluate_composer measures on a split, once per sampling asked for; 'model' is the version's own.
    rows = evaluate_version(
        store.uri, cooler, None, corpus, samples=2, bars=1, seed=0, split="valid", samplings=({}, {"temperature": 2.0})
    )
    assert [row["sampling"]["temperature"] for row in rows] == [0.5, 2.0]
    assert {row["split"] for row in rows} == {"valid"}
    assert rows[0]["held_out_nll_per_step"] == pytest.approx(
        bundle.model.nll_per_step(corpus.steps["valid"], conditions=corpus.conditions["valid"])
    )
    assert rows[0]["held_out_in_key"] == rows[1]["held_out_in_key"]
    voices = rows[0]["voices_by_style"]  # each style asked for: generated and held-out voices per step
    assert voices and set(voices) <= {"folk", "jazz"}
    assert all(generated >= 0 and held_out > 0 for generated, held_out in voices.values())
    table = markdown_table(rows)
    assert "T 0.5" in table and "T 2" in table and "valid split" in table
