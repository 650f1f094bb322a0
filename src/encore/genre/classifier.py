"""Genre classification from the GTZAN feature schema, and its evaluation.

The model (``GenreClassifier``) sees a 30-second window as the 57 GTZAN feature columns, takes the
log of the columns that are positive (the variances, levels and spectral means), standardises them,
and averages the class probabilities of an ensemble of small wide-and-deep networks: a linear
softmax layer plus one hidden layer, trained with input and hidden dropout, weight decay, mixup and
label smoothing. Small data (443 training tracks in the artist-disjoint split) and a test set of
other artists reward that much regularisation; the ensemble makes the probabilities steadier than
any one network's. A track of any length is classified by averaging the probabilities of its
consecutive 30-second windows (``predict_track``).

Its data are read by :mod:`encore.genre.data`. ``evaluate`` gives accuracy and macro-F1 with
bootstrap confidence intervals over tracks, per-genre precision, recall and F1, the confusion matrix
and the log-loss.
"""

import contextlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from encore.audio.schema import GTZAN_FEATURES
from encore.audio.vectors import FeatureScaler, feature_matrix

CONFIG_FILE, STATE_FILE = "config.json", "state.pt"
BOOTSTRAP_SAMPLES = 1000


# ---- the model ------------------------------------------------------------------------


class _WideAndDeep(torch.nn.Module):
    """Logits = a linear layer of the inputs + a one-hidden-layer network of them (none if ``hidden`` is 0)."""

    def __init__(self, n_features: int, n_classes: int, hidden: int, dropout: float, input_dropout: float):
        super().__init__()
        self.input_dropout = torch.nn.Dropout(input_dropout)
        self.linear = torch.nn.Linear(n_features, n_classes)
        self.deep = None
        if hidden:
            self.deep = torch.nn.Sequential(
                torch.nn.Linear(n_features, hidden),
                torch.nn.GELU(),
                torch.nn.Dropout(dropout),
                torch.nn.Linear(hidden, n_classes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x)
        logits = self.linear(x)
        return logits if self.deep is None else logits + self.deep(x)


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread: these networks are so small that more threads only contend (the
    measurement is in ``benchmarks/RESULTS.md``, "Genre")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class GenreClassifier:
    """An ensemble of regularised wide-and-deep networks over log-scaled, standardised GTZAN features.

    Parameters
    ----------
    hidden : int
        Units of the hidden layer; 0 leaves a multinomial logistic regression.
    dropout, input_dropout : float
        Dropout on the hidden layer and on the inputs.
    weight_decay : float
        AdamW's decoupled weight decay.
    mixup : float
        Beta(mixup, mixup) parameter of mixup (Zhang et al. 2018); 0 turns it off.
    label_smoothing : float
        Probability mass spread evenly over the classes of every target.
    epochs, learning_rate, batch_size : training schedule (AdamW, cosine decay).
    members : int
        Networks in the ensemble, each from its own seed; their probabilities are averaged.
    seed : int

    Examples
    --------
    >>> model = GenreClassifier().fit(train_table, train_table["label"])
    >>> model.predict_proba(test_table)  # one row per window, columns in ``model.classes_`` order
    """

    # The defaults are the configuration ``python -m tuning.genre --num-samples 16 --seed 0`` chose on
    # validation log-loss, rounded: a narrow, heavily regularised network beside the linear layer.
    def __init__(
        self,
        hidden: int = 32,
        dropout: float = 0.65,
        input_dropout: float = 0.15,
        weight_decay: float = 0.03,
        mixup: float = 1.0,
        label_smoothing: float = 0.1,
        epochs: int = 60,
        learning_rate: float = 3e-3,
        batch_size: int = 64,
        members: int = 5,
        seed: int = 0,
    ):
        self.hidden, self.dropout, self.input_dropout = hidden, dropout, input_dropout
        self.weight_decay, self.mixup, self.label_smoothing = weight_decay, mixup, label_smoothing
        self.epochs, self.learning_rate, self.batch_size = epochs, learning_rate, batch_size
        self.members, self.seed = members, seed

    def get_params(self) -> dict:
        return {
            "hidden": self.hidden,
            "dropout": self.dropout,
            "input_dropout": self.input_dropout,
            "weight_decay": self.weight_decay,
            "mixup": self.mixup,
            "label_smoothing": self.label_smoothing,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "members": self.members,
            "seed": self.seed,
        }

    def _network(self) -> _WideAndDeep:
        return _WideAndDeep(len(GTZAN_FEATURES), len(self.classes_), self.hidden, self.dropout, self.input_dropout)

    def fit(self, features: pd.DataFrame, labels) -> "GenreClassifier":
        """Fit on a table with the GTZAN feature columns and one genre label per row."""
        X = feature_matrix(features, "training features")
        labels = np.asarray(labels, dtype=str)
        if len(labels) != len(X):
            raise ValueError(f"{len(X)} rows of features but {len(labels)} labels")
        self.classes_ = np.unique(labels)
        if len(self.classes_) < 2:
            raise ValueError(f"at least two genres are needed to fit, found {list(self.classes_)}")
        self.scaler_ = FeatureScaler().fit(X)
        inputs = torch.tensor(self.scaler_.transform(X), dtype=torch.float32)
        targets = torch.nn.functional.one_hot(torch.tensor(np.searchsorted(self.classes_, labels))).float()
        targets = targets * (1 - self.label_smoothing) + self.label_smoothing / len(self.classes_)
        with _one_thread():
            self.networks_ = [self._train_member(inputs, targets, self.seed * 1000 + m) for m in range(self.members)]
        return self

    def _train_member(self, inputs: torch.Tensor, targets: torch.Tensor, seed: int) -> _WideAndDeep:
        generator = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)  # the initial weights and dropout masks
        network = self._network()
        optimizer = torch.optim.AdamW(network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs)
        network.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(inputs), self.batch_size):
                batch = order[start : start + self.batch_size]
                x, y = inputs[batch], targets[batch]
                if self.mixup > 0:
                    share = float(rng.beta(self.mixup, self.mixup))
                    partner = torch.randperm(len(batch), generator=generator)
                    x, y = share * x + (1 - share) * x[partner], share * y + (1 - share) * y[partner]
                loss = -(y * torch.log_softmax(network(x), dim=1)).sum(dim=1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
        return network.eval()

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Class probabilities of each row (a 30-second window), columns in ``classes_`` order."""
        inputs = torch.tensor(self.scaler_.transform(feature_matrix(features, "features")), dtype=torch.float32)
        with torch.no_grad(), _one_thread():
            return np.mean([torch.softmax(network(inputs), dim=1).numpy() for network in self.networks_], axis=0)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return self.classes_[self.predict_proba(features).argmax(axis=1)]

    def predict_track(self, windows: pd.DataFrame) -> dict[str, float]:
        """``{genre: probability}`` of a track: the mean over its consecutive 30-second windows."""
        if len(windows) == 0:
            raise ValueError("a track needs at least one window of features")
        return dict(zip(self.classes_.tolist(), self.predict_proba(windows).mean(axis=0).tolist()))

    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` (hyperparameters, genres) and ``state.pt`` (scaler and network weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"params": self.get_params(), "classes": self.classes_.tolist(), "features": list(GTZAN_FEATURES)}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        state = {
            "scaler": {name: torch.tensor(value) for name, value in self.scaler_.state().items()},
            "networks": [network.state_dict() for network in self.networks_],
        }
        torch.save(state, folder / STATE_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> "GenreClassifier":
        folder = Path(folder)
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config["features"] != list(GTZAN_FEATURES):
            raise ValueError(f"{folder}: the model was trained on other feature columns than this code computes")
        model = cls(**config["params"])
        model.classes_ = np.array(config["classes"])
        state = torch.load(folder / STATE_FILE, weights_only=True)
        model.scaler_ = FeatureScaler.from_state({name: value.numpy() for name, value in state["scaler"].items()})
        model.networks_ = []
        for weights in state["networks"]:
            network = model._network()
            network.load_state_dict(weights)
            model.networks_.append(network.eval())
        return model


# ---- evaluation -----------------------------------------------------------------------


def _bootstrap_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    return np.quantile(values, [(1 - level) / 2, (1 + level) / 2]).tolist()


def evaluate(labels, probabilities: np.ndarray, classes, *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Metrics of predicted ``probabilities`` (rows: tracks, columns: ``classes``) against true ``labels``.

    Returns ``accuracy`` and ``macro_f1`` with 95% percentile bootstrap intervals over tracks
    (``accuracy_ci``, ``macro_f1_ci``; ``bootstrap`` resamples), ``log_loss``, ``per_genre``
    (precision, recall, F1, support) and ``confusion`` (rows: true genre, columns: predicted, in
    ``labels`` order), and ``n``.
    """
    labels, classes = np.asarray(labels, dtype=str), np.asarray(classes, dtype=str)
    unknown = sorted(map(str, set(labels) - set(classes)))
    if unknown:
        raise ValueError(f"labels the model does not know: {unknown}")
    predicted = classes[np.asarray(probabilities).argmax(axis=1)]
    truth, guess = np.searchsorted(classes, labels), np.searchsorted(classes, predicted)
    k = len(classes)

    def scores(index: np.ndarray) -> tuple[float, float]:
        # Macro-F1 from the confusion counts, vectorised: a bootstrap runs this a thousand times.
        counts = np.bincount(truth[index] * k + guess[index], minlength=k * k).reshape(k, k)
        hits = np.diag(counts)
        f1 = np.divide(2 * hits, counts.sum(axis=0) + counts.sum(axis=1), out=np.zeros(k), where=hits > 0)
        present = counts.sum(axis=1) > 0
        return hits.sum() / len(index), f1[present].mean()

    rng = np.random.default_rng(seed)
    resampled = np.array([scores(rng.integers(0, len(labels), len(labels))) for _ in range(bootstrap)])
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    return {
        "n": len(labels),
        "accuracy": float(np.mean(predicted == labels)),
        "accuracy_ci": _bootstrap_interval(resampled[:, 0]),
        "macro_f1": float(f1_score(labels, predicted, labels=np.unique(labels), average="macro", zero_division=0)),
        "macro_f1_ci": _bootstrap_interval(resampled[:, 1]),
        "log_loss": float(log_loss(labels, probabilities, labels=classes)),
        "per_genre": {
            genre: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for genre, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion": {
            "labels": classes.tolist(),
            "matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        },
    }
