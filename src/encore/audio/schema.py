"""The feature schema shared by the extraction job, the genre classifier and the similarity index,
and the extraction's Parquet tables.

Column names follow the GTZAN feature tables (``../shared/data/gtzan-features``, Kaggle "GTZAN
Dataset - Music Genre Classification"), so a model trained on those tables applies to features
extracted here.
"""

import pyarrow as pa

# Recorded with every extracted table and every model trained on its output: bump it whenever a
# change here or in ``features`` changes any value.
FEATURE_VERSION = "gtzan-librosa/1"

SAMPLE_RATE = 22_050
SEGMENT_SECONDS = 3.0
# The unit of the GTZAN 30-second table: genre models see a track as consecutive windows of this length.
WINDOW_SECONDS = 30.0
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".au")

# The summary statistics of the GTZAN tables, in their column order; ``tempo`` sits between
# ``perceptr`` and the MFCCs there.
_SPECTRAL = (
    "chroma_stft",
    "rms",
    "spectral_centroid",
    "spectral_bandwidth",
    "rolloff",
    "zero_crossing_rate",
    "harmony",
    "perceptr",
)
N_MFCC = 20
GTZAN_FEATURES = (
    *(f"{name}_{stat}" for name in _SPECTRAL for stat in ("mean", "var")),
    "tempo",
    *(f"mfcc{i}_{stat}" for i in range(1, N_MFCC + 1) for stat in ("mean", "var")),
)

# The tables of an extraction run (``encore.audio.extract``): a row per track, per segment, per failed file.
_FEATURE_FIELDS = [pa.field(name, pa.float64()) for name in GTZAN_FEATURES]
SEGMENT_TYPE = pa.struct(
    [pa.field("segment", pa.int32()), pa.field("start_s", pa.float64()), pa.field("length", pa.int64())]
    + _FEATURE_FIELDS
)
TRACKS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("duration", pa.float64()),
        pa.field("sample_rate", pa.int32()),
        pa.field("length", pa.int64()),
        pa.field("key", pa.string()),
        pa.field("key_confidence", pa.float64()),
        pa.field("pitch_classes", pa.list_(pa.float64())),
        pa.field("beat_times", pa.list_(pa.float64())),
        *_FEATURE_FIELDS,
    ]
)
SEGMENTS_SCHEMA = pa.schema([pa.field("track_path", pa.string()), pa.field("track_sha256", pa.string()), *SEGMENT_TYPE])
ERRORS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("reason", pa.string()),
    ]
)
