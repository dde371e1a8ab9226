"""Batch generation: a manifest of images and/or prompts -> one WAV each + an index,
resumable, in one process or on a Ray cluster (``generate.py --manifest FILE [--ray]``).

Manifest (``basics.manifest``: CSV or JSON lines): ``image`` and/or ``text`` (the prompt),
optional ``id`` (the WAV's name; default the image's name, or ``prompt-N``) and
``prompt_weight``. Output in ``--out``: ``ID.wav`` per item and ``index.jsonl``, one line per
finished piece (id, image, prompt, wav, seconds, seed, directive). A WAV is written under a
temporary name and renamed, then its index line appended and synced, by the driver alone:
a rerun skips every piece the index lists and remakes one cut short. An item that fails
(an unreadable image, a prompt too long) is reported and left out of the index, so a rerun
retries it; the others go on.

Every item samples with its own seed, fixed by its id (:func:`item_seed`), so the music
does not depend on which process or worker makes it. On Ray (``basics.ray_cluster``) each
worker loads the bundle once and makes one piece at a time with ``cpus_per_worker`` threads.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.sampling import SamplingConfig

log = logging.getLogger(__name__)

INDEX = "index.jsonl"


def item_seed(base: int, item_id: str) -> int:
    """The seed of one item: the run's base seed plus a number fixed by the item's id."""
    return (base + zlib.crc32(item_id.encode())) % 2**31


@dataclass(frozen=True)
class BatchItem:
    id: str
    """File-safe name: the piece is ``ID.wav``."""
    image: str | None = None
    prompt: str | None = None
    prompt_weight: float = 1.0
    """The prompt's weight against the image (``runtime.generation.conditioning``)."""


@dataclass(frozen=True)
class BatchSettings:
    """What every piece shares."""

    bundle: str
    seconds: float
    sampling: SamplingConfig
    threads: int | None = None
    """onnxruntime threads per process (on Ray: per worker)."""
    provider: str = "cpu"
    window_seconds: float = 30.0
    keep_seconds: float = 12.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BatchSettings":
        return cls(**dict(values, sampling=SamplingConfig(**values["sampling"])))


def read_items(path: str) -> list[BatchItem]:
    """The manifest's items, checked: an image or a text per row, distinct ids, weights in range."""
    from img2music.basics.manifest import file_safe_id, read_manifest
    from img2music.runtime.generation.conditioning import check_prompt_weight

    rows = read_manifest(path, file_columns=("image",), required="")
    items, seen = [], set()
    for n, row in enumerate(rows, 1):
        image, prompt = row.get("image"), (str(row.get("text") or "")).strip() or None
        if not image and not prompt:
            raise Img2MusicError(f"{path}: row {n} has neither an image nor a text")
        given = row.get("id")
        base = file_safe_id(given or (Path(image).stem if image else f"prompt-{n}"))
        item_id, k = base, 1
        while item_id.casefold() in seen:  # derived names get -2, -3 ...; given ones must differ
            if given:
                raise Img2MusicError(f"{path}: row {n}: id {given!r} repeats (ids name the WAV files)")
            k += 1
            item_id = f"{base}-{k}"
        seen.add(item_id.casefold())
        try:
            weight = check_prompt_weight(float(row.get("prompt_weight", 1.0)))
        except (TypeError, ValueError, Img2MusicError) as exc:
            raise Img2MusicError(f"{path}: row {n}: {exc}") from None
        if row.get("prompt_weight") is not None and not (image and prompt):
            raise Img2MusicError(f"{path}: row {n}: a prompt_weight needs both an image and a text")
        items.append(BatchItem(item_id, image, prompt, weight))
    return items


class PieceMaker:
    """One loaded bundle; makes the pieces one at a time into ``out``."""

    def __init__(self, settings: BatchSettings, out: str | os.PathLike) -> None:
        from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

        self.settings, self.out = settings, Path(out)
        self.pipeline = OnnxPipeline.load(settings.bundle, threads=settings.threads, provider=settings.provider)

    def make(self, item: BatchItem) -> dict:
        """The piece's index record, or ``{"id", "error"}`` when the item cannot be made."""
        from img2music.runtime.audio.files import WavRecorder
        from img2music.runtime.pipeline.preprocess import load_image

        s, pipeline = self.settings, self.pipeline
        seed = item_seed(s.sampling.seed, item.id)
        part = self.out / f".{item.id}.part.wav"
        try:
            images = [load_image(item.image)] if item.image else None
            recorder = WavRecorder(str(part), pipeline.sample_rate, channels=pipeline.channels)
            try:
                stream = pipeline.stream_to_files([recorder], images, s.seconds, replace(s.sampling, seed=seed),
                                                  window_seconds=s.window_seconds, keep_seconds=s.keep_seconds,
                                                  prompt=item.prompt, prompt_weight=item.prompt_weight)
            finally:
                recorder.close()
        except Img2MusicError as exc:
            part.unlink(missing_ok=True)
            return {"id": item.id, "error": str(exc)}
        wav = self.out / f"{item.id}.wav"
        os.replace(part, wav)
        return {"id": item.id, "image": item.image, "prompt": item.prompt, "prompt_weight": item.prompt_weight,
                "wav": wav.name, "seconds": round(recorder.samples / recorder.rate, 4), "seed": seed,
                "directive": stream.directives[0] if stream.directives else None}


class RayPieceMaker:
    """The Ray actor: a :class:`PieceMaker` per worker; one row in, its record (JSON) out."""

    def __init__(self, settings: dict, out: str) -> None:
        self.maker = PieceMaker(BatchSettings.from_dict(settings), out)

    def __call__(self, rows: dict) -> dict:
        import numpy as np

        records = []
        for text in rows["item"]:
            records.append(json.dumps(self.maker.make(BatchItem(**json.loads(text)))))
        return {"record": np.asarray(records, dtype=object)}


def finished(out: Path) -> set[str]:
    """Ids the index lists whose WAV is there (a line cut by a crash ends the reading)."""
    index = out / INDEX
    done = set()
    if index.is_file():
        for line in index.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if (out / record["wav"]).is_file():
                done.add(record["id"])
    return done


def _append(out: Path, record: dict) -> None:
    with open(out / INDEX, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def run(items: Sequence[BatchItem], settings: BatchSettings, out: str | os.PathLike,
        progress: Callable | None = None, ray_address: str | None = None, workers: int | None = None,
        gpus_per_worker: float = 0.0, verbose: bool = False) -> dict:
    """Make every piece the index does not list yet; returns {"made", "skipped", "failed": [records]}.
    ``progress``: a tqdm-like factory (total=, desc=, unit=) or None."""
    out = Path(out)
    done = finished(out)
    todo = [item for item in items if item.id not in done]
    failed: list[dict] = []
    bar = progress(total=len(todo), desc="pieces", unit="piece") if progress else _NoBar()

    def take(record: dict) -> None:
        if "error" in record:
            failed.append(record)
            log.warning("%s: %s", record["id"], record["error"])
        else:
            _append(out, record)
        bar.update(1)

    try:
        if todo and ray_address:
            _run_on_ray(todo, settings, out, take, ray_address, workers, gpus_per_worker, verbose)
        elif todo:
            maker = PieceMaker(settings, out)
            for item in todo:
                take(maker.make(item))
    finally:
        bar.close()
    return {"made": len(todo) - len(failed), "skipped": len(items) - len(todo), "failed": failed}


def _run_on_ray(todo, settings: BatchSettings, out: Path, take, address: str, workers: int | None,
                gpus_per_worker: float, verbose: bool) -> None:
    from img2music.basics.ray_cluster import actor_pool, cluster_slots, connect

    ray = connect(address, verbose=verbose)
    cpus = settings.threads or 1
    settings = replace(settings, threads=cpus)  # each worker's onnxruntime uses what it reserved
    workers = max(1, min(workers or cluster_slots(ray, cpus, gpus_per_worker), len(todo)))
    ds = ray.data.from_items([{"item": json.dumps(asdict(item))} for item in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(RayPieceMaker, fn_constructor_args=(settings.to_dict(), str(out)), batch_size=1,
                        batch_format="numpy", compute=actor_pool(ray, workers), num_cpus=cpus, num_gpus=gpus_per_worker or None)
    log.info("%d pieces on %d Ray workers", len(todo), workers)
    for rows in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for text in rows["record"]:
            take(json.loads(text))
