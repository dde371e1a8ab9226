"""TensorRT decoder step: device-resident static KV cache, replayed as a CUDA graph.

NOT YET RUN ON A GPU, AND NOT REACHABLE: written against the TensorRT 10/11 Python API
(named I/O tensors, ``execute_async_v3``) and cuda-python's runtime bindings by a
session without a GPU; no CLI or backend selects it. It does not yet implement
``runtime.decoder_session.DecoderSession`` (no prefill, no cache_rows); the GPU issue
decides whether it becomes that backend or is replaced by ONNX Runtime's TensorRT
provider. Its tests (tests/runtime/test_tensorrt.py, markers ``gpu``/``tensorrt``) skip
without a GPU.

Design:
- every cache buffer (L, 2, B2, H, L_max, 64) lives on the device for the whole run; the
  plan (decoder_step_plain) reads it and returns this step's K/V row, which a
  device-to-device copy writes at ``position`` (no per-step host copy of the cache);
- ``position`` and ``input_ids`` are device buffers updated by one small host-to-device
  copy per step, so the step's work (engine + row copies) is identical from step to step
  except for the copy offsets; the row copies are therefore issued after replaying the
  captured engine launch, and the engine itself is captured once per (B2, N) shape;
- logits come back to the host for sampling (B2*K*V floats per step): device-side
  sampling is not written yet.
"""

from __future__ import annotations

import numpy as np

from basics.errors import Img2MusicError


def _check(result):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise Img2MusicError(f"CUDA error {err}")
    return result[1] if isinstance(result, tuple) and len(result) == 2 else result


class TensorRTDecoderStep:
    def __init__(self, plan_path: str, num_layers: int, heads: int, head_dim: int, max_length: int,
                 num_codebooks: int, vocab: int) -> None:
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as exc:
            raise Img2MusicError(f"the TensorRT backend needs tensorrt and cuda-python ({exc}); "
                                 "pip install 'img2music[tensorrt]'") from None
        self.trt, self.cudart = trt, cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(plan_path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise Img2MusicError(f"TensorRT could not deserialize {plan_path}")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self.layers, self.heads, self.head_dim, self.max_length = num_layers, heads, head_dim, max_length
        self.k, self.vocab = num_codebooks, vocab
        self.graph_exec = None
        self.buffers: dict[str, int] = {}
        self.position = 0

    def _alloc(self, name: str, nbytes: int) -> int:
        ptr = _check(self.cudart.cudaMalloc(nbytes))
        self.buffers[name] = ptr
        self.context.set_tensor_address(name, ptr)
        return ptr

    def set_conditioning(self, cross: dict[str, np.ndarray]) -> None:
        """Cross K/V (from cross_kv) to the device; allocates the cache for this batch."""
        cudart = self.cudart
        b2 = next(iter(cross.values())).shape[0]
        self.batch = b2
        row = self.heads * self.head_dim * 4
        for i in range(self.layers):
            for kind in ("key", "value"):
                self._alloc(f"past_{kind}.{i}", b2 * self.max_length * row)
                self._alloc(f"new_{kind}.{i}", b2 * row)
        for name, value in cross.items():
            value = np.ascontiguousarray(value, dtype=np.float32)
            ptr = self._alloc(name, value.nbytes)
            _check(cudart.cudaMemcpy(ptr, value.ctypes.data, value.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            self.context.set_input_shape(name, value.shape)
        self._ids_host = np.zeros((b2, self.k, 1), np.int64)
        self._pos_host = np.zeros(1, np.int64)
        self._logits_host = np.zeros((b2, self.k, self.vocab), np.float32)
        self._alloc("input_ids", self._ids_host.nbytes)
        self._alloc("position", 8)
        self._alloc("logits", self._logits_host.nbytes)
        self.context.set_input_shape("input_ids", self._ids_host.shape)
        for i in range(self.layers):
            for kind in ("key", "value"):
                self.context.set_input_shape(f"past_{kind}.{i}", (b2, self.heads, self.max_length, self.head_dim))
        self.graph_exec = None
        self.position = 0

    def _capture(self) -> None:
        cudart = self.cudart
        self.context.execute_async_v3(self.stream)  # warm-up outside capture (TensorRT's advice)
        _check(cudart.cudaStreamSynchronize(self.stream))
        _check(cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        self.context.execute_async_v3(self.stream)
        graph = _check(cudart.cudaStreamEndCapture(self.stream))
        self.graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0))

    def step(self, input_ids: np.ndarray, use_graph: bool = True) -> np.ndarray:
        """(B2, K) codes at the current position -> (B2, K, V) logits."""
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        d2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._ids_host[..., 0] = input_ids
        self._pos_host[0] = self.position
        _check(cudart.cudaMemcpyAsync(self.buffers["input_ids"], self._ids_host.ctypes.data, self._ids_host.nbytes,
                                      h2d, self.stream))
        _check(cudart.cudaMemcpyAsync(self.buffers["position"], self._pos_host.ctypes.data, 8, h2d, self.stream))
        if use_graph:
            if self.graph_exec is None:
                self._capture()
            _check(cudart.cudaGraphLaunch(self.graph_exec, self.stream))
        else:
            self.context.execute_async_v3(self.stream)
        for i in range(self.layers):  # this step's rows into the static cache, (B2, H) strided copies
            for kind in ("key", "value"):
                _check(cudart.cudaMemcpy2DAsync(
                    self.buffers[f"past_{kind}.{i}"] + self.position * self.head_dim * 4, self.max_length * self.head_dim * 4,
                    self.buffers[f"new_{kind}.{i}"], self.head_dim * 4, self.head_dim * 4,
                    self.batch * self.heads, d2d, self.stream))
        _check(cudart.cudaMemcpyAsync(self._logits_host.ctypes.data, self.buffers["logits"], self._logits_host.nbytes,
                                      d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        self.position += 1
        return self._logits_host

    def close(self) -> None:
        for ptr in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()
