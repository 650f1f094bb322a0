"""JSB Chorales: the composer's test NLL per time step next to published models, and its generation speed.

Trains a composer in-process (``--threads`` torch threads) on the train split of the quarter-note
JSB Chorales benchmark (229/76/77 chorales, Boulanger-Lewandowski et al. 2012), keeps the epoch
with the best validation NLL (training chorales transposed at random, ``--transpose``; validation and
test never), and scores it on the test split with the exact set likelihood (see
``encore.composer.model``): nats per time step, the figure Bai et al. 2018 report in Table 1. No
conditioning token and nothing else about a test chorale but its own past is used.

Then, with the same model in the same run, it times sampling a 16-bar piece (64 quarter-note
steps) from BOS alone, seed 0: with the KV cache (median of 3 runs) and without it (the whole
sequence recomputed for every token), in seconds and tokens per second. One run prints the tables.

    python -m benchmarks.jsb [--epochs 60 --warmup-steps 100] [--transpose 6] [--layers 4 --d-model 256 --dropout 0.1]
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from encore.composer import Composer, fit, load_jsb
from encore.composer.tokens import BOS
from encore.composer.train import add_arguments, configs_from_arguments

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jsb-chorales" / "jsb-chorales-quarter.json"
# Bai, Kolter, Koltun 2018, "An Empirical Evaluation of Generic Convolutional and Recurrent
# Networks for Sequence Modeling", arXiv:1803.01271, Table 1 (JSB Chorales, test NLL per step).
PUBLISHED = (("TCN", 8.10), ("GRU", 8.43), ("LSTM", 8.45))
SOURCE = "Bai et al. 2018, Table 1"
PIECE_STEPS = 64  # 16 bars of 4/4 in quarter notes


def time_generation(model: Composer, use_cache: bool, repeats: int) -> tuple[int, float]:
    """New tokens of a 16-bar piece from BOS, and the median seconds over ``repeats`` runs."""
    seconds, tokens = [], 0
    for _ in range(repeats):
        began = time.perf_counter()
        tokens = len(model.generate([BOS], PIECE_STEPS, seed=0, use_cache=use_cache)) - 1
        seconds.append(time.perf_counter() - began)
    return tokens, statistics.median(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="JSB Chorales quarter-note JSON")
    parser.add_argument("--threads", type=int, default=2)
    add_arguments(parser)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    splits = load_jsb(args.data)
    config, train_config = configs_from_arguments(args)
    torch.manual_seed(args.seed)
    model = Composer(config)

    def progress(epoch: int, metrics: dict, state: dict) -> None:
        print(
            f"epoch {epoch}/{args.epochs}: train {metrics['train_nll_per_step']:.3f}, "
            f"valid {metrics['valid_nll_per_step']:.3f} nats/step, {metrics['epoch_seconds']:.0f} s",
            flush=True,
        )

    began = time.perf_counter()
    state = fit(model, splits["train"], splits["valid"], train_config, report=progress)
    train_seconds = time.perf_counter() - began
    model.load_state_dict(state["best"]["model"])
    test_nll = model.nll_per_step(splits["test"])

    cached_tokens, cached_seconds = time_generation(model, use_cache=True, repeats=3)
    plain_tokens, plain_seconds = time_generation(model, use_cache=False, repeats=1)

    described = (
        f"{config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads, ff {config.d_ff}, "
        f"dropout {config.dropout}, {model.num_parameters() / 1e6:.2f}M parameters"
    )
    print()
    print(f"JSB Chorales, quarter-note split (train/valid/test {'/'.join(str(len(s)) for s in splits.values())})")
    print()
    print("| model | test NLL per step (nats) | notes |")
    print("|---|---|---|")
    print(
        f"| Encore composer | {test_nll:.2f} | {described}; best valid {state['best']['valid_nll_per_step']:.2f} "
        f"at epoch {state['best']['epoch']} of {args.epochs}; {train_seconds:.0f} s on {args.threads} threads |"
    )
    for name, value in PUBLISHED:
        print(f"| {name} | {value:.2f} | {SOURCE} |")
    print()
    print(
        f"| 16-bar piece ({PIECE_STEPS} steps) from BOS, seed 0, {args.threads} threads | tokens | seconds | tokens/s |"
    )
    print("|---|---|---|---|")
    for name, tokens, seconds in (
        ("KV cache (median of 3)", cached_tokens, cached_seconds),
        ("no cache", plain_tokens, plain_seconds),
    ):
        print(f"| {name} | {tokens} | {seconds:.2f} | {tokens / seconds:.0f} |")


if __name__ == "__main__":
    main()
