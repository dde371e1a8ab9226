"""TensorRT plans for a bundle: precision in the ONNX graph, strongly typed networks.

NOT YET RUN ON A GPU: the sessions that wrote this had none. What runs without one
(and is tested): the profile ranges (:func:`profile_ranges`) and the plan records'
refusal logic (runtime/tensorrt_plan.py). Everything that imports tensorrt, polygraphy or
modelopt has never executed; see the TensorRT issue's closing note.

Path (TensorRT 10.3 as on JetPack 6, and 11, whose only path is strongly typed):

1. ONNX per engine: clip_vision, cross_kv and the streaming EnCodec graphs from the bundle, the decoder
   as ``decoder_step_plain.onnx`` (standard ops, static cache at a position input:
   export/decoder_step_plain.py), since TensorRT lacks ORT's contrib ops.
2. Precision set in the graph, not by builder flags (strong typing): fp16 through
   nvidia-modelopt's AutoCast (``convert_to_mixed_precision``, keeping I/O in fp32 and
   sensitive nodes in fp32), int8 through modelopt's ONNX PTQ with calibration inputs
   recorded from the fp32 bundle (calibration/representative_data.py), fp32 unchanged.
3. Polygraphy builds: ``network_from_onnx_path(strongly_typed=True)``, one optimization
   profile with every dynamic axis' (min, opt, max) from the manifest, a timing cache
   shared by all engines, optionally version-compatible plans.
4. The manifest gets a ``tensorrt`` section: TensorRT version, GPU name, compute
   capability, profile ranges per plan.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from basics.errors import Img2MusicError
from basics.model_config import ModelConfig

log = logging.getLogger(__name__)

TRT_GRAPHS = ("clip_vision", "cross_kv", "decoder_step_plain", "encodec_stream_front", "encodec_stream_back")
"""Graphs that become plans (the projector stays on ORT/CPU: tiny)."""


def profile_ranges(specs: dict, model: ModelConfig, max_batch: int = 1, max_audio_seconds: float = 30.0) -> dict:
    """{graph: {input: (min, opt, max) shapes}} for every input with a dynamic axis.

    batch: guidance doubles the rows (1..2*max_batch, opt 2); cond_len: 1..the projector's
    N tokens (the prompt bank pads to its longest directive); frames: 1..the audio length
    of one chunk; window: a chunk's code frames plus the first convolution's 3 + 3 context.
    """
    cond = model.conditioning.num_tokens
    frames_max = int(max_audio_seconds * model.audio.frame_rate) + 8
    axes = {"batch": (1, 2, 2 * max_batch), "cond_len": (1, cond, cond), "frames": (1, 50, frames_max),
            "window": (7, 56, frames_max + 6)}
    ranges = {}
    for name, spec in specs.items():
        entry = {}
        for t in spec.inputs:
            if not any(isinstance(d, str) for d in t.shape):
                continue
            for d in t.shape:
                if isinstance(d, str) and d not in axes:
                    raise Img2MusicError(f"{name}.{t.name}: no profile range for axis {d!r}")
            entry[t.name] = tuple(tuple(axes[d][i] if isinstance(d, str) else d for d in t.shape) for i in range(3))
        ranges[name] = entry
    return ranges


def _set_precision(onnx_path: Path, precision: str, calibration: dict | None, out: Path) -> Path:
    """The graph with its precision written in (strongly typed networks obey the graph)."""
    import onnx

    if precision == "fp32":
        return onnx_path
    if precision == "fp16":
        from modelopt.onnx.autocast import convert_to_mixed_precision

        model = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True)
        onnx.save(model, str(out), save_as_external_data=True)
        return out
    if precision == "int8":
        from modelopt.onnx.quantization import quantize

        if calibration is None:
            raise Img2MusicError("int8 TensorRT plans need calibration inputs (run the calibration step first)")
        quantize(onnx_path=str(onnx_path), quantize_mode="int8", calibration_data=calibration, output_path=str(out),
                 high_precision_dtype="fp16")
        return out
    raise Img2MusicError(f"unknown TensorRT precision {precision!r} (fp16, int8 or fp32)")


def build_plan(onnx_path: Path, plan_path: Path, ranges: dict, timing_cache: Path,
               version_compatible: bool = False) -> float:
    """One strongly typed engine with one profile; returns build seconds."""
    from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path, save_engine

    profile = Profile()
    for name, (lo, opt, hi) in ranges.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    start = time.perf_counter()
    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    config = CreateConfig(profiles=[profile], load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
                          version_compatible=version_compatible)
    engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
    save_engine(engine, str(plan_path))
    return time.perf_counter() - start


def build_tensorrt_plans(bundle_dir: Path, models, precision: str = "fp16", version_compatible: bool = False,
                         calibration: dict | None = None, report=log.info) -> dict:
    """Plans for the TRT graphs of an existing bundle; returns the manifest's 'tensorrt' section."""
    import json

    from basics.graph_specs import decoder_step_plain_spec
    from basics.onnx_files import save_model
    from export.decoder_step_plain import build_decoder_step_plain
    from runtime.bundle import load_bundle
    from runtime.bundle_manifest import MANIFEST
    from runtime.tensorrt_plan import current_facts

    facts = current_facts()
    bundle = load_bundle(bundle_dir)
    d = bundle.model.decoder
    save_model(build_decoder_step_plain(models.musicgen.decoder), bundle_dir / "decoder_step_plain.onnx")
    specs = {name: bundle.graph(name).spec(name) for name in TRT_GRAPHS if name != "decoder_step_plain"}
    specs["decoder_step_plain"] = decoder_step_plain_spec(d.num_codebooks, d.vocab_size, d.num_layers, d.num_heads,
                                                          d.head_dim, d.max_length)
    ranges = profile_ranges(specs, bundle.model)
    timing_cache = bundle_dir / "tensorrt_timing.cache"
    plans = {}
    for name in TRT_GRAPHS:
        typed = _set_precision(bundle_dir / f"{name}.onnx", precision, calibration,
                               bundle_dir / f"{name}.{precision}.onnx")
        plan = bundle_dir / f"{name}.{precision}.plan"
        report(f"TensorRT {facts.tensorrt_version}: building {plan.name} on {facts.gpu_name} ...")
        seconds = build_plan(typed, plan, ranges[name], timing_cache, version_compatible)
        report(f"  {plan.name}: {seconds:.1f} s")
        plans[name] = {"file": plan.name, "precision": precision, "tensorrt_version": facts.tensorrt_version,
                       "gpu_name": facts.gpu_name, "compute_capability": facts.compute_capability,
                       "version_compatible": version_compatible,
                       "profile": {k: [list(s) for s in v] for k, v in ranges[name].items()}}
    section = {"plans": plans, "timing_cache": timing_cache.name}
    data = json.loads((bundle_dir / MANIFEST).read_text())
    data["tensorrt"] = section
    (bundle_dir / MANIFEST).write_text(json.dumps(data, indent=2))
    return section
