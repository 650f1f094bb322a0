"""Genre classification on the GTZAN feature schema: the classifier and its evaluation
(``classifier``) and the search over it and the scikit-learn baselines (``search``)."""
