"""Phase II's trainer: :class:`TrainConfig` and :class:`Trainer` (one process; DDP in ``training.distributed``).

The CLI (``training/train.py``) fills a config in and runs a trainer; tests, the benchmark
and the evaluation use these classes directly.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from img2music.basics.errors import Img2MusicError

log = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    data: str
    """Phase I dataset directory."""
    out: str
    """Run directory (checkpoints, log)."""
    projector: str = "mlp"
    """'mlp' (Study II) or 'transformer' (Study I, ViT-style)."""
    num_tokens: int = 1
    """N conditioning tokens (1 = the thesis' pooled form)."""
    hidden_dim: int = 768
    """MLP hidden width / transformer width."""
    epochs: int = 60
    """Maximum epochs."""
    batch_size: int = 64
    """Items per optimizer step."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    patience: int = 10
    """Early stopping: epochs without a better validation latent loss."""
    latent: bool = True
    """Latent loss (masked L1 + cosine)."""
    fm: bool = True
    """Feature matching on MusicGen's decoder (needs audio codes)."""
    ce: bool = True
    """Teacher-forced cross-entropy of the audio codes (needs audio codes)."""
    mel: bool = False
    """Mel L1 through soft codes -> EnCodec (needs audio codes; slow)."""
    adv: bool = True
    """Adversarial term (conditioning discriminator)."""
    lambda_latent: float = 1.0
    """Weight of the latent loss (thesis λ_latent)."""
    lambda_fm: float = 0.1
    """Weight of feature matching (thesis λ_FM)."""
    lambda_mel: float = 0.5
    """Weight of the audio-fidelity terms, ce and mel (thesis λ_mel)."""
    lambda_adv: float = 0.2
    """Weight of the adversarial term (thesis λ_adv)."""
    seed: int = 0
    """Initialisation, shuffling and dropout seed."""
    device: str = "cpu"
    """torch device; AMP (fp16 autocast) is used on CUDA."""
    musicgen: str | None = None
    """MusicGen for fm/ce/mel (default: the one the dataset was built with)."""
    preset: str | None = None
    """Random-weight preset for fm/ce/mel (default: the dataset's)."""

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise Img2MusicError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**values)


def _seed_all(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_split_tensors(data: str, split: str, num_tokens: int):
    import torch

    from img2music.training.dataset_store import load_split
    from img2music.training.losses import align_targets

    arrays = load_split(Path(data), split)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    t["target"], t["target_mask"] = align_targets(t.pop("t5_hidden").float(), t.pop("t5_mask"), num_tokens)
    return t


def make_projector(config: TrainConfig, clip_dim: int, cond_dim: int):
    from img2music.training.projector import build_projector

    if config.projector == "mlp":
        return build_projector("mlp", clip_dim=clip_dim, cond_dim=cond_dim, num_tokens=config.num_tokens,
                               hidden_dim=config.hidden_dim)
    if config.projector == "transformer":
        return build_projector("transformer", clip_dim=clip_dim, cond_dim=cond_dim, num_tokens=config.num_tokens,
                               width=config.hidden_dim)
    raise Img2MusicError(f"unknown projector {config.projector!r} (mlp or transformer)")


class Trainer:
    def __init__(self, config: TrainConfig, report=None) -> None:
        import torch

        from img2music.training.dataset_store import load_index
        from img2music.training.losses import ConditioningDiscriminator

        self.c, self.report, self.torch = config, report or log.info, torch
        self.info, _ = load_index(Path(config.data))
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        _seed_all(config.seed)
        self.train = load_split_tensors(config.data, "train", config.num_tokens)
        self.val = load_split_tensors(config.data, "val", config.num_tokens)
        clip_dim, cond_dim = self.info["clip_dim"], self.info["cond_dim"]
        self.device = torch.device(config.device)
        self.model = make_projector(config, clip_dim, cond_dim).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.disc = self.disc_opt = None
        if config.adv:
            self.disc = ConditioningDiscriminator(cond_dim).to(self.device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.audio_terms = {t for t in ("fm", "ce", "mel") if getattr(config, t)}
        self.musicgen_terms = None
        if self.audio_terms and int(self.train["audio_mask"].sum()) > 0:
            self.musicgen_terms = self._load_musicgen()
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch, self.best, self.bad_epochs, self.history = 0, float("inf"), 0, []

    def _load_musicgen(self):
        from img2music.basics.models import load_models
        from img2music.training.losses import MusicgenTerms

        preset = self.c.preset or (None if self.c.musicgen else self.info.get("preset"))
        musicgen = self.c.musicgen or (None if preset else self.info.get("musicgen"))
        models = load_models(preset, musicgen)
        return MusicgenTerms(models.musicgen.to(self.device), mel=self.c.mel)

    def train_terms(self, batch: dict) -> tuple[dict, dict]:
        """Every enabled loss term on one batch (scalar tensors) + the total, and their values."""
        torch = self.torch
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.model(batch["clip_embeds"])
        t = self.loss_terms(batch, out.conditioning.float(), out.mask)
        t["total"] = self.total(t)
        return t, {k: v.detach().item() for k, v in t.items()}

    def loss_terms(self, batch: dict, pred, pred_mask) -> dict:
        """The enabled terms (each a mean: training/distributed.py weighs them), no total."""
        from img2music.training.losses import latent_terms

        c = self.c
        # the projector's N tokens are all real; the target's mask says which to compare
        t = latent_terms(pred, batch["target"], batch["target_mask"])
        if not c.latent:
            t = {k: v.detach() for k, v in t.items()}  # logged for validation, not trained on
        if self.musicgen_terms is not None:
            t.update(self.musicgen_terms(pred, pred_mask, batch["target"], batch["target_mask"],
                                         batch["audio_codes"], batch["audio_mask"], self.audio_terms))
        if self.disc is not None and len(pred):  # a rank's share of a last batch can be empty
            t["adv"] = -self.disc(pred, pred_mask).mean()
        return t

    def total(self, t: dict):
        """The weighted sum the projector learns from (the thesis' L)."""
        c = self.c
        total = (t["latent_l1"] + t["latent_cos"]) * c.lambda_latent if c.latent else t["latent_l1"].new_zeros(())
        for name in ("fm", "ce", "mel"):
            if name in t:
                total = total + t[name] * (c.lambda_fm if name == "fm" else c.lambda_mel)
        if "adv" in t:
            total = total + c.lambda_adv * t["adv"]
        return total

    def _disc_step(self, batch: dict) -> float:
        from img2music.training.losses import discriminator_loss

        with self.torch.no_grad():
            fake = self.model(batch["clip_embeds"])
        real = self.disc(batch["target"], batch["target_mask"])
        loss = discriminator_loss(real, self.disc(fake.conditioning.float(), fake.mask))
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()
        return loss.item()

    def _batches(self, data: dict, shuffle: bool):
        torch = self.torch
        n = len(data["clip_embeds"])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.c.seed * 1000 + self.epoch)) \
            if shuffle else torch.arange(n)
        for start in range(0, n, self.c.batch_size):
            idx = order[start : start + self.c.batch_size]
            yield {k: v[idx].to(self.device) for k, v in data.items()}

    def run_epoch(self) -> dict:
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        for batch in self._batches(self.train, shuffle=True):
            if self.disc is not None:
                sums["disc"] = sums.get("disc", 0.0) + self._disc_step(batch)
            t, logged = self.train_terms(batch)
            if t["total"].requires_grad:  # every term switched off (or no audio): nothing to learn
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(t["total"]).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
        return {k: v / max(count, 1) for k, v in sums.items()}

    def evaluate(self, data: dict) -> dict:
        """Latent loss, cosine and MAE (masked) over a split, the projector in eval mode."""
        torch = self.torch
        from img2music.training.losses import latent_terms

        self.model.eval()
        l1 = cos = n = 0.0
        with torch.no_grad():
            for batch in self._batches(data, shuffle=False):
                out = self.model(batch["clip_embeds"])
                t = latent_terms(out.conditioning.float(), batch["target"], batch["target_mask"])
                rows = len(batch["clip_embeds"])
                l1, cos, n = l1 + float(t["latent_l1"]) * rows, cos + float(t["latent_cos"]) * rows, n + rows
        return {"latent": (l1 + cos) / n, "mae": l1 / n, "cosine": 1 - cos / n}

    # -- checkpoints --------------------------------------------------------------
    def state(self) -> dict:
        torch = self.torch
        return {"config": asdict(self.c), "dataset": self.info, "epoch": self.epoch, "best": self.best,
                "bad_epochs": self.bad_epochs, "history": self.history, "model": self.model.state_dict(),
                "opt": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "disc": self.disc.state_dict() if self.disc else None,
                "disc_opt": self.disc_opt.state_dict() if self.disc_opt else None,
                "rng": torch.get_rng_state(), "projector": {"kind": self.c.projector, **asdict(self.model.config)}}

    def save(self, name: str) -> None:
        tmp = self.out / (name + ".tmp")
        self.torch.save(self.state(), tmp)
        tmp.replace(self.out / name)

    def write_epoch(self, entry: dict, improved: bool) -> None:
        """One train_log.jsonl line, last.pt and, when better, best.pt."""
        with open(self.out / "train_log.jsonl", "a", encoding="utf-8") as log_file:
            log_file.write(json.dumps(entry) + "\n")
        self.save("last.pt")
        if improved:
            self.save("best.pt")

    def close(self) -> None:
        """Nothing to release on one process (training/distributed.py: the process group)."""

    def resume(self) -> None:
        path = self.out / "last.pt"
        if not path.is_file():
            raise Img2MusicError(f"--resume: no checkpoint at {path}")
        state = self.torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
        if self.disc is not None and state["disc"] is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])
        self.torch.set_rng_state(state["rng"])
        self.epoch, self.best, self.bad_epochs = state["epoch"], state["best"], state["bad_epochs"]
        self.history = state["history"]
        self.report(f"resumed from {path} after epoch {self.epoch}")

    def fit(self) -> dict:
        c = self.c
        if self.epoch == 0:
            self.history.append({"epoch": 0, "val": self.evaluate(self.val)})  # the untrained projector
            self.report(f"epoch 0 (untrained): val cosine {self.history[-1]['val']['cosine']:.4f}")
        while self.epoch < c.epochs and self.bad_epochs < c.patience:
            self.epoch += 1
            start = time.perf_counter()
            train = self.run_epoch()
            val = self.evaluate(self.val)
            seconds = time.perf_counter() - start
            improved = val["latent"] < self.best
            if improved:
                self.best, self.bad_epochs = val["latent"], 0
            else:
                self.bad_epochs += 1
            entry = {"epoch": self.epoch, "train": train, "val": val, "seconds": round(seconds, 3)}
            self.history.append(entry)
            self.write_epoch(entry, improved)
            terms = " ".join(f"{k} {v:.4f}" for k, v in train.items())
            self.report(f"epoch {self.epoch}: {terms} | val latent {val['latent']:.4f} cosine "
                        f"{val['cosine']:.4f} | {seconds:.1f} s{' *' if improved else ''}")
        if self.bad_epochs >= c.patience:
            self.report(f"early stop: no better validation latent loss for {c.patience} epochs")
        return {"epochs": self.epoch, "best_val_latent": self.best}
