"""Phase I: build the Study II dataset (image -> caption -> directive -> T5 target).

Usage::

    # tiny models, anywhere (tests, a dry run of the whole pipeline)
    python training/build_dataset.py --input photos/ --out data/tiny --preset tiny --captioner tiny --llm tiny
    # the thesis' models on a GPU machine
    python training/build_dataset.py --input imemnet.csv --out data/imemnet --device cuda \\
        --musicgen facebook/musicgen-small --clip openai/clip-vit-base-patch32 \\
        --captioner Salesforce/blip2-opt-2.7b --llm meta-llama/Llama-3.1-8B-Instruct
    # ablations: the alternate prompt, or BLIP captions only
    python training/build_dataset.py ... --prompt compose
    python training/build_dataset.py ... --no-llm

Steps, each batched, cached under ``<out>/cache/<step>`` and resumed after a crash or
Ctrl-C (finished batches are never redone): clip (image embeddings), captions (BLIP-2,
or the manifest's ``text``), directives (the instruction LLM), t5 (MusicGen's text
encoder), codes (EnCodec codes of the paired audio; ``--generate-codes S`` generates S
seconds from the T5 target where there is none), then a stratified 80/10/10 split and
the shards (format: training/dataset_store.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging
from img2music.basics.presets import PRESETS
from img2music.training.dataset_builder import BatchLimit, BuildConfig, Builder
from img2music.training.text_models import PROMPTS

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    d = BuildConfig(input="", out="")
    p = argparse.ArgumentParser(prog="build_dataset.py", description="Phase I: build the Study II dataset.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="image folder, or CSV/JSONL manifest (image[,audio,text,emotion,genre])")
    p.add_argument("--out", required=True, help="dataset directory; re-running the same command resumes")
    p.add_argument("--preset", choices=PRESETS, default=None, help="random-weight MusicGen + CLIP instead of checkpoints")
    p.add_argument("--musicgen", default=None, help="MusicGen hub id or directory (default facebook/musicgen-small)")
    p.add_argument("--clip", default=None, help="CLIP hub id or directory (default openai/clip-vit-base-patch32)")
    p.add_argument("--captioner", default=d.captioner, help="BLIP-2 hub id or directory, or 'tiny'")
    p.add_argument("--llm", default=d.llm, help="instruction LLM hub id or directory, or 'tiny'")
    p.add_argument("--prompt", choices=sorted(PROMPTS), default=d.prompt, help="LLM user prompt (ablation)")
    p.add_argument("--no-llm", action="store_true", help="BLIP-only ablation: the caption is the directive")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="items per batch in every step")
    p.add_argument("--t5-tokens", type=int, default=d.t5_tokens, help="T5 target length (padded/truncated)")
    p.add_argument("--audio-seconds", type=float, default=d.audio_seconds, help="paired audio crop length")
    p.add_argument("--generate-codes", type=float, default=d.generate_codes,
                   help="seconds of codes generated from the target where no audio is paired (0 = none)")
    p.add_argument("--seed", type=int, default=d.seed, help="split and generation seed")
    p.add_argument("--device", default=d.device, help="torch device (cuda for the real models)")
    p.add_argument("--limit-batches", type=int, default=None, help="stop after N new batches (to test resuming)")
    r = p.add_argument_group("Ray (pip install 'img2music[ray]'; default: one process)")
    r.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run every step on a Ray cluster at ADDRESS (e.g. ray://head:10001 or auto); "
                        "without an address, start a local Ray on this machine")
    r.add_argument("--ray-workers", type=int, default=None,
                   help="actors per step (default: as many as the cluster's CPUs or GPUs hold)")
    r.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker, help="CPUs each actor reserves")
    r.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker,
                   help="GPUs each actor reserves (with --device cuda)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.batch_size < 1 or args.t5_tokens < 1 or args.audio_seconds <= 0 or args.generate_codes < 0:
        raise Img2MusicError("--batch-size, --t5-tokens and --audio-seconds must be positive, --generate-codes >= 0")
    if (args.ray_workers is not None and args.ray_workers < 1) or args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        raise Img2MusicError("--ray-workers and --cpus-per-worker must be positive, --gpus-per-worker >= 0")
    if args.gpus_per_worker > 0 and not args.device.startswith("cuda"):
        raise Img2MusicError("--gpus-per-worker needs --device cuda")
    config = BuildConfig(**{k: v for k, v in vars(args).items() if k != "verbose"})
    remote = None
    if config.ray:
        from img2music.training.dataset_ray import run_step as remote
    builder = Builder(config, report=print, remote=remote)
    try:
        builder.build()
    except (BatchLimit, KeyboardInterrupt):
        print(f"stopped after {builder.batches_run} batches; run the same command again to resume", file=sys.stderr)
        return 3
    return 0


def cli() -> None:
    """Console-script entry point (img2music-dataset)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
