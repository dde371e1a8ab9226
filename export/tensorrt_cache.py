"""TensorRT engines for an fp16 bundle, built on the GPU that will run them (``build_engines.py --tensorrt``).

ONNX Runtime's TensorRT provider builds an engine per graph (one optimization profile,
``runtime.backends.providers.tensorrt_profile``) and keeps it in the bundle directory as its
engine cache, with a timing cache beside it. Building them here, at build time, means
the installation never builds at start-up (minutes on a Jetson) and the engines are
listed and hashed in the manifest like every other file, together with the TensorRT
release, GPU and compute capability they were built for; ``--provider tensorrt`` refuses
them anywhere else. The decoder step is not among them: it stays on the CUDA provider.

NOT YET RUN: no session that worked on this code had a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.backends.providers import (
    TENSORRT_GRAPHS,
    TENSORRT_MAX_CHUNK_FRAMES,
    TENSORRT_MAX_IMAGES,
    SessionOptions,
    graph_providers,
    tensorrt_profile,
)
from img2music.runtime.bundle.loading import load_bundle
from img2music.runtime.bundle.manifest import MANIFEST

log = logging.getLogger(__name__)

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def build_engine_cache(root: Path, report=None) -> dict:
    """Engines for ``root``'s TensorRT graphs on this machine's GPU; the manifest records and
    hashes them. Returns the manifest as written (a JSON dict)."""
    from img2music.export.bundle_writer import file_entries
    from img2music.runtime.backends.gpu_facts import tensorrt_facts
    from img2music.runtime.backends.ort_session import create_session

    report = report or log.info
    facts = tensorrt_facts()
    bundle = load_bundle(root)
    if bundle.precision != "fp16":
        raise Img2MusicError(f"TensorRT engines are built for fp16 bundles; {root} is {bundle.precision}")
    before = {p.name for p in root.iterdir()}
    options = SessionOptions(provider="tensorrt")
    for name in TENSORRT_GRAPHS:
        spec = bundle.graph(name).spec(name)
        session = create_session(bundle.graph_path(name), providers=graph_providers(bundle, name, options))
        if session.get_providers()[0] != "TensorrtExecutionProvider":
            raise Img2MusicError(f"onnxruntime did not give {name} to TensorRT (providers: {session.get_providers()})")
        profile = tensorrt_profile(spec, bundle.model)
        feed = {t.name: np.zeros(profile[t.name][1] if t.name in profile else t.shape, NUMPY_DTYPES[t.dtype])
                for t in spec.inputs}
        session.run(None, feed)  # the engine is built (and cached) by the first run at the latest
        report(f"  TensorRT engine: {name}")
    engines = sorted({p.name for p in root.iterdir()} - before)
    if not engines:
        raise Img2MusicError("the TensorRT provider wrote no engine files into the bundle")
    record = {"tensorrt_version": facts.tensorrt_version, "gpu_name": facts.gpu_name,
              "compute_capability": facts.compute_capability, "driver_version": facts.driver_version,
              "graphs": list(TENSORRT_GRAPHS), "files": engines,
              "max_images": TENSORRT_MAX_IMAGES, "max_chunk_frames": TENSORRT_MAX_CHUNK_FRAMES}
    manifest = dataclasses.replace(bundle.manifest, files=file_entries(root),
                                   provenance=dataclasses.replace(bundle.manifest.provenance, tensorrt=record))
    data = manifest.to_dict()
    (root / MANIFEST).write_text(json.dumps(data, indent=2), encoding="utf-8")
    report(f"  {len(engines)} engine/cache files for TensorRT {facts.tensorrt_version} on {facts.gpu_name} "
           f"(compute {facts.compute_capability})")
    return data
