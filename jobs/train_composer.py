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

from encore.composer.ray_train import DEFAULT_DATA, train_composer
from encore.composer.train import add_arguments, configs_from_arguments
from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.store import DEFAULT_STORE_URI, runs


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        help="JSB Chorales JSON, or a folder or s3:// prefix from jobs.prepare_music (default: %(default)s)",
    )
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store folder or s3:// prefix")
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
        return train_composer(
            args.data, args.store, model_config, train_config, num_workers=args.num_workers, use_gpu=args.use_gpu,
            storage=args.storage, name=args.name, max_failures=args.max_failures,
            aliases=tuple(args.alias or ["composer-latest"]),
            sampling={"temperature": args.temperature, "top_p": args.top_p},
        )  # fmt: skip


if __name__ == "__main__":
    main()
