"""Writing the engine bundle's ``manifest.json`` through the runtime's own manifest types.

The manifest is built as a ``runtime.bundle.manifest.BundleManifest`` and serialized by
it, so what the exporter writes is what the runtime parses.
"""

from __future__ import annotations

import datetime
import json
from importlib import metadata
from pathlib import Path

from img2music.basics.graph_specs import GraphSpec
from img2music.basics.model_config import ClipConfig, ConditioningConfig, EncodecStreamConfig, ModelConfig, TextConfig
from img2music.export.onnx_graph import OPSET
from img2music.runtime.bundle.loading import sha256_file
from img2music.runtime.bundle.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    BundleManifest,
    FileEntry,
    GraphEntry,
    KvCacheConfig,
    Provenance,
)


def tool_versions() -> dict[str, str]:
    versions = {}
    for dist in ("img2music", "torch", "transformers", "onnx", "onnxruntime", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def graph_entry(spec: GraphSpec, precision: str = "fp32") -> GraphEntry:
    return GraphEntry(f"{spec.name}.onnx", "onnxruntime", precision, OPSET, spec.inputs, spec.outputs)


def file_entries(root: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file in the bundle but the manifest."""
    return {p.name: FileEntry(sha256_file(p), p.stat().st_size)
            for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST}


def write_manifest(root: Path, graphs: dict[str, GraphSpec], models, bank_directives: list[str] | None,
                   num_tokens: int, validation: list, quantized: dict | None = None,
                   projector: dict | None = None, text: TextConfig | None = None) -> dict:
    """``quantized``: the sections ``calibration.build_quantized.quantize_bundle`` returned;
    ``projector``: a trained projector's kind and provenance (None: the prompt bank);
    ``text``: the text encoder's section (None: a bundle without prompts).
    Returns the manifest as written (a JSON dict)."""
    from img2music.export.encodec_stream import lstm_shape

    quantized = dict(quantized or {})
    precisions = quantized.get("graph_precisions", {})
    mg = models.musicgen
    lstm_layers, lstm_channels = lstm_shape(mg.audio_encoder)
    model = ModelConfig(
        audio=models.audio_config(),
        decoder=models.decoder_config(),
        conditioning=ConditioningConfig(
            text_dim=mg.config.text_encoder.hidden_size, num_tokens=num_tokens,
            projector="prompt_bank" if projector is None else projector["kind"],
            directives=None if bank_directives is None else tuple(bank_directives), trained=projector),
        clip=ClipConfig(embed_dim=int(models.clip.config.projection_dim), image=models.image_config),
        encodec_stream=EncodecStreamConfig(lstm_layers, lstm_channels),
        generation_defaults=models.sampling_defaults(),
        text=text,
    )
    provenance = Provenance(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        source=models.source,
        tools=tool_versions(),
        validation=tuple(
            {"graph": c.graph, "output": c.output, "max_abs_diff": c.max_abs_diff, "tolerance": c.tolerance}
            | ({"detail": c.detail} if c.detail else {})
            for c in validation
        ),
        quantization=quantized.get("quantization"),
        calibration=quantized.get("calibration"),
        accuracy=quantized.get("accuracy"),
    )
    manifest = BundleManifest(
        schema_version=SCHEMA_VERSION,
        precision=quantized.get("precision", "fp32"),
        model=model,
        kv_cache=KvCacheConfig(**quantized["kv_cache"]) if "kv_cache" in quantized else KvCacheConfig(),
        graphs={name: graph_entry(spec, precisions.get(name, "fp32")) for name, spec in graphs.items()},
        files=file_entries(root),
        provenance=provenance,
    )
    data = manifest.to_dict()
    (root / MANIFEST).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return data
