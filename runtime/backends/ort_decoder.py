"""The decoder step on ONNX Runtime with an in-place static KV cache, on the CPU or a CUDA device.

One OrtValue per layer and kind (key, value) of shape (B2, H, L_max, 64) is bound to
both ``past_*`` and ``present_*``: GroupQueryAttention then writes only the new row,
in place, and nothing proportional to the cache length is copied per step. The
cross-attention K/V live in preallocated OrtValues that ``cross_kv.onnx`` writes into
and the step reads from, so a new conditioning (a live transition step) allocates
nothing. Per-step inputs (codes, cached length) are small buffers rewritten in place:
on the CPU numpy arrays the bound OrtValues wrap, on a GPU device OrtValues updated
with one small host-to-device copy each. So a step rebinds nothing, and on a GPU only
the logits cross to the host.

GPU (``device="cuda"``): every buffer is a device OrtValue; the caches start zeroed
(device memory is not, and a NaN row could poison attention). ``cuda_graph=True`` (the
session must have been created with the CUDA provider's ``enable_cuda_graph``) replays
a captured step: then ``total_sequence_length`` stays at the cache length and only the
device-side ``seqlens_k`` moves (the step graph takes positions from it), a prefill
runs outside the graph (``gpu_graph_id`` -1), and each (batch, conditioning length)
gets its own graph id. NOT YET RUN ON A GPU: the CUDA paths of this class have only
been read against the onnxruntime API; the CPU path is the tested one.
"""

from __future__ import annotations

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.basics.model_config import DecoderConfig
from img2music.runtime.backends.ort_session import onnxruntime
from img2music.runtime.generation.conditioning import log_weights
from img2music.runtime.generation.decoder_session import DecoderSession

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64}


class OrtDecoderSession(DecoderSession):
    """Runs ``decoder_step.onnx`` step by step over a preallocated cache."""

    def __init__(self, step_session, cross_kv_session, config: DecoderConfig, kv_scales: np.ndarray | None = None,
                 device: str = "cpu", cuda_graph: bool = False) -> None:
        ort = onnxruntime()
        if device not in ("cpu", "cuda"):
            raise Img2MusicError(f"unknown device {device!r} for the decoder session (cpu or cuda)")
        if cuda_graph and device != "cuda":
            raise Img2MusicError("CUDA graphs need the cuda device")
        self._ort, self.device, self.cuda_graph = ort, device, cuda_graph
        self.step_session = step_session
        self.cross_kv_session = cross_kv_session
        # bundles built before prompts have no token weights in cross_kv
        self._weighted = "conditioning_log_weight" in {i.name for i in cross_kv_session.get_inputs()}
        self.config = shape = config
        cache_type = {i.name: i.type for i in step_session.get_inputs()}.get("past_key.0")
        self.cache_dtype = {k: v for k, v in ORT_DTYPES.items() if v in (np.float32, np.float16, np.int8)}.get(cache_type)
        if self.cache_dtype is None:
            raise Img2MusicError(f"decoder_step has an unsupported KV cache type {cache_type}")
        quantized = self.cache_dtype == np.int8
        if quantized != (kv_scales is not None):
            raise Img2MusicError("an int8 KV cache needs its calibrated scales, and only an int8 cache takes them")
        if quantized:
            expected = (shape.num_layers, 2, shape.num_heads, shape.head_dim)
            if kv_scales.shape != expected or not np.all(np.isfinite(kv_scales)) or not np.all(kv_scales > 0):
                raise Img2MusicError(
                    f"KV cache scales must be positive, finite and shaped {expected}; got {kv_scales.shape}"
                )
            # (layers, 2, H, 64) -> per layer and kind (1, H, 1, 64), as GroupQueryAttention's k_scale/v_scale.
            self._scales = {
                f"{kind}_scale.{i}": np.ascontiguousarray(kv_scales[i, j][None, :, None, :], dtype=np.float32)
                for i in range(shape.num_layers) for j, kind in enumerate(("k", "v"))
            }
        else:
            self._scales = {}
        self.batch = 0
        self.position = 0
        self._binding = None
        self._cross_shape = None
        self._graphs = 0

    # -- buffers --------------------------------------------------------------
    def _value(self, array_or_shape, dtype=None, zeroed: bool = False):
        """An OrtValue on this session's device: a copy of an array, or a fresh (zeroed) buffer."""
        new = self._ort.OrtValue
        if isinstance(array_or_shape, np.ndarray):
            return new.ortvalue_from_numpy(array_or_shape, self.device, 0)
        if zeroed:
            return new.ortvalue_from_numpy(np.zeros(array_or_shape, dtype), self.device, 0)
        return new.ortvalue_from_shape_and_type(array_or_shape, dtype, self.device, 0)

    def _allocate(self, batch: int) -> None:
        """Cache, per-step inputs and the logits buffer for ``batch`` rows; binds them once."""
        s = self.config
        cache_shape = (batch, s.num_heads, s.max_length, s.head_dim)
        binding = self.step_session.io_binding()
        self._cache = []
        for i in range(s.num_layers):
            for kind in ("key", "value"):
                # CPU memory stays unwritten (rows past seqlens_k are never read); device memory
                # is zeroed once: stale bytes there could be NaNs.
                value = self._value(cache_shape, self.cache_dtype, zeroed=self.device != "cpu")
                binding.bind_ortvalue_input(f"past_{kind}.{i}", value)
                binding.bind_ortvalue_output(f"present_{kind}.{i}", value)  # same memory: in place
                self._cache.append(value)
        self._ids = np.zeros((batch, s.num_codebooks, 1), dtype=np.int64)
        self._seqlens = np.zeros((batch,), dtype=np.int32)
        self._total = np.zeros((), dtype=np.int32)
        # The host side of the per-step inputs: wrapped in place on the CPU, copied in on a device.
        self._step_values = {"input_ids": self._value(self._ids), "seqlens_k": self._value(self._seqlens)}
        for name, scale in self._scales.items():
            self._step_values[name] = self._value(scale)
        for name, value in self._step_values.items():
            binding.bind_ortvalue_input(name, value)
        # GroupQueryAttention reads total_sequence_length on the host on every provider.
        self._total_value = self._ort.OrtValue.ortvalue_from_numpy(self._total)
        binding.bind_ortvalue_input("total_sequence_length", self._total_value)
        self._logits = np.zeros((batch, s.num_codebooks, s.vocab_size), dtype=np.float32)
        self._logits_value = self._value(self._logits)
        binding.bind_ortvalue_output("logits", self._logits_value)
        self._binding = binding
        self._cross_shape = None
        self.batch = batch

    def _bind_cross(self, cond_len: int) -> None:
        """Cross K/V + bias buffers for this batch and conditioning length, written by cross_kv
        and read by the step (the same OrtValues on both sides)."""
        if self._cross_shape == (self.batch, cond_len):
            return
        sizes = {"batch": self.batch, "cond_len": cond_len}
        cross_binding = self.cross_kv_session.io_binding()
        self._cross = {}
        for out in self.cross_kv_session.get_outputs():
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in out.shape)
            value = self._value(shape, ORT_DTYPES[out.type])
            cross_binding.bind_ortvalue_output(out.name, value)
            self._binding.bind_ortvalue_input(out.name, value)
            self._cross[out.name] = value
        self._cross_binding = cross_binding
        self._cross_shape = (self.batch, cond_len)
        self._graphs += 1  # new addresses: a captured CUDA graph of the old ones must not replay
        self._run_options = self._ort.RunOptions()
        if self.cuda_graph:
            self._run_options.add_run_config_entry("gpu_graph_id", str(self._graphs))

    # -- the interface -----------------------------------------------------------
    def set_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, reset: bool = True,
                         weight: np.ndarray | None = None) -> None:
        conditioning = np.ascontiguousarray(conditioning, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.int64)
        if conditioning.ndim != 3 or mask.shape != conditioning.shape[:2]:
            raise Img2MusicError(f"conditioning {conditioning.shape} and mask {mask.shape} do not fit together")
        weight = np.ones(mask.shape, np.float32) if weight is None else np.ascontiguousarray(weight, np.float32)
        if weight.shape != mask.shape:
            raise Img2MusicError(f"conditioning weights {weight.shape} do not fit the mask {mask.shape}")
        if not self._weighted and np.any(weight[mask > 0] != 1.0):
            raise Img2MusicError("this bundle's cross_kv graph takes no token weights (built before prompts "
                                 "existed): rebuild it with export/build_engines.py")
        if conditioning.shape[0] != self.batch:
            if not reset:
                raise Img2MusicError("a conditioning with another batch size needs a fresh cache")
            self._allocate(conditioning.shape[0])
        if not reset and self._cross_shape != (self.batch, conditioning.shape[1]) and self.cuda_graph:
            raise Img2MusicError("a conditioning of another length needs a fresh cache under a CUDA graph")
        self._bind_cross(conditioning.shape[1])
        self._cross_binding.bind_cpu_input("conditioning", conditioning)
        self._cross_binding.bind_cpu_input("conditioning_mask", mask)
        if self._weighted:
            self._cross_binding.bind_cpu_input("conditioning_log_weight", log_weights(weight))
        self.cross_kv_session.run_with_iobinding(self._cross_binding)
        if reset:
            self.reset()

    def cache_rows(self, layer: int, kind: str, rows: int) -> np.ndarray:
        value = self._cache[2 * layer + (0 if kind == "key" else 1)]
        return value.numpy()[:, :, :rows].copy()

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        if self._binding is None:
            raise Img2MusicError("set_conditioning() must come before step()")
        if self.position >= self.config.max_length:
            raise Img2MusicError(f"the KV cache holds {self.config.max_length} positions; re-prime a window to go on")
        self._ids[..., 0] = input_ids
        self._seqlens[...] = self.position
        # Under a CUDA graph the captured total stays the cache length; GroupQueryAttention
        # bounds each row by seqlens_k, and the graph takes its positions from seqlens_k.
        self._total[...] = self.config.max_length if self.cuda_graph else self.position + 1
        self._upload()
        self.step_session.run_with_iobinding(self._binding, self._run_options)
        self.position += 1
        return self._logits if self.device == "cpu" else self._logits_value.numpy()

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        if self._binding is None:
            raise Img2MusicError("set_conditioning() must come before prefill()")
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        s = tokens.shape[2]
        if tokens.shape[:2] != self._ids.shape[:2] or not 1 <= s <= self.config.max_length:
            raise Img2MusicError(f"prefill takes (B2={self.batch}, K, 1..{self.config.max_length}) tokens, "
                                 f"got {tokens.shape}")
        self.reset()
        self._binding.bind_ortvalue_input("input_ids", self._value(tokens))
        self._seqlens[...] = s - 1
        self._total[...] = self.config.max_length if self.cuda_graph else s
        self._upload(ids=False)
        options = self._run_options
        if self.cuda_graph:  # another input shape: outside the captured graph
            options = self._ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", "-1")
        try:
            self.step_session.run_with_iobinding(self._binding, options)
        finally:
            self._binding.bind_ortvalue_input("input_ids", self._step_values["input_ids"])
        self.position = s
        return self._logits if self.device == "cpu" else self._logits_value.numpy()

    def _upload(self, ids: bool = True) -> None:
        """Device buffers get the host's per-step values (on the CPU they are the same memory)."""
        if self.device == "cpu":
            return
        if ids:
            self._step_values["input_ids"].update_inplace(self._ids)
        self._step_values["seqlens_k"].update_inplace(self._seqlens)

    def close(self) -> None:
        # Dropping the bindings and the OrtValues frees the caches (ORT owns that memory).
        self._binding = self._cross_binding = None
        self._cache, self._cross, self._step_values = [], {}, {}
        self._cross_shape = None
        self.batch = 0
