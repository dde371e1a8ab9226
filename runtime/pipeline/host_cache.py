"""What this host measured on a bundle, kept between runs: one small JSON file in the user's cache.

The live runtime measures what generation costs here (the context budget) and which streaming
EnCodec front is faster; one start-up measurement is noisy (the same host has measured EnCodec at
157 and at 463 ms per second of audio in two starts) and costs seconds of the first audio. So the
results are kept under a key that changes whenever they could: the bundle (its manifest's
sha256, which covers every file's), the thread count, the provider, the CPU model and the
onnxruntime and img2music versions. A key that changed is measured again. The file is
``$IMG2MUSIC_CACHE_DIR/host.json`` (default ``$XDG_CACHE_HOME/img2music``, else
``~/.cache/img2music``); it is written atomically, and a cache that cannot be written (a read-only
home) costs a warning and a measurement per start, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "IMG2MUSIC_CACHE_DIR"
FILE = "host.json"
KEEP_KEYS = 32
"""Bundles x settings remembered; the least recently written go first."""


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "img2music"


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) CPU @ 2.00GHz'), as the OS says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class HostCache:
    """Measurements under one key (see the module docstring)."""

    def __init__(self, key_fields: dict, path: Path | None = None) -> None:
        self.fields = key_fields
        self.key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
        self.path = path or cache_dir() / FILE

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # none yet, unreadable or half-written by a crash: measure again

    def get(self, name: str) -> dict | None:
        entry = self._read().get(self.key, {}).get(name)
        return entry if isinstance(entry, dict) else None

    def put(self, name: str, value: dict) -> None:
        data = self._read()
        entry = data.setdefault(self.key, {"fields": self.fields})
        entry[name] = value
        entry["written"] = time.time()
        keep = sorted(data, key=lambda k: data[k].get("written", 0) if isinstance(data[k], dict) else 0)[-KEEP_KEYS:]
        data = {k: data[k] for k in keep}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot keep this host's measurements in %s (%s): they are measured again at each start",
                        self.path, exc.strerror or exc)


def for_bundle(bundle, threads: int, provider: str) -> HostCache:
    """The cache of ``bundle`` (a verified Bundle) run with ``threads`` on ``provider`` here."""
    import onnxruntime

    from img2music.runtime.bundle.loading import sha256_file

    try:
        from importlib.metadata import version

        ours = version("img2music")
    except Exception:  # a checkout that is not installed
        ours = "checkout"
    return HostCache({"bundle": sha256_file(bundle.root / "manifest.json"), "threads": threads, "provider": provider,
                      "cpu": cpu_model(), "machine": platform.machine(), "onnxruntime": onnxruntime.__version__,
                      "img2music": ours})
