"""What every domain shares: filesystems (local and ``s3://``), connecting to Ray, the error family and
the one way a Ray Tune search runs, and musical keys (``keys``), which audio analysis and the composer
both find and name. Nothing else here knows about recommendations, audio or music."""
