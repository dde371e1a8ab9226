"""Quantized builds that never hold a float32 decoder graph (musicgen-large in 24 GB).

The decoder is written with MatMulNBits weights straight from the checkpoint, and the
transformers model stands in for the float32 graph as calibration's and the report's
reference. Each half against what it replaces: ONNX Runtime's quantizer on the float32
graph (byte for byte), the float32 graph on ONNX Runtime (tokens and cache)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from img2music.basics.errors import Img2MusicError
from img2music.calibration.quantize import pack_codes, quantize_weights, search_block_scales
from img2music.calibration.torch_decoder_session import TorchDecoderSession
from img2music.export.decoder_step import DecoderWeights, build_decoder_step
from img2music.runtime.backends.ort_decoder import OrtDecoderSession
from img2music.runtime.backends.ort_session import create_session
from img2music.runtime.generation.core import CodeGenerator
from img2music.runtime.generation.sampling import SamplingConfig

ROOT = Path(__file__).resolve().parents[2]


def _initializers(model) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _session(model, path):
    onnx.save(model, str(path))
    return create_session(path, threads=1)


def _conditioning(tiny_pipeline):
    bank = tiny_pipeline.projector.bank
    return bank.t5_hidden[[3, 50]], bank.t5_mask[[3, 50]]  # (2, N, D), (2, N)


def test_8bit_decoder_written_directly_equals_the_quantized_float32_graph(tiny_models, tiny_bundle, tiny_pipeline,
                                                                           tmp_path):
    """Every blob and scale byte for byte as ONNX Runtime's MatMulNBitsQuantizer makes them from
    the float32 graph, and so the same logits, step after step."""
    decoder_lm = tiny_models.musicgen.decoder
    rewritten = quantize_weights(build_decoder_step(decoder_lm), block_size=256)
    direct = build_decoder_step(decoder_lm, DecoderWeights(bits=8, block_size=256))
    ours, theirs = _initializers(direct), _initializers(rewritten)
    quantized = [n for n in ours if n.endswith(("_Q8", "_scales"))]
    assert len(quantized) == 2 * (6 * 2 + 1)  # six MatMuls per layer, two layers, the output heads
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert not any(n.op_type == "MatMul" for n in direct.graph.node)
    config = tiny_models.decoder_config()
    cross = create_session(tiny_bundle / "cross_kv.onnx")
    sessions = [OrtDecoderSession(_session(m, tmp_path / f"{name}.onnx"), cross, config)
                for name, m in (("direct", direct), ("rewritten", rewritten))]
    cond, mask = _conditioning(tiny_pipeline)
    codes = np.random.default_rng(0).integers(0, 2048, (2, config.num_codebooks, 6))
    for session in sessions:
        session.set_conditioning(cond, mask)
    for t in range(codes.shape[2]):
        np.testing.assert_array_equal(sessions[0].step(codes[:, :, t]).copy(), sessions[1].step(codes[:, :, t]))


def test_4bit_decoder_searches_its_scales_and_keeps_8bit_heads(tiny_models):
    decoder_lm = tiny_models.musicgen.decoder
    direct = build_decoder_step(decoder_lm, DecoderWeights(bits=4, block_size=256, heads_bits=8))
    bits = {n.output[0]: {a.name: a.i for a in n.attribute}["bits"] for n in direct.graph.node
            if n.op_type == "MatMulNBits"}
    assert len(bits) == 13 and [b for b in bits.values() if b == 8] == [8]
    inits = _initializers(direct)
    fc1 = decoder_lm.model.decoder.layers[1].fc1.weight.detach().numpy().T  # (K, N) as MatMul reads it
    found = search_block_scales(fc1, 4, 256)
    assert found.error < found.absmax_error  # the search did better than round-to-nearest here
    np.testing.assert_array_equal(inits["layers.1.fc1_Q4"], pack_codes(found.codes, 4, rows=fc1.shape[0]))
    np.testing.assert_array_equal(inits["layers.1.fc1_scales"], found.scales)


def test_torch_session_generates_what_the_float32_graph_does(tiny_models, tiny_onnx, tiny_pipeline):
    """Greedy codes equal frame for frame; logits, cache rows, prefill and a conditioning changed
    mid-piece (reset=False) within float32 noise."""
    config = tiny_models.decoder_config()
    ort = tiny_onnx.decoder
    torch_session = TorchDecoderSession(tiny_models.musicgen, config)
    cond, mask = _conditioning(tiny_pipeline)
    sampling = SamplingConfig(greedy=True, guidance_scale=3.0)
    ours = CodeGenerator(torch_session).generate(cond, mask, 40, sampling)
    theirs = CodeGenerator(ort).generate(cond, mask, 40, sampling)
    np.testing.assert_array_equal(ours, theirs)
    for layer in range(config.num_layers):
        for kind in ("key", "value"):
            a, b = torch_session.cache_rows(layer, kind, 20), ort.cache_rows(layer, kind, 20)
            assert a.shape == b.shape == (4, config.num_heads, 20, config.head_dim)
            np.testing.assert_allclose(a, b, atol=2e-5)

    rng = np.random.default_rng(1)
    window = rng.integers(0, 2049, (2, config.num_codebooks, 9))
    nxt = rng.integers(0, 2048, (2, config.num_codebooks, 3))
    for session in (torch_session, ort):
        session.set_conditioning(cond, mask)
    np.testing.assert_allclose(torch_session.prefill(window), ort.prefill(window).copy(), atol=1e-4)
    assert torch_session.position == ort.position == 9
    np.testing.assert_allclose(torch_session.step(nxt[:, :, 0]), ort.step(nxt[:, :, 0]).copy(), atol=1e-4)
    for session in (torch_session, ort):  # the other conditioning's rows swapped, the music kept
        session.set_conditioning(cond[::-1].copy(), mask[::-1].copy(), reset=False)
    assert torch_session.position == ort.position == 10
    for t in (1, 2):
        np.testing.assert_allclose(torch_session.step(nxt[:, :, t]), ort.step(nxt[:, :, t]).copy(), atol=1e-4)
    with pytest.raises(Img2MusicError, match="token weights"):
        torch_session.set_conditioning(cond, mask, weight=np.full(mask.shape, 2.0, np.float32))


def test_a_torch_reference_build_equals_the_onnx_reference_build(tiny_quantized_bundle, tiny_models, tmp_path):
    """The same bundle but for float32 rounding: the decoder graph byte for byte, the KV scales and
    the report within float32 noise; no float32 decoder graph was written; the report says so."""
    from img2music.export.bundle_build import build_bundle
    from tests.conftest import quick_quantization

    options = quick_quantization(json.loads((tiny_quantized_bundle / "manifest.json").read_text())["precision"])
    options.reference = "torch"
    lines = []
    root = tmp_path / "torch-ref"
    build_bundle(root, tiny_models, report=lines.append, quantization=options)
    assert any("no float32 graph" in line for line in lines)
    assert not any(line.startswith("✓ decoder_step") for line in lines)
    manifest = json.loads((root / "manifest.json").read_text())
    onnx_manifest = json.loads((tiny_quantized_bundle / "manifest.json").read_text())
    assert manifest["files"]["decoder_step.onnx"] == onnx_manifest["files"]["decoder_step.onnx"]  # sha256, bytes
    ours, theirs = np.load(root / "kv_scales.npz"), np.load(tiny_quantized_bundle / "kv_scales.npz")
    np.testing.assert_allclose(ours["scales"], theirs["scales"], rtol=1e-4)
    report = json.loads((root / "accuracy_report.json").read_text())
    onnx_report = json.loads((tiny_quantized_bundle / "accuracy_report.json").read_text())
    assert report["reference"].startswith("the transformers model")
    assert onnx_report["reference"].startswith("the float32")
    assert "Reference (fp32): the transformers model" in (root / "accuracy_report.md").read_text()
    assert report["failures"] == []
    assert report["teacher_forced"]["agreement"] == pytest.approx(onnx_report["teacher_forced"]["agreement"], abs=0.01)
    assert report["teacher_forced"]["kl_mean"] == pytest.approx(onnx_report["teacher_forced"]["kl_mean"], rel=0.05)


def test_reference_choice(tiny_models, tmp_path):
    from img2music.calibration.build_quantized import TORCH_REFERENCE_GIB, QuantizationOptions

    large = int(3.26e9) * 4  # musicgen-large's decoder in float32 bytes
    assert QuantizationOptions("int8").resolved_reference(large) == "torch"
    assert QuantizationOptions("int4").resolved_reference(TORCH_REFERENCE_GIB * 2**30) == "onnx"  # medium and below
    assert QuantizationOptions("fp16").resolved_reference(large) == "onnx"  # it converts the float32 graph
    with pytest.raises(Img2MusicError, match="fp16"):
        QuantizationOptions("fp16", reference="torch").resolved_reference(0)
    cli = subprocess.run([sys.executable, str(ROOT / "export" / "build_engines.py"), "--preset", "tiny", "--out",
                          str(tmp_path / "b"), "--reference", "torch"], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode != 0 and cli.stderr.strip().count("\n") == 0 and "--precision" in cli.stderr
    assert cli.stderr.startswith("error:") and not (tmp_path / "b").exists()


def test_a_float32_decoder_graph_too_large_for_the_machine_is_warned_of(tiny_models, tmp_path, monkeypatch):
    """Before the graph is written, not after an out-of-memory kill: the line names the way out."""
    import img2music.export.bundle_build as bundle_build

    decoder_bytes = 4 * sum(p.numel() for p in tiny_models.musicgen.decoder.parameters())
    monkeypatch.setattr(bundle_build, "_physical_memory", lambda: int(1.5 * decoder_bytes))
    lines = []
    bundle_build.build_bundle(tmp_path / "b", tiny_models, report=lines.append, text=False)
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1 and "may run out of memory" in warning[0] and "--precision int8 or int4" in warning[0]
    assert lines.index(warning[0]) < next(i for i, line in enumerate(lines) if "decoder_step.onnx" in line)
    monkeypatch.setattr(bundle_build, "_physical_memory", lambda: int(2.5 * decoder_bytes))
    lines.clear()
    bundle_build.build_bundle(tmp_path / "c", tiny_models, report=lines.append, text=False)
    assert not any(line.startswith("warning:") for line in lines)
