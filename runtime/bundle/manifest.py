"""``manifest.json`` as typed, frozen objects: parsed and checked once, then read as attributes.

Three parts: the model facts (``basics.model_config``: what the runtime computes with),
the files (graphs with their declared I/O, sha256 and size of every file) and the
provenance (where the weights came from, tool versions, validation and calibration
records: for people, not read by the runtime). The exporter writes the manifest
through the same classes (:meth:`BundleManifest.to_dict`), so writer and reader
cannot disagree on a key; a manifest with a missing or mistyped field is refused at
load with the field's path, never a ``KeyError`` mid-performance.

Schema 2 (this version) dropped the full-sequence ``encodec_decode`` graph: every path
decodes through the exact streaming decoder. Schema 1 bundles still load (their
``encodec_decode`` is listed and hashed but not run).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from img2music.basics.errors import Img2MusicError
from img2music.basics.graph_specs import GraphSpec, TensorSpec
from img2music.basics.model_config import ModelConfig

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
RUNTIME_GRAPHS = ("clip_vision", "projector", "cross_kv", "decoder_step", "encodec_stream_front",
                  "encodec_stream_back")
"""The graphs the runtime runs; a bundle may list more (schema 1's encodec_decode, TensorRT's)."""
TEXT_GRAPH = "t5_encoder"
"""Run too when the bundle has a text path (``model.text``)."""
ENCODEC_FRONT_INT8 = "encodec_stream_front_int8"
"""Optional: the streaming EnCodec front with an int8 LSTM (CPU bundles); the runtime runs it
where it measures faster and the caller allows it (``runtime.pipeline.encodec_choice``)."""
OPTIONAL_GRAPHS = (ENCODEC_FRONT_INT8,)
"""Graphs the runtime opens when the manifest lists them."""


class ManifestError(Img2MusicError):
    """The manifest is malformed: names the field."""


@dataclass(frozen=True)
class GraphEntry:
    """One graph file and the I/O it was exported with."""

    file: str
    backend: str
    precision: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def spec(self, name: str) -> GraphSpec:
        return GraphSpec(name, self.inputs, self.outputs)


@dataclass(frozen=True)
class FileEntry:
    """sha256 and size of one bundle file."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class KvCacheConfig:
    """How the decoder's self-attention cache is stored."""

    dtype: str = "float32"
    """'float32', or 'int8' with calibrated per-channel scales."""
    granularity: str | None = None
    """How the int8 scales are shared (per channel: layer, key|value, head, dim)."""
    scales_file: str | None = None
    """The int8 scales' file (an .npz that names the decoder graph it was calibrated for)."""


@dataclass(frozen=True)
class Provenance:
    """Records for people; the runtime does not compute with them."""

    created: str
    source: dict
    tools: dict
    validation: tuple[dict, ...] = ()
    quantization: dict | None = None
    calibration: dict | None = None
    accuracy: dict | None = None
    tensorrt: dict | None = None


@dataclass(frozen=True)
class BundleManifest:
    """The whole manifest."""

    schema_version: int
    precision: str
    """'fp32', 'int8' or 'int4'."""
    model: ModelConfig
    kv_cache: KvCacheConfig
    graphs: dict[str, GraphEntry]
    files: dict[str, FileEntry]
    provenance: Provenance

    @classmethod
    def from_dict(cls, data: Any) -> "BundleManifest":
        if not isinstance(data, dict):
            raise ManifestError("the manifest is not a JSON object")
        model = {f.name: data.get(f.name) for f in dataclasses.fields(ModelConfig)}
        provenance = {f.name: data[f.name] for f in dataclasses.fields(Provenance) if f.name in data}
        graphs = data.get("graphs")
        if not isinstance(graphs, dict):
            raise ManifestError("'graphs' is missing or not an object")
        manifest = cls(
            schema_version=_convert(int, data.get("schema_version"), "schema_version"),
            precision=_convert(str, data.get("precision", "fp32"), "precision"),
            model=parse(ModelConfig, model, ""),
            kv_cache=parse(KvCacheConfig, data.get("kv_cache", {}), "kv_cache"),
            graphs={name: _graph_entry(entry, f"graphs.{name}") for name, entry in graphs.items()},
            files=_convert(dict[str, FileEntry], data.get("files"), "files"),
            provenance=parse(Provenance, provenance, ""),
        )
        names = [(n, "files") for n in manifest.files] + [(g.file, f"graphs.{k}.file") for k, g in manifest.graphs.items()]
        if manifest.kv_cache.scales_file:
            names.append((manifest.kv_cache.scales_file, "kv_cache.scales_file"))
        if manifest.model.text is not None:
            names.append((manifest.model.text.tokenizer_file, "text.tokenizer_file"))
        for name, where in names:
            _check_file_name(name, where)
        return manifest

    def to_dict(self) -> dict:
        """The JSON layout (flat, as schema 1 had it)."""
        out = {"schema_version": self.schema_version, "precision": self.precision}
        out.update(_plain(self.model))
        out["kv_cache"] = _plain(self.kv_cache)
        out["graphs"] = {name: _plain(g) for name, g in self.graphs.items()}
        out.update({k: v for k, v in _plain(self.provenance).items() if v is not None})
        out["files"] = {name: _plain(f) for name, f in self.files.items()}
        return out


def _check_file_name(name: str, where: str) -> None:
    """A bundle's files sit in its folder: a plain name, never a path (``../``, ``/etc/...``)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ManifestError(f"{where}: {name[:80]!r} is not a file name inside the bundle")


def _plain(obj) -> Any:
    """Dataclasses -> dicts, tuples -> lists (JSON)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _graph_entry(data: Any, where: str) -> GraphEntry:
    if not isinstance(data, dict):
        raise ManifestError(f"{where} is not an object")
    tensors = {}
    for kind in ("inputs", "outputs"):
        items = data.get(kind)
        if not isinstance(items, list):
            raise ManifestError(f"{where}.{kind} is missing or not a list")
        specs = []
        for i, t in enumerate(items):
            at = f"{where}.{kind}[{i}]"
            if not isinstance(t, dict) or not isinstance(t.get("shape"), list):
                raise ManifestError(f"{at} is not a tensor description")
            if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in t["shape"]):
                raise ManifestError(f"{at}.shape holds something other than sizes and axis names")
            specs.append(TensorSpec(_convert(str, t.get("name"), f"{at}.name"),
                                    _convert(str, t.get("dtype"), f"{at}.dtype"), tuple(t["shape"])))
        tensors[kind] = tuple(specs)
    return GraphEntry(_convert(str, data.get("file"), f"{where}.file"),
                      _convert(str, data.get("backend"), f"{where}.backend"),
                      _convert(str, data.get("precision", "fp32"), f"{where}.precision"),
                      _convert(int, data.get("opset"), f"{where}.opset"), tensors["inputs"], tensors["outputs"])


def parse(cls, data: Any, where: str):
    """A frozen dataclass from a JSON object, checked against its annotations."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where or 'the manifest'} is not an object")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        at = f"{where}.{f.name}" if where else f.name
        if data.get(f.name) is None and (f.default is not dataclasses.MISSING
                                         or f.default_factory is not dataclasses.MISSING):
            continue  # absent or null: the default
        kwargs[f.name] = _convert(hints[f.name], data.get(f.name), at)
    return cls(**kwargs)


def _convert(hint, value: Any, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if value is None:
        raise ManifestError(f"{where} is missing")
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)
    if hint in (int, float, str, bool):
        ok = isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise ManifestError(f"{where} should be {hint.__name__}, is {type(value).__name__} {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ManifestError(f"{where} should be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ManifestError(f"{where} should have {len(args)} items, has {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where} should be an object")
        if not args:
            return dict(value)
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"no manifest conversion for {hint!r} ({where})")

