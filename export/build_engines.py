"""Build an engine bundle: checkpoints (or a preset) -> ONNX graphs + manifest.json (the CLI).

Usage::

    python export/build_engines.py --preset tiny --out engines/tiny
    python export/build_engines.py --musicgen facebook/musicgen-small \\
        --clip openai/clip-vit-base-patch32 --out engines/small
    python export/build_engines.py --preset small-random --precision int8 --out engines/small-int8

Writes clip_vision, projector (the prompt bank's selection, or a trained projector with
--projector), cross_kv, decoder_step (in-place GroupQueryAttention KV cache) and the two
graphs of the exact streaming EnCodec decoder (encodec_stream_front/back) as ONNX, and
MusicGen's T5 text encoder with its tokenizer for ``--prompt`` (t5_encoder, tokenizer.json;
``--no-text`` leaves them out), validates each against its torch module (one ✓/✗ line per output; any ✗ fails the
build) and writes manifest.json with configs, hashes and versions
(``export.bundle_build``). The bundle is assembled in ``<out>.partial`` and renamed at
the end, so a failed or interrupted build leaves nothing half-written under ``--out``.

``--precision int8|int4`` then calibrates (calibration/): fp32 generations over
representative images give per-channel int8 KV cache scales, decoder_step gets 8- or
4-bit MatMulNBits weights and an int8 cache, clip_vision and t5_encoder 8-bit weights. ``--precision
fp16`` makes a GPU bundle: decoder_step, cross_kv and clip_vision in float16. Either
way an accuracy report against fp32 (accuracy_report.json/.md) gates the build.
``--tensorrt`` (fp16, on the target GPU) adds TensorRT engines for ONNX Runtime's
TensorRT provider to the bundle, recorded and hashed in the manifest.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging
from img2music.basics.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_engines.py",
        description="Export MusicGen + CLIP + projector into an ONNX engine bundle.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--preset", choices=PRESETS, default=None, help="random-weight models instead of checkpoints")
    p.add_argument("--musicgen", default=None, help="MusicGen hub id or local directory (default facebook/musicgen-small)")
    p.add_argument("--clip", default=None, help="CLIP hub id or local directory (default openai/clip-vit-base-patch32)")
    p.add_argument("--projector", default=None, metavar="CKPT",
                   help="trained projector checkpoint from training/train.py (default: the zero-shot prompt bank)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4"), default="fp32",
                   help="fp32 (any provider); fp16: float16 graphs and cache for a GPU (--provider cuda / tensorrt); "
                        "int8 / int4: quantized decoder weights and an int8 KV cache for the CPU")
    p.add_argument("--tensorrt", action="store_true",
                   help="fp16 only: also build TensorRT engines for this machine's GPU into the bundle (ONNX "
                        "Runtime's TensorRT provider; needs onnxruntime-gpu, TensorRT and the GPU they are for)")
    c = p.add_argument_group("calibration and accuracy report (fp16 / int8 / int4)")
    c.add_argument("--calibration-images", default=None, metavar="DIR",
                   help="folder of representative images (default: skimage.data photographs + augmentations)")
    c.add_argument("--calibration-image-limit", type=int, default=None, help="use only the first N augmented images")
    c.add_argument("--calibration-steps", type=int, default=250, help="decoder steps per calibration generation")
    c.add_argument("--report-steps", type=int, default=250, help="steps of the accuracy report's generations")
    c.add_argument("--reference", choices=("auto", "onnx", "torch"), default="auto",
                   help="int8/int4: the float32 decoder calibration and the report measure against: onnx (a "
                        "float32 decoder graph, ~4x faster), torch (the transformers model; no float32 decoder "
                        "graph is written, so the build holds the decoder once: musicgen-large in 24 GB); auto: "
                        "torch for decoders over 8 GiB of float32 weights")
    p.add_argument("--no-text", action="store_true",
                   help="leave out the T5 text encoder (no --prompt with this bundle; t5-base is ~110M parameters)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    p.add_argument("--seed", type=int, default=0, help="seed for preset weights and validation inputs")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.tensorrt:
        if args.precision != "fp16":
            raise Img2MusicError("--tensorrt builds engines for fp16 bundles: add --precision fp16")
        from img2music.runtime.backends.gpu_facts import tensorrt_facts

        facts = tensorrt_facts()  # fails here, in a second, on a machine without the GPU stack
        print(f"TensorRT {facts.tensorrt_version} on {facts.gpu_name} (compute {facts.compute_capability})")
    out = Path(args.out)
    if args.reference != "auto" and args.precision not in ("int8", "int4"):
        raise Img2MusicError("--reference chooses the float32 reference of an int8 / int4 build: add --precision")
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
    from img2music.basics.models import load_models

    start = time.perf_counter()
    print("loading models ...", flush=True)
    models = load_models(preset=args.preset, musicgen=args.musicgen, clip=args.clip, seed=args.seed)
    quantization = None
    if args.precision != "fp32":
        from img2music.calibration.build_quantized import QuantizationOptions
        from img2music.calibration.kv_calibration import KvCalibrationConfig

        quantization = QuantizationOptions(
            precision=args.precision, images=args.calibration_images, image_limit=args.calibration_image_limit,
            kv=KvCalibrationConfig(steps=args.calibration_steps, seed=args.seed), report_steps=args.report_steps,
            reference=args.reference,
        )
    from img2music.export.bundle_build import build_bundle

    try:
        manifest = build_bundle(partial, models, seed=args.seed, report=lambda line: print(line, flush=True),
                                quantization=quantization, projector_checkpoint=args.projector,
                                text=not args.no_text, release_weights=True)
        if args.tensorrt:
            from img2music.export.tensorrt_cache import build_engine_cache

            manifest = build_engine_cache(partial, report=print)
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


def cli() -> None:
    """Console-script entry point (img2music-build)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
