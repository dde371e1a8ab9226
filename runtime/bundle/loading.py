"""The engine bundle: ``manifest.json`` + graph files, verified before anything runs.

The runtime reads only this directory (no torch, no transformers config). At load it
parses the manifest into typed objects (``runtime.bundle.manifest``), checks the schema
version, that every graph the runtime runs is listed, and that every listed file
exists with the recorded size and sha256. When sessions are created, each one's inputs
and outputs are checked against the recorded specs, and the decoder facts against the
decoder graph. A corrupt or mismatched bundle is refused with one clear message, never
a crash mid-performance.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from img2music.basics.errors import Img2MusicError
from img2music.basics.graph_specs import decoder_step_spec
from img2music.basics.model_config import ModelConfig
from img2music.runtime.bundle.manifest import (
    MANIFEST,
    READABLE_SCHEMAS,
    RUNTIME_GRAPHS,
    TEXT_GRAPH,
    BundleManifest,
    GraphEntry,
    ManifestError,
)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory and its parsed manifest."""

    root: Path
    """The bundle directory."""
    manifest: BundleManifest
    """The parsed ``manifest.json``."""

    @property
    def model(self) -> ModelConfig:
        return self.manifest.model

    @property
    def precision(self) -> str:
        return self.manifest.precision

    def graph(self, name: str) -> GraphEntry:
        return self.manifest.graphs[name]

    def graph_path(self, name: str) -> Path:
        return self.root / self.graph(name).file

    def kv_scales(self):
        """The calibrated int8 KV cache scales (layers, 2, H, 64), or None for a float cache.

        The scale file names the decoder graph it was calibrated for; any other is refused."""
        import numpy as np

        kv = self.manifest.kv_cache
        if kv.dtype != "int8":
            return None
        name = kv.scales_file
        if name not in self.manifest.files:
            raise Img2MusicError("int8 KV cache bundle without a listed scale file")
        try:
            with np.load(self.root / name, allow_pickle=False) as data:
                scales = data["scales"].astype(np.float32)
                made_for = str(data["decoder_step_sha256"])
        except (OSError, KeyError, ValueError) as exc:
            raise Img2MusicError(f"cannot read KV cache scales {name}: {exc}") from exc
        if made_for != self.manifest.files[self.graph("decoder_step").file].sha256:
            raise Img2MusicError(
                f"KV cache scales {name} were calibrated for another decoder_step graph; rebuild the bundle"
            )
        return scales


def verify_files(root: Path, manifest: BundleManifest) -> None:
    """Every listed file's sha256 against the manifest (sizes were checked at load); one clear
    error naming the first that differs. hashlib works outside the GIL: ``OnnxPipeline.load``
    runs this beside the session creation."""
    for name, entry in manifest.files.items():
        if sha256_file(root / name) != entry.sha256:
            raise Img2MusicError(f"bundle file {name} does not match its sha256 in the manifest (corrupt or edited)")


def load_bundle(root: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
    """Read and verify a bundle; raises :class:`Img2MusicError` with the reason."""
    root = Path(root)
    if not root.is_dir():
        raise Img2MusicError(f"engine bundle not found: {root} is not a directory")
    path = root / MANIFEST
    if not path.is_file():
        raise Img2MusicError(f"{root} is not an engine bundle: no {MANIFEST} (build one with export/build_engines.py)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError as exc:
        raise Img2MusicError(f"cannot read {path}: permission denied") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Img2MusicError(f"corrupt bundle manifest {path}: {exc}") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in READABLE_SCHEMAS:
        raise Img2MusicError(
            f"bundle {root} has manifest schema {version!r}; this runtime reads schemas "
            f"{', '.join(map(str, READABLE_SCHEMAS))}. Rebuild the bundle with this version's export/build_engines.py."
        )
    try:
        manifest = BundleManifest.from_dict(data)
    except ManifestError as exc:
        raise Img2MusicError(f"corrupt bundle manifest {path}: {exc}") from exc
    for name in RUNTIME_GRAPHS + ((TEXT_GRAPH,) if manifest.model.text is not None else ()):
        graph = manifest.graphs.get(name)
        if graph is None or graph.file not in manifest.files:
            raise Img2MusicError(f"corrupt bundle manifest {path}: graph {name!r} is missing or not listed in files")
        if graph.backend != "onnxruntime":
            raise Img2MusicError(f"graph {name} is for backend {graph.backend!r}; this loader runs onnxruntime")
    for name, entry in manifest.files.items():
        file = root / name
        if not file.is_file():
            raise Img2MusicError(f"bundle {root} is incomplete: {name} is missing")
        if not os.access(file, os.R_OK):
            raise Img2MusicError(f"cannot read bundle file {file}: permission denied (the user running this "
                                 "process needs read access to the whole bundle directory)")
        size = file.stat().st_size
        if size != entry.bytes:
            raise Img2MusicError(
                f"bundle file {name} has {size} bytes, the manifest says {entry.bytes} (truncated or replaced)"
            )
    if verify_hashes:
        verify_files(root, manifest)
    text = manifest.model.text
    if text is not None and text.tokenizer_file not in manifest.files:
        raise Img2MusicError(f"corrupt bundle manifest {path}: the tokenizer {text.tokenizer_file!r} is not listed in files")
    return Bundle(root, manifest)


def check_decoder_config(bundle: Bundle, step_session) -> None:
    """The manifest's decoder facts must describe the decoder_step graph actually shipped."""
    d = bundle.model.decoder
    spec = decoder_step_spec(d.num_codebooks, d.vocab_size, d.num_layers, d.num_heads, d.head_dim,
                             kv_cache_dtype=bundle.manifest.kv_cache.dtype)
    try:
        check_session(step_session, GraphEntry("", "", "", 0, spec.inputs, spec.outputs), "decoder_step")
    except Img2MusicError as exc:
        raise Img2MusicError(f"the manifest's decoder config does not match decoder_step.onnx ({exc})") from exc


def check_session(session, graph: GraphEntry, graph_name: str) -> None:
    """The session's I/O must be exactly the spec recorded at export (names, dtypes, fixed dims)."""
    type_names = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
                  "tensor(int8)": "int8", "tensor(float16)": "float16"}
    for kind, actual, expected in (("inputs", session.get_inputs(), graph.inputs),
                                   ("outputs", session.get_outputs(), graph.outputs)):
        if [a.name for a in actual] != [e.name for e in expected]:
            raise Img2MusicError(f"{graph_name}: graph {kind} do not match the manifest")
        for a, e in zip(actual, expected):
            fixed_ok = len(a.shape) == len(e.shape) and all(
                isinstance(es, str) or as_ == es for as_, es in zip(a.shape, e.shape)
            )
            if type_names.get(a.type) != e.dtype or not fixed_ok:
                raise Img2MusicError(
                    f"{graph_name}: {a.name} is {a.type} {a.shape} in the graph, "
                    f"the manifest says {e.dtype} {list(e.shape)}"
                )

