"""Save a preset (random weights, real architectures) as ordinary checkpoint directories.

Usage::

    python export/models.py --preset tiny --out models/tiny
    python runtime/generate.py --musicgen models/tiny/musicgen --clip models/tiny/clip --image photo.jpg

The directories load with ``--musicgen`` / ``--clip`` like downloaded checkpoints
(loading itself: ``basics.models``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import run_cli, setup_logging
from img2music.basics.models import build_preset, count_parameters, save_models
from img2music.basics.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Build a preset (random weights, real architecture) and save it as checkpoint directories.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="which preset to build")
    parser.add_argument("--out", required=True, help="output directory (gets musicgen/ and clip/)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    models = build_preset(args.preset, args.seed)
    mg_dir, clip_dir = save_models(models, args.out)
    print(f"MusicGen ({count_parameters(models.musicgen.decoder) / 1e6:.1f}M decoder parameters) -> {mg_dir}")
    print(f"CLIP ({count_parameters(models.clip) / 1e6:.1f}M parameters) -> {clip_dir}")
    return 0


def cli() -> None:
    """Console-script entry point (img2music-models)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
