"""Manifests: a CSV with a header or JSON lines, one item per row, file paths relative to
the manifest's folder (or absolute).

One reader for every command that takes a list of pictures: the dataset builder
(``training/dataset_input.py``), batch generation (``runtime/generate.py --manifest``) and
the music evaluation (``benchmarks/evaluate_music.py``). Each says which columns hold files;
those are resolved and checked up front, so a typo fails in a second, not after an hour.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from img2music.basics.errors import Img2MusicError


def read_rows(path: str | Path, required: str = "image") -> list[dict]:
    """The rows of a ``.csv`` or ``.jsonl`` manifest as dicts (empty cells dropped).
    ``required``: a column the CSV header must have ("" for none)."""
    p = Path(path)
    if not p.is_file():
        raise Img2MusicError(f"manifest not found: {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Img2MusicError(f"cannot read manifest {path}: {exc}") from None
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise Img2MusicError(f"{path}: line {n} is not JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise Img2MusicError(f"{path}: line {n} is not a JSON object")
                rows.append(row)
    elif suffix == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(text))
            if required and (not reader.fieldnames or required not in reader.fieldnames):
                raise Img2MusicError(f"{path}: the CSV header needs an {required!r} column (got {reader.fieldnames})")
            rows = list(reader)
        except csv.Error as exc:
            raise Img2MusicError(f"cannot read manifest {path}: {exc}") from None
    else:
        raise Img2MusicError(f"manifest must be .csv or .jsonl: {path}")
    return [{k: v for k, v in row.items() if v not in (None, "")} for row in rows]


def resolve_files(rows: list[dict], base: str | Path, columns: Sequence[str], source: str) -> list[dict]:
    """Rows with the file ``columns`` made absolute (relative ones against ``base``); every
    missing file named, the first five in one error."""
    problems = []
    out = []
    for n, row in enumerate(rows, 1):
        row = dict(row)
        for key in columns:
            value = row.get(key)
            if not value:
                continue
            if "://" in str(value):
                problems.append(f"row {n}: {key} is a URL, not a local file: {value}")
                continue
            p = Path(str(value)).expanduser()
            p = p if p.is_absolute() else Path(base) / p
            if not p.is_file():
                problems.append(f"row {n}: {key} file not found: {p}")
            row[key] = str(p.resolve())
        out.append(row)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise Img2MusicError(f"{source}: " + "; ".join(problems[:5]) + more)
    return out


def read_manifest(path: str | Path, file_columns: Sequence[str] = ("image",), required: str = "image") -> list[dict]:
    """:func:`read_rows` + :func:`resolve_files` against the manifest's folder."""
    rows = read_rows(path, required)
    if not rows:
        raise Img2MusicError(f"manifest {path} has no items")
    missing = [n for n, row in enumerate(rows, 1) if required and not row.get(required)]
    if missing:
        raise Img2MusicError(f"{path}: row {missing[0]} has no {required}"
                             + (f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""))
    return resolve_files(rows, Path(path).parent, file_columns, str(path))


def file_safe_id(text: str) -> str:
    """An item id usable as a file name: letters, digits, - _ . kept, the rest '_'."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).lstrip(".")
    return safe or "item"
