"""The pipeline with every location on S3 (the moto server): input, dataset and model store."""

import io

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def test_pipeline_reads_and_writes_s3(ray_local, s3_bucket, tmp_path, monkeypatch):
    from encore.core import fs
    from encore.recsys.ingest import ingest
    from encore.recsys.interactions import InteractionDataset, SplitConfig
    from encore.recsys.train import train
    from encore.store import ModelStore

    monkeypatch.setenv("ENCORE_CACHE_DIR", str(tmp_path / "cache"))
    s3 = boto3.client("s3")
    users = [f"listener-{u}" for u in range(12)]
    csv_rows = ["user_id,item_id,plays,timestamp"] + [
        f"{user},song-{(u * 3 + i) % 20},{i + 1},2025-01-0{1 + i % 9}" for u, user in enumerate(users) for i in range(8)
    ]
    csv_rows.append("listener-0,song-1,-5,2025-01-01")  # line 98: rejected
    s3.put_object(Bucket=s3_bucket, Key="raw/part-0.csv", Body="\n".join(csv_rows).encode())
    table = pa.table(
        {
            "user": ["listener-0", "listener-1", None],
            "item": ["song-19", "song-18", "song-1"],
            "weight": [2.0, 3.0, 1.0],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3.put_object(Bucket=s3_bucket, Key="raw/part-1.parquet", Body=buffer.getvalue())

    summary = ingest(f"s3://{s3_bucket}/raw", f"s3://{s3_bucket}/datasets/plays", SplitConfig())
    train(f"s3://{s3_bucket}/datasets/plays", "popularity", {}, f"s3://{s3_bucket}/models", ["latest", "production"])

    assert (summary["read"], summary["accepted"], summary["rejected"]) == (100, 98, 2)
    assert summary["rejects"].startswith(f"s3://{s3_bucket}/datasets/plays/versions/")
    rejects = pd.read_csv(io.BytesIO(fs.read_bytes(summary["rejects"])))
    assert sorted(zip(rejects["source"].str.rsplit("/", n=1).str[-1], rejects["line"])) == [
        ("part-0.csv", 98),
        ("part-1.parquet", 3),
    ]
    dataset = InteractionDataset.load(f"s3://{s3_bucket}/datasets/plays")
    assert dataset.n_users == 12 and dataset.manifest["fingerprint"] == summary["fingerprint"]
    loaded = ModelStore(f"s3://{s3_bucket}/models").load("production")
    assert loaded.manifest.data_fingerprint == summary["fingerprint"]
    assert (loaded.path / "state.npz").exists()
