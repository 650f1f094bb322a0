"""Recommendation quality on Last.fm HetRec: Encore's models against ``implicit``, side by side.

Every model gets the same split, the same evaluator and the same search budget: ``--samples``
trials of optuna's TPE sampler (seeded alike for every model) over its search space (for Encore's
models, the space ``tuning.<kind>`` searches: ``encore.recsys.spaces``), each fitted on train and scored on validation;
the best by validation NDCG@10 is refitted on train + validation and scored once on test. Both ALS
libraries search the same space, and each also fits the configurations the other's search proposed,
so they differ by implementation only; ``implicit`` is given the Hu et al. confidence
``1 + alpha * s(w)`` directly (its own ``alpha`` at 1), so both solve the same objective. Encore's
ALS also runs as ``tuning.als`` searches it: that space plus ``frequency_scaling``, the penalty
growing with plays that ``implicit`` does not have. Encore's blend reuses the configurations its
frequency-scaled ALS, EASE, item-kNN and RP3beta searches chose and then searches its weights on
validation (so it builds on four searches; the table says so), and Encore's hybrid takes that
blend as its collaborative model and adds the tag content model, its weighting searched on
validation the same way (item tags count no tagging event of a validation or test pair). One
table: the chosen configuration, validation NDCG@10, test NDCG@10 with a bootstrap 95% interval
over users, Recall@20, MAP@10, NDCG@10 on cold test items (at most
``encore.recsys.metrics.COLD_MAX_LISTENERS`` training listeners) and fit time; then Encore's best on
validation against the best reference on test.

Split: the bundled HetRec sample, seed 42, pseudonymisation with the development key (the split
depends on all three).

    python -m benchmarks.recsys [--samples 16] [--models als,implicit-als,ease,...]
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import optuna
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from encore.privacy.ids import DEVELOPMENT_KEY
from encore.recsys import hetrec, spaces
from encore.recsys.interactions import InteractionDataset, SplitConfig, merge_duplicates, parse_file
from encore.recsys.metrics import bootstrap_interval, cold_items, evaluate, per_user_metrics, restrict_items
from encore.recsys.models import fit_model
from encore.recsys.models.base import standardise

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "lastfm-hetrec2k"
THREADS = 2


class ImplicitALS:
    """``implicit``'s CPU ALS behind Encore's ``score``, fitted on Hu et al. confidences."""

    def __init__(self, factors, regularization, alpha, log_scaling, iterations=15, cg_steps=3):
        from implicit.cpu.als import AlternatingLeastSquares

        self.scale = (alpha, log_scaling)
        self.model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=1.0, iterations=iterations, use_cg=True,
            calculate_training_loss=False, num_threads=THREADS, random_state=0,
        )  # fmt: skip
        self.model.cg_steps = cg_steps  # not a constructor argument in implicit 0.7

    def fit(self, user_items: sp.csr_matrix) -> "ImplicitALS":
        alpha, log_scaling = self.scale
        confidence = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        confidence.data = 1 + alpha * (np.log1p(confidence.data) if log_scaling else confidence.data)
        self.model.fit(confidence, show_progress=False)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.model.user_factors[users] @ self.model.item_factors.T


class ImplicitItemItem:
    """``implicit``'s item-item neighbours (cosine or BM25), scored as its ``recommend`` does."""

    def __init__(self, weighting, K, K1=1.2, B=0.75):
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        self.model = (
            BM25Recommender(K=K, K1=K1, B=B, num_threads=THREADS)
            if weighting == "bm25"
            else CosineRecommender(K=K, num_threads=THREADS)
        )

    def fit(self, user_items: sp.csr_matrix) -> "ImplicitItemItem":
        self.user_items = sp.csr_matrix(user_items, dtype=np.float32)
        self.model.fit(self.user_items, show_progress=False)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return (self.user_items[users] @ self.model.similarity).toarray()


def item_item_space(trial):
    return {
        "weighting": trial.suggest_categorical("weighting", ["cosine", "bm25"]),
        "K": trial.suggest_categorical("K", [20, 50, 100, 200, 400]),
        "K1": trial.suggest_float("K1", 0.5, 2.0),
        "B": trial.suggest_float("B", 0.3, 1.0),
    }


# name -> (search space over an optuna trial, fit(params, user_items, items) -> model with score(users), is a reference)
CANDIDATES = {
    "encore als": (spaces.als_classic_space, lambda p, x, items: fit_model("als", p, x, items), False),
    "implicit als": (spaces.als_classic_space, lambda p, x, items: ImplicitALS(**p).fit(x), True),
    "encore als (frequency-scaled)": (spaces.als_space, lambda p, x, items: fit_model("als", p, x, items), False),
    "implicit item-item": (item_item_space, lambda p, x, items: ImplicitItemItem(**p).fit(x), True),
    "encore ease": (spaces.ease_space, lambda p, x, items: fit_model("ease", p, x, items), True),
    "encore item-knn": (spaces.knn_space, lambda p, x, items: fit_model("item_knn", p, x, items), False),
    "encore rp3beta": (spaces.rp3beta_space, lambda p, x, items: fit_model("rp3beta", p, x, items), False),
}


def load_split() -> InteractionDataset:
    key = DEVELOPMENT_KEY.encode()
    parsed = parse_file((SAMPLE / "user_artists.dat").read_bytes(), "user_artists.dat", key)
    return InteractionDataset.build(
        merge_duplicates(parsed),
        hetrec.load_catalogue(str(SAMPLE)),
        SplitConfig(42),
        {},
        hetrec.read_taggings(str(SAMPLE), key),
    )


ALS_PAIR = ("encore als", "implicit als")


def tpe_search(objective, trials: int, seed: int) -> list[tuple[float, dict]]:
    """Maximise ``objective(trial) -> (value, params)`` with optuna's seeded TPE sampler; returns every
    trial's value and parameters."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

    def record(trial):
        value, params = objective(trial)
        trial.set_user_attr("params", params)
        return value

    study.optimize(record, n_trials=trials)
    return [(trial.value, trial.user_attrs["params"]) for trial in study.trials]


def validation_score(name: str, params: dict, dataset: InteractionDataset) -> float:
    fit = CANDIDATES[name][1]
    train = dataset.matrix("train")
    value = evaluate(fit(params, train, dataset.items), train, dataset.matrix("validation"))["ndcg@10"]
    print(f"  {name}: validation ndcg@10 {value:.4f} {json.dumps(params)}", flush=True)
    return value


def propose(name: str, dataset: InteractionDataset, samples: int, seed: int) -> list[tuple[float, dict]]:
    """``samples`` TPE trials over the model's space, each scored on validation."""
    space = CANDIDATES[name][0]

    def objective(trial):
        params = space(trial)
        return validation_score(name, params, dataset), params

    return tpe_search(objective, samples, seed)


def pool_als(trials: dict[str, list[tuple[float, dict]]], dataset: InteractionDataset) -> None:
    """Each ALS library also fits the configurations the other one's search proposed, so the two differ
    only by implementation, not by where their searches happened to wander."""
    proposed = {name: [params for _, params in trials[name]] for name in ALS_PAIR}
    for name, other in (ALS_PAIR, ALS_PAIR[::-1]):
        trials[name] += [
            (validation_score(name, params, dataset), params)
            for params in proposed[other]
            if params not in proposed[name]
        ]


def tested(name: str, reference: bool, shown: dict, validation: float, fit, dataset: InteractionDataset) -> dict:
    """A row of the table: ``fit(user_items, items)`` refitted on train + validation, scored once on test."""
    seen, test = dataset.matrix("train", "validation"), dataset.matrix("test")
    started = time.perf_counter()
    model = fit(seen, dataset.items)
    fit_seconds = time.perf_counter() - started
    values, _ = per_user_metrics(model, seen, test)
    cold, _ = per_user_metrics(model, seen, restrict_items(test, cold_items(seen)), ks=(10,))
    return {
        "model": name, "reference": reference, "params": shown, "validation": validation,
        "test": float(values["ndcg@10"].mean()), "ci": bootstrap_interval(values["ndcg@10"]),
        "recall@20": float(values["recall@20"].mean()), "map@10": float(values["map@10"].mean()),
        "cold": float(cold["ndcg@10"].mean()), "fit_seconds": fit_seconds, "per_user": values["ndcg@10"],
    }  # fmt: skip


def select_and_test(name: str, dataset: InteractionDataset, trials: list[tuple[float, dict]]) -> dict:
    """The best trial on validation, refitted on train + validation and scored once on test."""
    fit, reference = CANDIDATES[name][1:]
    best_validation, best = max(trials, key=lambda trial: trial[0])
    return tested(name, reference, best, best_validation, lambda seen, items: fit(best, seen, items), dataset)


BLENDED = ("encore als (frequency-scaled)", "encore ease", "encore item-knn", "encore rp3beta")
KIND = {
    "encore als (frequency-scaled)": "als", "encore ease": "ease", "encore item-knn": "item_knn",
    "encore rp3beta": "rp3beta",
}  # fmt: skip
BLEND_TRIALS_PER_SAMPLE = 4
BLEND = "encore blend (als + ease + item-knn + rp3beta above)"
HYBRID = "encore hybrid (blend above + tags)"


class _WeightedScores:
    """A trial of the weight search: the parts' standardised validation scores, computed once, weighted."""

    def __init__(self, standardised: list[np.ndarray], weights: list[float]):
        self.standardised, self.weights = standardised, weights

    def score(self, users: np.ndarray) -> np.ndarray:
        return sum(weight * scores[users] for scores, weight in zip(self.standardised, self.weights))


def search_blend(rows: dict, dataset: InteractionDataset, samples: int, seed: int) -> dict:
    """Blend the searched configurations of Encore's ALS, EASE, item-kNN and RP3beta: TPE searches the
    weights (normalised to sum to one) on validation, the best is refitted as a ``Blend`` on train +
    validation. A weighting is cheap to score, so the blend gets ``BLEND_TRIALS_PER_SAMPLE`` trials per sample."""
    train, validation = dataset.matrix("train"), dataset.matrix("validation")
    users = np.arange(train.shape[0])
    standardised = [
        standardise(fit_model(KIND[name], rows[name]["params"], train, dataset.items).score(users)).astype(np.float32)
        for name in BLENDED
    ]

    def objective(trial):
        raw = [trial.suggest_float(name, 0.0, 1.0) for name in BLENDED]
        weights = [w / (sum(raw) or 1.0) for w in raw]
        value = evaluate(_WeightedScores(standardised, weights), train, validation)["ndcg@10"]
        print(f"  encore blend: validation ndcg@10 {value:.4f} weights {np.round(weights, 3).tolist()}", flush=True)
        return value, weights

    best_validation, weights = max(tpe_search(objective, BLEND_TRIALS_PER_SAMPLE * samples, seed), key=lambda t: t[0])
    parts = [{"kind": KIND[name], "params": rows[name]["params"], "weight": w} for name, w in zip(BLENDED, weights)]
    row = tested(
        BLEND, False, {name: round(w, 3) for name, w in zip(BLENDED, weights)}, best_validation,
        lambda seen, items: fit_model("blend", {"parts": parts}, seen, items), dataset,
    )  # fmt: skip
    return {**row, "parts": parts}


class _CachedHybrid:
    """A trial of the hybrid's weighting: the hybrid fitted once on train, its parts' scores computed once."""

    def __init__(self, hybrid, collaborative: np.ndarray, content: np.ndarray):
        self.hybrid, self.collaborative, self.content = hybrid, collaborative, content

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.hybrid.combine(self.collaborative[users], self.content[users])


def search_hybrid(blend: dict, dataset: InteractionDataset, samples: int, seed: int) -> dict:
    """The blend above as the hybrid's collaborative model, with content from the tags: TPE searches
    ``balance``, ``cold_weight`` and ``warm_weight`` on validation (``BLEND_TRIALS_PER_SAMPLE`` trials
    per sample, as the blend), the best is refitted on train + validation."""
    train, validation = dataset.matrix("train"), dataset.matrix("validation")
    users = np.arange(train.shape[0])
    base = {"collaborative": "blend", "collaborative_params": {"parts": blend["parts"]}, "features": "tags"}
    hybrid = fit_model("hybrid", base, train, dataset.items)
    cached = _CachedHybrid(hybrid, hybrid.collaborative_.score(users), hybrid.content_.score(users))

    def objective(trial):
        weighting = spaces.weighting_space(trial)
        for name, value in weighting.items():
            setattr(hybrid, name, value)  # read when scoring: no refit needed
        value = evaluate(cached, train, validation)["ndcg@10"]
        shown = json.dumps({name: round(v, 3) for name, v in weighting.items()})
        print(f"  {HYBRID}: validation ndcg@10 {value:.4f} {shown}", flush=True)
        return value, weighting

    best_validation, weighting = max(tpe_search(objective, BLEND_TRIALS_PER_SAMPLE * samples, seed), key=lambda t: t[0])
    return tested(
        HYBRID, False, {name: round(v, 3) for name, v in weighting.items()}, best_validation,
        lambda seen, items: fit_model("hybrid", {**base, **weighting}, seen, items), dataset,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=16, help="configurations tried per model")
    parser.add_argument(
        "--models", default=",".join(CANDIDATES), help="comma-separated, from: " + ", ".join(CANDIDATES)
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial prints its own line
    try:
        import implicit  # noqa: F401
    except ImportError:
        raise SystemExit("error: this benchmark needs implicit: pip install -c constraints.txt -e '.[bench]'") from None
    os.environ.setdefault("ENCORE_ID_KEY", DEVELOPMENT_KEY)
    dataset = load_split()
    names = args.models.split(",")
    with threadpool_limits(THREADS):
        import torch

        torch.set_num_threads(THREADS)
        trials = {name: propose(name, dataset, args.samples, args.seed) for name in names}
        if all(name in trials for name in ALS_PAIR):
            pool_als(trials, dataset)
        rows = [select_and_test(name, dataset, trials[name]) for name in names]
        searched = {row["model"]: row for row in rows}
        if all(name in searched for name in BLENDED):
            rows.append(search_blend(searched, dataset, args.samples, args.seed))
            rows.append(search_hybrid(rows[-1], dataset, args.samples, args.seed))

    print(f"\nLast.fm HetRec, split seed 42 (development key), {args.samples} TPE trials per model, "
          f"selected on validation NDCG@10, refitted on train + validation, scored on test\n")  # fmt: skip
    print("| model | validation NDCG@10 | test NDCG@10 (95% CI) | Recall@20 | MAP@10 | cold NDCG@10 | fit s | "
          "configuration |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in sorted(rows, key=lambda r: -r["test"]):
        low, high = row["ci"]
        print(f"| {row['model']}{' (reference)' if row['reference'] else ''} | {row['validation']:.4f} | "
              f"{row['test']:.4f} ({low:.4f}–{high:.4f}) | {row['recall@20']:.4f} | {row['map@10']:.4f} | "
              f"{row['cold']:.4f} | {row['fit_seconds']:.1f} | `{json.dumps(row['params'])}` |")  # fmt: skip
    ours = [row for row in rows if not row["reference"]]
    references = [row for row in rows if row["reference"]]
    if ours and references:
        # Encore's best is the one validation chose; the reference is the best on test, which favours it.
        best, rival = max(ours, key=lambda r: r["validation"]), max(references, key=lambda r: r["test"])
        low, high = bootstrap_interval(best["per_user"] - rival["per_user"])
        print(f"\nEncore's best on validation ({best['model']}) against the best reference on test ({rival['model']}): "
              f"{100 * (best['test'] / rival['test'] - 1):+.1f}% test NDCG@10 "
              f"(paired difference {best['test'] - rival['test']:+.4f}, 95% CI {low:+.4f} to {high:+.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
