"""What every domain shares: filesystems (local and ``s3://``), connecting to Ray, the error family and
the one way a Ray Tune search runs. Nothing here knows about recommendations, audio or music."""
