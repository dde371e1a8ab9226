"""int8 / int4 bundles: build, load, generate, report, calibration (tiny; small-random is slow)."""

import json
import shutil

import numpy as np
import pytest

from img2music.basics.errors import Img2MusicError
from img2music.calibration.accuracy import THRESHOLDS, teacher_forced
from img2music.calibration.kv_calibration import KvCalibrationConfig, calibrate_kv_scales
from img2music.calibration.quantize import int8_kv_cache
from img2music.runtime.backends.ort_decoder import OrtDecoderSession
from img2music.runtime.backends.ort_session import create_session
from img2music.runtime.bundle.loading import load_bundle
from img2music.runtime.generation.core import CodeGenerator
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline


def test_quantized_bundle_builds_loads_and_generates(tiny_quantized_bundle, photos):
    bundle = load_bundle(tiny_quantized_bundle)
    m = bundle.manifest
    precision = m.precision
    assert precision in ("int8", "int4")
    assert m.kv_cache.dtype == "int8" and m.kv_cache.scales_file in m.files
    assert m.graphs["decoder_step"].precision == precision
    assert m.provenance.quantization["graphs"]["decoder_step"]["bits"] == {"int8": 8, "int4": 4}[precision]
    assert m.provenance.calibration["seed"] == 0 and m.provenance.calibration["num_images"] == 18
    ops = {n.op_type for n in __import__("onnx").load(str(tiny_quantized_bundle / "decoder_step.onnx")).graph.node}
    assert "MatMulNBits" in ops
    pipeline = OnnxPipeline.load(tiny_quantized_bundle)  # no extra flag: the bundle knows its precision
    assert pipeline.decoder.cache_dtype == np.int8
    result = pipeline([photos["astronaut"], photos["coffee"]], 0.5, SamplingConfig(seed=1))
    assert result.audio.shape == (2, 25 * 640) and np.all(np.isfinite(result.audio))
    assert result.codes.min() >= 0 and result.codes.max() < 2048
    # the text encoder: 8-bit weights too, and a prompt runs with and without an image
    assert m.graphs["t5_encoder"].precision == "int8"
    assert m.provenance.quantization["graphs"]["t5_encoder"] == m.provenance.quantization["graphs"]["clip_vision"]
    t5_ops = {n.op_type for n in __import__("onnx").load(str(tiny_quantized_bundle / "t5_encoder.onnx")).graph.node}
    assert "MatMulNBits" in t5_ops
    for images in ([photos["astronaut"]], None):
        result = pipeline(images, 0.5, SamplingConfig(seed=1), prompt="slow jazz piano")
        assert result.audio.shape == (1, 25 * 640) and np.all(np.isfinite(result.audio))


def test_accuracy_report_is_sane(tiny_quantized_bundle):
    report = json.loads((tiny_quantized_bundle / "accuracy_report.json").read_text())
    tf = report["teacher_forced"]
    assert all(0.0 <= a <= 1.0 for a in tf["agreement_per_codebook"]) and len(tf["agreement_per_codebook"]) == 4
    assert tf["kl_mean"] >= 0.0
    assert 0.0 <= report["greedy"]["agreement"] <= 1.0
    assert 0.0 < report["clip"]["cosine"] <= 1.0 + 1e-6
    assert report["text"]["prompts"] == 16 and THRESHOLDS["int8"].text_cosine <= report["text"]["cosine"] <= 1 + 1e-6
    assert report["failures"] == []
    assert tf["agreement"] >= THRESHOLDS[report["precision"]].teacher_forced_agreement
    assert tf["kl_mean"] <= THRESHOLDS[report["precision"]].kl_max
    md = (tiny_quantized_bundle / "accuracy_report.md").read_text()
    assert "teacher-forced top-1 agreement" in md and "PASS" in md
    summary = load_bundle(tiny_quantized_bundle).manifest.provenance.accuracy
    assert summary["passed"] and summary["teacher_forced_agreement"] == tf["agreement"]
    assert summary["text_cosine"] == report["text"]["cosine"] and "T5 encoding cosine (16 prompts)" in md


def calibration_inputs(tiny_pipeline):
    bank = tiny_pipeline.projector.bank
    return bank.t5_hidden[[1, 40, 80]], bank.t5_mask[[1, 40, 80]]


def test_calibration_is_deterministic(tiny_onnx, tiny_pipeline):
    cond, mask = calibration_inputs(tiny_pipeline)
    gen = tiny_onnx.generator
    config = KvCalibrationConfig(steps=60, batch=2, seed=4)
    a = calibrate_kv_scales(gen, cond, mask, config, {"images": "test"})
    b = calibrate_kv_scales(gen, cond, mask, config, {"images": "test"})
    np.testing.assert_array_equal(a.scales, b.scales)
    assert a.scales.shape == (2, 2, 4, 16) and np.all(a.scales > 0)
    assert a.provenance["seed"] == 4 and a.provenance["conditionings"] == 3
    c = calibrate_kv_scales(gen, cond, mask, KvCalibrationConfig(steps=60, batch=2, seed=5), {})
    assert not np.array_equal(a.scales, c.scales)


def test_int8_kv_cache_alone_keeps_tokens(tiny_bundle, tiny_onnx, tiny_pipeline, tmp_path):
    """fp32 weights, int8 cache with calibrated scales vs the fp32 cache: teacher-forced >= 0.95."""
    import onnx

    cond, mask = calibration_inputs(tiny_pipeline)
    config = tiny_onnx.decoder.config
    gen = tiny_onnx.generator
    kv = calibrate_kv_scales(gen, cond, mask, KvCalibrationConfig(steps=120, batch=3), {})
    model = int8_kv_cache(onnx.load(str(tiny_bundle / "decoder_step.onnx")), config.num_heads, config.head_dim)
    onnx.save(model, str(tmp_path / "decoder_kv8.onnx"))
    kv8 = CodeGenerator(OrtDecoderSession(create_session(tmp_path / "decoder_kv8.onnx"),
                                          tiny_onnx.sessions["cross_kv"], config, kv.scales))
    gen.generate(cond[:2], mask[:2], 200, SamplingConfig(seed=9))
    tokens = gen.tokens
    result = teacher_forced(gen, kv8, cond[:2], mask[:2], tokens, 3.0)
    assert result["agreement"] >= 0.95, result
    # guessed scales (10x too small: everything clips) do measurably worse
    guessed = CodeGenerator(OrtDecoderSession(create_session(tmp_path / "decoder_kv8.onnx"),
                                              tiny_onnx.sessions["cross_kv"], config, kv.scales / 10))
    assert teacher_forced(gen, guessed, cond[:2], mask[:2], tokens, 3.0)["agreement"] < result["agreement"]


def test_wrong_scale_file_is_refused(tiny_quantized_bundle, tmp_path, tiny_models):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_quantized_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    with np.load(bundle / "kv_scales.npz") as data:
        scales, absmax = data["scales"], data["absmax"]
    # scales made for another decoder graph, with the manifest's hash updated to match the file
    np.savez(bundle / "kv_scales.npz", scales=scales * 2, absmax=absmax, decoder_step_sha256=np.array("0" * 64))
    from img2music.runtime.bundle.loading import sha256_file

    manifest["files"]["kv_scales.npz"] = {"sha256": sha256_file(bundle / "kv_scales.npz"),
                                          "bytes": (bundle / "kv_scales.npz").stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Img2MusicError, match="calibrated for another decoder_step"):
        OnnxPipeline.load(bundle)
    # the right decoder but the wrong shape
    decoder_sha = manifest["files"]["decoder_step.onnx"]["sha256"]
    np.savez(bundle / "kv_scales.npz", scales=scales[:, :, :2], absmax=absmax, decoder_step_sha256=np.array(decoder_sha))
    manifest["files"]["kv_scales.npz"] = {"sha256": sha256_file(bundle / "kv_scales.npz"),
                                          "bytes": (bundle / "kv_scales.npz").stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Img2MusicError, match="scales must be positive, finite and shaped"):
        OnnxPipeline.load(bundle)
    # a swapped file without touching the manifest fails the hash check
    shutil.copy(tiny_quantized_bundle / "kv_scales.npz", bundle / "kv_scales.npz")
    np.savez(bundle / "kv_scales.npz", scales=scales + 1, absmax=absmax, decoder_step_sha256=np.array(decoder_sha))
    with pytest.raises(Img2MusicError):
        OnnxPipeline.load(bundle)


def test_build_fails_below_thresholds(tiny_models, tmp_path, monkeypatch):
    """The gate works: an unreachable threshold fails the build and says why."""
    import img2music.calibration.accuracy as accuracy
    from img2music.export.bundle_build import build_bundle
    from tests.conftest import quick_quantization

    monkeypatch.setitem(accuracy.THRESHOLDS, "int8", accuracy.Thresholds(teacher_forced_agreement=1.01,
                                                                          kl_max=0.0, clip_cosine=0.99))
    with pytest.raises(Img2MusicError, match="below its accuracy thresholds"):
        build_bundle(tmp_path / "b", tiny_models, report=lambda line: None, quantization=quick_quantization("int8"))
    report = json.loads((tmp_path / "b" / "accuracy_report.json").read_text())
    assert len(report["failures"]) == 2
    assert "teacher-forced agreement" in report["failures"][0] and "KL" in report["failures"][1]


@pytest.mark.slow
def test_small_random_int8_bundle(tmp_path):
    """Real-size int8 build (reduced calibration): builds, passes its thresholds, generates."""
    from img2music.basics.models import build_preset
    from img2music.export.bundle_build import build_bundle
    from tests.conftest import quick_quantization

    models = build_preset("small-random")
    build_bundle(tmp_path / "small-int8", models, report=lambda line: None, quantization=quick_quantization("int8"))
    del models
    pipeline = OnnxPipeline.load(tmp_path / "small-int8", threads=2)
    assert pipeline.bundle.manifest.provenance.accuracy["passed"]
    from PIL import Image

    result = pipeline([Image.new("RGB", (300, 200), (200, 120, 40))], 0.2, SamplingConfig(seed=0))
    assert result.audio.shape == (1, 10 * 640) and np.all(np.isfinite(result.audio))
