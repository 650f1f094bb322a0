"""GTZAN feature columns as model inputs: the matrix of a table, and its log-and-standardise scaling.

The variances of the GTZAN schema span several orders of magnitude across tracks (``rms_var`` from
1e-6 to 1e-1) and are skewed; their logarithms are close to normal, and a classifier gains much
from that change alone (``benchmarks/RESULTS.md``, "Genre"). The genre
classifier and the sound-alike index both use this scaling.
"""

import numpy as np
import pandas as pd

from encore.audio.schema import GTZAN_FEATURES


def feature_matrix(table: pd.DataFrame, source: str = "the table") -> np.ndarray:
    """The GTZAN feature columns of ``table`` as a float64 matrix, in schema order.

    Raises ValueError naming ``source`` and the missing columns or the first row with a value that
    is not a finite number.
    """
    missing = [name for name in GTZAN_FEATURES if name not in table.columns]
    if missing:
        raise ValueError(f"{source}: missing feature column(s) {', '.join(missing)}")
    try:
        matrix = table[list(GTZAN_FEATURES)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: a feature column is not numeric ({error})") from None
    bad = ~np.isfinite(matrix)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(f"{source}: row {row} has {matrix[row, column]} in {GTZAN_FEATURES[column]}")
    return matrix


class FeatureScaler:
    """Log of the columns that are positive in training, then standardisation.

    A value below the smallest one seen in training (the zero tempo of a window without beats) is
    clipped to it before the log: the model knows nothing below it, and the log must stay finite.
    """

    def fit(self, X: np.ndarray) -> "FeatureScaler":
        self.log_columns_ = np.flatnonzero((X > 0).all(axis=0))
        self.floor_ = X[:, self.log_columns_].min(axis=0)
        logged = self._log(X)
        self.mean_ = logged.mean(axis=0)
        # A constant column carries nothing; scale 1 keeps it at zero instead of dividing by zero.
        std = logged.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def _log(self, X: np.ndarray) -> np.ndarray:
        X = np.array(X, dtype=np.float64)
        X[:, self.log_columns_] = np.log(np.maximum(X[:, self.log_columns_], self.floor_))
        return X

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (self._log(X) - self.mean_) / self.scale_

    def state(self) -> dict[str, np.ndarray]:
        return {"log_columns": self.log_columns_, "floor": self.floor_, "mean": self.mean_, "scale": self.scale_}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "FeatureScaler":
        scaler = cls()
        scaler.log_columns_, scaler.floor_ = state["log_columns"], state["floor"]
        scaler.mean_, scaler.scale_ = state["mean"], state["scale"]
        return scaler
