"""Genre classification on the GTZAN feature schema: the feature table and split it learns from
(``data``), the classifier and its evaluation (``classifier``) and the search over it and the
scikit-learn baselines (``search``)."""
