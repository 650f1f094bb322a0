"""ALS on Ray Train workers: the same factors as one process, and resumption after a kill."""

import json

import numpy as np
import scipy.sparse as sp
import torch

from encore.recsys.models import ALS
from encore.recsys.models.als_train import CHECKPOINT_FILE, RUN_SNAPSHOT_FILE, fit_on_ray
from encore.store import runs

from conftest import run_driver

PARAMS = {"factors": 8, "iterations": 3, "regularization": 0.1, "alpha": 2.0, "cg_steps": 3}


def plays(n_users=301, n_items=123, seed=0) -> sp.csr_matrix:
    matrix = sp.random(n_users, n_items, density=0.05, format="csr", random_state=seed)
    matrix.data = np.ceil(matrix.data * 20)
    return matrix


def test_two_workers_compute_what_one_process_does(ray_local, tmp_path):
    # Frequency scaling on: each worker must penalise its slice of rows with those rows' own penalties.
    user_items, params = plays(), {**PARAMS, "iterations": 5, "frequency_scaling": 1.0}
    local = ALS(**params).fit(user_items)
    distributed = fit_on_ray(
        ALS(**params), user_items, num_workers=2, storage_path=str(tmp_path), name="agree", checkpoint_every=3
    )
    np.testing.assert_allclose(distributed.user_factors_, local.user_factors_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(distributed.item_factors_, local.item_factors_, rtol=1e-4, atol=1e-6)
    assert (distributed.user_items_ != local.user_items_).nnz == 0
    assert distributed.mean_user_confidence_ == local.mean_user_confidence_
    # Checkpoints after every third sweep and after the last: sweeps 2 and 4 (0-based), not 3 and 4.
    saved = [np.load(path)["iteration"] for path in (tmp_path / "agree").glob(f"checkpoint_*/{CHECKPOINT_FILE}")]
    assert sorted(saved) == [2, 4]


def test_a_run_killed_anywhere_resumes_to_what_an_uninterrupted_run_computes(ray_local, tmp_path):
    """Every state a kill can leave in a run's storage, made on purpose instead of by racing a kill."""
    user_items, params = plays(seed=3), {**PARAMS, "iterations": 4}
    uninterrupted = ALS(**params).fit(user_items)
    run = tmp_path / "run"

    def resume() -> ALS:
        return fit_on_ray(ALS(**params), user_items, num_workers=1, storage_path=str(tmp_path), name="run")

    def assert_uninterrupted(model: ALS) -> None:
        np.testing.assert_allclose(model.user_factors_, uninterrupted.user_factors_, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(model.item_factors_, uninterrupted.item_factors_, rtol=1e-5, atol=1e-7)

    # Killed after the checkpoint of sweep 1 was registered, anywhere until the next one is (between
    # checkpoints too): the storage holds what a run of two sweeps under the run's name leaves.
    fit_on_ray(ALS(**{**params, "iterations": 2}), user_items, num_workers=1, storage_path=str(tmp_path), name="run")
    # ... and killed while saving the next checkpoint: its folder was written, never registered. It holds
    # other factors, so that resuming from it would show.
    unregistered = run / "checkpoint_2099-12-31_23-59-59.999999"
    unregistered.mkdir()
    np.savez(unregistered / CHECKPOINT_FILE, users=uninterrupted.user_factors_ + 1,
             items=uninterrupted.item_factors_ + 1, iteration=2)  # fmt: skip
    assert_uninterrupted(resume())

    # Killed during the final save: every sweep registered, the job resubmitted before it stored the model.
    assert_uninterrupted(resume())

    # Killed while Ray Train rewrote its record of the checkpoints: the record is cut short.
    snapshot = run / RUN_SNAPSHOT_FILE
    json.loads(snapshot.read_text())
    snapshot.write_text(snapshot.read_text()[:50])
    assert_uninterrupted(resume())
    assert (run / f"{RUN_SNAPSHOT_FILE}.torn").exists() and json.loads(snapshot.read_text())


def synthetic_dataset(path, n_users=3_000, n_items=1_500, per_user=30, seed=1):
    import pandas as pd

    from encore.privacy.ids import id_key, key_fingerprint
    from encore.recsys.interactions import InteractionDataset, SplitConfig

    rng = np.random.default_rng(seed)
    popularity = 1 / np.arange(1, n_items + 1) ** 0.8
    items = np.concatenate([rng.choice(n_items, per_user, replace=False, p=popularity / popularity.sum())
                            for _ in range(n_users)])  # fmt: skip
    pairs = pd.DataFrame({
        "user": np.repeat([f"u{u:06d}" for u in range(n_users)], per_user),
        "item": [f"i{i:05d}" for i in items],
        "weight": rng.integers(1, 50, size=len(items)).astype(float),
        "timestamp": np.nan,
    })  # fmt: skip
    catalogue = pd.DataFrame({"item_id": pd.Series(dtype=str), "name": pd.Series(dtype=str), "tags": []})
    manifest = {"id_key_fingerprint": key_fingerprint(id_key())}
    dataset = InteractionDataset.build(pairs, catalogue, SplitConfig(), manifest)
    dataset.save(path)
    return dataset


def fit_on_one_thread(params: dict, user_items: sp.csr_matrix) -> ALS:
    """The fit a one-CPU Ray Train worker makes: one torch thread. Three CG steps a sweep pass on the rounding
    that another thread count's kernels make: on a 2-core Xeon, one and two threads ended 0.06 apart on this
    test's data, with the same objective within 0.002% (and 3e-5 apart when CG runs to convergence)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ALS(**params).fit(user_items)
    finally:
        torch.set_num_threads(threads)


def run_training_job(ray_local, dataset, store, storage, params, until_checkpoint=None):
    """``python -m jobs.train`` for ALS on one worker (see ``conftest.run_driver``)."""
    arguments = [
        "jobs.train", "--dataset", str(dataset), "--store", str(store), "--model", "als", "--params", params,
        "--workers", "1", "--run-name", "resumable", "--train-storage", str(storage),
    ]  # fmt: skip
    return run_driver(ray_local, arguments, until_checkpoint)


def test_a_killed_job_resumes_from_its_last_checkpoint(ray_local, tmp_path):
    from encore.recsys.bundle import RecommenderBundle
    from encore.recsys.interactions import InteractionDataset
    from encore.recsys.metrics import evaluate
    from encore.store import ModelStore

    synthetic_dataset(tmp_path / "dataset")
    dataset = InteractionDataset.load(tmp_path / "dataset")
    params = {"factors": 16, "iterations": 4, "regularization": 1.0, "alpha": 1.0, "log_scaling": True}
    storage = tmp_path / "runs"
    run_training_job(ray_local, tmp_path / "dataset", tmp_path / "store", storage, json.dumps(params),
                     until_checkpoint=storage / "resumable-train")  # fmt: skip
    assert not (storage / "resumable-train" / runs.MARKER_NAME).exists()  # unfinished: kept to resume

    output = run_training_job(ray_local, tmp_path / "dataset", tmp_path / "store", storage, json.dumps(params))
    assert "run resumable-train" in output and "resumed from the checkpoint of iteration" in output, output

    stored = ModelStore(tmp_path / "store").load("latest")
    # Both fits' runs are marked finished with the version saved: gc removes them after retention.
    for run in ("resumable-train", "resumable-train-validation"):
        assert json.loads((storage / run / runs.MARKER_NAME).read_text())["version"] == stored.manifest.version
    model = RecommenderBundle.load(stored.path, "als").model
    local = fit_on_one_thread(params, dataset.matrix("train", "validation"))
    np.testing.assert_allclose(model.item_factors_, local.item_factors_, rtol=1e-3, atol=1e-5)
    local_selection = fit_on_one_thread(params, dataset.matrix("train"))
    expected = evaluate(local_selection, dataset.matrix("train"), dataset.matrix("validation"))["ndcg@10"]
    assert abs(stored.manifest.metrics["validation"]["ndcg@10"] - expected) < 1e-3
