"""Listeners' privacy: user ids pseudonymised by a keyed hash on arrival (``ids``), the key changed
without retraining (``rotation``), and a listener erased from every dataset and model (``erasure``)."""
