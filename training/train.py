"""Phase II: train the image -> conditioning projector on a Phase I dataset.

Usage::

    python training/train.py --data data/tiny --out runs/tiny --epochs 20 --batch-size 16
    python training/train.py --data data/imemnet --out runs/mlp --device cuda          # thesis defaults
    python training/train.py --data data/imemnet --out runs/vit --projector transformer --num-tokens 8 --mel
    python training/train.py --data data/imemnet --out runs/mlp --resume               # after a crash
    torchrun --nproc_per_node 2 training/train.py --data data/imemnet --out runs/mlp  # training/distributed.py

Every epoch writes ``<out>/last.pt`` (model, optimizers, RNG state, history: ``--resume``
continues exactly) and, on a better validation latent loss, ``<out>/best.pt``;
``<out>/train_log.jsonl`` has one line per epoch with every loss term computed. Early
stopping after ``--patience`` epochs without improvement. Losses and their thesis
counterparts: training/losses.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from img2music.basics.errors import Img2MusicError, run_cli, setup_logging
from img2music.training.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(data="", out="")
    p = argparse.ArgumentParser(prog="train.py", description="Phase II: train the projector.")
    p.add_argument("--data", required=True, help="Phase I dataset directory")
    p.add_argument("--out", required=True, help="run directory (checkpoints, train_log.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--config", default=None, help="JSON file of TrainConfig fields (flags given here win)")
    for f in fields(TrainConfig):
        if f.name in ("data", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{_doc(f.name)} (default: {default})")
        else:
            kind = type(default) if default is not None else str
            extra = {"choices": ("mlp", "transformer")} if f.name == "projector" else {}
            # a None default is explained by the field's own docstring ("default: the dataset's")
            stated = "" if default is None else f" (default: {default})"
            p.add_argument(flag, dest=f.name, type=kind, default=None, help=f"{_doc(f.name)}{stated}", **extra)
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def _doc(name: str) -> str:
    """The field's docstring from the TrainConfig source (one place for the text)."""
    import inspect

    lines = inspect.getsource(TrainConfig).splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:"):
            return lines[i + 1].strip().strip('"').strip()
    return name


def config_from_args(args) -> TrainConfig:
    values = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise Img2MusicError(f"--config not found: {path}")
        values.update({k: v for k, v in json.loads(path.read_text()).items() if k != "name"})
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                   if getattr(args, f.name, None) is not None})
    return TrainConfig.from_dict(values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = config_from_args(args)
    if config.batch_size < 1 or config.epochs < 1 or config.num_tokens < 1:
        raise Img2MusicError("--batch-size, --epochs and --num-tokens must be positive")
    if "WORLD_SIZE" in os.environ:  # started by torchrun: one of N processes
        from img2music.training.distributed import DistributedTrainer as trainer_class
    else:
        trainer_class = Trainer
    trainer = trainer_class(config, report=print)
    try:
        if args.resume:
            trainer.resume()
        result = trainer.fit()
    finally:
        trainer.close()
    trainer.report(f"done: {result['epochs']} epochs, best val latent {result['best_val_latent']:.4f}; "
                   f"checkpoints in {config.out}")
    return 0


def cli() -> None:
    """Console-script entry point (img2music-train)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
