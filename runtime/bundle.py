"""The engine bundle: ``manifest.json`` + graph files, verified before anything runs.

The runtime reads only this directory (no torch, no transformers config). At load it
checks the schema version, that every listed file exists with the recorded size and
sha256, and that each ONNX session's inputs and outputs match the recorded specs. A
corrupt or mismatched bundle is refused with one clear message, never a crash
mid-performance.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import Img2MusicError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("clip_vision", "projector", "cross_kv", "decoder_step", "encodec_decode", "encodec_stream_front",
          "encodec_stream_back")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A verified bundle directory and its manifest."""

    root: Path
    """The bundle directory."""
    manifest: dict
    """The parsed ``manifest.json``."""

    def graph_path(self, name: str) -> Path:
        return self.root / self.manifest["graphs"][name]["file"]

    def graph(self, name: str) -> dict:
        return self.manifest["graphs"][name]

    @property
    def decoder(self) -> dict:
        return self.manifest["decoder"]

    @property
    def audio(self) -> dict:
        return self.manifest["audio"]

    @property
    def conditioning(self) -> dict:
        return self.manifest["conditioning"]

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    @property
    def kv_cache_dtype(self) -> str:
        return self.manifest.get("kv_cache", {}).get("dtype", "float32")

    def kv_scales(self):
        """The calibrated int8 KV cache scales (layers, 2, H, 64), or None for a float cache.

        The scale file names the decoder graph it was calibrated for; any other is refused."""
        import numpy as np

        kv = self.manifest.get("kv_cache", {})
        if kv.get("dtype", "float32") != "int8":
            return None
        name = kv.get("scales_file")
        if name not in self.manifest["files"]:
            raise Img2MusicError("int8 KV cache bundle without a listed scale file")
        try:
            with np.load(self.root / name, allow_pickle=False) as data:
                scales = data["scales"].astype(np.float32)
                made_for = str(data["decoder_step_sha256"])
        except (OSError, KeyError, ValueError) as exc:
            raise Img2MusicError(f"cannot read KV cache scales {name}: {exc}") from exc
        decoder_file = self.manifest["graphs"]["decoder_step"]["file"]
        if made_for != self.manifest["files"][decoder_file]["sha256"]:
            raise Img2MusicError(
                f"KV cache scales {name} were calibrated for another decoder_step graph; rebuild the bundle"
            )
        return scales


def load_bundle(root: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
    """Read and verify a bundle; raises :class:`Img2MusicError` with the reason."""
    root = Path(root)
    if not root.is_dir():
        raise Img2MusicError(f"engine bundle not found: {root} is not a directory")
    path = root / MANIFEST
    if not path.is_file():
        raise Img2MusicError(f"{root} is not an engine bundle: no {MANIFEST} (build one with export/build_engines.py)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Img2MusicError(f"corrupt bundle manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise Img2MusicError(f"corrupt bundle manifest {path}: not a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise Img2MusicError(
            f"bundle {root} has manifest schema {version!r}; this runtime reads schema {SCHEMA_VERSION}. "
            "Rebuild the bundle with this version's export/build_engines.py."
        )
    for key in ("graphs", "files", "decoder", "audio", "conditioning", "clip"):
        if key not in manifest:
            raise Img2MusicError(f"corrupt bundle manifest {path}: missing {key!r}")
    for name in GRAPHS:
        graph = manifest["graphs"].get(name)
        if not isinstance(graph, dict) or graph.get("file") not in manifest["files"]:
            raise Img2MusicError(f"corrupt bundle manifest {path}: graph {name!r} is missing or not listed in files")
        if graph.get("backend") != "onnxruntime":
            raise Img2MusicError(f"graph {name} is for backend {graph.get('backend')!r}; this loader runs onnxruntime")
    for name, entry in manifest["files"].items():
        file = root / name
        if not file.is_file():
            raise Img2MusicError(f"bundle {root} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise Img2MusicError(
                f"bundle file {name} has {size} bytes, the manifest says {entry.get('bytes')} (truncated or replaced)"
            )
        if verify_hashes and sha256_file(file) != entry.get("sha256"):
            raise Img2MusicError(f"bundle file {name} does not match its sha256 in the manifest (corrupt or edited)")
    return Bundle(root, manifest)


def check_decoder_config(bundle: Bundle, step_session) -> None:
    """The manifest's decoder facts must describe the decoder_step graph actually shipped."""
    from export.graph_specs import decoder_step_spec

    d = bundle.decoder
    try:
        spec = decoder_step_spec(d["num_codebooks"], d["vocab_size"], d["num_layers"], d["num_heads"], d["head_dim"],
                                 kv_cache_dtype=bundle.kv_cache_dtype)
    except (KeyError, TypeError) as exc:
        raise Img2MusicError(f"corrupt bundle manifest: decoder config incomplete ({exc})") from exc
    graph = {"inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.inputs],
             "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.outputs]}
    try:
        check_session(step_session, "decoder_step", graph)
    except Img2MusicError as exc:
        raise Img2MusicError(f"the manifest's decoder config does not match decoder_step.onnx ({exc})") from exc


def check_session(session, graph_name: str, graph: dict) -> None:
    """The session's I/O must be exactly the spec recorded at export (names, dtypes, fixed dims)."""
    type_names = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
                  "tensor(int8)": "int8"}
    for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        expected = graph.get(kind, [])
        if [a.name for a in actual] != [e["name"] for e in expected]:
            raise Img2MusicError(f"{graph_name}: graph {kind} do not match the manifest")
        for a, e in zip(actual, expected):
            fixed_ok = len(a.shape) == len(e["shape"]) and all(
                isinstance(es, str) or as_ == es for as_, es in zip(a.shape, e["shape"])
            )
            if type_names.get(a.type) != e["dtype"] or not fixed_ok:
                raise Img2MusicError(
                    f"{graph_name}: {a.name} is {a.type} {a.shape} in the graph, the manifest says {e['dtype']} {e['shape']}"
                )
