"""Build an engine bundle: checkpoints (or a preset) -> ONNX graphs + manifest.json.

Usage::

    python export/build_engines.py --preset tiny --out engines/tiny
    python export/build_engines.py --musicgen facebook/musicgen-small \\
        --clip openai/clip-vit-base-patch32 --out engines/small
    python export/build_engines.py --preset small-random --precision int8 --out engines/small-int8

Writes clip_vision, projector (the prompt bank's selection, or a trained projector with --projector), cross_kv, decoder_step
(in-place GroupQueryAttention KV cache), encodec_decode and the two graphs of the
exact streaming EnCodec decoder (encodec_stream_front/back) as ONNX, validates each
against its torch module (one ✓/✗ line per output; any ✗ fails the build) and writes
manifest.json with configs, hashes and versions. The bundle is assembled in
``<out>.partial`` and renamed at the end, so a failed or interrupted build leaves
nothing half-written under ``--out``. T5 never enters the bundle: the prompt bank's
T5 encodings are computed here.

``--precision int8|int4`` then calibrates (calibration/): fp32 generations over
representative images give per-channel int8 KV cache scales, decoder_step gets 8- or
4-bit MatMulNBits weights and an int8 cache, clip_vision 8-bit weights, and an
accuracy report against fp32 (accuracy_report.json/.md) gates the build.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as `python export/build_engines.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from export.presets import PRESETS
from runtime.errors import Img2MusicError, run_cli, setup_logging

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_engines.py",
        description="Export MusicGen + CLIP + projector into an ONNX engine bundle.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--preset", choices=PRESETS, default=None, help="random-weight models instead of checkpoints")
    p.add_argument("--musicgen", default=None, help="MusicGen hub id or local directory (default facebook/musicgen-small)")
    p.add_argument("--clip", default=None, help="CLIP hub id or local directory (default openai/clip-vit-base-patch32)")
    p.add_argument("--projector", default=None, metavar="CKPT",
                   help="trained projector checkpoint from training/train.py (default: the zero-shot prompt bank)")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                   help="onnxruntime (CPU, any machine), or tensorrt: plans for this machine's GPU on top of the "
                        "ONNX bundle (needs the 'tensorrt' extra and a GPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8", "int4"), default="auto",
                   help="onnxruntime: fp32 (auto), or int8 / int4 decoder weights with an int8 KV cache; "
                        "tensorrt: fp16 (auto), int8 or fp32")
    p.add_argument("--version-compatible", action="store_true",
                   help="tensorrt: build plans that a newer TensorRT can run too (slower)")
    c = p.add_argument_group("calibration (int8 / int4)")
    c.add_argument("--calibration-images", default=None, metavar="DIR",
                   help="folder of representative images (default: skimage.data photographs + augmentations)")
    c.add_argument("--calibration-image-limit", type=int, default=None, help="use only the first N augmented images")
    c.add_argument("--calibration-steps", type=int, default=250, help="decoder steps per calibration generation")
    c.add_argument("--report-steps", type=int, default=250, help="steps of the accuracy report's generations")
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    p.add_argument("--seed", type=int, default=0, help="seed for preset weights and validation inputs")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.n, self.start = total, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {what}  (+{time.perf_counter() - self.start:.1f} s)", flush=True)


def build_bundle(out: Path, models, seed: int = 0, report=print, quantization=None, projector_checkpoint=None) -> dict:
    """Export, validate and describe every graph into ``out`` (which must not exist).
    ``projector_checkpoint``: a train.py checkpoint replacing the prompt bank."""
    import torch

    from export.bundle_writer import write_manifest
    from export.cross_kv import build_cross_kv
    from export.decoder_step import build_decoder_step
    from export.encodec_stream import EncodecStreamBack, EncodecStreamFront, lstm_shape, stream_specs
    from export.graph_specs import (clip_vision_spec, cross_kv_spec, decoder_step_spec, encodec_decode_spec,
                                    projector_spec)
    from export.onnx_graph import save_model
    from export.prompt_bank_graph import build_prompt_bank_graph
    from export.torch_export import ClipVisionGraph, EncodecDecodeGraph, ProjectorGraph, export_module
    from export.validation import (validate_clip, validate_cross_kv, validate_decoder_step, validate_encodec,
                                   validate_encodec_stream, validate_projector)
    from runtime.decoder_session import DecoderSession, DecoderShape
    from runtime.onnx_session import create_session
    from training.projector import PromptBankProjector
    from training.prompt_bank import build_prompt_bank

    progress = _Progress(8 if quantization is None else 9)
    out.mkdir(parents=True)
    mg = models.musicgen
    dec = mg.config.decoder
    heads, head_dim = dec.num_attention_heads, dec.hidden_size // dec.num_attention_heads
    clip_dim = int(models.clip.config.projection_dim)
    text_dim = mg.config.text_encoder.hidden_size
    checks = []

    def run_checks(new):
        for c in new:
            report(c.line())
        checks.extend(new)

    trained = None
    if projector_checkpoint is None:
        progress("prompt bank: embedding directives with CLIP text + T5")
        bank = build_prompt_bank(models)
        projector, num_tokens, directives = PromptBankProjector(bank), bank.num_tokens, bank.directives
    else:
        progress(f"trained projector: {projector_checkpoint}")
        projector, trained = load_trained_projector(projector_checkpoint, clip_dim, text_dim)
        num_tokens, directives = projector.config.num_tokens, None
    specs = {
        "clip_vision": clip_vision_spec(models.image_config.crop_height, clip_dim),
        "projector": projector_spec(clip_dim, num_tokens, text_dim, prompt_bank=trained is None),
        "cross_kv": cross_kv_spec(text_dim, dec.num_hidden_layers, heads, head_dim),
        "decoder_step": decoder_step_spec(models.num_codebooks, dec.vocab_size, dec.num_hidden_layers, heads, head_dim),
        "encodec_decode": encodec_decode_spec(models.num_codebooks),
    }

    progress("clip_vision.onnx")
    size = models.image_config.crop_height
    export_module(ClipVisionGraph(models.clip), (torch.zeros(1, 3, size, size),), specs["clip_vision"],
                  out / "clip_vision.onnx")
    run_checks(validate_clip(create_session(out / "clip_vision.onnx"), models, seed=seed))

    if trained is None:
        progress("projector.onnx (prompt bank selection)")
        save_model(build_prompt_bank_graph(bank), out / "projector.onnx")
    else:
        progress(f"projector.onnx (trained {trained['kind']}, {num_tokens} tokens)")
        export_module(ProjectorGraph(projector), (torch.zeros(1, clip_dim),), specs["projector"],
                      out / "projector.onnx")
    run_checks(validate_projector(create_session(out / "projector.onnx"), projector, clip_dim, seed=seed))

    progress("cross_kv.onnx")
    save_model(build_cross_kv(mg), out / "cross_kv.onnx")
    cross_session = create_session(out / "cross_kv.onnx")
    run_checks(validate_cross_kv(cross_session, models, seed=seed))

    progress("decoder_step.onnx (GroupQueryAttention, in-place KV cache)")
    save_model(build_decoder_step(mg.decoder), out / "decoder_step.onnx")
    shape = DecoderShape(dec.num_hidden_layers, heads, head_dim, models.num_codebooks, dec.vocab_size,
                         dec.max_position_embeddings)
    decoder = DecoderSession(create_session(out / "decoder_step.onnx"), cross_session, shape)
    run_checks(validate_decoder_step(decoder, models, seed=seed))
    del decoder

    progress("encodec_decode.onnx")
    export_module(EncodecDecodeGraph(mg.audio_encoder), (torch.zeros(1, models.num_codebooks, 10, dtype=torch.long),),
                  specs["encodec_decode"], out / "encodec_decode.onnx")
    run_checks(validate_encodec(create_session(out / "encodec_decode.onnx"), models, seed=seed))

    progress("encodec_stream_front.onnx + encodec_stream_back.onnx (exact streaming decode)")
    codec = mg.audio_encoder
    lstm_layers, lstm_channels = lstm_shape(codec)
    specs["encodec_stream_front"], specs["encodec_stream_back"] = stream_specs(
        models.num_codebooks, lstm_channels, lstm_layers)
    state = torch.zeros(lstm_layers, 1, lstm_channels)
    export_module(EncodecStreamFront(codec), (torch.zeros(1, models.num_codebooks, 16, dtype=torch.long), state, state),
                  specs["encodec_stream_front"], out / "encodec_stream_front.onnx")
    export_module(EncodecStreamBack(codec), (torch.zeros(1, lstm_channels, 8),), specs["encodec_stream_back"],
                  out / "encodec_stream_back.onnx")
    run_checks(validate_encodec_stream(create_session(out / "encodec_stream_front.onnx"),
                                       create_session(out / "encodec_stream_back.onnx"), models, seed=seed))

    failed = [c for c in checks if not c.ok]
    if failed:
        raise Img2MusicError(f"export validation failed for {len(failed)} output(s): "
                             + ", ".join(f"{c.graph}.{c.output}" for c in failed))
    quantized = None
    if quantization is not None:
        from calibration.build_quantized import quantize_bundle

        progress(f"{quantization.precision}: calibration, quantization, accuracy report")
        quantized = quantize_bundle(out, shape, int(mg.generation_config.pad_token_id), models.image_config,
                                    quantization, report=report)
        specs["decoder_step"] = decoder_step_spec(models.num_codebooks, dec.vocab_size, dec.num_hidden_layers,
                                                  heads, head_dim, kv_cache_dtype="int8")
    progress("manifest.json (hashes, configs, versions)")
    gc = mg.generation_config
    defaults = {"guidance_scale": float(gc.guidance_scale or 3.0), "top_k": int(gc.top_k or 250),
                "temperature": float(gc.temperature or 1.0)}
    stream = {"lstm_layers": lstm_layers, "lstm_channels": lstm_channels}
    return write_manifest(out, specs, models, directives, num_tokens, checks, defaults, quantized,
                          encodec_stream=stream, projector=trained)


def load_trained_projector(path: str, clip_dim: int, text_dim: int):
    """(projector module, manifest provenance) from a train.py checkpoint that fits these models."""
    from training.evaluate import load_checkpoint

    model, state = load_checkpoint(path)
    c = model.config
    if (c.clip_dim, c.cond_dim) != (clip_dim, text_dim):
        raise Img2MusicError(f"projector {path} maps CLIP {c.clip_dim} -> T5 {c.cond_dim}, but these models need "
                             f"{clip_dim} -> {text_dim}: it was trained for other models")
    data = state.get("dataset", {})
    return model, {"kind": state["projector"]["kind"], "checkpoint": str(path), "epoch": state["epoch"],
                   "best_val_latent": state["best"], "dataset": {k: data.get(k) for k in
                                                                 ("preset", "musicgen", "clip", "captioner", "llm",
                                                                  "prompt", "splits")}}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    trt_precision = None
    if args.backend == "tensorrt":
        trt_precision = "fp16" if args.precision == "auto" else args.precision
        if trt_precision not in ("fp16", "int8", "fp32"):
            raise Img2MusicError(f"--backend tensorrt builds fp16, int8 or fp32 plans, not {trt_precision}")
        from runtime.tensorrt_plan import current_facts

        facts = current_facts()  # fails here, in a second, on a machine without TensorRT or a GPU
        print(f"TensorRT {facts.tensorrt_version} on {facts.gpu_name} (compute {facts.compute_capability})")
        args.precision = "fp32"  # the ONNX bundle underneath; the plans get trt_precision
    elif args.precision == "fp16":
        raise Img2MusicError("fp16 is a TensorRT precision; the onnxruntime backend builds fp32, int8 or int4")
    args.precision = "fp32" if args.precision == "auto" else args.precision
    out = Path(args.out)
    if args.preset and (args.musicgen or args.clip):
        raise Img2MusicError("give either --preset or --musicgen/--clip, not both")
    if out.exists() and not args.force:
        raise Img2MusicError(f"{out} already exists; pass --force to replace it")
    partial = out.with_name(out.name + ".partial")
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Img2MusicError(f"cannot create {partial.parent}: {exc.strerror or exc}") from exc
    shutil.rmtree(partial, ignore_errors=True)

    if args.projector is not None and not Path(args.projector).is_file():
        raise Img2MusicError(f"projector checkpoint not found: {args.projector}")
    from export.models import load_models

    start = time.perf_counter()
    print("loading models ...", flush=True)
    models = load_models(preset=args.preset, musicgen=args.musicgen, clip=args.clip, seed=args.seed)
    quantization = None
    if args.precision != "fp32":
        from calibration.build_quantized import QuantizationOptions
        from calibration.kv_calibration import KvCalibrationConfig

        quantization = QuantizationOptions(
            precision=args.precision, images=args.calibration_images, image_limit=args.calibration_image_limit,
            kv=KvCalibrationConfig(steps=args.calibration_steps, seed=args.seed), report_steps=args.report_steps,
        )
    try:
        manifest = build_bundle(partial, models, seed=args.seed, quantization=quantization,
                                projector_checkpoint=args.projector)
        if trt_precision is not None:
            from export.tensorrt_engines import build_tensorrt_plans

            manifest["tensorrt"] = build_tensorrt_plans(partial, models, trt_precision,
                                                        version_compatible=args.version_compatible)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(f"{manifest['precision']} bundle written to {out}: {len(manifest['files'])} files, {total / 2**20:.1f} MiB, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
