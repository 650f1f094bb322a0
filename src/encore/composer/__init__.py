"""Composition: a transformer over time steps of sounding pitches, trained on Ray Train.

:mod:`~encore.composer.tokens` holds the vocabulary, :class:`Piece` (music with its labels, the one
form it takes between MIDI in and out) and the JSB Chorales loader,
:mod:`~encore.composer.model` the model with its exact likelihood and sampling,
:mod:`~encore.composer.train` the training loop, :mod:`~encore.composer.ray_train` that loop on a
Ray Train worker group, :mod:`~encore.composer.search` its Ray Tune search and
:mod:`~encore.composer.evaluate` stored composers scored. Music in and out:
:mod:`~encore.composer.midi` (MIDI files and WAV renders), :mod:`~encore.composer.corpus` (the
corpus shipped with music21), :mod:`~encore.composer.prepare` (MIDI or the corpus made into pieces,
on Ray Data), :mod:`~encore.composer.data` (prepared pieces with their labels, and the training corpus
made of them) and :mod:`~encore.composer.checks` (musical checks).
:mod:`~encore.composer.compose` is a model as stored and served, and
:mod:`~encore.composer.service` one ``POST /v1/compose`` answered.
"""

from encore.composer.model import Composer, ComposerConfig
from encore.composer.tokens import TOKENIZER_VERSION, DataError, Piece, decode, encode, load_jsb
from encore.composer.train import TrainConfig, fit

__all__ = [
    "TOKENIZER_VERSION",
    "Composer",
    "ComposerConfig",
    "DataError",
    "Piece",
    "TrainConfig",
    "decode",
    "encode",
    "fit",
    "load_jsb",
]
