"""Which streaming EnCodec front runs: the float32 one, or its int8-LSTM variant where it is faster.

A CPU bundle carries both fronts (``export.bundle_build``; the variant passed its own SNR bar
against the full decode at build time, ``export.validation``). Whether 8-bit LSTM weights are
faster depends on the host (they were slower on a host without AVX-512 VNNI for convolutions),
so ``encodec="auto"`` measures both here, streaming at the chunk size the caller will use, and
runs the faster; the result is kept per host and bundle (``runtime.pipeline.host_cache``).
``"float32"`` (the default of the library and ``generate.py``) keeps the stream equal to the
full decode (>= 90 dB); ``"int8"`` takes the variant without measuring.
"""

from __future__ import annotations

import logging
import statistics
import time

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.bundle.manifest import ENCODEC_FRONT_INT8
from img2music.runtime.pipeline.encodec_stream import EncodecStreamDecoder, onnx_stream_functions

log = logging.getLogger(__name__)

CHOICES = ("float32", "int8", "auto")
FLOAT32_FRONT = "encodec_stream_front"
RUNS = 5
"""Timed pushes per front (the median counts)."""


def stream_ms_per_second(front_session, back_session, model, chunk: int, runs: int = RUNS) -> float:
    """Median ms per second of audio of one front + the back, streaming ``chunk``-frame pushes."""
    s = model.encodec_stream
    decoder = EncodecStreamDecoder(*onnx_stream_functions(front_session, back_session),
                                   (s.lstm_layers, 1, s.lstm_channels), model.audio.hop_length)
    codes = np.random.default_rng(0).integers(0, model.decoder.vocab_size,
                                              (1, model.decoder.delay_span, chunk * (runs + 1)))
    decoder.push(codes[:, :, :chunk])  # warm-up: allocations, the first run's kernels
    times = []
    for i in range(1, runs + 1):
        start = time.perf_counter()
        decoder.push(codes[:, :, i * chunk:(i + 1) * chunk])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 * model.audio.frame_rate / chunk


def known_front(choice: str, cache, chunk: int, has_int8: bool) -> str | None:
    """The front ``choice`` will run when that is known before measuring (asked for, or measured
    here before), else None: the other front's session need not be opened."""
    if choice == "float32" or (choice == "auto" and not has_int8):
        return FLOAT32_FRONT
    if choice == "int8":
        return ENCODEC_FRONT_INT8
    kept = cache.get(f"encodec_front@{chunk}") if cache is not None else None
    if kept is None:
        return None
    return ENCODEC_FRONT_INT8 if kept["int8_ms_per_s"] < kept["float32_ms_per_s"] else FLOAT32_FRONT


def choose_front(sessions: dict, model, choice: str, has_int8: bool, cache=None,
                 chunk: int = 25) -> tuple[str, dict]:
    """(graph name, what decided it) for ``choice`` in :data:`CHOICES`; ``has_int8``: the bundle
    has the int8 front for this provider (``sessions`` may hold one front only: the one
    :func:`known_front` knew)."""
    if choice not in CHOICES:
        raise Img2MusicError(f"unknown EnCodec choice {choice!r}; choose one of {', '.join(CHOICES)}")
    if choice == "float32" or (choice == "auto" and not has_int8):
        return FLOAT32_FRONT, {"front": "float32", "why": "asked" if choice == "float32" else "no int8 front"}
    if not has_int8:
        raise Img2MusicError("this bundle has no int8-LSTM EnCodec front (a GPU bundle, or built before it "
                             "existed): use --encodec float32 or auto")
    if choice == "int8":
        return ENCODEC_FRONT_INT8, {"front": "int8", "why": "asked"}
    name = f"encodec_front@{chunk}"
    measured = cache.get(name) if cache is not None else None
    source = "cached"
    if measured is None:
        back = sessions["encodec_stream_back"]
        measured = {"float32_ms_per_s": round(stream_ms_per_second(sessions[FLOAT32_FRONT], back, model, chunk), 1),
                    "int8_ms_per_s": round(stream_ms_per_second(sessions[ENCODEC_FRONT_INT8], back, model, chunk), 1)}
        source = "measured"
        if cache is not None:
            cache.put(name, measured)
    faster = measured["int8_ms_per_s"] < measured["float32_ms_per_s"]
    detail = {"front": "int8" if faster else "float32", "why": source, **measured}
    log.info("EnCodec front: %s (%s here: int8 LSTM %.0f ms, float32 %.0f ms per second of audio at %d frames)",
             detail["front"], source, measured["int8_ms_per_s"], measured["float32_ms_per_s"], chunk)
    return (ENCODEC_FRONT_INT8 if faster else FLOAT32_FRONT), detail
