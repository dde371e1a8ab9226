"""Phase I input: an image folder or a CSV/JSONL manifest, and the stratified split.

Manifest columns (CSV header or JSONL keys, read by ``basics.manifest``): ``image``
(required, relative to the manifest's folder or absolute), optional ``audio``, ``text`` (a
caption to use instead of the captioner's, as MeLBench provides), ``emotion``, ``genre``.
Every referenced file is checked up front, so a typo fails in a second, not after an hour
of captioning.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.basics.manifest import read_manifest

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FIELDS = ("image", "audio", "text", "emotion", "genre")


def read_items(source: str) -> list[dict]:
    """Items with absolute ``image``/``audio`` paths and a stable ``id`` (hash of the row)."""
    path = Path(source)
    if path.is_dir():
        rows = [{"image": str(p.resolve())} for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not rows:
            raise Img2MusicError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
    elif path.is_file():
        rows = read_manifest(path, file_columns=("image", "audio"))
    else:
        raise Img2MusicError(f"input not found: {source} (give an image folder or a .csv/.jsonl manifest)")
    items, seen = [], set()
    for row in rows:
        item = {k: (row.get(k) or None) for k in FIELDS}
        item["id"] = hashlib.sha1(json.dumps([item[k] for k in FIELDS]).encode()).hexdigest()[:16]
        if item["id"] in seen:
            continue  # an identical row twice adds nothing
        seen.add(item["id"])
        items.append(item)
    return items


def image_key(item: dict) -> str:
    """Items showing the same picture (same bytes) share a key and so a split."""
    with open(item["image"], "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def stratified_split(items: list[dict], seed: int, fractions=(0.8, 0.1, 0.1)) -> list[str]:
    """'train'/'val'/'test' per item: 80/10/10 within each (emotion, genre) stratum,
    whole images (all rows of one picture) to one split, deterministic for ``seed``."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(image_key(item), []).append(i)
    strata: dict[tuple, list[str]] = {}
    for key, members in sorted(groups.items()):
        first = items[members[0]]
        strata.setdefault((first.get("emotion") or "", first.get("genre") or ""), []).append(key)
    rng = np.random.default_rng(seed)
    splits = [""] * len(items)
    for stratum in sorted(strata):
        keys = strata[stratum]
        rng.shuffle(keys)
        n = len(keys)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if n >= 3:  # every stratum big enough shows up in validation and test
            n_val, n_test = max(1, n_val), max(1, n_test)
        for rank, key in enumerate(keys):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            for i in groups[key]:
                splits[i] = split
    return splits
