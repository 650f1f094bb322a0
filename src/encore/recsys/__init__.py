"""Recommendation: interactions parsed, validated, pseudonymised and split (``interactions``; ``ingest``
runs it on Ray Data; ``hetrec`` reads the Last.fm catalogue), the models by kind (``models``), ranking
metrics (``metrics``), training and storing a model (``train``), models side by side on test
(``evaluate``), search spaces (``spaces``) and their Ray Tune search (``search``), and a model with its
id maps as stored and served (``bundle``)."""
