"""Sound-alike search: the nearest tracks in scaled GTZAN feature space (``index``)."""
