"""The composer's training loop, the same in-process and inside a Ray Train worker.

:func:`fit` trains a :class:`~encore.composer.model.Composer` with AdamW (weight decay on weight
matrices and embeddings, not on biases and norms), a linear warm-up then a cosine decay of the
learning rate, and gradient clipping. On CUDA the forward pass runs under bf16 autocast (fp16 with
loss scaling where bf16 is missing); on CPU everything stays float32. Validation always runs in
float32, so the reported likelihood is the exact one.

After every epoch ``fit`` measures the validation NLL per time step and hands the epoch's metrics
and the whole training state to ``report(epoch, metrics, state)``; a Ray Train loop checkpoints
there. Given such a state back, ``fit`` carries on with the epoch after it.

For data-parallel training pass ``parallel`` (``ray.train.torch.prepare_model``), this worker's
``rank`` and the ``world_size``: every rank shuffles alike, trains on its share of each epoch's
chorales, and the metrics are summed over the ranks.
"""

import argparse
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from encore.composer.model import Composer, ComposerConfig, is_music
from encore.composer.tokens import EOS_STEP, Steps, pitch_span, transpose

Report = Callable[[int, dict, dict], None]
SORT_POOL = 8  # batches sorted by length together


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8  # chorales per optimiser step, per worker
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100  # optimiser steps of linear warm-up
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0
    eval_batch_size: int = 16
    # Each epoch, each training piece moves by a random number of semitones in [-transpose, transpose]
    # (as far as the model's pitch range allows): music heard in every key, from the same pieces
    # (its effect on JSB Chorales: benchmarks/RESULTS.md).
    transpose: int = 6

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be at least 1")
        if not 0 <= self.transpose <= 12:
            raise ValueError(f"transpose {self.transpose} is not within 0-12 semitones")


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_batches(
    lengths: Sequence[int], epoch: int, config: TrainConfig, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's batches (indices into ``lengths``) for ``epoch``.

    A seeded shuffle shared by all ranks is dealt round the ranks, then cut into pools of
    ``SORT_POOL`` batches sorted by length, so that a batch holds pieces of similar length and pads
    little (``benchmarks/RESULTS.md``, "JSB Chorales"); the batches are shuffled again. The deal
    wraps round to a multiple of ``world_size`` because under DDP every rank must take the same
    number of steps, or the ranks with more wait forever."""
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(len(lengths))
    mine = np.resize(order, math.ceil(len(lengths) / world_size) * world_size)[rank::world_size]
    batches, pool = [], config.batch_size * SORT_POOL
    for begin in range(0, len(mine), pool):
        chunk = sorted(mine[begin : begin + pool].tolist(), key=lambda index: lengths[index])
        batches.extend(chunk[start : start + config.batch_size] for start in range(0, len(chunk), config.batch_size))
    rng.shuffle(batches)
    return batches


def transposed(
    tokens: Sequence[int], span: tuple[int, int] | None, config: TrainConfig, model: ComposerConfig, rng
) -> list[int]:
    """``tokens`` (a piece whose pitches span ``span``) moved by a random shift of at most
    ``config.transpose`` semitones that keeps them within the model's pitch range."""
    if not config.transpose or span is None:
        return list(tokens)
    low = max(-config.transpose, model.pitch_low - span[0])
    high = min(config.transpose, model.pitch_high - span[1])
    return transpose(tokens, int(rng.integers(low, high + 1)))


def _optimizer(model: Composer, config: TrainConfig) -> torch.optim.AdamW:
    decay = [parameter for parameter in model.parameters() if parameter.dim() >= 2]
    no_decay = [parameter for parameter in model.parameters() if parameter.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # A resumed epoch draws the same dropout masks as an uninterrupted run would.
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def fit(
    model: Composer,
    train: Sequence[Steps],
    valid: Sequence[Steps],
    config: TrainConfig,
    *,
    report: Report | None = None,
    state: dict | None = None,
    parallel: Callable[[Composer], torch.nn.Module] | None = None,
    rank: int = 0,
    world_size: int = 1,
    train_conditions: Sequence[Sequence[int]] | None = None,
    valid_conditions: Sequence[Sequence[int]] | None = None,
) -> dict:
    """Train ``model`` in place for ``config.epochs`` epochs (counting those in ``state``) and return the final state.

    ``train_conditions`` and ``valid_conditions`` give each piece its conditioning tokens (style,
    key, tempo, meter); without them the pieces are unconditioned, as JSB Chorales are.

    The state holds ``epoch`` (last finished), ``model``, ``optimizer``, ``scheduler`` and
    ``scaler`` state dicts, ``history`` (each epoch's metrics), ``best`` (``epoch``,
    ``valid_nll_per_step`` and a CPU copy of the weights of the best validation epoch so far) and
    ``starts`` (the epoch each run began after: ``[0, 5]`` means it was resumed once, after epoch 5)."""
    train_tokens = model.encode_steps(train, train_conditions)
    lengths = [len(tokens) for tokens in train_tokens]
    spans = [pitch_span(tokens) for tokens in train_tokens]
    valid_share = list(valid[rank::world_size])
    valid_share_conditions = None if valid_conditions is None else list(valid_conditions[rank::world_size])
    model.encode_steps(valid_share, valid_share_conditions)  # fail on a bad validation piece now
    if state is not None:
        model.load_state_dict(state["model"])
    network = parallel(model) if parallel else model
    device = model.device

    on_cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast("cuda", dtype=amp_dtype) if on_cuda else contextlib.nullcontext()
    scaler = torch.amp.GradScaler("cuda", enabled=on_cuda and amp_dtype == torch.float16)
    optimizer = _optimizer(model, config)
    steps_per_epoch = math.ceil(math.ceil(len(train_tokens) / world_size) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))

    history, best, starts, done = [], None, [0], 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best, done = list(state["history"]), state["best"], state["epoch"]
        starts = [*state["starts"], done]

    for epoch in range(done + 1, config.epochs + 1):
        began = time.perf_counter()
        network.train()
        torch.manual_seed(_epoch_seed(config.seed, epoch, rank))
        batches = epoch_batches(lengths, epoch, config, rank, world_size)
        shifts = np.random.default_rng([config.seed, epoch, rank, 1])
        train_nll = torch.zeros((), dtype=torch.float64, device=device)
        train_steps = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batches:
            tokens = model.pad(
                [transposed(train_tokens[index], spans[index], config, model.config, shifts) for index in batch]
            )
            with autocast:
                _, nll = network(tokens)
            loss = nll.sum() / is_music(tokens[:, 1:]).sum()  # mean NLL per scored token
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            train_nll += nll.detach().sum()
            train_steps += (tokens == EOS_STEP).sum()

        valid_nll, valid_steps = (
            model.nll_total(valid_share, config.eval_batch_size, valid_share_conditions) if valid_share else (0.0, 0)
        )
        sums = torch.tensor([train_nll.item(), train_steps.item(), valid_nll, valid_steps], dtype=torch.float64)
        if world_size > 1:
            sums = sums.to(device)
            dist.all_reduce(sums)
        train_nll_total, train_step_count, valid_nll_total, valid_step_count = sums.tolist()
        metrics = {
            "epoch": epoch,
            "train_nll_per_step": train_nll_total / train_step_count,
            "valid_nll_per_step": valid_nll_total / valid_step_count,
            "lr": scheduler.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - began,
        }
        history.append(metrics)
        if best is None or metrics["valid_nll_per_step"] < best["valid_nll_per_step"]:
            weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
            best = {"epoch": epoch, "valid_nll_per_step": metrics["valid_nll_per_step"], "model": weights}
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "history": history,
            "best": best,
            "starts": starts,
        }
        if report is not None:
            report(epoch, metrics, state)
    return state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and training options every composer entry point shares."""
    model_defaults, train_defaults = ComposerConfig(), TrainConfig()
    parser.add_argument("--epochs", type=int, default=train_defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=train_defaults.batch_size, help="chorales per worker")
    parser.add_argument("--lr", type=float, default=train_defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=train_defaults.weight_decay)
    parser.add_argument("--warmup-steps", type=int, default=train_defaults.warmup_steps)
    parser.add_argument("--seed", type=int, default=train_defaults.seed)
    parser.add_argument(
        "--transpose",
        type=int,
        default=train_defaults.transpose,
        help="move each training piece by up to this many semitones each epoch (0: never)",
    )
    parser.add_argument("--layers", type=int, default=model_defaults.n_layer)
    parser.add_argument("--d-model", type=int, default=model_defaults.d_model)
    parser.add_argument("--heads", type=int, default=model_defaults.n_head)
    parser.add_argument("--ff", type=int, default=model_defaults.d_ff, help="width of the feed-forward layers")
    parser.add_argument("--dropout", type=float, default=model_defaults.dropout)
    parser.add_argument(
        "--max-steps", type=int, default=model_defaults.max_steps, help="longest piece the model covers, in steps"
    )
    parser.add_argument("--max-notes", type=int, default=model_defaults.max_notes, help="most pitches in one step")


def configs_from_arguments(args: argparse.Namespace) -> tuple[ComposerConfig, TrainConfig]:
    model_config = ComposerConfig(
        n_layer=args.layers,
        n_head=args.heads,
        d_model=args.d_model,
        d_ff=args.ff,
        dropout=args.dropout,
        max_steps=args.max_steps,
        max_notes=args.max_notes,
    )
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        transpose=args.transpose,
    )
    return model_config, train_config
