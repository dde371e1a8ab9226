"""Accuracy of a quantized bundle against its fp32 source: numbers, thresholds, report.

Metrics (guidance on, as the runtime runs):
- teacher-forced top-1 agreement per codebook: both decoders read the same tokens
  (an fp32 sampled generation) and we compare the argmax of their guided logits;
- KL(fp32 || quantized) of the guided next-token distributions, mean per token;
- greedy generation agreement: fraction of equal codes when each decoder generates
  greedily on its own (it drops after the first divergence, so it is the strictest);
- CLIP image-embedding cosine, fp32 vs quantized vision tower;
- T5 text-encoding cosine (per token, over real prompts), fp32 vs quantized, where the
  bundle has a text encoder;
- EnCodec output SNR when EnCodec is quantized (it is not: convolutions and LSTMs
  have no MatMulNBits path; reported as not quantized).

Thresholds (``THRESHOLDS``) fail the build. They are set from what 8- and 4-bit
weights measurably keep on random-weight models; random weights say nothing about
how a trained model will sound, so listen before shipping. The runtime samples
(top-k 250), so the KL of the next-token distribution is what decides what is heard;
top-1 agreement matters to greedy decoding only, and on the nearly flat logits of
random weights it swings by +-0.05 between calibration sets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from img2music.runtime.generation.core import CodeGenerator
from img2music.runtime.generation.sampling import SamplingConfig


@dataclass(frozen=True)
class Thresholds:
    """The least a precision must keep to be built."""

    teacher_forced_agreement: float
    """Mean over codebooks of teacher-forced top-1 agreement."""
    kl_max: float
    """Largest mean KL(fp32 || quantized) of the guided next-token distributions."""
    clip_cosine: float
    """Mean cosine between fp32 and quantized CLIP image embeddings."""
    max_abs_logit_diff: float | None = None
    """Largest |guided score difference| to fp32 over the teacher-forced steps (None: not checked)."""
    text_cosine: float = 0.99
    """Mean per-token cosine between fp32 and quantized T5 encodings (8-bit weights in int8 and int4)."""


THRESHOLDS = {
    # Measured on small-random: agreement 0.91-0.95, KL 0.0008-0.0009.
    "int8": Thresholds(teacher_forced_agreement=0.90, kl_max=0.005, clip_cosine=0.99),
    # Measured on small-random (KL / agreement): block 128 absmax 0.037 / 0.63, block 256
    # absmax 0.045 / 0.55-0.57, block 256 searched scales (built) 0.033 / 0.58. The KL
    # bound admits nothing worse than absmax block 256; the agreement floor catches
    # broken quantization (wrong scales or blocks fall towards chance, 1/2048).
    # fp16 (float16 weights, activations and cache) must be nearly lossless. Measured on the
    # CPU provider (float16 storage; ops without a float16 CPU kernel compute in float32):
    # small-random agreement 0.9915, KL 6.6e-6, max |Δlogit| 0.0195 (largest |logit| 5.45),
    # greedy 0.991; tiny 0.9945 / ~0 / 0.0019. Bounds: KL 15x and |Δlogit| 5x above that,
    # room for the GPU's own float16 kernels; 0.1 in a logit is at most a 10 % change of one
    # token's probability. Top-1 agreement 0.97: random weights' flat logits flip near-ties.
    "fp16": Thresholds(teacher_forced_agreement=0.97, kl_max=1e-4, clip_cosine=0.999, max_abs_logit_diff=0.1),
    "int4": Thresholds(teacher_forced_agreement=0.50, kl_max=0.045, clip_cosine=0.99),
}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def teacher_forced(reference: CodeGenerator, test: CodeGenerator, conditioning, mask, tokens: np.ndarray,
                   guidance_scale: float) -> dict:
    """Both generators' decoders read ``tokens`` (B, K, L); per-codebook agreement and mean KL
    of the guided scores sampling would see."""
    batch, k, length = tokens.shape
    for generator in (reference, test):
        generator.start(conditioning, mask, SamplingConfig(guidance_scale=guidance_scale))
    agree = np.zeros(k)
    kl_sum, n, max_diff, max_ref = 0.0, 0, 0.0, 0.0
    for t in range(length - 1):
        ref = reference.score(tokens[:, :, t], guidance_scale).copy()  # (B, K, V)
        test_scores = test.score(tokens[:, :, t], guidance_scale)
        agree += (ref.argmax(-1) == test_scores.argmax(-1)).mean(axis=0)
        max_diff = max(max_diff, float(np.abs(ref.astype(np.float64) - test_scores).max()))
        max_ref = max(max_ref, float(np.abs(ref).max()))
        lp, lq = _log_softmax(ref), _log_softmax(test_scores)
        kl_sum += float((np.exp(lp) * (lp - lq)).sum(-1).sum())
        n += batch * k
    steps = length - 1
    return {"agreement_per_codebook": (agree / steps).tolist(), "agreement": float(agree.mean() / steps),
            "kl_mean": kl_sum / n, "max_abs_diff": max_diff, "max_abs_reference": max_ref, "steps": steps}


def greedy_agreement(reference: CodeGenerator, test: CodeGenerator, conditioning, mask, frames: int,
                     guidance_scale: float) -> float:
    """Fraction of equal codes when each generates ``frames`` frames greedily on its own."""
    sampling = SamplingConfig(greedy=True, guidance_scale=guidance_scale)
    codes = [g.generate(conditioning, mask, frames, sampling) for g in (reference, test)]
    return float((codes[0] == codes[1]).mean())


def clip_cosine(ref_session, test_session, pixels: np.ndarray) -> float:
    a = ref_session.run(None, {"pixel_values": pixels})[0]
    b = test_session.run(None, {"pixel_values": pixels})[0]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return float(cos.mean())


def text_cosine(ref_session, test_session, tokenizer, prompts: list[str]) -> float:
    """Mean over prompts and tokens of the cosine between two T5 encoders' outputs."""
    cosines = []
    for prompt in prompts:
        ids = np.asarray([tokenizer.encode(prompt).ids], dtype=np.int64)  # (1, T)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        a, b = ref_session.run(None, feed)[0][0], test_session.run(None, feed)[0][0]  # (T, D)
        cosines.append((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12))
    return float(np.concatenate(cosines).mean())


def check(precision: str, report: dict) -> list[str]:
    """Failures against the thresholds (empty when the precision passes)."""
    t = THRESHOLDS[precision]
    failures = _decoder_failures(report["teacher_forced"], t, "")
    emulation = report.get("fp16_storage_emulation")
    if emulation is not None:  # an fp16 decoder measured on the CPU: the emulation is what CUDA would store
        failures += _decoder_failures(emulation["teacher_forced"], t, "fp16 storage emulation: ")
    if report["clip"]["cosine"] < t.clip_cosine:
        failures.append(f"CLIP embedding cosine {report['clip']['cosine']:.4f} < {t.clip_cosine}")
    text = report.get("text")
    if text and text.get("cosine") is not None and text["cosine"] < t.text_cosine:
        failures.append(f"T5 encoding cosine {text['cosine']:.4f} < {t.text_cosine}")
    return failures


def _decoder_failures(tf: dict, t: Thresholds, what: str) -> list[str]:
    failures = []
    if tf["agreement"] < t.teacher_forced_agreement:
        failures.append(f"{what}teacher-forced agreement {tf['agreement']:.3f} < {t.teacher_forced_agreement}")
    if tf["kl_mean"] > t.kl_max:
        failures.append(f"{what}KL {tf['kl_mean']:.5f} > {t.kl_max}")
    if t.max_abs_logit_diff is not None and tf["max_abs_diff"] > t.max_abs_logit_diff:
        failures.append(f"{what}max |Δlogit| {tf['max_abs_diff']:.4f} > {t.max_abs_logit_diff}")
    return failures


def write_report(root: Path, report: dict) -> dict:
    """accuracy_report.json + accuracy_report.md; returns the summary for the manifest."""
    (root / "accuracy_report.json").write_text(json.dumps(report, indent=2))
    tf = report["teacher_forced"]
    lines = [
        f"# Accuracy report: {report['precision']} vs fp32",
        "",
        f"Weights: {report['weights']}; KV cache: {report['kv_cache']}.",
        f"Data: {report['data']}.",
        f"Reference (fp32): {report.get('reference', 'the float32 decoder graph')}.",
        "",
        "| metric | value | threshold |",
        "|---|---:|---:|",
        f"| teacher-forced top-1 agreement (mean) | {tf['agreement']:.4f} | >= {report['thresholds']['teacher_forced_agreement']} |",
    ]
    for i, a in enumerate(tf["agreement_per_codebook"]):
        lines.append(f"| &nbsp; codebook {i} | {a:.4f} | |")
    lines += [
        f"| KL(fp32 ‖ {report['precision']}) per token | {tf['kl_mean']:.3g} | <= {report['thresholds']['kl_max']} |",
        f"| max \\|Δlogit\\| (guided; largest \\|logit\\| {tf['max_abs_reference']:.2f}) | {tf['max_abs_diff']:.4f} | "
        + (f"<= {report['thresholds']['max_abs_logit_diff']} |" if report['thresholds'].get('max_abs_logit_diff') else "|"),
        f"| greedy generation agreement ({report['greedy']['frames']} frames) | {report['greedy']['agreement']:.4f} | |",
        f"| CLIP embedding cosine | {report['clip']['cosine']:.5f} | >= {report['thresholds']['clip_cosine']} |",
        f"| EnCodec SNR | {report['encodec']['note']} | |",
    ]
    emulation = report.get("fp16_storage_emulation")
    if emulation is not None:
        et = emulation["teacher_forced"]
        lines += [f"| fp16 storage emulation: teacher-forced agreement | {et['agreement']:.4f} | "
                  f">= {report['thresholds']['teacher_forced_agreement']} |",
                  f"| fp16 storage emulation: KL per token | {et['kl_mean']:.3g} | <= {report['thresholds']['kl_max']} |",
                  f"| fp16 storage emulation: max \\|Δlogit\\| | {et['max_abs_diff']:.4f} | "
                  + (f"<= {report['thresholds']['max_abs_logit_diff']} |" if report['thresholds'].get('max_abs_logit_diff')
                     else "|"),
                  f"| fp16 storage emulation: greedy agreement | {emulation['greedy_agreement']:.4f} | |"]
    text = report.get("text") or {}
    lines += [f"| T5 encoding cosine ({text.get('prompts')} prompts) | "
              + (f"{text['cosine']:.5f} | >= {report['thresholds']['text_cosine']} |" if text.get("cosine") is not None
                 else f"{text.get('note', 'no text encoder in this bundle')} | |"),
        "",
        f"Result: {'PASS' if not report['failures'] else 'FAIL: ' + '; '.join(report['failures'])}",
        "",
    ]
    (root / "accuracy_report.md").write_text("\n".join(lines))
    return {"teacher_forced_agreement": tf["agreement"], "kl_mean": tf["kl_mean"],
            "max_abs_logit_diff": tf["max_abs_diff"], "greedy_agreement": report["greedy"]["agreement"],
            "clip_cosine": report["clip"]["cosine"], "text_cosine": text.get("cosine"),
            "measured_on": report.get("measured_on", "cpu"),
            "fp16_storage_emulation": None if emulation is None else {
                "teacher_forced_agreement": emulation["teacher_forced"]["agreement"],
                "kl_mean": emulation["teacher_forced"]["kl_mean"],
                "max_abs_logit_diff": emulation["teacher_forced"]["max_abs_diff"],
                "greedy_agreement": emulation["greedy_agreement"]},
            "passed": not report["failures"]}
