"""GPU bundles and providers, as far as a machine without a GPU can prove them: fp16 graphs
built and validated (on the CPU provider), provider selection and every refusal, the
step-graph property CUDA-graph replay relies on, and the TensorRT-RTX build check.
Nothing here runs the CUDA or TensorRT providers: see benchmarks/gpu_check.sh."""

import ctypes
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from img2music.basics.errors import Img2MusicError
from img2music.runtime.bundle.loading import load_bundle
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

ROOT = Path(__file__).resolve().parents[2]


def io_types(path):
    model = onnx.load(str(path), load_external_data=False)
    name = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}
    return {v.name: name.get(v.type.tensor_type.elem_type) for v in list(model.graph.input) + list(model.graph.output)}


def test_fp16_bundle_is_float16_where_the_gpu_needs_it(tiny_fp16_bundle):
    bundle = load_bundle(tiny_fp16_bundle)
    m = bundle.manifest
    assert m.precision == "fp16" and m.kv_cache.dtype == "float16"
    assert {n: g.precision for n, g in m.graphs.items()} == {
        "clip_vision": "fp16", "projector": "fp32", "cross_kv": "fp16", "decoder_step": "fp16",
        "encodec_stream_front": "fp32", "encodec_stream_back": "fp32", "t5_encoder": "fp32"}  # T5 overflows fp16
    step = io_types(tiny_fp16_bundle / "decoder_step.onnx")
    assert step["past_key.0"] == step["present_value.1"] == step["cross_key.0"] == "float16"
    assert step["cross_attention_bias"] == "float16" and step["logits"] == "float32"
    cross = io_types(tiny_fp16_bundle / "cross_kv.onnx")
    assert cross["conditioning"] == cross["conditioning_log_weight"] == "float32" and cross["cross_value.1"] == "float16"
    assert set(io_types(tiny_fp16_bundle / "clip_vision.onnx").values()) == {"float32"}
    weights = onnx.load(str(tiny_fp16_bundle / "decoder_step.onnx")).graph.initializer
    assert {w.data_type for w in weights if w.name.startswith("layers.")} == {onnx.TensorProto.FLOAT16}


def test_fp16_accuracy_report_gates_the_build(tiny_fp16_bundle):
    from img2music.calibration.accuracy import THRESHOLDS

    report = json.loads((tiny_fp16_bundle / "accuracy_report.json").read_text())
    tf, t = report["teacher_forced"], THRESHOLDS["fp16"]
    assert report["failures"] == [] and report["precision"] == "fp16"
    assert tf["agreement"] >= t.teacher_forced_agreement and tf["kl_mean"] <= t.kl_max
    assert 0 < tf["max_abs_diff"] <= t.max_abs_logit_diff
    assert "max \\|Δlogit\\|" in (tiny_fp16_bundle / "accuracy_report.md").read_text()


def test_fp16_bundle_runs_on_the_cpu_provider(tiny_fp16_bundle, tiny_onnx, photos):
    """The same music as fp32 within float16's rounding: greedy codes mostly equal, audio finite."""
    fp16 = OnnxPipeline.load(tiny_fp16_bundle, threads=2)
    greedy = SamplingConfig(greedy=True)
    a = fp16([photos["coffee"], photos["rocket"]], 2.0, greedy)
    b = tiny_onnx([photos["coffee"], photos["rocket"]], 2.0, greedy)
    assert a.directives == b.directives and a.audio.shape == b.audio.shape and np.all(np.isfinite(a.audio))
    assert (a.codes == b.codes).mean() >= 0.9


def test_positions_come_from_seqlens(tiny_onnx):
    """A captured CUDA graph keeps total_sequence_length at the cache length and moves only
    seqlens_k: the step graph must give the same logits either way (checked on the CPU)."""
    dec = tiny_onnx.decoder
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((2, 5, 32)).astype(np.float32)
    mask = np.ones((2, 5), np.int64)
    cond[1], mask[1] = 0, 0
    ids = rng.integers(0, 2048, (30, 2, 4))
    dec.set_conditioning(cond, mask)
    normal = [dec.step(ids[t]).copy() for t in range(30)]
    dec.set_conditioning(cond, mask)
    static = []
    for t in range(30):
        dec._ids[..., 0], dec._seqlens[...], dec._total[...] = ids[t], t, dec.config.max_length
        dec.step_session.run_with_iobinding(dec._binding)
        static.append(dec._logits.copy())
    np.testing.assert_array_equal(np.stack(normal), np.stack(static))


def test_cpu_onnxruntime_refuses_gpu_providers(tiny_bundle, tiny_fp16_bundle):
    with pytest.raises(Img2MusicError, match="runs fp16 bundles and .* is fp32"):
        OnnxPipeline.load(tiny_bundle, provider="cuda")
    with pytest.raises(Img2MusicError, match=r"lacks CUDAExecutionProvider.*img2music\[gpu\]"):
        OnnxPipeline.load(tiny_fp16_bundle, provider="cuda")
    with pytest.raises(Img2MusicError, match="lacks CUDAExecutionProvider, TensorrtExecutionProvider"):
        OnnxPipeline.load(tiny_fp16_bundle, provider="tensorrt")
    with pytest.raises(Img2MusicError, match="unknown provider"):
        OnnxPipeline.load(tiny_fp16_bundle, provider="rocm")


def test_tensorrt_engines_must_fit_this_machine(tiny_fp16_bundle, tmp_path, monkeypatch):
    """The TensorRT refusals, with provider availability and the machine's facts stood in
    (nothing here runs TensorRT): no engines, another TensorRT, another GPU."""
    import onnxruntime

    import img2music.runtime.backends.gpu_facts as gpu_facts
    from img2music.runtime.backends.gpu_facts import TensorRTFacts
    from img2music.runtime.backends.providers import check_provider

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    here = TensorRTFacts("10.3.0", "NVIDIA GeForce RTX 3090", "8.6")
    monkeypatch.setattr(gpu_facts, "tensorrt_facts", lambda device=0: here)
    with pytest.raises(Img2MusicError, match="has no TensorRT engines; build them on this machine"):
        check_provider(load_bundle(tiny_fp16_bundle), "tensorrt")
    bundle = tmp_path / "b"
    shutil.copytree(tiny_fp16_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for recorded, why in ((dict(tensorrt_version="10.3.1"), "built with TensorRT 10.3.1, this machine has TensorRT 10.3.0"),
                          (dict(compute_capability="8.7", gpu_name="Orin"), "built for compute capability 8.7 (Orin)")):
        manifest["tensorrt"] = {"tensorrt_version": "10.3.0", "gpu_name": here.gpu_name, "compute_capability": "8.6",
                                "files": []} | recorded
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(Img2MusicError, match=f"were {re.escape(why)}.*--precision fp16 --tensorrt"):
            check_provider(load_bundle(bundle), "tensorrt")
    manifest["tensorrt"] = {"tensorrt_version": "10.3.0", "gpu_name": here.gpu_name, "compute_capability": "8.6"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    check_provider(load_bundle(bundle), "tensorrt")  # fits: no error


def test_tensorrt_version_and_driver_facts():
    from img2music.runtime.backends.gpu_facts import gpu, version_from_int

    assert version_from_int(100300) == "10.3.0" and version_from_int(110402) == "11.4.2"
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("an NVIDIA driver is installed here: the no-driver refusal is not reachable")
    except OSError:
        pass
    with pytest.raises(Img2MusicError, match="no NVIDIA driver"):
        gpu()


def test_tensorrt_profiles_come_from_the_manifest(tiny_fp16_bundle):
    from img2music.runtime.backends.providers import TENSORRT_GRAPHS, SessionOptions, tensorrt_options, tensorrt_profile

    bundle = load_bundle(tiny_fp16_bundle)
    n = bundle.model.conditioning.num_tokens
    channels = bundle.model.encodec_stream.lstm_channels
    ranges = {name: tensorrt_profile(bundle.graph(name).spec(name), bundle.model) for name in TENSORRT_GRAPHS}
    longest = n + bundle.model.text.max_tokens  # the image's tokens joined by the longest prompt
    assert ranges["cross_kv"]["conditioning"] == ((1, 1, 32), (2, n, 32), (8, longest, 32))
    assert ranges["cross_kv"]["conditioning_log_weight"] == ((1, 1), (2, n), (8, longest))
    assert ranges["encodec_stream_front"]["audio_codes"] == ((1, 4, 7), (2, 4, 56), (8, 4, 314))
    assert ranges["encodec_stream_back"]["lstm_frames"] == ((1, channels, 1), (2, channels, 50), (8, channels, 308))
    options = tensorrt_options(bundle, "cross_kv", SessionOptions())
    assert options["trt_engine_cache_path"] == str(tiny_fp16_bundle)
    assert f"conditioning:2x{n}x32" in options["trt_profile_opt_shapes"]


def test_cli_refusals(tiny_bundle, photo_files, tmp_path):
    def run(script, *args):
        return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)

    r = run("runtime/generate.py", "--engines", tiny_bundle, "--provider", "cuda", "--image", photo_files["coffee"],
            "--out", tmp_path / "o")
    assert r.returncode == 2 and "runs fp16 bundles" in r.stderr and "Traceback" not in r.stderr
    r = run("export/build_engines.py", "--preset", "tiny", "--tensorrt", "--out", tmp_path / "b")
    assert r.returncode == 2 and "add --precision fp16" in r.stderr
    r = run("export/build_engines.py", "--preset", "tiny", "--precision", "fp16", "--tensorrt", "--out", tmp_path / "b")
    assert r.returncode == 2 and ("no NVIDIA driver" in r.stderr or "TensorRT" in r.stderr), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


@pytest.mark.tensorrt_rtx
@pytest.mark.parametrize("bundle", ["tiny_bundle", "tiny_fp16_bundle"])
def test_tensorrt_rtx_builds_every_tensorrt_graph(bundle, request):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (Linux x86_64 dev extra)")
    from img2music.export.tensorrt_check import check_bundle
    from img2music.runtime.backends.providers import TENSORRT_GRAPHS

    results = check_bundle(request.getfixturevalue(bundle), "8.6")
    assert [r.graph for r in results] == list(TENSORRT_GRAPHS)
    assert all(r.ok for r in results), [r.line() for r in results]


@pytest.mark.tensorrt_rtx
def test_tensorrt_rtx_check_fails_on_what_tensorrt_cannot_build(tiny_bundle, tmp_path):
    """The check has teeth: ONNX Runtime's own attention op in a TensorRT graph fails it."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (Linux x86_64 dev extra)")
    from img2music.export.tensorrt_check import check_bundle

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    shutil.copy(bundle / "decoder_step.onnx", bundle / "cross_kv.onnx")  # GroupQueryAttention inside
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["cross_kv.onnx"]["bytes"] = (bundle / "cross_kv.onnx").stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    results = {r.graph: r for r in check_bundle(bundle, "8.6")}
    assert not results["cross_kv"].ok and "GroupQueryAttention" in results["cross_kv"].detail
    assert results["clip_vision"].ok
