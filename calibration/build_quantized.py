"""Turn the fp32 graphs of a bundle being built into an fp16, int8 or int4 bundle.

Steps: representative images -> fp32 CLIP + projector -> conditionings. int8/int4: fp32
generations -> per-channel KV scales; an int8 KV cache in decoder_step, whose MatMulNBits
weights (8 or 4 bit) the export wrote from the checkpoint; clip_vision and t5_encoder 8
bit. The fp32 generations run the float32 decoder graph, or for a decoder too large to
hold twice (musicgen-large) the transformers model itself. fp16 (GPU
bundles): decoder_step, cross_kv and clip_vision in float16 (calibration/half_precision.py),
no calibration; t5_encoder stays float32 there (T5's activations are known to overflow
float16, and it runs once per prompt change). Then the accuracy report against fp32 (the build fails under the
thresholds) and the fp32 graphs are replaced. Deterministic for a seed: same images,
same seeds, same scales. The report runs on the CPU provider: for fp16 that measures the
graphs' float16 weights and storage, while ops the CPU provider has no float16 kernel
for compute in float32; a GPU run measures the rest (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from img2music.basics.clip_image_config import ClipImageConfig
from img2music.basics.errors import Img2MusicError
from img2music.basics.model_config import DecoderConfig
from img2music.basics.onnx_files import save_model
from img2music.calibration.accuracy import (
    THRESHOLDS,
    check,
    clip_cosine,
    greedy_agreement,
    teacher_forced,
    text_cosine,
    write_report,
)
from img2music.calibration.half_precision import KEEP_FLOAT32_IO, to_float16
from img2music.calibration.kv_calibration import KvCalibrationConfig, calibrate_kv_scales
from img2music.calibration.quantize import BLOCK_SIZE, CLIP_BLOCK_SIZE, WEIGHT_BITS, int8_kv_cache, quantize_weights
from img2music.calibration.representative_data import representative_images
from img2music.runtime.backends.ort_decoder import OrtDecoderSession
from img2music.runtime.backends.ort_session import create_session, weights_over
from img2music.runtime.bundle.loading import sha256_file
from img2music.runtime.generation.core import CodeGenerator
from img2music.runtime.generation.decoder_session import DecoderSession
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.pipeline.preprocess import preprocess_images

log = logging.getLogger(__name__)

KV_SCALES_FILE = "kv_scales.npz"
TORCH_REFERENCE_GIB = 8
"""Decoders with more float32 weight bytes than this (musicgen-large: 13 GB; medium: 6) are
measured against the transformers model: a float32 graph of them beside it would not fit 24 GB."""


@dataclass
class QuantizationOptions:
    """What to quantize and what to calibrate on."""

    precision: str
    """int8 (8-bit weights) or int4 (4-bit decoder weights), both with an int8 KV cache; or
    fp16 (float16 graphs and cache, for GPUs)."""
    images: str | None = None
    """Folder of calibration images (default: skimage.data photographs + augmentations)."""
    image_limit: int | None = None
    """Use only the first N (augmented) images."""
    kv: KvCalibrationConfig = field(default_factory=KvCalibrationConfig)
    """How much fp32 generation the KV calibration runs (int8/int4); its seed and guidance
    scale also drive the accuracy report."""
    report_steps: int = 250
    """Teacher-forced steps and greedy frames of the accuracy report."""
    report_batch: int = 2
    """Conditionings in the accuracy report."""
    clip_images: int = 16
    """Images for the CLIP cosine."""
    report_provider: str = "cpu"
    """fp16: where the converted graphs run for the report: cpu, or cuda (the GPU's own float16
    numerics: benchmarks/gpu_check.py). The fp32 reference always runs on the CPU."""
    reference: str = "auto"
    """The float32 decoder that calibration and the report measure against: ``onnx`` (the
    float32 decoder graph, ~4x faster on a CPU), ``torch`` (the transformers model; no float32
    decoder graph is written), ``auto``: torch when the decoder's float32 weights exceed
    ``TORCH_REFERENCE_GIB`` (musicgen-large: 13 GB would be held twice), else onnx."""

    def resolved_reference(self, decoder_bytes: int) -> str:
        """onnx or torch for a decoder of ``decoder_bytes`` float32 weight bytes."""
        if self.reference not in ("auto", "onnx", "torch"):
            raise Img2MusicError(f"unknown reference {self.reference!r} (auto, onnx or torch)")
        if self.reference == "torch" and self.precision == "fp16":
            raise Img2MusicError("an fp16 bundle converts the float32 decoder graph: use --reference onnx")
        if self.reference != "auto":
            return self.reference
        return "torch" if self.precision != "fp16" and decoder_bytes > TORCH_REFERENCE_GIB * 2**30 else "onnx"


def quantize_bundle(root: Path, decoder_config: DecoderConfig, image_config: ClipImageConfig,
                    options: QuantizationOptions, report=None, reference: DecoderSession | None = None) -> dict:
    """Convert the fp32 graphs in ``root``; returns the manifest sections it defines.
    ``report`` receives the summary lines (default: the log). int8/int4: ``root/converted/
    decoder_step.onnx`` holds the decoder already written with quantized weights
    (``export.bundle_build``). ``reference``: the float32 decoder that calibration and the
    report measure against when ``root`` has no float32 decoder graph (the transformers
    model, ``calibration.torch_decoder_session``); default: that graph."""
    report = report or log.info
    names = ("clip_vision", "projector", "cross_kv") + (("decoder_step",) if reference is None else ())
    sessions = {n: create_session(root / f"{n}.onnx", lean=weights_over(root / f"{n}.onnx")) for n in names}

    images = representative_images(options.images, options.image_limit)
    pixels = preprocess_images([img for _, img in images], image_config)
    embeds = np.concatenate([sessions["clip_vision"].run(None, {"pixel_values": pixels[i : i + 16]})[0]
                             for i in range(0, len(pixels), 16)])
    cond, mask = sessions["projector"].run(["conditioning", "conditioning_mask"], {"image_embeds": embeds})
    # The prompt bank maps many images to the same directive: calibrate on distinct ones.
    _, first = np.unique(cond.reshape(len(cond), -1), axis=0, return_index=True)
    keep = np.sort(first)
    cond, mask = cond[keep], mask[keep]
    report(f"  calibration data: {len(images)} images -> {len(keep)} distinct conditionings")

    if reference is None:
        reference = OrtDecoderSession(sessions["decoder_step"], sessions["cross_kv"], decoder_config)
    elif options.precision == "fp16":
        raise Img2MusicError("an fp16 bundle converts the float32 decoder graph: it cannot use the torch reference")
    fp32_generator = CodeGenerator(reference)
    tmp = root / "converted"
    tmp.mkdir(exist_ok=True)
    emulated = None
    if options.precision == "fp16":
        sections, test_generator = _float16_graphs(root, tmp, decoder_config, options.report_provider)
        if options.report_provider == "cpu":  # the CPU runs fp16 graphs partly in float32: emulate CUDA's storage
            emulated = _float16_emulation(tmp, decoder_config)
    else:
        sections, test_generator = _quantized_graphs(root, tmp, decoder_config, fp32_generator, sessions["cross_kv"],
                                                     cond, mask, images, options, report)

    n = min(options.report_batch, len(cond))
    frames = options.report_steps - decoder_config.num_codebooks + 1
    fp32_generator.generate(cond[:n], mask[:n], frames, SamplingConfig(seed=options.kv.seed))
    tokens = fp32_generator.tokens  # (n, K, L) the decoder inputs of an fp32 sampled generation
    tf = teacher_forced(fp32_generator, test_generator, cond[:n], mask[:n], tokens, options.kv.guidance_scale)
    greedy = greedy_agreement(fp32_generator, test_generator, cond[:n], mask[:n], frames, options.kv.guidance_scale)
    cosine = clip_cosine(sessions["clip_vision"], create_session(tmp / "clip_vision.onnx", providers=_providers(
        options.report_provider if options.precision == "fp16" else "cpu")), pixels[: options.clip_images])
    data = {
        "precision": options.precision,
        "reference": "the float32 decoder graph" if "decoder_step" in sessions
                     else "the transformers model in float32 (no float32 decoder graph was written)",
        "weights": sections.pop("weights"),
        "kv_cache": sections.pop("kv_cache_note"),
        "data": f"{len(keep)} conditionings from {len(images)} images, {options.report_steps} steps, "
                f"seed {options.kv.seed}",
        "thresholds": asdict(THRESHOLDS[options.precision]),
        "teacher_forced": tf,
        "greedy": {"agreement": greedy, "frames": frames},
        "clip": {"cosine": cosine, "images": int(min(options.clip_images, len(pixels)))},
        "encodec": {"quantized": False, "snr_db": None, "note": "not converted (fp32): identical to fp32"},
        "text": _text_accuracy(root, tmp),
        "measured_on": options.report_provider if options.precision == "fp16" else "cpu",
    }
    if emulated is not None:
        data["fp16_storage_emulation"] = {
            "what": "the fp16 decoder and cross_kv as float32 graphs that round every float16 tensor to float16 "
                    "after each op (calibration.half_precision.float16_storage_emulation), on the CPU",
            "teacher_forced": teacher_forced(fp32_generator, emulated, cond[:n], mask[:n], tokens,
                                             options.kv.guidance_scale),
            "greedy_agreement": greedy_agreement(fp32_generator, emulated, cond[:n], mask[:n], frames,
                                                 options.kv.guidance_scale)}
    data["failures"] = check(options.precision, data)
    summary = write_report(root, data)
    report(f"  accuracy: teacher-forced agreement {tf['agreement']:.4f}, KL {tf['kl_mean']:.3g}, "
           f"max |Δlogit| {tf['max_abs_diff']:.3g}, greedy agreement {greedy:.4f}, CLIP cosine {cosine:.5f}"
           + (f", T5 cosine {data['text']['cosine']:.5f}" if (data["text"] or {}).get("cosine") is not None else "")
           + _emulation_line(data.get("fp16_storage_emulation"))
           + " -> "
           f"{'PASS' if summary['passed'] else 'FAIL'}")
    for generator in (test_generator, fp32_generator) + ((emulated,) if emulated is not None else ()):
        generator.decoder.close()
    del sessions
    if data["failures"]:
        raise Img2MusicError(f"{options.precision} bundle below its accuracy thresholds: " + "; ".join(data["failures"]))

    shutil.rmtree(tmp / "fp16_emulation", ignore_errors=True)  # measured; not part of the bundle
    for new in sorted(tmp.iterdir()):  # the converted graphs replace their fp32 originals
        for old in root.glob(new.name.split(".onnx")[0] + ".onnx*"):
            old.unlink()
    for new in sorted(tmp.iterdir()):
        new.rename(root / new.name)
    tmp.rmdir()
    scales = sections.pop("kv_scales", None)
    if scales is not None:
        np.savez(root / KV_SCALES_FILE, scales=scales.scales, absmax=scales.absmax,
                 decoder_step_sha256=np.array(sha256_file(root / "decoder_step.onnx")))
    return sections | {"precision": options.precision, "accuracy": summary}


def _emulation_line(emulation: dict | None) -> str:
    if emulation is None:
        return ""
    tf = emulation["teacher_forced"]
    return (f"; fp16 storage emulated: agreement {tf['agreement']:.4f}, KL {tf['kl_mean']:.3g}, "
            f"max |Δlogit| {tf['max_abs_diff']:.3g}")


def _text_accuracy(root: Path, tmp: Path, prompts: int = 16) -> dict | None:
    """fp32 vs converted T5 on the prompt bank's directives (None: no text encoder in the bundle)."""
    if not (root / "t5_encoder.onnx").exists():
        return None
    if not (tmp / "t5_encoder.onnx").exists():
        return {"cosine": None, "prompts": 0, "note": "not converted (fp32): identical to fp32"}
    from img2music.basics.prompt_bank import load_directives
    from img2music.runtime.pipeline.text_encoder import TOKENIZER_FILE, load_tokenizer

    texts = load_directives()[:prompts]
    cosine = text_cosine(create_session(root / "t5_encoder.onnx"), create_session(tmp / "t5_encoder.onnx"),
                         load_tokenizer(root / TOKENIZER_FILE), texts)
    return {"cosine": cosine, "prompts": len(texts)}


def _providers(provider: str) -> list[str]:
    return ["CPUExecutionProvider"] if provider == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _float16_graphs(root: Path, tmp: Path, decoder_config: DecoderConfig, provider: str):
    """decoder_step, cross_kv and clip_vision in float16 into ``tmp``; (manifest sections, fp16 generator
    running on ``provider``)."""
    import onnx

    for name in KEEP_FLOAT32_IO:
        save_model(to_float16(onnx.load(str(root / f"{name}.onnx"), load_external_data=True), name),
                   tmp / f"{name}.onnx")
    providers = _providers(provider)
    generator = CodeGenerator(OrtDecoderSession(create_session(tmp / "decoder_step.onnx", providers=providers),
                                                create_session(tmp / "cross_kv.onnx", providers=providers),
                                                decoder_config, device="cpu" if provider == "cpu" else "cuda"))
    sections = {
        "weights": "decoder_step, cross_kv, clip_vision in float16 (onnxruntime.transformers.float16); "
                   f"projector and EnCodec float32; measured on the {provider} provider",
        "kv_cache_note": "float16",
        "quantization": {"method": "onnxruntime.transformers.float16.convert_float_to_float16",
                         "graphs": {name: {"dtype": "float16", "float32_io": keep}
                                    for name, keep in KEEP_FLOAT32_IO.items()}},
        "kv_cache": {"dtype": "float16", "granularity": None, "scales_file": None},
        "graph_precisions": {name: "fp16" for name in KEEP_FLOAT32_IO},
    }
    return sections, generator


def _float16_emulation(tmp: Path, decoder_config: DecoderConfig) -> CodeGenerator:
    """The converted decoder_step and cross_kv with float16 storage emulated (float32 graphs, every
    fp16 tensor rounded after each op), on the CPU; written beside them, never into the bundle."""
    import onnx

    from img2music.calibration.half_precision import float16_storage_emulation

    folder = tmp / "fp16_emulation"
    folder.mkdir(exist_ok=True)
    for name, round_outputs in (("decoder_step", False), ("cross_kv", True)):
        save_model(float16_storage_emulation(onnx.load(str(tmp / f"{name}.onnx")), round_outputs),
                   folder / f"{name}.onnx")
    step, cross = (create_session(folder / f"{name}.onnx") for name in ("decoder_step", "cross_kv"))
    return CodeGenerator(OrtDecoderSession(step, cross, decoder_config))


def _quantized_graphs(root: Path, tmp: Path, decoder_config: DecoderConfig, fp32_generator: CodeGenerator,
                      cross_kv_session, cond, mask, images, options: QuantizationOptions, report):
    """KV scales; an int8 cache in ``tmp``'s MatMulNBits decoder; 8-bit CLIP (and T5) into ``tmp``;
    (manifest sections, generator)."""
    import onnx

    bits = WEIGHT_BITS[options.precision]
    provenance = {"images": options.images or "skimage.data photographs + augmentations",
                  "image_names": [name for name, _ in images]}
    kv = calibrate_kv_scales(fp32_generator, cond, mask, options.kv, provenance)
    report(f"  KV scales: keys absmax {kv.absmax[:, 0].max():.3g}, values absmax {kv.absmax[:, 1].max():.3g}")

    decoder_path = tmp / "decoder_step.onnx"
    if not decoder_path.exists():
        raise Img2MusicError(f"{decoder_path} is missing: export.bundle_build writes the quantized decoder there")
    decoder_model = onnx.load(str(decoder_path), load_external_data=True)
    save_model(int8_kv_cache(decoder_model, decoder_config.num_heads, decoder_config.head_dim), decoder_path)
    del decoder_model
    save_model(quantize_weights(onnx.load(str(root / "clip_vision.onnx"), load_external_data=True)),
               tmp / "clip_vision.onnx")
    text = (root / "t5_encoder.onnx").exists()
    if text:  # the same 8-bit weights as CLIP: T5 runs once per prompt change, its size is what matters
        save_model(quantize_weights(onnx.load(str(root / "t5_encoder.onnx"), load_external_data=True)),
                   tmp / "t5_encoder.onnx")
    generator = CodeGenerator(OrtDecoderSession(create_session(decoder_path), cross_kv_session, decoder_config,
                                                kv.scales))
    block = BLOCK_SIZE[bits]
    sections = {
        "weights": f"decoder_step MatMulNBits {bits}-bit (block {block}, symmetric"
                   + (", searched scales, output heads 8-bit" if bits < 8 else "")
                   + f"), clip_vision{' and t5_encoder' if text else ''} 8-bit (block {CLIP_BLOCK_SIZE})",
        "kv_cache_note": "int8, per-channel scales from calibration",
        "quantization": {
            "method": "onnxruntime MatMulNBits (symmetric, accuracy_level 4)",
            "graphs": {"decoder_step": {"bits": bits, "block_size": block, "output_heads_bits": 8,
                                        "scales": "per-block search" if bits < 8 else "absmax"},
                       "clip_vision": {"bits": 8, "block_size": CLIP_BLOCK_SIZE}}
                      | ({"t5_encoder": {"bits": 8, "block_size": CLIP_BLOCK_SIZE}} if text else {}),
        },
        "kv_cache": {"dtype": "int8", "granularity": "per-channel (layer, k/v, head, dim)",
                     "scales_file": KV_SCALES_FILE},
        "calibration": {k: v for k, v in kv.provenance.items() if k != "image_names"} | {"num_images": len(images)},
        "graph_precisions": {"decoder_step": options.precision, "clip_vision": "int8"}
                            | ({"t5_encoder": "int8"} if text else {}),
        "kv_scales": kv,
    }
    return sections, generator
