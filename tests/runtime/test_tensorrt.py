"""TensorRT: what runs without a GPU (plan refusal, profile ranges, CLI refusals) and,
under the gpu/tensorrt markers, the engine tests that need one (skipped here with the reason)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from basics.errors import Img2MusicError
from runtime.tensorrt_plan import DeviceFacts, check_plans, plan_mismatch

ROOT = Path(__file__).resolve().parents[2]
H100 = DeviceFacts("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


def _manifest(**entry):
    plan = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"} | entry
    return {"tensorrt": {"plans": {"decoder_step_plain": plan, "clip_vision": dict(plan)}}}


def test_matching_plans_are_accepted():
    assert check_plans(_manifest(), H100) == "tensorrt"
    assert check_plans(_manifest(tensorrt_version="10.3.1"), H100) == "tensorrt"  # same minor: same plan format


@pytest.mark.parametrize("entry, facts, reason", [
    (dict(tensorrt_version="11.0.0"), H100, "built with TensorRT 11.0.0, this machine has TensorRT 10.3.0"),
    (dict(compute_capability="8.6", gpu_name="NVIDIA GeForce RTX 3090"), H100,
     "built for compute capability 8.6 (NVIDIA GeForce RTX 3090), this GPU is 9.0"),
    (dict(tensorrt_version=None), H100, "does not say which TensorRT version"),
    (dict(version_compatible=True, tensorrt_version="11.1.0"), H100, "older TensorRT 10.3.0 here"),
    (dict(hardware_compatibility="ampere_plus"), DeviceFacts("10.3.0", "Tesla T4", "7.5"), "Ampere and newer"),
])
def test_plans_for_another_machine_are_refused(entry, facts, reason):
    assert reason in plan_mismatch(_manifest(**entry)["tensorrt"]["plans"]["clip_vision"], facts)
    with pytest.raises(Img2MusicError, match="built for another machine"):
        check_plans(_manifest(**entry), facts)


def test_version_compatible_and_hardware_compatible_plans_run_elsewhere():
    newer = DeviceFacts("10.8.0", "NVIDIA GeForce RTX 4090", "8.9")
    assert check_plans(_manifest(version_compatible=True, hardware_compatibility="ampere_plus"), newer) == "tensorrt"


def test_fallback_to_onnxruntime_cuda(caplog):
    caplog.set_level("WARNING")
    assert check_plans(_manifest(tensorrt_version="11.0.0"), H100, fallback=True) == "onnxruntime-cuda"
    assert "falling back to ONNX Runtime's CUDA provider" in caplog.text
    with pytest.raises(Img2MusicError, match="no TensorRT plans"):
        check_plans({}, H100)


def test_profile_ranges_come_from_the_manifest(tiny_bundle):
    from export.tensorrt_engines import profile_ranges
    from runtime.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    names = ("clip_vision", "cross_kv", "encodec_stream_front", "encodec_stream_back")
    specs = {name: bundle.graph(name).spec(name) for name in names}
    ranges = profile_ranges(specs, bundle.model, max_batch=2, max_audio_seconds=10)
    n = bundle.model.conditioning.num_tokens
    channels = bundle.model.encodec_stream.lstm_channels
    assert ranges["cross_kv"]["conditioning"] == ((1, 1, 32), (2, n, 32), (4, n, 32))
    assert ranges["encodec_stream_front"]["audio_codes"] == ((1, 4, 7), (2, 4, 56), (4, 4, 514))
    assert ranges["encodec_stream_back"]["lstm_frames"] == ((1, channels, 1), (2, channels, 50), (4, channels, 508))
    assert ranges["clip_vision"]["pixel_values"][2][0] == 4


def test_cli_refuses_tensorrt_without_it(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the refusal path is not reachable")
    except ImportError:
        pass
    r = subprocess.run([sys.executable, "export/build_engines.py", "--preset", "tiny", "--backend", "tensorrt",
                        "--out", str(tmp_path / "b")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "pip install 'img2music[tensorrt]'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "export/build_engines.py", "--preset", "tiny", "--precision", "fp16",
                        "--out", str(tmp_path / "b")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "fp16 is a TensorRT precision" in r.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


def _gpu_or_skip():
    try:
        import tensorrt  # noqa: F401
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        pytest.skip(f"TensorRT tests need tensorrt + cuda-python and a GPU ({exc})")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        pytest.skip("TensorRT tests need a CUDA GPU; none here")


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory):
    _gpu_or_skip()
    out = tmp_path_factory.mktemp("trt") / "tiny"
    r = subprocess.run([sys.executable, "export/build_engines.py", "--preset", "tiny", "--backend", "tensorrt",
                        "--precision", "fp32", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_cuda_graph_replay_equals_plain_enqueue_and_ort_greedy(trt_bundle, tiny_onnx):
    """fp32 plans: 200 greedy steps equal ORT's tokens; graph replay equals enqueue."""
    from runtime.tensorrt_decoder import TensorRTDecoderStep

    manifest = json.loads((trt_bundle / "manifest.json").read_text())
    d = manifest["decoder"]
    plan = trt_bundle / manifest["tensorrt"]["plans"]["decoder_step_plain"]["file"]
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((2, 5, manifest["conditioning"]["text_dim"])).astype(np.float32)
    mask = np.ones((2, 5), np.int64)
    names = [o.name for o in tiny_onnx.sessions["cross_kv"].get_outputs()]
    cross = dict(zip(names, tiny_onnx.sessions["cross_kv"].run(names, {"conditioning": cond,
                                                                      "conditioning_mask": mask})))
    graph = TensorRTDecoderStep(str(plan), d["num_layers"], d["num_heads"], d["head_dim"], d["max_length"],
                                d["num_codebooks"], d["vocab_size"])
    plain = TensorRTDecoderStep(str(plan), d["num_layers"], d["num_heads"], d["head_dim"], d["max_length"],
                                d["num_codebooks"], d["vocab_size"])
    graph.set_conditioning(cross)
    plain.set_conditioning(cross)
    tiny_onnx.decoder.set_conditioning(cond, mask)
    tokens = np.full((2, d["num_codebooks"]), d["pad_token_id"], np.int64)
    for _ in range(200):
        a = graph.step(tokens, use_graph=True).copy()
        b = plain.step(tokens, use_graph=False).copy()
        ref = tiny_onnx.decoder.step(tokens)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a.argmax(-1), ref.argmax(-1))
        tokens = a.argmax(-1)
