"""The decoder step on ONNX Runtime with an in-place static KV cache, on the CPU or a CUDA device.

One OrtValue per layer and kind (key, value) of shape (B2, H, L_max, 64) is bound to
both ``past_*`` and ``present_*``: GroupQueryAttention then writes only the new row,
in place, and nothing proportional to the cache length is copied per step. The
cross-attention K/V live in preallocated OrtValues that ``cross_kv.onnx`` writes into
and the step reads from, so a new conditioning (a live transition step) allocates
nothing. Per-step inputs (codes, cached length) are small buffers rewritten in place.
So a step rebinds nothing, and on a GPU only the logits cross to the host.

**Graph layout** (``graph_layout=True``; always with ``cuda_graph``): what a captured CUDA
graph needs, and it runs on the CPU provider too, so the tests hold it to the plain session's
tokens. A captured graph replays fixed addresses and fixed host values:

- steps keep ``total_sequence_length`` at the cache length and move only ``seqlens_k``
  (the step graph takes its positions from it); the per-step inputs are buffers of their own,
  updated in place (``update_inplace``: on a device one small host-to-device copy each);
- a prefill (S tokens, a window re-prime) runs outside the graph (``gpu_graph_id`` -1) with
  total = S: GroupQueryAttention refuses a multi-token run with batch > 1 when the total is
  not S ("batch_size must be 1 when sequence_length > 1 and past context is given");
- the conditioning length is padded up to a multiple of :data:`COND_BUCKET` with masked
  tokens (exact: a masked token gets the dtype's minimum as bias and zero keys), and each
  (batch, padded length) keeps its cross-K/V buffers and its graph id, so a layout seen
  before replays its graph and at most :data:`MAX_LAYOUTS` graphs are ever captured (ONNX
  Runtime frees captured graphs only with the session).

On a CUDA device every buffer is a device OrtValue and the caches start zeroed (device
memory is not, and a NaN row could poison attention). NOT YET RUN ON A GPU: the CUDA paths
of this class have been read against ONNX Runtime's sources only; the graph layout runs here
on the CPU provider (tests/runtime/test_gpu_backends.py).
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
COND_BUCKET = 16
"""Graph layout: conditioning lengths round up to a multiple of this (padded with masked tokens)."""
MAX_LAYOUTS = 16
"""Graph layout: distinct (batch, padded conditioning length) layouts, each with its own captured graph."""


class OrtDecoderSession(DecoderSession):
    """Runs ``decoder_step.onnx`` step by step over a preallocated cache."""

    def __init__(self, step_session, cross_kv_session, config: DecoderConfig, kv_scales: np.ndarray | None = None,
                 device: str = "cpu", cuda_graph: bool = False, graph_layout: bool | None = None) -> None:
        ort = onnxruntime()
        if device not in ("cpu", "cuda"):
            raise Img2MusicError(f"unknown device {device!r} for the decoder session (cpu or cuda)")
        if cuda_graph and device != "cuda":
            raise Img2MusicError("CUDA graphs need the cuda device (graph_layout=True runs their layout on the CPU)")
        self._ort, self.device, self.cuda_graph = ort, device, cuda_graph
        self.graph_layout = cuda_graph if graph_layout is None else graph_layout or cuda_graph
        self.step_session = step_session
        self.cross_kv_session = cross_kv_session
        # bundles built before prompts have no token weights in cross_kv
        self._weighted = "conditioning_log_weight" in {i.name for i in cross_kv_session.get_inputs()}
        self.config = config
        cache_type = {i.name: i.type for i in step_session.get_inputs()}.get("past_key.0")
        self.cache_dtype = {k: v for k, v in ORT_DTYPES.items() if v in (np.float32, np.float16, np.int8)}.get(cache_type)
        if self.cache_dtype is None:
            raise Img2MusicError(f"decoder_step has an unsupported KV cache type {cache_type}")
        self._scales = _cache_scales(config, kv_scales, quantized=self.cache_dtype == np.int8)
        self.batch = 0
        self.position = 0
        self._binding = None
        self._layout = None  # (batch, padded conditioning length) bound now
        self._layouts: dict[tuple[int, int], tuple[dict, object, int]] = {}  # -> (cross buffers, binding, graph id)
        self.graphs = 0
        """Graph ids handed out (graph layout): one per layout, never reused for another."""

    # -- buffers --------------------------------------------------------------
    def _value(self, array_or_shape, dtype=None, zeroed: bool = False):
        """An OrtValue on this session's device: a copy of an array, or a fresh (zeroed) buffer."""
        new = self._ort.OrtValue
        if isinstance(array_or_shape, np.ndarray):
            return new.ortvalue_from_numpy(array_or_shape, self.device, 0)
        if zeroed:
            return new.ortvalue_from_numpy(np.zeros(array_or_shape, dtype), self.device, 0)
        return new.ortvalue_from_shape_and_type(array_or_shape, dtype, self.device, 0)

    @property
    def _separate_inputs(self) -> bool:
        """Per-step inputs in buffers of their own (a device, or the graph layout) rather than
        numpy arrays the bound OrtValues wrap."""
        return self.device != "cpu" or self.graph_layout

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
        inputs = {"input_ids": self._ids, "seqlens_k": self._seqlens} | self._scales
        # The host side of the per-step inputs: wrapped in place on the CPU, or buffers of their own.
        self._step_values = {name: self._value(array.copy() if self._separate_inputs else array)
                             for name, array in inputs.items()}
        for name, value in self._step_values.items():
            binding.bind_ortvalue_input(name, value)
        # GroupQueryAttention reads total_sequence_length on the host on every provider.
        self._total_value = self._ort.OrtValue.ortvalue_from_numpy(self._total)
        binding.bind_ortvalue_input("total_sequence_length", self._total_value)
        self._logits = np.zeros((batch, s.num_codebooks, s.vocab_size), dtype=np.float32)
        self._logits_value = self._value(self._logits)
        binding.bind_ortvalue_output("logits", self._logits_value)
        self._binding = binding
        self._layout, self._layouts = None, {}
        self.batch = batch

    def _bind_cross(self, cond_len: int) -> None:
        """Cross K/V + bias buffers for this batch and conditioning length, written by cross_kv
        and read by the step (the same OrtValues on both sides). The graph layout keeps each
        layout's buffers and graph id, so a captured graph only ever replays its own addresses."""
        layout = (self.batch, cond_len)
        if self._layout == layout:
            return
        if layout not in self._layouts:
            if self.graph_layout and len(self._layouts) >= MAX_LAYOUTS:
                raise Img2MusicError(f"more than {MAX_LAYOUTS} conditioning layouts under a CUDA graph: each keeps "
                                     "its captured graph until the session ends")
            self.graphs += 1
            self._layouts[layout] = (self._cross_buffers(cond_len), self.cross_kv_session.io_binding(), self.graphs)
            if not self.graph_layout:  # nothing replays old addresses: keep only the newest
                self._layouts = {layout: self._layouts[layout]}
        buffers, cross_binding, graph_id = self._layouts[layout]
        for name, value in buffers.items():
            cross_binding.bind_ortvalue_output(name, value)
            self._binding.bind_ortvalue_input(name, value)
        self._cross_binding = cross_binding
        self._layout = layout
        self._run_options = self._ort.RunOptions()
        if self.cuda_graph:
            self._run_options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def _cross_buffers(self, cond_len: int) -> dict:
        sizes = {"batch": self.batch, "cond_len": cond_len}
        return {out.name: self._value(tuple(sizes[d] if isinstance(d, str) else d for d in out.shape),
                                      ORT_DTYPES[out.type])
                for out in self.cross_kv_session.get_outputs()}

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
        if self.graph_layout:
            conditioning, mask, weight = _padded(conditioning, mask, weight, COND_BUCKET)
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
        # Graph layout: the captured total stays the cache length; GroupQueryAttention bounds
        # each row by seqlens_k, and the step graph takes its positions from seqlens_k.
        self._total[...] = self.config.max_length if self.graph_layout else self.position + 1
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
        # Always total = S, graph layout or not: the prefill runs outside any captured graph,
        # and GroupQueryAttention refuses S > 1 with batch > 1 when the total is anything else.
        self._total[...] = s
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
        """Separate buffers get the host's per-step values (wrapped ones are the same memory)."""
        if not self._separate_inputs:
            return
        if ids:
            self._step_values["input_ids"].update_inplace(self._ids)
        self._step_values["seqlens_k"].update_inplace(self._seqlens)

    def close(self) -> None:
        # Dropping the bindings and the OrtValues frees the caches (ORT owns that memory).
        self._binding = self._cross_binding = None
        self._cache, self._layouts, self._step_values = [], {}, {}
        self._layout = None
        self.batch = 0


def _cache_scales(config: DecoderConfig, kv_scales: np.ndarray | None, quantized: bool) -> dict:
    """An int8 cache's calibrated scales as GroupQueryAttention's k_scale/v_scale inputs."""
    if quantized != (kv_scales is not None):
        raise Img2MusicError("an int8 KV cache needs its calibrated scales, and only an int8 cache takes them")
    if not quantized:
        return {}
    expected = (config.num_layers, 2, config.num_heads, config.head_dim)
    if kv_scales.shape != expected or not np.all(np.isfinite(kv_scales)) or not np.all(kv_scales > 0):
        raise Img2MusicError(f"KV cache scales must be positive, finite and shaped {expected}; got {kv_scales.shape}")
    # (layers, 2, H, 64) -> per layer and kind (1, H, 1, 64), as GroupQueryAttention's k_scale/v_scale.
    return {f"{kind}_scale.{i}": np.ascontiguousarray(kv_scales[i, j][None, :, None, :], dtype=np.float32)
            for i in range(config.num_layers) for j, kind in enumerate(("k", "v"))}


def _padded(conditioning: np.ndarray, mask: np.ndarray, weight: np.ndarray, bucket: int):
    """(B2, N, D), (B2, N), (B2, N) padded to a multiple of ``bucket`` tokens with masked zero tokens."""
    n = conditioning.shape[1]
    extra = -n % bucket
    if extra == 0:
        return conditioning, mask, weight
    pad = ((0, 0), (0, extra))
    return (np.pad(conditioning, pad + ((0, 0),)), np.pad(mask, pad), np.pad(weight, pad, constant_values=1.0))
