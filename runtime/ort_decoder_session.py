"""The decoder step on ONNX Runtime with an in-place static KV cache.

One OrtValue per layer and kind (key, value) of shape (B2, H, L_max, 64) is bound to
both ``past_*`` and ``present_*``: GroupQueryAttention then writes only the new row,
in place, and nothing proportional to the cache length is copied per step. Inputs
that change per step (codes, positions) live in numpy arrays that the bound
OrtValues wrap, so a step rebinds nothing. Cross-attention K/V are computed once per
conditioning by ``cross_kv.onnx`` and stay bound until the conditioning changes.
"""

from __future__ import annotations

import numpy as np

from basics.errors import Img2MusicError
from basics.model_config import DecoderConfig
from runtime.decoder_session import DecoderSession


class OrtDecoderSession(DecoderSession):
    """Runs ``decoder_step.onnx`` step by step over a preallocated cache (CPU provider)."""

    def __init__(self, step_session, cross_kv_session, config: DecoderConfig,
                 kv_scales: np.ndarray | None = None) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.step_session = step_session
        self.cross_kv_session = cross_kv_session
        self.config = shape = config
        cache_type = {i.name: i.type for i in step_session.get_inputs()}.get("past_key.0")
        self.cache_dtype = {"tensor(float)": np.float32, "tensor(int8)": np.int8}.get(cache_type)
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

    def _allocate(self, batch: int) -> None:
        """Cache, per-step inputs and the logits buffer for ``batch`` rows; binds them once."""
        ort, s = self._ort, self.config
        cache_shape = (batch, s.num_heads, s.max_length, s.head_dim)
        binding = self.step_session.io_binding()
        self._cache = []
        for i in range(s.num_layers):
            for kind in ("key", "value"):
                value = ort.OrtValue.ortvalue_from_shape_and_type(cache_shape, self.cache_dtype)
                binding.bind_ortvalue_input(f"past_{kind}.{i}", value)
                binding.bind_ortvalue_output(f"present_{kind}.{i}", value)  # same memory: in place
                self._cache.append(value)
        self._ids = np.zeros((batch, s.num_codebooks, 1), dtype=np.int64)
        self._seqlens = np.zeros((batch,), dtype=np.int32)
        self._total = np.zeros((), dtype=np.int32)
        self._logits = np.zeros((batch, s.num_codebooks, s.vocab_size), dtype=np.float32)
        self._step_values = {
            "input_ids": ort.OrtValue.ortvalue_from_numpy(self._ids),
            "seqlens_k": ort.OrtValue.ortvalue_from_numpy(self._seqlens),
            "total_sequence_length": ort.OrtValue.ortvalue_from_numpy(self._total),
        }
        for name, scale in self._scales.items():
            self._step_values[name] = ort.OrtValue.ortvalue_from_numpy(scale)
        for name, value in self._step_values.items():
            binding.bind_ortvalue_input(name, value)
        self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)
        binding.bind_ortvalue_output("logits", self._logits_value)
        self._binding = binding
        self.batch = batch

    def set_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, reset: bool = True) -> None:
        conditioning = np.ascontiguousarray(conditioning, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.int64)
        if conditioning.ndim != 3 or mask.shape != conditioning.shape[:2]:
            raise Img2MusicError(f"conditioning {conditioning.shape} and mask {mask.shape} do not fit together")
        if conditioning.shape[0] != self.batch:
            if not reset:
                raise Img2MusicError("a conditioning with another batch size needs a fresh cache")
            self._allocate(conditioning.shape[0])
        names = [o.name for o in self.cross_kv_session.get_outputs()]
        outputs = self.cross_kv_session.run(names, {"conditioning": conditioning, "conditioning_mask": mask})
        self._cross = {}
        for name, value in zip(names, outputs):
            ov = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
            self._cross[name] = (ov, value)  # keep the numpy buffer alive with its OrtValue
            self._binding.bind_ortvalue_input(name, ov)
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
        self._total[...] = self.position + 1
        self.step_session.run_with_iobinding(self._binding)
        self.position += 1
        return self._logits

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        if self._binding is None:
            raise Img2MusicError("set_conditioning() must come before prefill()")
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        s = tokens.shape[2]
        if tokens.shape[:2] != self._ids.shape[:2] or not 1 <= s <= self.config.max_length:
            raise Img2MusicError(f"prefill takes (B2={self.batch}, K, 1..{self.config.max_length}) tokens, "
                                 f"got {tokens.shape}")
        self.reset()
        self._binding.bind_ortvalue_input("input_ids", self._ort.OrtValue.ortvalue_from_numpy(tokens))
        self._seqlens[...] = s - 1
        self._total[...] = s
        try:
            self.step_session.run_with_iobinding(self._binding)
        finally:
            self._binding.bind_ortvalue_input("input_ids", self._step_values["input_ids"])
        self.position = s
        return self._logits

    def close(self) -> None:
        # Dropping the binding and the OrtValues frees the cache (ORT owns that memory).
        self._binding = None
        self._cache, self._cross, self._step_values = [], {}, {}
        self.batch = 0
