"""One live session's configuration: nested typed configs, each checked once when built.

``LiveSessionConfig(backend, source, engine, output, servers)``, as sherpa-onnx nests its
recognizer's configs: ``live.py`` turns its flags into one, a program embedding img2music
builds one itself, and :class:`runtime.session.LiveSession` assembles the run from it alone.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from img2music.basics.errors import Img2MusicError, require
from img2music.runtime.backends.providers import PROVIDERS
from img2music.runtime.control.guard import LOOPBACK
from img2music.runtime.loop.config import EngineConfig, SourceConfig
from img2music.runtime.pipeline.encodec_choice import CHOICES

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


def _size(name: str, megabytes: float) -> None:
    require(isinstance(megabytes, (int, float)) and math.isfinite(megabytes) and megabytes > 0,
           f"{name} must be a positive number of MB, got {megabytes!r}")


Address = tuple[str, int]


@dataclass(frozen=True)
class BackendConfig:
    """The engine bundle and how it runs."""

    engines: str
    """Engine bundle directory (``export/build_engines.py``)."""
    provider: str = "cpu"
    """cpu, cuda or tensorrt (``runtime.backends.providers``)."""
    threads: int | None = None
    """CPU threads for onnxruntime (None: every core this process may use)."""
    cuda_graph: bool = True
    """GPU: replay the decoder step as a CUDA graph."""
    encodec: str = "auto"
    """The streaming EnCodec front: auto (the faster here of float32 and the int8-LSTM variant,
    measured once per host and bundle), float32 or int8 (``runtime.pipeline.encodec_choice``)."""

    def __post_init__(self) -> None:
        require(Path(self.engines).is_dir(), f"engine bundle not found: {self.engines}")
        require(self.provider in PROVIDERS, f"unknown provider {self.provider!r}; choose one of {', '.join(PROVIDERS)}")
        require(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
               f"--threads must be a whole number >= 1, got {self.threads!r}")
        require(self.encodec in CHOICES, f"--encodec must be one of {', '.join(CHOICES)}, got {self.encodec!r}")


@dataclass(frozen=True)
class OutputConfig:
    """Where the music and the run's numbers go."""

    no_audio: bool = False
    """No sound card (headless): the audio is paced by a clock."""
    device: int | str | None = None
    """Sound output device, index or name (None: the system default)."""
    rate: int | None = None
    """Output sample rate (None: the device's own; the model's with ``no_audio``)."""
    record: str | None = None
    """Also record the output to this WAV (never overwritten: ``WAV.1.wav``, ...)."""
    record_max_mb: float = 1024.0
    """Start a new recording file when one reaches this size."""
    metrics: str | None = None
    """Append one JSON line of metrics per second to this file."""
    metrics_max_mb: float = 20.0
    """Rotate ``metrics`` at this size (three older files kept)."""

    def __post_init__(self) -> None:
        require(self.rate is None or (isinstance(self.rate, int) and self.rate > 0),
               f"--rate must be a positive whole number, got {self.rate!r}")
        _size("--record-max-mb", self.record_max_mb)
        _size("--metrics-max-mb", self.metrics_max_mb)
        if self.record is not None:
            parent = Path(self.record).resolve().parent
            require(parent.is_dir(), f"--record: directory does not exist: {parent}")
            require(os.access(parent, os.W_OK), f"--record: directory is not writable: {parent}")


@dataclass(frozen=True)
class ServerConfig:
    """The status page, metrics and control servers (all off by default)."""

    http: Address | None = None
    """Status page, ``/metrics``, ``/healthz``, ``/readyz`` and ``/control`` on (host, port)."""
    osc: Address | None = None
    """The same control over OSC/UDP."""
    ws: Address | None = None
    """Two-way control over a WebSocket."""
    token_file: str | None = None
    """File holding the bearer token control requests must carry (``--http-token-file``); read
    when the session is assembled (:func:`read_token_file`), never printed or logged."""
    allow_hosts: tuple[str, ...] = ()
    """Host names the servers answer to beyond their bind address, ``localhost`` and IP literals
    (``--http-allow-host``): anything else in a request's Host header is refused (DNS rebinding)."""
    public_metrics: bool = False
    """Off loopback without a token: serve ``/metrics``, ``/healthz`` and ``/readyz`` alone
    (``--http-public-metrics``); without it such a bind refuses to start."""
    reload_dir: str | None = None
    """Bundles may be reloaded from this folder only (``--reload-dir``; default: the folder the
    started bundle is in)."""

    def __post_init__(self) -> None:
        for name in ("http", "osc", "ws"):
            address = getattr(self, name)
            require(address is None or (len(address) == 2 and isinstance(address[1], int) and 0 <= address[1] <= 65535),
                   f"--{name}: not a (host, port) address: {address!r}")
        if self.token_file is not None:
            require(bool(self.http or self.ws), "--http-token-file needs --http or --ws (the token guards their control)")
        else:
            if self.http and self.http[0] not in LOOPBACK:
                require(self.public_metrics, f"--http on {self.http[0]} (off loopback) needs --http-token-file, or "
                                             "--http-public-metrics to serve /metrics, /healthz and /readyz alone")
            if self.ws and self.ws[0] not in LOOPBACK:
                require(False, f"--ws on {self.ws[0]} (off loopback) needs --http-token-file")
        if self.reload_dir is not None:
            require(Path(self.reload_dir).is_dir(), f"--reload-dir: no such directory: {self.reload_dir}")

    @property
    def any(self) -> bool:
        return bool(self.http or self.osc or self.ws)


@dataclass(frozen=True)
class LiveSessionConfig:
    """Everything one live run needs (see the module docstring)."""

    backend: BackendConfig
    source: SourceConfig
    engine: EngineConfig = field(default_factory=EngineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    servers: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        for name, kind in (("backend", BackendConfig), ("source", SourceConfig), ("engine", EngineConfig),
                           ("output", OutputConfig), ("servers", ServerConfig)):
            require(isinstance(getattr(self, name), kind), f"LiveSessionConfig.{name} must be a {kind.__name__}")


def read_token_file(path: str) -> str:
    """The token in ``path`` (``--http-token-file``), stripped; one clear error when unreadable or short."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise Img2MusicError(f"--http-token-file: cannot read {path}: {exc}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise Img2MusicError(f"--http-token-file: the token in {path} is shorter than {MIN_TOKEN_CHARS} characters")
    mode = Path(path).stat().st_mode
    if mode & 0o077:
        log.warning("--http-token-file %s can be read by other users (mode %o): chmod 600 it", path, mode & 0o777)
    return token
