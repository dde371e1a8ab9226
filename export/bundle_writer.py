"""Writing the engine bundle's ``manifest.json``: configs, file hashes, versions."""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from export.graph_specs import GraphSpec
from export.onnx_graph import OPSET
from runtime.bundle import MANIFEST, SCHEMA_VERSION, sha256_file


def tool_versions() -> dict[str, str]:
    versions = {}
    for dist in ("img2music", "torch", "transformers", "onnx", "onnxruntime", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def graph_entry(spec: GraphSpec, precision: str = "fp32") -> dict:
    return {
        "file": f"{spec.name}.onnx",
        "backend": "onnxruntime",
        "precision": precision,
        "opset": OPSET,
        "inputs": [asdict(t) | {"shape": list(t.shape)} for t in spec.inputs],
        "outputs": [asdict(t) | {"shape": list(t.shape)} for t in spec.outputs],
    }


def file_entries(root: Path) -> dict[str, dict]:
    """sha256 and size of every file in the bundle but the manifest."""
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(root.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(root: Path, graphs: dict[str, GraphSpec], models, bank_directives: list[str] | None,
                   num_tokens: int, validation: list, sampling_defaults: dict, quantized: dict | None = None,
                   encodec_stream: dict | None = None, projector: dict | None = None) -> dict:
    """``quantized``: the sections ``calibration.build_quantized.quantize_bundle`` returned;
    ``projector``: a trained projector's kind and provenance (None: the prompt bank)."""
    quantized = dict(quantized or {})
    precisions = quantized.pop("graph_precisions", {})
    mg = models.musicgen
    dec = mg.config.decoder
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": models.source,
        "tools": tool_versions(),
        "precision": quantized.pop("precision", "fp32"),
        "audio": {
            "sample_rate": models.sample_rate,
            "frame_rate": models.frame_rate,
            "hop_length": models.hop_length,
            "channels": 1,
        },
        "decoder": {
            "num_codebooks": models.num_codebooks,
            "vocab_size": dec.vocab_size,
            "pad_token_id": int(mg.generation_config.pad_token_id),
            "decoder_start_token_id": int(mg.generation_config.decoder_start_token_id),
            "hidden_size": dec.hidden_size,
            "num_layers": dec.num_hidden_layers,
            "num_heads": dec.num_attention_heads,
            "head_dim": dec.hidden_size // dec.num_attention_heads,
            "max_length": dec.max_position_embeddings,
            "kv_cache": "groupqueryattention-inplace",
        },
        "conditioning": {
            "text_dim": mg.config.text_encoder.hidden_size,
            "num_tokens": num_tokens,
            "projector": "prompt_bank" if projector is None else projector["kind"],
            "directives": bank_directives,
            **({"trained": projector} if projector is not None else {}),
        },
        "clip": {
            "embed_dim": int(models.clip.config.projection_dim),
            "image": models.image_config.to_dict(),
        },
        "generation_defaults": sampling_defaults,
        "encodec_stream": encodec_stream or {},
        "graphs": {name: graph_entry(spec, precisions.get(name, "fp32")) for name, spec in graphs.items()},
        "validation": [
            {"graph": c.graph, "output": c.output, "max_abs_diff": c.max_abs_diff, "tolerance": c.tolerance}
            | ({"detail": c.detail} if c.detail else {})
            for c in validation
        ],
        **quantized,
        "files": file_entries(root),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest
