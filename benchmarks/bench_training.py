"""Phase II cost: seconds per training epoch at small-random shapes (CLIP ViT-B/32 512-d
embeddings, T5-base 768-d targets, MusicGen-small decoder and EnCodec 32 kHz with random
weights: the real checkpoints' compute).

Usage::

    python benchmarks/bench_training.py --items 256 --audio-seconds 1 --threads 2

A dataset of random tensors in the Phase I format is written to a temporary directory
(what Phase I would store; the numbers in it do not change the cost), then one epoch is
timed per loss configuration (after a one-batch warm-up). The decoder terms run MusicGen
teacher-forced over every paired frame, so their cost scales with items x audio length;
the table also gives the per-item cost to extrapolate to a full dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.benchmarks.machine import machine_record

CONFIGS = {
    "latent": dict(fm=False, ce=False, mel=False, adv=False),
    "latent+adv": dict(fm=False, ce=False, mel=False, adv=True),
    "latent+fm+ce+adv": dict(fm=True, ce=True, mel=False, adv=True),
    "thesis (+mel)": dict(fm=True, ce=True, mel=True, adv=True),
}


def synthetic_dataset(root: Path, items: int, frames: int, preset: str) -> None:
    from img2music.training.dataset_store import write_dataset

    rng = np.random.default_rng(0)
    split = ["train"] * items + ["val"] * max(2, items // 8) + ["test"] * 2
    n = len(split)
    tensors = {
        "clip_embeds": rng.standard_normal((n, 512)).astype(np.float32),
        "t5_hidden": rng.standard_normal((n, 64, 768)).astype(np.float32),
        "t5_mask": (np.arange(64)[None] < rng.integers(8, 40, (n, 1))).astype(np.int64),
        "audio_codes": rng.integers(0, 2048, (n, 4, frames)).astype(np.int64),
        "audio_mask": np.ones((n, frames), np.int64),
    }
    records = [{"id": str(i), "split": s} for i, s in enumerate(split)]
    write_dataset(root, records, tensors, {"preset": preset, "clip_dim": 512, "cond_dim": 768, "t5_tokens": 64,
                                           "audio_frames": frames, "num_codebooks": 4})


def time_epoch(data: Path, out: Path, batch: int, switches: dict) -> float:
    from img2music.training.trainer import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(data=str(data), out=str(out), batch_size=batch, epochs=1, **switches),
                      report=lambda s: None)
    warm = {k: v[:batch] for k, v in trainer.train.items()}
    full, trainer.train = trainer.train, warm
    trainer.run_epoch()  # warm-up: one batch
    trainer.train = full
    start = time.perf_counter()
    trainer.run_epoch()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Seconds per Phase II epoch at small-random shapes.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--items", type=int, default=256, help="training items (one epoch)")
    p.add_argument("--batch-size", type=int, default=64, help="items per step (the thesis' 64)")
    p.add_argument("--audio-seconds", type=float, default=1.0, help="paired audio per item for fm/ce/mel")
    p.add_argument("--preset", default="small-random", help="MusicGen preset for the decoder terms")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), help="loss configurations")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    frames = int(round(args.audio_seconds * 50))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        synthetic_dataset(data, args.items, frames, args.preset)
        for name in args.configs:
            seconds = time_epoch(data, Path(tmp) / name, args.batch_size, CONFIGS[name])
            results.append({"config": name, "epoch_s": round(seconds, 2),
                            "per_item_ms": round(1000 * seconds / args.items, 2)})
            r = results[-1]
            print(f"{name:18s} epoch of {args.items} items ({args.audio_seconds:g} s audio each): "
                  f"{r['epoch_s']:9.2f} s  ({r['per_item_ms']:.2f} ms per item)", flush=True)
    m = machine_record()
    print(f"machine: {m['cpu']}, {m['cores_available']} cores, torch threads {args.threads}, batch {args.batch_size}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": m, "args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
