"""The Study II dataset on disk, and the resumable per-step cache that builds it.

Format (``format`` 1), one directory::

    dataset.json                 what built it: models, prompt, sizes, split counts, seed
    index.jsonl                  one item per line, human-readable: id, image, audio,
                                 caption (+ caption_source), directive, emotion, genre,
                                 split, shard, row
    shards/<split>-<k>.safetensors   up to SHARD_ROWS rows each:
        clip_embeds  (n, D_clip) float32   CLIP image embedding (the runtime's clip_vision)
        t5_hidden    (n, L, D_t5) float32  MusicGen T5 encoding of the directive (0 past mask)
        t5_mask      (n, L) int64
        audio_codes  (n, K, F) int64       EnCodec codes of the paired (or generated) audio
        audio_mask   (n, F) int64          1 for real frames; all 0 when an item has no audio
    cache/<step>/                the builder's resumable work (safe to delete afterwards)

:class:`StepCache` keeps one step's finished batches: each batch is written to a
temporary file and renamed (atomic), then recorded in ``parts.jsonl``; a batch cut
short by a crash or Ctrl-C is simply redone, anything recorded is never redone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from img2music.basics.errors import Img2MusicError

FORMAT = 1
SHARD_ROWS = 1024
TENSORS = ("clip_embeds", "t5_hidden", "t5_mask", "audio_codes", "audio_mask")


class StepCache:
    """Finished batches of one build step: tensors in safetensors parts, text in JSON lines."""

    def __init__(self, root: Path, step: str) -> None:
        self.dir = Path(root) / "cache" / step
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index = self.dir / "parts.jsonl"
        self._rows: dict[str, tuple[str | None, int, dict | None]] = {}
        if self.index.exists():
            for line in self.index.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    part = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a crash: everything after it is redone
                for row, item_id in enumerate(part["ids"]):
                    record = part["records"][row] if part.get("records") else None
                    self._rows[item_id] = (part.get("file"), row, record)

    def done(self) -> set[str]:
        return set(self._rows)

    def add(self, ids: list[str], tensors: dict[str, np.ndarray] | None = None,
            records: list[dict] | None = None) -> None:
        from safetensors.numpy import save_file

        name = None
        if tensors:
            name = f"part-{len(list(self.dir.glob('part-*.safetensors'))):06d}.safetensors"
            tmp = self.dir / (name + ".tmp")
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, self.dir / name)
        with open(self.index, "a", encoding="utf-8") as f:
            f.write(json.dumps({"file": name, "ids": ids, "records": records}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for row, item_id in enumerate(ids):
            self._rows[item_id] = (name, row, records[row] if records else None)

    def record(self, item_id: str) -> dict:
        return self._rows[item_id][2]

    def tensors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """Rows for ``ids`` in that order, gathered from the parts."""
        from safetensors.numpy import load_file

        files: dict[str, dict] = {}
        rows: dict[str, list] = {}
        for item_id in ids:
            name, row, _ = self._rows[item_id]
            if name not in files:
                files[name] = load_file(str(self.dir / name))
            for key, value in files[name].items():
                rows.setdefault(key, []).append(value[row])
        return {k: np.stack(v) for k, v in rows.items()}


def write_dataset(root: Path, items: list[dict], tensors: dict[str, np.ndarray], info: dict) -> None:
    """Shards per split + index.jsonl + dataset.json (items carry their 'split')."""
    from safetensors.numpy import save_file

    root = Path(root)
    shards = root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for old in shards.glob("*.safetensors"):
        old.unlink()
    lines = []
    counts = {}
    for split in ("train", "val", "test"):
        rows = [i for i, item in enumerate(items) if item["split"] == split]
        counts[split] = len(rows)
        for k, start in enumerate(range(0, len(rows), SHARD_ROWS)):
            chunk = rows[start : start + SHARD_ROWS]
            name = f"{split}-{k:05d}.safetensors"
            save_file({key: np.ascontiguousarray(tensors[key][chunk]) for key in TENSORS}, str(shards / name))
            for row, i in enumerate(chunk):
                lines.append(dict(items[i], shard=name, row=row))
    (root / "index.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    (root / "dataset.json").write_text(json.dumps(dict(info, format=FORMAT, splits=counts), indent=2))


def load_index(root: Path) -> tuple[dict, list[dict]]:
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise Img2MusicError(f"not a dataset (no dataset.json): {root}; build one with training/build_dataset.py")
    info = json.loads(meta_path.read_text())
    if info.get("format") != FORMAT:
        raise Img2MusicError(f"dataset format {info.get('format')} is not supported (expected {FORMAT})")
    items = [json.loads(line) for line in (root / "index.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return info, items


def load_split(root: Path, split: str) -> dict[str, np.ndarray]:
    """All tensors of one split, rows in index order."""
    from safetensors.numpy import load_file

    root = Path(root)
    _, items = load_index(root)
    names = sorted({item["shard"] for item in items if item["split"] == split})
    if not names:
        raise Img2MusicError(f"the dataset has no {split!r} items")
    parts = [load_file(str(root / "shards" / name)) for name in names]
    return {key: np.concatenate([p[key] for p in parts]) for key in TENSORS}
