import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize(
    "module",
    ["jobs.ingest", "jobs.train", "jobs.evaluate", "jobs.pipeline", "jobs.erase", "tuning.popularity", "encore.store"],
)
def test_entrypoints_explain_themselves(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_train_refuses_a_missing_dataset(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            "--dataset",
            str(tmp_path / "nothing"),
            "--store",
            str(tmp_path / "store"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "", "RAY_ADDRESS": "", "ENCORE_ID_KEY": "k"},
    )
    assert result.returncode != 0
    assert "error: " in result.stderr and "not an ingested dataset" in result.stderr
    assert "Traceback" not in result.stderr
