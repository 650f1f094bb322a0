"""What every domain shares: filesystems (local and ``s3://``, ``fs``), connecting to Ray (``runtime``),
the error family (``errors``) and how a command line reports a user's error (``cli``), the one way a
Ray Tune search runs (``search``), an evaluation's printed and saved report (``reports``), and musical
keys (``keys``), which audio analysis and the composer both find and name. Nothing here knows about
recommendations, genres or the model store."""
