"""Recommendation: interactions and their split (``interactions``, ``hetrec``), the models by kind
(``models``), ranking metrics (``metrics``), training and storing a model (``train``), its Ray Tune
search (``search``), and a model with its id maps as stored and served (``bundle``)."""
