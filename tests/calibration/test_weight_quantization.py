"""4-bit weight codes: the scale search against ONNX Runtime's own quantizer and graph."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from img2music.calibration.quantize import pack_codes, quantize_matmul_weight, search_block_scales
from img2music.runtime.backends.ort_session import create_session


def matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def nbits_model(weight: np.ndarray, bits: int, block_size: int) -> onnx.ModelProto:
    """One MatMulNBits with ``quantize_matmul_weight``'s codes, as the decoder graph writes them."""
    k, n = weight.shape
    packed, scales = quantize_matmul_weight(weight, bits, block_size)
    node = helper.make_node("MatMulNBits", ["x", "w_Q", "w_scales"], ["y"], domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=block_size, accuracy_level=4)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(packed, "w_Q"), numpy_helper.from_array(scales, "w_scales")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def run(model: onnx.ModelProto, x: np.ndarray, tmp_path, name: str) -> np.ndarray:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return create_session(path, threads=1).run(None, {"x": x})[0]


@pytest.fixture
def weight():
    # K = 200 is not a multiple of the block: the padding path is exercised too.
    rng = np.random.default_rng(0)
    return (rng.standard_normal((200, 48)) * 0.02).astype(np.float32)


def onnxruntime_rtn(weight: np.ndarray) -> onnx.ModelProto:
    """The quantizer's own 4-bit round-to-nearest (absmax scales), block 64."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=64, is_symmetric=True, accuracy_level=4, bits=4)
    quantizer = MatMulNBitsQuantizer(matmul_model(weight), bits=4, block_size=64, is_symmetric=True,
                                     accuracy_level=4, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def test_absmax_alone_reproduces_onnxruntime_codes(weight):
    """Absmax alone is the quantizer's round-to-nearest: same blob, same scales, byte for byte."""
    inits = {i.name: numpy_helper.to_array(i) for i in onnxruntime_rtn(weight).graph.initializer}
    codes, scales, error, absmax_error = search_block_scales(weight, 4, 64, ratios=())
    assert error == absmax_error
    assert codes.shape == (48, 4, 64) and codes.min() >= -8 and codes.max() <= 7
    packed = pack_codes(codes, 4, rows=200).reshape(inits["w_Q4"].shape)
    np.testing.assert_array_equal(packed, inits["w_Q4"])
    np.testing.assert_array_equal(scales.reshape(inits["w_scales"].shape), inits["w_scales"])


def test_searched_scales_are_what_the_graph_runs_and_are_closer(weight, tmp_path):
    x = np.random.default_rng(1).standard_normal((2048, 200)).astype(np.float32)  # enough rows to average
    exact = x @ weight
    searched = run(nbits_model(weight, 4, 64), x, tmp_path, "searched")
    absmax = run(onnxruntime_rtn(weight), x, tmp_path, "absmax")
    err_searched = float(np.mean((searched - exact) ** 2))
    err_absmax = float(np.mean((absmax - exact) ** 2))
    # Both are 4-bit (a few percent of the output's power), the search measurably less.
    assert err_searched < 0.95 * err_absmax < 0.1 * float(np.mean(exact ** 2))
    codes, scales, error, absmax_error = search_block_scales(weight, 4, 64)
    assert error < 0.95 * absmax_error
    dequant = (codes * scales[..., None]).reshape(48, -1)[:, :200].T
    # The graph runs these codes: what is left is its int8 rounding of x, far below the
    # weights' own 4-bit error.
    assert float(np.mean((searched - x @ dequant) ** 2)) < 0.1 * err_searched


def test_pack_codes_layout():
    codes = np.array([[[-8, 7, 0, -1]]], dtype=np.int8)
    np.testing.assert_array_equal(pack_codes(codes, 4), [[[0x00 | (15 << 4), 8 | (7 << 4)]]])
    np.testing.assert_array_equal(pack_codes(codes, 8), [[[120, 135, 128, 127]]])
