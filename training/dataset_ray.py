"""Phase I steps on Ray Data (``training/build_dataset.py --ray [ADDRESS]``).

Each step's unfinished batches become one Ray Data row each (the same batches, of the
same items, as the in-process build makes), mapped by an actor pool whose actors each
hold the step's models once (:class:`StepWorker`: a ``Builder`` of their own). The
driver alone writes the results into the step cache as they arrive, so a finished batch
is written once and never redone; a killed worker is restarted by Ray and its batch
retried; a stopped driver or cluster resumes from the cache like the in-process build.
What is per worker: the models (loaded on first use, once per actor) and the batch at
hand; what is shared: the input files, the step caches (the dataset directory must be on
a file system every node sees) and the order of the batches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class StepWorker:
    """A Ray actor for one build step: ``Builder`` state, models loaded once."""

    def __init__(self, config: dict, step: str) -> None:
        from pathlib import Path

        from img2music.training.dataset_builder import BuildConfig, Builder
        from img2music.training.dataset_store import StepCache

        self.builder = Builder(BuildConfig(**{**config, "ray": None}))  # a worker runs its batches itself
        if step == "codes":  # generated codes start from the finished t5 step's targets
            self.builder.caches = {"t5": StepCache(Path(config["out"]), "t5")}
        self.work = self.builder.step_work(step)

    def __call__(self, rows: dict) -> dict:
        """One row = one batch of items (JSON) -> one row per item: id, tensors, record."""
        out: dict[str, list] = {"id": [], "record": []}
        for text in rows["batch"]:
            batch = json.loads(text)
            tensors, records = self.work(batch)
            out["id"] += [item["id"] for item in batch]
            out["record"] += [json.dumps(r) for r in records] if records else [""] * len(batch)
            for key, value in (tensors or {}).items():
                out.setdefault(f"tensor.{key}", []).extend(np.asarray(value))
        return {key: np.stack(v) if key.startswith("tensor.") else np.asarray(v, dtype=object)
                for key, v in out.items()}


def run_step(builder, name: str, batches: list[list[dict]], cache, on_batch: Callable[[int], None]) -> None:
    """Map ``batches`` of one step over the cluster; results into ``cache`` as they come."""
    import ray

    c = builder.c
    gpus = c.gpus_per_worker
    from img2music.basics.ray_cluster import actor_pool, cluster_slots

    workers = c.ray_workers or cluster_slots(ray, c.cpus_per_worker, gpus)
    workers = max(1, min(workers, len(batches)))
    ds = ray.data.from_items([{"batch": json.dumps(batch)} for batch in batches], override_num_blocks=len(batches))
    ds = ds.map_batches(StepWorker, fn_constructor_args=(asdict(c), name), batch_size=1, batch_format="numpy",
                        compute=actor_pool(ray, workers), num_cpus=c.cpus_per_worker, num_gpus=gpus or None)
    log.info("%s: %d batches on %d Ray workers", name, len(batches), workers)
    for rows in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ids = [str(i) for i in rows["id"]]
        tensors = {k[len("tensor."):]: v for k, v in rows.items() if k.startswith("tensor.")} or None
        records = [json.loads(r) for r in rows["record"]] if rows["record"][0] else None
        cache.add(ids, tensors, records)
        on_batch(len(ids))
