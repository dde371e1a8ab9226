"""Phase II on N processes: ``torchrun --nproc_per_node N training/train.py ...``.

train.py picks :class:`DistributedTrainer` when torchrun's environment (``WORLD_SIZE``) is
set; backend gloo on CPU, NCCL on CUDA (each process takes ``cuda:<LOCAL_RANK>``). For the
same ``--batch-size`` (the *global* batch) and seed, N processes compute what one does, up to
float rounding (sums in another order):

- Every rank loads the whole dataset and walks the same seeded order of global batches;
  rank r owns rows ``[r*b, (r+1)*b)`` of each, ``b = batch_size / N`` (a last, shorter batch
  leaves the high ranks fewer rows, possibly none).
- The projector's own forward runs on the whole global batch on every rank, and each rank
  keeps its rows: dropout then draws its masks from the same RNG state for the same shape as
  one process does, so the masks, and the RNG state a checkpoint saves, are one process's.
  That forward is a small network on precomputed CLIP embeddings; what costs (MusicGen's
  decoder for fm/ce/mel, the discriminator) runs on the rank's rows only.
- Every loss term is a mean over something (:func:`term_counts`): rows, valid target tokens,
  rows with audio, audio frames. A rank's mean is weighted by ``N * mine / global`` of that
  count, so DDP's average of the gradients is the gradient of the global batch's mean even
  where the ranks' shares differ (masked means, rows without audio, an uneven last batch).
- DDP averages the projector's gradients. The discriminator is called twice per step (real,
  fake), which DDP's one forward per backward does not fit; its gradients are averaged by one
  all_reduce instead.
- Logged training losses are reduced over the ranks every step. Validation (the projector
  alone) runs on every rank and rank 0's numbers are broadcast, so every rank takes the same
  early-stopping and best-checkpoint decision. Rank 0 alone writes the checkpoints and
  train_log.jsonl (atomically, as on one process).
- A checkpoint holds nothing per rank (weights, optimizer state and RNG state are the same
  on every rank; ``batch_size`` is global), so ``--resume`` works with any number of processes.
"""

from __future__ import annotations

import logging
import os
import sys

from img2music.basics.errors import Img2MusicError
from img2music.training.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

TERMS = ("latent_l1", "latent_cos", "fm", "ce", "mel", "adv")
"""The loss terms of Trainer.loss_terms, in the order they are logged."""


def term_counts(batch: dict) -> dict[str, float]:
    """What each term of Trainer.loss_terms (training/losses.py) is a mean over, in ``batch``."""
    tokens = float(batch["target_mask"].sum())  # latent: masked by the target's tokens
    audio_rows = float((batch["audio_mask"].sum(1) > 0).sum())  # fm, mel: every value of the rows with audio
    frames = float(batch["audio_mask"].sum())  # ce: each codebook's code of each real frame
    rows = float(len(batch["target_mask"]))
    return {"latent_l1": tokens, "latent_cos": tokens, "fm": audio_rows, "mel": audio_rows, "ce": frames,
            "adv": rows}


def check_world(config: TrainConfig, rank: int, world: int) -> None:
    """Refuse what N processes cannot do; every rank finds the same problem, rank 0 says it."""
    problem = None
    if config.batch_size % world:
        problem = (f"--batch-size {config.batch_size} is the global batch and must divide evenly over "
                   f"the {world} processes (use a multiple of {world})")
    elif ":" in config.device:
        problem = f"--device {config.device}: give cpu or cuda; each process takes cuda:<LOCAL_RANK>"
    if problem:
        if rank == 0:
            raise Img2MusicError(problem)
        # the others leave quietly (one error line, not N) and with 0: torchrun stops every
        # process as soon as one fails, so a failing rank 1 could kill rank 0 before it has
        # printed the error (seen under load); rank 0's exit code carries the failure
        sys.exit(0)


class DistributedTrainer(Trainer):
    """A Trainer that is one of N processes of a torchrun launch."""

    def __init__(self, config: TrainConfig, report=None) -> None:
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        check_world(config, self.rank, self.world)  # before the imports: a bad flag fails fast
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        cuda = torch.device(config.device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)  # so that "cuda" everywhere below is this rank's GPU
        dist.init_process_group("nccl" if cuda else "gloo")
        self.dist = dist
        super().__init__(config, report=(report or log.info) if self.rank == 0 else (lambda message: None))
        self.ddp = DistributedDataParallel(self.model, device_ids=[local_rank] if cuda else None)
        if self.disc is not None:
            for p in self.disc.parameters():  # equal already (same seed); this makes it so by construction
                dist.broadcast(p.data, 0)
        self.report(f"{self.world} processes ({dist.get_backend()}), {config.batch_size // self.world} rows "
                    f"of each global batch of {config.batch_size} per process")

    def _part(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` rows."""
        b = self.c.batch_size // self.world
        return slice(min(self.rank * b, n), min((self.rank + 1) * b, n))

    def _weights(self, batch: dict, part: slice) -> dict[str, float]:
        mine, every = term_counts({k: v[part] for k, v in batch.items()}), term_counts(batch)
        return {k: self.world * mine[k] / every[k] if every[k] else 0.0 for k in TERMS}

    def train_terms(self, batch: dict) -> tuple[dict, dict]:
        torch = self.torch
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.ddp(batch["clip_embeds"])  # the whole global batch: dropout as on one process
        part = self._part(len(batch["clip_embeds"]))
        pred, pred_mask = out.conditioning.float()[part], out.mask[part]
        t = self.loss_terms({k: v[part] for k, v in batch.items()}, pred, pred_mask)
        weights = self._weights(batch, part)
        t = {k: v * weights[k] for k, v in t.items()}  # a KeyError here: a new term needs a count
        total = self.total(t)
        # one all_reduce: each term's share (its sum over ranks / N is the global value), whether
        # a rank has it, and whether any rank has something to learn from
        zero = total.new_zeros((), dtype=torch.float64)
        shares = [t[k].detach().double() if k in t else zero for k in TERMS] + [total.detach().double()]
        flags = [zero + (k in t) for k in TERMS] + [zero + total.requires_grad]
        stats = torch.stack(shares + flags)
        self.dist.all_reduce(stats)
        if stats[-1] > 0 and not total.requires_grad:
            total = total + pred.sum() * 0  # every rank must join DDP's backward, or the others wait forever
        t["total"] = total
        values = (stats[: len(shares)] / self.world).tolist()
        present = stats[len(shares) : -1].tolist()
        logged = {k: values[i] for i, k in enumerate(TERMS) if present[i] > 0}
        logged["total"] = values[-1]
        return t, logged

    def _disc_step(self, batch: dict) -> float:
        from img2music.training.losses import discriminator_loss

        torch = self.torch
        with torch.no_grad():
            fake = self.model(batch["clip_embeds"])  # the whole global batch, as in train_terms
        n = len(batch["clip_embeds"])
        part = self._part(n)
        self.disc_opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        if part.stop > part.start:
            real = self.disc(batch["target"][part], batch["target_mask"][part])
            loss = discriminator_loss(real, self.disc(fake.conditioning.float()[part], fake.mask[part]))
            loss = loss * (self.world * (part.stop - part.start) / n)  # rows-weighted, as in _weights
            loss.backward()
        params = list(self.disc.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])
        self.dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.disc_opt.step()
        return float(flat[-1])

    def evaluate(self, data: dict) -> dict:
        """Every rank evaluates the whole split; rank 0's numbers are everyone's decision."""
        result = super().evaluate(data)
        keys = list(result)
        values = self.torch.tensor([result[k] for k in keys], dtype=self.torch.float64, device=self.device)
        self.dist.broadcast(values, 0)
        return dict(zip(keys, values.tolist()))

    def write_epoch(self, entry: dict, improved: bool) -> None:
        if self.rank == 0:
            super().write_epoch(entry, improved)

    def fit(self) -> dict:
        result = super().fit()
        self.dist.barrier()  # the run ends when rank 0 has written its last checkpoint
        return result

    def close(self) -> None:
        # no collective here: after an error on one rank, the others may never arrive
        if self.dist.is_initialized():
            self.dist.destroy_process_group()
