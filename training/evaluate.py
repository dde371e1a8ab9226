"""Evaluation: test-split cosine and MAE between predicted and target conditioning
(the thesis' Table 6.1), for checkpoints or for a set of ablation configs.

Usage::

    python training/evaluate.py --data data/tiny --checkpoint runs/tiny/best.pt --out eval/
    python training/evaluate.py --data data/tiny --ablations training/ablations/*.json --runs runs/ablations \\
        --out eval/ablations --epochs 20

Each ablation config is a JSON object of train.py options plus a ``name``; every one is
trained (resuming if its run directory has a checkpoint) and evaluated. The untrained
projector of the first config is the baseline row. Results: ``results.json`` and
``results.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging

log = logging.getLogger(__name__)


def load_checkpoint(path: str):
    """(projector module in eval mode, checkpoint dict) from a train.py checkpoint."""
    import torch

    from img2music.training.projector import build_projector

    p = Path(path)
    if not p.is_file():
        raise Img2MusicError(f"checkpoint not found: {path}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
        spec = dict(state["projector"])
    except Exception as exc:  # a truncated file, another program's pickle
        raise Img2MusicError(f"not a train.py checkpoint: {path} ({exc})") from None
    kind = spec.pop("kind")
    model = build_projector(kind, **spec)
    model.load_state_dict(state["model"])
    return model.eval(), state


def evaluate_model(model, data: str, split: str, num_tokens: int) -> dict:
    import torch

    from img2music.training.losses import latent_terms
    from img2music.training.trainer import load_split_tensors

    t = load_split_tensors(data, split, num_tokens)
    with torch.no_grad():
        out = model(t["clip_embeds"])
        terms = latent_terms(out.conditioning.float(), t["target"], t["target_mask"])
    return {"split": split, "items": int(len(t["clip_embeds"])), "cosine": round(1 - float(terms["latent_cos"]), 4),
            "mae": round(float(terms["latent_l1"]), 4)}


def markdown(rows: list[dict]) -> str:
    lines = ["| run | projector | N | losses | cosine ↑ | MAE ↓ | best epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['projector']} | {r['num_tokens']} | {r['losses']} | {r['cosine']:.4f} | "
                     f"{r['mae']:.4f} | {r['epochs']} |")
    return "\n".join(lines) + "\n"


def _losses(config: dict) -> str:
    on = [name for name in ("latent", "fm", "ce", "mel", "adv") if config.get(name)]
    return "+".join(on) if on else "none"


def _row(name: str, model, state: dict, data: str, split: str) -> dict:
    c = state["config"]
    return {"name": name, "projector": c["projector"], "num_tokens": c["num_tokens"], "losses": _losses(c),
            "epochs": state["epoch"], **evaluate_model(model, data, split, c["num_tokens"])}


def run_ablations(data: str, configs: list[str], runs: str, epochs: int | None, split: str,
                  report=None) -> list[dict]:
    """Train (or resume) every ablation config and evaluate it; ``report`` gets progress (default: the log)."""
    from img2music.training.trainer import TrainConfig, Trainer

    report = report or log.info
    rows = []
    for i, path in enumerate(configs):
        p = Path(path)
        if not p.is_file():
            raise Img2MusicError(f"ablation config not found: {path}")
        values = json.loads(p.read_text())
        name = values.pop("name", p.stem)
        values.update(data=data, out=str(Path(runs) / name))
        if epochs is not None:
            values["epochs"] = epochs
        trainer = Trainer(TrainConfig.from_dict(values), report=lambda s, n=name: report(f"[{n}] {s}"))
        if i == 0:
            base = trainer.state() | {"epoch": 0}
            rows.append(_row("untrained", trainer.model.eval(), base, data, split) | {"losses": "-"})
        if (Path(values["out"]) / "last.pt").is_file():
            trainer.resume()
        trainer.fit()
        model, state = load_checkpoint(str(Path(values["out"]) / "best.pt"))
        rows.append(_row(name, model, state, data, split))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="evaluate.py", description="Test-split cosine / MAE of trained projectors.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="Phase I dataset directory")
    p.add_argument("--checkpoint", action="append", default=[], help="train.py checkpoint; repeat to compare")
    p.add_argument("--ablations", nargs="*", default=[], help="ablation config JSON files (trained, then evaluated)")
    p.add_argument("--runs", default="runs/ablations", help="where ablation runs are trained")
    p.add_argument("--epochs", type=int, default=None, help="override every ablation's epochs")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="split to evaluate on")
    p.add_argument("--out", required=True, help="directory for results.json and results.md")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if not args.checkpoint and not args.ablations:
        raise Img2MusicError("give --checkpoint and/or --ablations")
    rows = []
    for ckpt in args.checkpoint:
        model, state = load_checkpoint(ckpt)
        rows.append(_row(Path(ckpt).parent.name + "/" + Path(ckpt).name, model, state, args.data, args.split))
    if args.ablations:
        rows += run_ablations(args.data, args.ablations, args.runs, args.epochs, args.split, report=print)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows)
    (out / "results.md").write_text(table)
    print(table, end="")
    print(f"results in {out}/results.json and results.md")
    return 0


def cli() -> None:
    """Console-script entry point (img2music-evaluate)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
