"""The composer trained on a Ray Train worker group, scored on test and saved in the model store.

Each worker runs :func:`encore.composer.train.fit` under DDP (gloo on CPU, NCCL on GPU), rank 0
checkpointing the whole training state after every epoch; a worker that dies is replaced and the
run goes on from the last checkpoint, and a run started again under the same name resumes. The
weights of the epoch with the best validation NLL are scored on the test split and saved as kind
``composer`` (:class:`~encore.composer.compose.ComposerBundle`). ``jobs.train_composer`` is the
command line.

    version = train_composer(str(DEFAULT_DATA), "artifacts", ComposerConfig(), TrainConfig(), num_workers=2)
"""

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

from encore.composer.compose import ComposerBundle
from encore.composer.corpus import style_program
from encore.composer.data import Corpus, load_corpus
from encore.composer.model import Composer, ComposerConfig
from encore.composer.tokens import TOKENIZER_VERSION
from encore.composer.train import TrainConfig, fit
from encore.core import fs
from encore.serving.versions import serving_store
from encore.store import runs
from encore.store.publish import save_trained

logger = logging.getLogger(__name__)

#: JSB Chorales beside the repository (not shipped in it: its source states no licence).
DEFAULT_DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "jsb-chorales" / "jsb-chorales-quarter.json"
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


def _run(
    name: str,
    storage: str,
    corpus: Corpus,
    model_config: ComposerConfig,
    train_config: TrainConfig,
    num_workers: int,
    use_gpu: bool,
    max_failures: int,
) -> dict:
    """Run (or resume) the Ray Train run ``name`` and return the training state of its last checkpoint."""
    splits, conditions = corpus.steps, corpus.conditions or {}
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
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


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
    state = _run(name, storage, corpus, model_config, train_config, num_workers, use_gpu, max_failures)
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
    version = save_trained(
        serving_store(fs.absolute(store_uri)),
        bundle,
        aliases,
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
    )
    runs.mark_saved(storage, name, version)
    return version
