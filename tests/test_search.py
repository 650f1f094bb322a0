"""The search runner every model's tuning shares: fixed settings are held, not searched."""

import optuna
from ray import tune

from encore.core.search import _HoldingTrial, run_search


def space(trial) -> dict:
    return {"x": trial.suggest_float("x", 0.0, 1.0), "epochs": trial.suggest_categorical("epochs", [40, 60])}


def test_fixed_settings_reach_every_trial_outside_the_space(ray_local, tmp_path):
    # Defined here so that Ray pickles it by value: the tests folder is not importable on its workers.
    def objective(config: dict) -> None:
        tune.report({"score": -((config["x"] - 0.3) ** 2) - config["epochs"]})

    for param_space in (space, {"x": tune.uniform(0.0, 1.0), "epochs": tune.choice([40, 60])}):
        results = run_search(
            objective, param_space, name="fixed", metric="score", mode="max", num_samples=3,
            storage_uri=str(tmp_path), seed=0, fixed={"epochs": 7, "seed": 1}, verbose=0,
        )  # fmt: skip
        assert len(results) == 3
        for result in results:
            assert (result.config["epochs"], result.config["seed"]) == (7, 1)
            assert 0.0 <= result.config["x"] <= 1.0


def test_a_held_parameter_is_not_a_dimension_of_the_study():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    configs = []
    study.optimize(lambda trial: configs.append(space(_HoldingTrial(trial, {"epochs": 7}))) or 0.0, n_trials=3)
    assert all(trial.params.keys() == {"x"} for trial in study.trials)
    assert [config["epochs"] for config in configs] == [7, 7, 7]
    assert len({config["x"] for config in configs}) == 3
