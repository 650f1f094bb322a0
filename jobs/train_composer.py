"""Train the composer with Ray Train, on JSB Chorales or on prepared pieces, and save it in the model store.

``--data`` is the JSB Chorales JSON (the default: the copy beside the repository, in
``../shared/data/jsb-chorales``, not shipped here since its source states no licence), whose
chorales carry no labels and are learnt unconditioned; or a folder or ``s3://`` prefix written by
``jobs.prepare_music`` (the music21 corpus, or your MIDI files), whose pieces are learnt with their
style, key, tempo and meter as conditioning tokens, cut to the model's length, and split 80/10/10
by a hash of their names.

``--num-workers`` Ray Train workers train one model with DDP (gloo on CPU, NCCL with ``--use-gpu``,
where the forward pass runs in bf16). After every epoch they report the validation NLL per time
step, and rank 0 checkpoints the whole training state to ``--storage``. A worker that dies is
replaced and training goes on from the last checkpoint, up to ``--max-failures`` times; if the
job itself dies, running the same command again resumes the same run, whose name follows from the
data and the settings (``--name`` sets it, e.g. to add epochs to a finished run). The weights of
the epoch with the best validation NLL are scored on the test split and saved as kind "composer",
with the style names of the model's slots, the instrument each is rendered with, and its step
length (``encore.composer.compose``).

    python -m jobs.train_composer --epochs 20 --num-workers 2 --store artifacts
    python -m jobs.train_composer --data artifacts/datasets/music21 --epochs 10 --store artifacts
"""

import argparse
import hashlib
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from encore.composer import TOKENIZER_VERSION, Composer, ComposerConfig, DataError, TrainConfig, fit
from encore.composer.compose import ComposerBundle
from encore.composer.corpus import style_program
from encore.composer.data import load_corpus
from encore.composer.train import add_arguments, configs_from_arguments
from encore.core import fs
from encore.core.runtime import init_ray, setup_logging, user_errors
from encore.serving.versions import serving_store
from encore.store import runs

logger = logging.getLogger("encore.train_composer")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jsb-chorales" / "jsb-chorales-quarter.json"
STATE_FILE = "state.pt"


def train_loop(config: dict) -> None:
    """One Ray Train worker: resume from the run's last checkpoint if there is one, then train."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    train_config = TrainConfig(**config["train"])
    torch.manual_seed(train_config.seed)
    model = Composer(ComposerConfig(**config["model"]))
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        logger.info("rank %d resumes after epoch %d", rank, state["epoch"])

    def report(epoch: int, metrics: dict, state: dict) -> None:
        # Every rank reports; rank 0 alone writes the checkpoint, which all ranks' states equal.
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(state, Path(folder) / STATE_FILE)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)

    fit(
        model,
        config["train_chorales"],
        config["valid_chorales"],
        train_config,
        report=report,
        state=state,
        parallel=ray.train.torch.prepare_model,
        rank=rank,
        world_size=world_size,
        train_conditions=config["train_conditions"],
        valid_conditions=config["valid_conditions"],
    )


def run_name(data_fingerprint: str, model_config: ComposerConfig, train_config: TrainConfig, workers: int) -> str:
    settings = json.dumps([data_fingerprint, asdict(model_config), asdict(train_config), workers], sort_keys=True)
    return "composer-" + hashlib.sha256(settings.encode()).hexdigest()[:12]


def train_composer(
    data: str,
    store_uri: str,
    model_config: ComposerConfig,
    train_config: TrainConfig,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    storage: str | None = None,
    name: str | None = None,
    max_failures: int = 2,
    aliases: tuple[str, ...] = ("composer-latest",),
    tuning: dict | None = None,
    sampling: dict | None = None,
) -> str:
    """Train on Ray Train, score the best validation epoch on test, save it; returns the store version.

    ``data``: see :func:`encore.composer.data.load_corpus`; ``tuning`` records the search that chose
    the settings, if one did; ``sampling`` is the version's default sampling (see
    :class:`~encore.composer.compose.ComposerBundle`). Sampling is not part of the run's name, so
    running a finished run's command again with other sampling saves the same weights with it.
    ``storage`` holds the Ray Train run (default: ``STORE/ray-train``); once the model is saved, the run
    is marked finished there (``encore.store.runs``), so ``python -m encore.store gc`` removes its
    checkpoints after their retention."""
    corpus = load_corpus(data, model_config.max_steps, model_config.max_notes)
    splits, conditions = corpus.steps, corpus.conditions or {}
    data_fingerprint = corpus.fingerprint
    name = runs.check_run_name(name or run_name(data_fingerprint, model_config, train_config, num_workers))
    storage = fs.absolute(storage or fs.join(fs.absolute(store_uri), "ray-train"))
    logger.info(
        "training run %s in %s: %d workers, %d/%d/%d pieces (rerun the same command to resume it)",
        name,
        storage,
        num_workers,
        *(len(splits[split]) for split in ("train", "valid", "test")),
    )
    trainer = ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config={
            "model": asdict(model_config),
            "train": asdict(train_config),
            "train_chorales": splits["train"],
            "valid_chorales": splits["valid"],
            "train_conditions": conditions.get("train"),
            "valid_conditions": conditions.get("valid"),
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    runs.mark_started(storage, name)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)

    model = Composer(model_config)
    model.load_state_dict(state["best"]["model"])
    test_nll = model.nll_per_step(splits["test"], train_config.eval_batch_size, conditions.get("test"))
    metrics = {
        "valid_nll_per_step": state["best"]["valid_nll_per_step"],
        "test_nll_per_step": test_nll,
        "best_epoch": state["best"]["epoch"],
        "epochs": state["epoch"],
        "starts": state["starts"],
        "history": state["history"],
        "train_seconds": sum(epoch["epoch_seconds"] for epoch in state["history"]),
        "parameters": model.num_parameters(),
    }
    logger.info(
        "best epoch %d of %d: valid %.4f, test %.4f nats per step",
        metrics["best_epoch"],
        metrics["epochs"],
        metrics["valid_nll_per_step"],
        test_nll,
    )
    bundle = ComposerBundle(
        model,
        corpus.styles,
        corpus.default_style,
        corpus.step_beats,
        conditioned=corpus.conditions is not None,
        programs={style: style_program(style) for style in corpus.styles},
        sampling=sampling or {},
    )
    with tempfile.TemporaryDirectory() as folder:
        bundle.save(folder)
        manifest = serving_store(fs.absolute(store_uri)).save(
            folder,
            kind="composer",
            config={
                "model": asdict(model_config),
                "train": asdict(train_config),
                **corpus.described,
                "styles": corpus.styles,
                "programs": bundle.programs,
                "step_beats": corpus.step_beats,
                "num_workers": num_workers,
                "use_gpu": use_gpu,
                "run": name,
                "tuning": tuning,
                "sampling": bundle.sampling,
            },
            metrics=metrics,
            data_fingerprint=data_fingerprint,
            preprocessing={"tokenizer": TOKENIZER_VERSION},
            aliases=aliases,
        )
    logger.info("saved %s to %s (aliases: %s)", manifest.version, store_uri, ", ".join(aliases))
    runs.mark_saved(storage, name, manifest.version)
    return manifest.version


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        help="JSB Chorales JSON, or a folder or s3:// prefix from jobs.prepare_music (default: %(default)s)",
    )
    parser.add_argument("--store", default="./artifacts", help="model store folder or s3:// prefix")
    parser.add_argument(
        "--storage", default=None, help="Ray Train checkpoints: folder or s3:// prefix (default: STORE/ray-train)"
    )
    parser.add_argument("--name", help="Ray Train run name (default: derived from the data and the settings)")
    add_arguments(parser)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    parser.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from")
    parser.add_argument(
        "--alias", action="append", default=None, help="aliases to move to the new version (default: composer-latest)"
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="the version's default sampling temperature (default: 1)"
    )
    parser.add_argument("--top-p", type=float, default=None, help="the version's default nucleus cut (default: none)")
    args = parser.parse_args(argv)
    try:
        model_config, train_config = configs_from_arguments(args)
        if args.name is not None:
            runs.check_run_name(args.name)
    except ValueError as error:
        parser.error(str(error))
    setup_logging()
    init_ray()
    with user_errors():
        try:
            return train_composer(
                args.data,
                args.store,
                model_config,
                train_config,
                num_workers=args.num_workers,
                use_gpu=args.use_gpu,
                storage=args.storage,
                name=args.name,
                max_failures=args.max_failures,
                aliases=tuple(args.alias or ["composer-latest"]),
                sampling={"temperature": args.temperature, "top_p": args.top_p},
            )
        except DataError as error:
            raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
