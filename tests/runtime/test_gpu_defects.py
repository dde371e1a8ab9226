"""The GPU path's defects found by reading ONNX Runtime 1.31.1 (its wheel and sources), each
reproduced or checked here on the CPU: the CUDA-graph layout of the decoder session runs on the
CPU provider, the step graph's placement is decided from the graph, providers that did not start
are errors, and the TensorRT facts are the ones ONNX Runtime itself uses."""

import ctypes
import json
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from img2music.basics.errors import Img2MusicError
from img2music.runtime.bundle.loading import load_bundle
from img2music.runtime.generation.core import CodeGenerator, Windowing
from img2music.runtime.generation.sampling import SamplingConfig


def _gqa_model(batch: int, max_len: int, heads: int = 2, head_dim: int = 8) -> bytes:
    hidden = heads * head_dim
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total"],
                            ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=heads,
                            kv_num_heads=heads)
    cache = [batch, heads, max_len, head_dim]
    graph = helper.make_graph(
        [node], "gqa",
        [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [batch, "S", 3 * hidden]),
         helper.make_tensor_value_info("past_key", TensorProto.FLOAT, cache),
         helper.make_tensor_value_info("past_value", TensorProto.FLOAT, cache),
         helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [batch]),
         helper.make_tensor_value_info("total", TensorProto.INT32, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, "S", hidden]),
         helper.make_tensor_value_info("present_key", TensorProto.FLOAT, cache),
         helper.make_tensor_value_info("present_value", TensorProto.FLOAT, cache)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)]).SerializeToString()


def test_group_query_attention_takes_a_prefill_only_with_total_equal_to_its_length():
    """ONNX Runtime's own rule (group_query_attention_helper.h), why a prefill must pass total = S
    even when steps run under a captured graph with total = the cache length: B=2, S=5 tokens
    into a 16-row shared cache."""
    import onnxruntime as ort

    session = ort.InferenceSession(_gqa_model(2, 16), providers=["CPUExecutionProvider"])
    cache = np.zeros((2, 2, 16, 8), np.float32)
    feed = {"qkv": np.ones((2, 5, 48), np.float32), "past_key": cache, "past_value": cache,
            "seqlens_k": np.full(2, 4, np.int32)}
    session.run(None, feed | {"total": np.array(5, np.int32)})
    with pytest.raises(Exception, match="batch_size must be 1 when sequence_length > 1 and past context is given"):
        session.run(None, feed | {"total": np.array(16, np.int32)})


def _graph_layout_decoder(pipeline):
    from img2music.runtime.backends.ort_decoder import OrtDecoderSession

    sessions, bundle = pipeline.sessions, pipeline.bundle
    return OrtDecoderSession(sessions["decoder_step"], sessions["cross_kv"], bundle.model.decoder,
                             kv_scales=bundle.kv_scales(), graph_layout=True)


def test_the_cuda_graph_layout_gives_the_plain_tokens_across_two_reprimes(tiny_onnx, photos):
    """Item 1 and 2 of the GPU issue: the decoder session's CUDA-graph semantics (a fixed total
    for steps, prefills outside the graph with total = S, per-step inputs in buffers of their own,
    padded conditioning) on the CPU provider: a piece across two window re-primes, sampled and
    greedy, gives exactly the plain session's tokens. Before the fix every prefill of that layout
    failed with GroupQueryAttention's "batch_size must be 1 ..." (B2 = 2 under guidance)."""
    cond = tiny_onnx.condition([photos["coffee"]])
    window = Windowing(window_frames=60, keep_frames=20)  # 150 frames: re-primed twice
    layout = _graph_layout_decoder(tiny_onnx)
    try:
        for sampling in (SamplingConfig(seed=3), SamplingConfig(greedy=True)):
            plain = tiny_onnx.generator.generate(cond.conditioning, cond.mask, 150, sampling, window=window)
            graphed = CodeGenerator(layout).generate(cond.conditioning, cond.mask, 150, sampling, window=window)
            np.testing.assert_array_equal(graphed, plain)
        from img2music.runtime.backends.ort_decoder import COND_BUCKET

        n = cond.conditioning.shape[1]
        assert layout._layout == (2, -(-n // COND_BUCKET) * COND_BUCKET) and layout.graphs == 1  # one graph
    finally:
        layout.close()


def test_graph_ids_are_kept_per_layout_and_bounded(tiny_onnx, photos):
    """A conditioning layout seen before gets its own graph id and buffers back (a captured graph
    replays only its own addresses); conditionings of other lengths in one bucket share one."""
    layout = _graph_layout_decoder(tiny_onnx)
    try:
        rng = np.random.default_rng(0)
        for n in (5, 9, 16, 17, 5, 30, 9):
            cond = rng.standard_normal((2, n, 32)).astype(np.float32)
            layout.set_conditioning(cond, np.ones((2, n), np.int64))
        assert layout.graphs == 2 and set(layout._layouts) == {(2, 16), (2, 32)}
    finally:
        layout.close()


# -- the step graph's placement on the CUDA provider -------------------------------------------
def _old_positions_graph() -> onnx.ModelProto:
    """The position arithmetic decoder_step.onnx had before the fix, alone: Shape (host) mixed
    with seqlens_k (device) in one Sub."""
    i64 = TensorProto.INT64
    nodes = [helper.make_node("Shape", ["input_ids"], ["s1"], start=2, end=3),
             helper.make_node("Squeeze", ["s1", "zero1"], ["seq"]),
             helper.make_node("Gather", ["seqlens_k", "zero"], ["last32"], axis=0),
             helper.make_node("Cast", ["last32"], ["last"], to=i64),
             helper.make_node("Sub", ["last", "seq"], ["first"]),
             helper.make_node("Gather", ["table", "first"], ["pos"], axis=0)]
    inits = [helper.make_tensor("zero1", i64, [1], [0]), helper.make_tensor("zero", i64, [], [0]),
             helper.make_tensor("table", TensorProto.FLOAT16, [8, 4], np.zeros(32, np.float16).tobytes(), raw=True)]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("input_ids", i64, [2, 4, "S"]),
                                             helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [2])],
                              [helper.make_tensor_value_info("pos", TensorProto.FLOAT16, [4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_placement_check_finds_the_copy_that_stops_graph_capture():
    from img2music.export.cuda_placement import check_capturable, placement

    found = placement(_old_positions_graph())
    assert found.on_cpu == ["Squeeze"] or "Squeeze" in " ".join(found.on_cpu)
    assert len(found.copies) == 1 and found.copies[0].startswith("Sub") and "host memory as input 1" in found.copies[0]
    with pytest.raises(Img2MusicError, match="cannot run as a CUDA graph"):
        check_capturable(_old_positions_graph(), "decoder_step")


def test_the_fp16_step_graph_can_be_captured(tiny_fp16_bundle):
    """Item 2: decoder_step takes its positions from device tensors only; the fp16 build checks it
    (before the fix: 'Sub ... reads squeeze_14 from host memory as input 1')."""
    from img2music.export.cuda_placement import placement

    model = onnx.load(str(tiny_fp16_bundle / "decoder_step.onnx"), load_external_data=False)
    found = placement(model, frozenset({"total_sequence_length"}))
    assert found.copies == [] and len(found.on_cpu) == 1  # only the cross-attention mask's shape (Concat)
    record = load_bundle(tiny_fp16_bundle).manifest.provenance.quantization["cuda_graph"]
    assert record == {"capturable": True, "host_nodes": found.on_cpu}


def test_an_unknown_op_is_an_error_not_a_guess():
    from img2music.export.cuda_placement import placement

    model = _old_positions_graph()
    model.graph.node[0].op_type = "NonZero"
    with pytest.raises(Img2MusicError, match="does not know NonZero"):
        placement(model)


# -- providers that did not start ----------------------------------------------------------------
class _FellBack:
    """What onnxruntime-gpu hands back when its CUDA library did not load: a session on the CPU."""

    def __init__(self, path, sess_options=None, providers=None, **kwargs):
        self.kwargs = kwargs

    def get_providers(self):
        return ["CPUExecutionProvider"]


@pytest.fixture()
def gpu_wheel_without_cuda(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", _FellBack)


def test_a_provider_that_did_not_start_is_one_clear_error(gpu_wheel_without_cuda, tiny_fp16_bundle):
    """Item 3: ONNX Runtime logs and runs on the CPU when a provider library fails to load; the
    session's providers are checked (before the fix nothing looked)."""
    from img2music.runtime.backends.ort_session import create_session

    with pytest.raises(Img2MusicError, match=r"CUDAExecutionProvider did not start .*runs it on CPUExecutionProvider"
                                             r".*CUDA 13 and cuDNN 9"):
        create_session(tiny_fp16_bundle / "projector.onnx",
                       providers=[("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"])


def test_provider_cuda_where_cuda_does_not_load_exits_2(gpu_wheel_without_cuda, tiny_fp16_bundle, photo_files,
                                                       tmp_path, capsys):
    from img2music.basics.errors import run_cli
    from img2music.runtime.cli.generate import main

    code = run_cli(main, ["--engines", str(tiny_fp16_bundle), "--provider", "cuda", "--image", photo_files["coffee"],
                          "--seconds", "0.5", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "did not start" in err and "Traceback" not in err


def test_sessions_never_fall_back_on_their_own(monkeypatch, tiny_bundle):
    """onnxruntime's Python layer retries a failed provider on the CPU (and drops its options)
    unless told not to."""
    import onnxruntime

    seen = {}
    real = onnxruntime.InferenceSession

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    from img2music.runtime.backends.ort_session import create_session

    create_session(tiny_bundle / "projector.onnx")
    assert seen.get("enable_fallback") == 0


def test_only_the_tensorrt_library_onnxruntime_loads_counts(monkeypatch):
    """ONNX Runtime 1.31.1's TensorRT provider links libnvinfer.so.10: a TensorRT 11 library
    alone is not TensorRT for it (before the fix .so.11 was accepted)."""
    import img2music.runtime.backends.gpu_facts as gpu_facts

    real = ctypes.CDLL

    class Lib:
        def __init__(self):
            self.getInferLibVersion = lambda: 110000

    def fake(name, *args, **kwargs):
        if str(name).endswith("libnvinfer.so.11"):
            return Lib()
        if "nvinfer" in str(name):
            raise OSError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(gpu_facts.ctypes, "CDLL", fake)
    with pytest.raises(Img2MusicError, match="no libnvinfer.so.10"):
        gpu_facts.tensorrt_version()


# -- smaller findings -------------------------------------------------------------------------------
def test_tensorrt_fp16_only_where_the_bundle_is_fp16(tiny_fp16_bundle):
    from img2music.runtime.backends.providers import TENSORRT_GRAPHS, SessionOptions, tensorrt_options

    bundle = load_bundle(tiny_fp16_bundle)
    flags = {name: tensorrt_options(bundle, name, SessionOptions())["trt_fp16_enable"] for name in TENSORRT_GRAPHS}
    assert flags == {"clip_vision": "1", "projector": "0", "cross_kv": "1", "encodec_stream_front": "0",
                     "encodec_stream_back": "0"}


def test_engines_fit_one_gpu_model_and_no_older_driver(tiny_fp16_bundle, tmp_path, monkeypatch):
    """An H100 and an H200 are both compute capability 9.0: engines built on one are refused on the other."""
    import onnxruntime

    import img2music.runtime.backends.gpu_facts as gpu_facts
    from img2music.runtime.backends.gpu_facts import TensorRTFacts
    from img2music.runtime.backends.providers import check_provider

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    here = TensorRTFacts("10.13.0", "NVIDIA H200", "9.0", "13.0")
    monkeypatch.setattr(gpu_facts, "tensorrt_facts", lambda device=0: here)
    bundle = tmp_path / "b"
    shutil.copytree(tiny_fp16_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    built = {"tensorrt_version": "10.13.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
             "driver_version": "13.0", "files": []}
    for recorded, why in ((built, "built on a NVIDIA H100 80GB HBM3, this GPU is a NVIDIA H200"),
                          (built | {"gpu_name": "NVIDIA H200", "driver_version": "13.1"},
                           "built under CUDA driver 13.1, this machine's driver is older (13.0)")):
        manifest["tensorrt"] = recorded
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(Img2MusicError, match=re.escape(why)):
            check_provider(load_bundle(bundle), "tensorrt")
    manifest["tensorrt"] = built | {"gpu_name": "NVIDIA H200"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    check_provider(load_bundle(bundle), "tensorrt")


def test_the_gpu_extra_takes_only_cuda_13_builds():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    from packaging.requirements import Requirement

    from tests.runtime.test_gpu_backends import ROOT

    (gpu,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    requirement = Requirement(gpu)
    assert requirement.name == "onnxruntime-gpu"
    assert not requirement.specifier.contains("1.24.0") and requirement.specifier.contains("1.31.1")


def test_the_fp16_gate_measures_float16_storage_on_the_cpu(tiny_fp16_bundle):
    """Item 5: on the CPU provider an fp16 graph computes partly in float32 (ops without fp16 CPU
    kernels), so the gate also measures an emulation that rounds every fp16 tensor after each op,
    as CUDA stores it, and says where it measured."""
    report = json.loads((tiny_fp16_bundle / "accuracy_report.json").read_text())
    assert report["measured_on"] == "cpu"
    emulated = report["fp16_storage_emulation"]["teacher_forced"]
    assert 0.97 <= emulated["agreement"] <= 1.0 and 0 < emulated["max_abs_diff"]
    summary = load_bundle(tiny_fp16_bundle).manifest.provenance.accuracy
    assert summary["measured_on"] == "cpu" and summary["fp16_storage_emulation"]["kl_mean"] == emulated["kl_mean"]


def test_the_fp16_gate_fails_a_graph_whose_float16_storage_fails(monkeypatch):
    from img2music.calibration.accuracy import THRESHOLDS, check

    t = THRESHOLDS["fp16"]
    good = {"agreement": 0.99, "kl_mean": t.kl_max / 10, "max_abs_diff": 0.001}
    report = {"teacher_forced": good, "clip": {"cosine": 1.0}, "text": None,
              "fp16_storage_emulation": {"teacher_forced": good | {"max_abs_diff": 2 * t.max_abs_logit_diff}}}
    assert check("fp16", report) == [f"fp16 storage emulation: max |Δlogit| {2 * t.max_abs_logit_diff:.4f} > "
                                     f"{t.max_abs_logit_diff}"]


def test_float16_storage_emulation_rounds_between_ops():
    """Add(Add(x, c), c) in fp16: the emulation rounds the inner sum, as fp16 storage does."""
    from img2music.calibration.half_precision import float16_storage_emulation

    h = TensorProto.FLOAT16
    nodes = [helper.make_node("Add", ["x", "c"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"])]
    c = helper.make_tensor("c", h, [1], np.array([0.0004], np.float16).tobytes(), raw=True)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", h, [1])],
                              [helper.make_tensor_value_info("z", h, [1])], initializer=[c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import onnxruntime as ort

    emulated = float16_storage_emulation(model, round_outputs=True)
    session = ort.InferenceSession(emulated.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0], np.float32)
    c16 = np.float16(0.0004)
    expected = np.float16(np.float32(np.float16(x[0] + np.float32(c16))) + np.float32(c16))
    assert session.run(None, {"x": x})[0][0] == np.float32(expected)


def test_a_refused_graph_capture_is_an_error_not_a_warning(monkeypatch, tiny_fp16_bundle):
    """ONNX Runtime refuses graph capture at session creation (an exception); the runtime used to
    log a warning and run every step without the graph, so no GPU run would ever replay one."""
    import img2music.runtime.backends.providers as providers

    real = providers._session

    def session(bundle, name, options, cuda_graph):
        if cuda_graph:
            raise Img2MusicError("onnxruntime cannot load decoder_step.onnx: This session cannot use the graph "
                                 "capture feature as requested by the user")
        return real(bundle, name, providers.SessionOptions(), cuda_graph=False)

    monkeypatch.setattr(providers, "check_provider", lambda bundle, provider: None)
    monkeypatch.setattr(providers, "_session", session)
    with pytest.raises(Img2MusicError, match="cannot run as a CUDA graph here: run with --no-cuda-graph"):
        providers.open_sessions(load_bundle(tiny_fp16_bundle), providers.SessionOptions(provider="cuda"))
