"""Decode audio bytes and compute the GTZAN feature schema, key and beats with librosa.

The GTZAN tables (see ``schema``) were computed from ``librosa.load(path)`` (22,050 Hz, mono) with
one librosa call per feature, all at their defaults, and summarised as the mean and variance of
every value of each feature matrix. Here the STFT and the log-mel spectrogram are computed once and
passed to those same calls, which gives the same numbers as the separate calls in less time (a test
checks it). Tempo and beats come from ``librosa.beat.beat_track``.

Decoding is bounded before it starts: the header's channels, sample rate and length are checked
against :class:`AudioLimits` before any sample is decoded, libsndfile decodes no more frames than the
header declares, and the channels are averaged block by block, so memory holds the mono track and
one block, never every channel of the whole file. An excerpt asks for the frames it needs only.

Everything here is a pure function of its inputs; the extraction job runs it in Ray Data workers.
"""

import io
import re
import threading
from dataclasses import dataclass

import librosa
import numpy as np
import soundfile as sf

from encore.audio import NO_LIMITS, AudioDecodeError, AudioLimits
from encore.audio.schema import GTZAN_FEATURES, N_MFCC, SAMPLE_RATE, SEGMENT_SECONDS, WINDOW_SECONDS
from encore.core.keys import find_key

MIN_SECONDS = 0.5  # below this, tempo and beats mean nothing and most features are one frame
SILENCE_DBFS = -80.0  # a peak below this is silence or dither, not audio

# libsndfile's header log says "data : 88200 (should be 44078)" when a chunk runs past the end.
_SHORT_CHUNK = re.compile(r"(?:data|Data Size|SSND)\s*:\s*(\d+) \(should be (\d+)\)")
_STREAMING_SIZE = 0xFFFFFFFF  # "size unknown" in WAVs written to a pipe: not a truncation

_SF_UNRECOGNISED, _SF_UNSUPPORTED_ENCODING = 1, 4
_BLOCK_SAMPLES = 1 << 20  # decoded at once over all channels (4 MB of float32), then averaged to mono


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # mono float32 at ``sample_rate``
    sample_rate: int
    native_sample_rate: int
    channels: int
    duration: float  # seconds


@dataclass(frozen=True)
class TrackAnalysis:
    """Features of one track: the GTZAN columns of the whole track and of each 3-second segment."""

    duration: float
    sample_rate: int  # of the file; features are computed at ``analysis_sample_rate``
    analysis_sample_rate: int
    length: int  # samples at the analysis rate, the GTZAN ``length`` column
    key: str
    key_confidence: float  # Pearson correlation of the pitch-class profile with the key's profile
    pitch_classes: list[float]  # mean chroma of each pitch class, C first
    tempo: float
    beat_times: list[float]
    features: dict[str, float]  # GTZAN_FEATURES
    segment_seconds: float
    segments: list[dict[str, float]]  # GTZAN_FEATURES of each whole segment, in order


def _looks_like_mp3(data: bytes) -> bool:
    return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


def _open_error(data: bytes, error: sf.LibsndfileError) -> AudioDecodeError:
    if error.code == _SF_UNRECOGNISED:
        if _looks_like_mp3(data) and "MP3" not in sf.available_formats():
            return AudioDecodeError(
                "unsupported", f"MP3 needs libsndfile 1.1 or newer, this one is {sf.__libsndfile_version__}"
            )
        return AudioDecodeError("unsupported", "not a recognised audio format")
    if error.code == _SF_UNSUPPORTED_ENCODING:
        return AudioDecodeError("unsupported", f"encoding not supported ({error.error_string})")
    return AudioDecodeError("corrupt", f"libsndfile could not decode it (error {error.code}: {error.error_string})")


def _truncation(info: str) -> str | None:
    for declared, present in _SHORT_CHUNK.findall(info):
        if int(present) < int(declared) and int(declared) != _STREAMING_SIZE:
            return f"the header declares {declared} bytes of audio, the file holds {present}"
    return None


def check_header(audio: sf.SoundFile, limits: AudioLimits) -> None:
    """Raise ``AudioDecodeError`` (``too_many_channels``, ``sample_rate_too_high``, ``too_long``) for a
    header over ``limits``, giving the limit: nothing has been decoded yet."""
    if audio.channels > limits.channels:
        raise AudioDecodeError(
            "too_many_channels", f"{audio.channels} channels; at most {limits.channels:g} are decoded (mix it down)"
        )
    if audio.samplerate > limits.sample_rate:
        raise AudioDecodeError(
            "sample_rate_too_high", f"{audio.samplerate:,} Hz; at most {limits.sample_rate:,.0f} Hz is decoded"
        )
    if audio.frames > limits.seconds * audio.samplerate:
        seconds = audio.frames / audio.samplerate
        raise AudioDecodeError("too_long", f"{seconds:.0f} s of audio, at most {limits.seconds:.0f} s are analysed")


def excerpt_frames(frames: int, sample_rate: int, seconds: float | None) -> tuple[int, int]:
    """The first frame and the number of frames of the middle ``seconds`` of ``frames``; all of them if shorter."""
    wanted = frames if seconds is None else min(frames, int(seconds * sample_rate))
    return (frames - wanted) // 2, wanted


def read_mono(audio: sf.SoundFile, frames: int) -> np.ndarray:
    """Up to ``frames`` frames from the current position, the channels averaged a block at a time."""
    block = max(1, _BLOCK_SAMPLES // audio.channels)
    parts = []
    while frames > 0:
        chunk = audio.read(min(block, frames), dtype="float32", always_2d=True)
        if not len(chunk):
            break
        parts.append(chunk.mean(axis=1))
        frames -= len(chunk)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def decode(
    data: bytes, sample_rate: int = SAMPLE_RATE, limits: AudioLimits = NO_LIMITS, excerpt: float | None = None
) -> DecodedAudio:
    """Decode WAV, FLAC, OGG/Vorbis, MP3, AU (whatever libsndfile reads) to mono float32 at ``sample_rate``.

    Channels are averaged and the result resampled with librosa's default (soxr), as ``librosa.load``
    does. With ``excerpt`` (seconds), only the middle ``excerpt`` seconds are decoded. Raises
    ``AudioDecodeError`` for empty, unrecognised, corrupt, truncated, silent or too short audio, and,
    before decoding, for a header over ``limits`` (see :func:`check_header`).
    """
    if not data:
        raise AudioDecodeError("empty", "the file has no bytes")
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            check_header(audio, limits)
            declared, native_rate, channels, info = audio.frames, audio.samplerate, audio.channels, audio.extra_info
            first, wanted = excerpt_frames(declared, native_rate, excerpt)
            if first:
                audio.seek(first)
            samples = read_mono(audio, wanted)
    except sf.LibsndfileError as error:
        raise _open_error(data, error) from None
    truncation = _truncation(info)
    if truncation is None and len(samples) < wanted:
        truncation = f"the header declares {declared} frames, decoding stopped at frame {first + len(samples)}"
    if truncation:
        raise AudioDecodeError("truncated", truncation)
    if not np.isfinite(samples).all():
        raise AudioDecodeError("corrupt", "samples that are not finite numbers")
    duration = len(samples) / native_rate
    if duration < MIN_SECONDS:
        raise AudioDecodeError("too_short", f"{duration:.3f} s of audio, at least {MIN_SECONDS} s needed")
    peak = float(np.abs(samples).max())
    if peak == 0.0:
        raise AudioDecodeError("silent", "every sample is zero")
    if 20 * np.log10(peak) < SILENCE_DBFS:
        raise AudioDecodeError("silent", f"peak level {20 * np.log10(peak):.1f} dBFS, below {SILENCE_DBFS:.0f} dBFS")
    if native_rate != sample_rate:
        samples = librosa.resample(samples, orig_sr=native_rate, target_sr=sample_rate)
    return DecodedAudio(samples, sample_rate, native_rate, channels, duration)


def _mean_var(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.var(values))


def _clip_features(y: np.ndarray, sr: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The GTZAN features of one clip, plus its chromagram and beat frames."""
    stft = librosa.stft(y)
    magnitude = np.abs(stft)
    power = magnitude**2
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
    chroma = librosa.feature.chroma_stft(S=power, sr=sr)
    harmonic, percussive = librosa.decompose.hpss(stft)
    onset_envelope = librosa.onset.onset_strength(S=log_mel, sr=sr, aggregate=np.median)
    tempo, beats = librosa.beat.beat_track(onset_envelope=onset_envelope, sr=sr)
    mfcc = librosa.feature.mfcc(S=log_mel, sr=sr, n_mfcc=N_MFCC)

    statistics = {
        "chroma_stft": chroma,
        "rms": librosa.feature.rms(y=y),
        "spectral_centroid": librosa.feature.spectral_centroid(S=magnitude, sr=sr),
        "spectral_bandwidth": librosa.feature.spectral_bandwidth(S=magnitude, sr=sr),
        "rolloff": librosa.feature.spectral_rolloff(S=magnitude, sr=sr),
        "zero_crossing_rate": librosa.feature.zero_crossing_rate(y),
        "harmony": librosa.istft(harmonic, length=len(y), dtype=y.dtype),
        "perceptr": librosa.istft(percussive, length=len(y), dtype=y.dtype),
    }
    features = {}
    for name, values in statistics.items():
        features[f"{name}_mean"], features[f"{name}_var"] = _mean_var(values)
    features["tempo"] = float(np.atleast_1d(tempo)[0])
    for i, row in enumerate(mfcc, start=1):
        features[f"mfcc{i}_mean"], features[f"mfcc{i}_var"] = _mean_var(row)
    return {name: features[name] for name in GTZAN_FEATURES}, chroma, beats


def gtzan_features(y: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """The 57 GTZAN feature columns of a mono clip, in the tables' order."""
    return _clip_features(y, sr)[0]


def estimate_key(chroma: np.ndarray) -> tuple[str, float]:
    """The key of a chromagram (12 x frames, C first) by :func:`encore.core.keys.find_key`, and its
    correlation; ``("", nan)`` when every pitch class weighs the same."""
    found = find_key(chroma.sum(axis=1))
    return ("", float("nan")) if found is None else (found.name, found.correlation)


def segments(y: np.ndarray, sr: int, seconds: float = SEGMENT_SECONDS) -> list[np.ndarray]:
    """Consecutive, non-overlapping whole segments; a shorter tail is left out, as in the GTZAN 3-s table."""
    size = int(seconds * sr)
    return [y[start : start + size] for start in range(0, len(y) - size + 1, size)]


@dataclass(frozen=True)
class WindowedTrack:
    """A track as a genre model sees it: the GTZAN features of each window, and what a listener is shown
    of the whole (its key and pitch-class profile over every window, its tempo)."""

    windows: list[dict[str, float]]  # GTZAN_FEATURES of each window
    pitch_classes: list[float]  # mean chroma of each pitch class over the windows, C first
    key: str  # "" when every pitch class weighs the same
    key_confidence: float  # nan then
    tempo: float  # the median of the windows' tempi


def analyse_windows(
    audio: DecodedAudio,
    seconds: float = WINDOW_SECONDS,
    max_windows: int | None = None,
    cancelled: threading.Event | None = None,
) -> WindowedTrack:
    """The GTZAN features of each consecutive whole window of ``seconds`` (of the whole track if it is
    shorter), with the track's key, pitch classes and tempo from the same chromagrams and beat tracking.

    This is how a genre model trained on the 30-second table sees a track of any length; the
    classification job gets the same windows from the extraction job's tables. With ``max_windows``,
    a longer track is represented by that many windows spread evenly over it, which bounds the work
    (seconds of CPU per window). Once ``cancelled`` is set it stops with :class:`TimeoutError`.
    """
    windows = segments(audio.samples, audio.sample_rate, seconds) or [audio.samples]
    if max_windows is not None and len(windows) > max_windows:
        windows = [windows[i] for i in np.linspace(0, len(windows) - 1, max_windows).round().astype(int)]
    features, chromas = [], []
    for window in windows:
        if cancelled is not None and cancelled.is_set():
            raise TimeoutError(f"stopped after {len(features)} of {len(windows)} windows: cancelled")
        window_features, chroma, _ = _clip_features(window, audio.sample_rate)
        features.append(window_features)
        chromas.append(chroma)
    chroma = np.hstack(chromas)
    key, key_confidence = estimate_key(chroma)
    return WindowedTrack(
        windows=features,
        pitch_classes=chroma.mean(axis=1).tolist(),
        key=key,
        key_confidence=key_confidence,
        tempo=float(np.median([window["tempo"] for window in features])),
    )


def analyze(audio: DecodedAudio, segment_seconds: float = SEGMENT_SECONDS) -> TrackAnalysis:
    """Features of the whole track and of its consecutive segments, key, tempo and beats."""
    y, sr = audio.samples, audio.sample_rate
    features, chroma, beats = _clip_features(y, sr)
    key, key_confidence = estimate_key(chroma)
    return TrackAnalysis(
        duration=audio.duration,
        sample_rate=audio.native_sample_rate,
        analysis_sample_rate=sr,
        length=len(y),
        key=key,
        key_confidence=key_confidence,
        pitch_classes=chroma.mean(axis=1).tolist(),
        tempo=features["tempo"],
        beat_times=librosa.frames_to_time(beats, sr=sr).tolist(),
        features=features,
        segment_seconds=segment_seconds,
        segments=[gtzan_features(segment, sr) for segment in segments(y, sr, segment_seconds)],
    )


def analyze_bytes(
    data: bytes, sample_rate: int = SAMPLE_RATE, segment_seconds: float = SEGMENT_SECONDS
) -> TrackAnalysis:
    """Decode and analyse one audio file's bytes; raises ``AudioDecodeError`` for unusable audio."""
    return analyze(decode(data, sample_rate), segment_seconds)


def warm_up(sample_rate: int = SAMPLE_RATE) -> None:
    """Run every code path once on a synthetic clip, so that numba compiles (or loads its cache) now."""
    t = np.arange(int(2 * SEGMENT_SECONDS * sample_rate)) / sample_rate
    y = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.3 * (np.mod(t, 0.5) < 0.01)
    analyze(DecodedAudio(y.astype(np.float32), sample_rate, sample_rate, 1, float(t[-1])))
