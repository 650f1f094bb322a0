"""Composition: a transformer over time steps of sounding pitches, trained on Ray Train.

:mod:`~encore.composer.tokens` holds the vocabulary and the JSB Chorales loader,
:mod:`~encore.composer.model` the model with its exact likelihood and sampling, and
:mod:`~encore.composer.train` the training loop that ``jobs/train_composer.py`` runs on Ray Train.
"""

from encore.composer.model import Composer, ComposerConfig
from encore.composer.tokens import TOKENIZER_VERSION, DataError, decode, encode, load_jsb
from encore.composer.train import TrainConfig, fit

__all__ = [
    "TOKENIZER_VERSION",
    "Composer",
    "ComposerConfig",
    "DataError",
    "TrainConfig",
    "decode",
    "encode",
    "fit",
    "load_jsb",
]
