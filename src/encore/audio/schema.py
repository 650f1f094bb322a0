"""The feature schema shared by the extraction job, the genre classifier and the similarity index.

Column names follow the GTZAN feature tables (``../shared/data/gtzan-features``, Kaggle "GTZAN
Dataset - Music Genre Classification"), so a model trained on those tables applies to features
extracted here.
"""

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
