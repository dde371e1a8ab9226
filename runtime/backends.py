"""Backend selection, in one place: which sessions run a bundle's graphs.

Today one backend: ONNX Runtime, every graph a session on the given execution
providers (default CPU) and the decoder an :class:`OrtDecoderSession` with its
in-place cache in host memory (another provider runs the same graphs but copies the
cache per step). A GPU backend (device-resident cache, CUDA graphs) plugs in here: a
``DecoderSession`` of its own, chosen by :func:`open_sessions`; nothing above this
module changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.bundle import Bundle, check_decoder_config, check_session
from runtime.bundle_manifest import RUNTIME_GRAPHS
from runtime.decoder_session import DecoderSession
from runtime.onnx_session import create_session


@dataclass(frozen=True)
class SessionOptions:
    """How to run a bundle."""

    threads: int | None = None
    """Intra-op threads per session (default: the cores this process may use)."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """onnxruntime execution providers, in order of preference."""
    spinning: bool = True
    """Let ORT's worker threads busy-wait between runs (False when other threads need the cores)."""


@dataclass
class BundleSessions:
    """Every graph the runtime runs, ready."""

    graphs: dict
    """Graph name -> onnxruntime InferenceSession (clip_vision, projector, encodec_stream_*...)."""
    decoder: DecoderSession
    """decoder_step + cross_kv behind the decoder-session interface."""


def open_sessions(bundle: Bundle, options: SessionOptions = SessionOptions()) -> BundleSessions:
    """Sessions for a verified bundle; each checked against the I/O its manifest records."""
    from runtime.ort_decoder_session import OrtDecoderSession

    graphs = {}
    for name in RUNTIME_GRAPHS:
        session = create_session(bundle.graph_path(name), threads=options.threads, providers=list(options.providers),
                                 spinning=options.spinning)
        check_session(session, bundle.graph(name), name)
        graphs[name] = session
    check_decoder_config(bundle, graphs["decoder_step"])
    decoder = OrtDecoderSession(graphs["decoder_step"], graphs["cross_kv"], bundle.model.decoder,
                                kv_scales=bundle.kv_scales())
    return BundleSessions(graphs, decoder)
