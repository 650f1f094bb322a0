"""Genre classification on the GTZAN feature schema: the table and its artist-disjoint split (``data``),
the classifier and its evaluation (``classifier``), training and storing it (``train``), the search
over it and the scikit-learn baselines (``search``), and classifying a folder of audio (``classify``)."""
