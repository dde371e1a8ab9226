"""Turn the fp32 graphs of a bundle being built into an int8 or int4 bundle.

Steps: representative images -> fp32 CLIP + projector -> conditionings; fp32
generations -> per-channel KV scales; MatMulNBits weights for decoder_step (8 or 4
bit) and clip_vision (8 bit); an int8 KV cache in decoder_step; the accuracy report
against fp32 (build fails under the thresholds); then the fp32 graphs are replaced.
The calibration is deterministic for a seed: same images, same seeds, same scales.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from basics.clip_image_config import ClipImageConfig
from basics.errors import Img2MusicError
from basics.graph_specs import LM_HEADS_NODE
from basics.model_config import DecoderConfig
from basics.onnx_files import save_model
from calibration.accuracy import THRESHOLDS, check, clip_cosine, greedy_agreement, teacher_forced, write_report
from calibration.kv_calibration import KvCalibrationConfig, calibrate_kv_scales
from calibration.quantize import BLOCK_SIZE, CLIP_BLOCK_SIZE, WEIGHT_BITS, int8_kv_cache, quantize_weights
from calibration.representative_data import representative_images
from runtime.bundle import sha256_file
from runtime.generation import CodeGenerator
from runtime.onnx_session import create_session
from runtime.ort_decoder_session import OrtDecoderSession
from runtime.preprocess import preprocess_images
from runtime.sampling import SamplingConfig

log = logging.getLogger(__name__)

KV_SCALES_FILE = "kv_scales.npz"


@dataclass
class QuantizationOptions:
    """What to quantize and what to calibrate on."""

    precision: str
    """int8 (8-bit weights) or int4 (4-bit decoder weights); both get an int8 KV cache."""
    images: str | None = None
    """Folder of calibration images (default: skimage.data photographs + augmentations)."""
    image_limit: int | None = None
    """Use only the first N (augmented) images."""
    kv: KvCalibrationConfig = field(default_factory=KvCalibrationConfig)
    """How much fp32 generation the KV calibration runs."""
    report_steps: int = 250
    """Teacher-forced steps and greedy frames of the accuracy report."""
    report_batch: int = 2
    """Conditionings in the accuracy report."""
    clip_images: int = 16
    """Images for the CLIP cosine."""


def quantize_bundle(root: Path, decoder_config: DecoderConfig, image_config: ClipImageConfig,
                    options: QuantizationOptions, report=None) -> dict:
    """Quantize the fp32 graphs in ``root``; returns the manifest sections it defines.
    ``report`` receives the summary lines (default: the log)."""
    import onnx

    report = report or log.info
    shape = decoder_config
    bits = WEIGHT_BITS[options.precision]
    sessions = {n: create_session(root / f"{n}.onnx") for n in ("clip_vision", "projector", "cross_kv", "decoder_step")}

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

    fp32_generator = CodeGenerator(OrtDecoderSession(sessions["decoder_step"], sessions["cross_kv"], decoder_config))
    provenance = {"images": options.images or "skimage.data photographs + augmentations",
                  "image_names": [name for name, _ in images]}
    kv = calibrate_kv_scales(fp32_generator, cond, mask, options.kv, provenance)
    report(f"  KV scales: keys absmax {kv.absmax[:, 0].max():.3g}, values absmax {kv.absmax[:, 1].max():.3g}")

    decoder_model = onnx.load(str(root / "decoder_step.onnx"), load_external_data=True)
    decoder_model = quantize_weights(decoder_model, bits, keep_8bit=[LM_HEADS_NODE] if bits < 8 else None)
    decoder_model = int8_kv_cache(decoder_model, shape.num_heads, shape.head_dim)
    clip_model = quantize_weights(onnx.load(str(root / "clip_vision.onnx"), load_external_data=True), 8,
                                  block_size=CLIP_BLOCK_SIZE)
    tmp = root / "quantized"
    tmp.mkdir()
    save_model(decoder_model, tmp / "decoder_step.onnx")
    save_model(clip_model, tmp / "clip_vision.onnx")
    q_generator = CodeGenerator(OrtDecoderSession(create_session(tmp / "decoder_step.onnx"), sessions["cross_kv"],
                                                  decoder_config, kv.scales))

    n = min(options.report_batch, len(cond))
    frames = options.report_steps - shape.num_codebooks + 1
    fp32_generator.generate(cond[:n], mask[:n], frames, SamplingConfig(seed=options.kv.seed))
    tokens = fp32_generator.tokens  # (n, K, L) the decoder inputs of an fp32 sampled generation
    tf = teacher_forced(fp32_generator, q_generator, cond[:n], mask[:n], tokens, options.kv.guidance_scale)
    greedy = greedy_agreement(fp32_generator, q_generator, cond[:n], mask[:n], frames, options.kv.guidance_scale)
    cosine = clip_cosine(sessions["clip_vision"], create_session(tmp / "clip_vision.onnx"),
                         pixels[: options.clip_images])
    block = BLOCK_SIZE[bits]
    data = {
        "precision": options.precision,
        "weights": f"decoder_step MatMulNBits {bits}-bit (block {block}, symmetric"
                   + (", searched scales, output heads 8-bit" if bits < 8 else "")
                   + f"), clip_vision 8-bit (block {CLIP_BLOCK_SIZE})",
        "kv_cache": "int8, per-channel scales from calibration",
        "data": f"{len(keep)} conditionings from {len(images)} images, {options.report_steps} steps, "
                f"seed {options.kv.seed}",
        "thresholds": asdict(THRESHOLDS[options.precision]),
        "teacher_forced": tf,
        "greedy": {"agreement": greedy, "frames": frames},
        "clip": {"cosine": cosine, "images": int(min(options.clip_images, len(pixels)))},
        "encodec": {"quantized": False, "snr_db": None, "note": "not quantized (fp32): identical to fp32"},
    }
    data["failures"] = check(options.precision, data)
    summary = write_report(root, data)
    report(f"  accuracy: teacher-forced agreement {tf['agreement']:.4f}, KL {tf['kl_mean']:.5f}, "
           f"greedy agreement {greedy:.4f}, CLIP cosine {cosine:.5f} -> {'PASS' if summary['passed'] else 'FAIL'}")
    for generator in (q_generator, fp32_generator):
        generator.decoder.close()
    del sessions
    if data["failures"]:
        raise Img2MusicError(f"{options.precision} bundle below its accuracy thresholds: " + "; ".join(data["failures"]))

    for name in ("decoder_step", "clip_vision"):
        for old in root.glob(f"{name}.onnx*"):
            old.unlink()
        for new in tmp.glob(f"{name}.onnx*"):
            new.rename(root / new.name)
    tmp.rmdir()
    np.savez(root / KV_SCALES_FILE, scales=kv.scales, absmax=kv.absmax,
             decoder_step_sha256=np.array(sha256_file(root / "decoder_step.onnx")))
    return {
        "precision": options.precision,
        "quantization": {
            "method": "onnxruntime MatMulNBits (symmetric, accuracy_level 4)",
            "graphs": {"decoder_step": {"bits": bits, "block_size": block, "output_heads_bits": 8,
                                        "scales": "per-block search" if bits < 8 else "absmax"},
                       "clip_vision": {"bits": 8, "block_size": CLIP_BLOCK_SIZE}},
        },
        "kv_cache": {"dtype": "int8", "granularity": "per-channel (layer, k/v, head, dim)",
                     "scales_file": KV_SCALES_FILE},
        "calibration": {k: v for k, v in kv.provenance.items() if k != "image_names"}
        | {"num_images": len(images)},
        "accuracy": summary,
        "graph_precisions": {"decoder_step": options.precision, "clip_vision": "int8"},
    }
