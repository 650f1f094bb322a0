"""Sound-alike search: the nearest tracks in scaled GTZAN feature space (``index``), built from an
extraction run and stored (``build``)."""
