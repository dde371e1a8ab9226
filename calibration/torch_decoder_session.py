"""MusicGen's decoder in transformers (float32, eager) behind the decoder-session interface.

The float32 reference of a quantized build whose decoder is too large to hold twice:
musicgen-large's decoder is 13 GB of float32 weights, and a float32 ONNX graph of it
beside the checkpoint would need 26 GB. With this session the KV calibration and the
accuracy report run the checkpoint itself (``calibration.build_quantized``), and no
float32 decoder graph is ever written. About 4x slower per step than the float32 graph
on ONNX Runtime (transformers' eager dispatch), so smaller decoders keep that graph as
their reference.

Runs exactly what ``export.validation.validate_decoder_step`` compares the graphs with:
``enc_to_dec_proj`` on the conditioning, masked rows zeroed, transformers' own cache.
"""

from __future__ import annotations

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.basics.model_config import DecoderConfig
from img2music.runtime.generation.decoder_session import DecoderSession


class TorchDecoderSession(DecoderSession):
    """``MusicgenForConditionalGeneration``'s decoder step by step, with transformers' cache."""

    def __init__(self, musicgen, config: DecoderConfig) -> None:
        self.musicgen, self.config = musicgen, config
        self.batch, self.position = 0, 0
        self._states = self._mask = self._cache = None

    def set_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, reset: bool = True,
                         weight: np.ndarray | None = None) -> None:
        import torch
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        mask = np.ascontiguousarray(mask, dtype=np.int64)
        if conditioning.ndim != 3 or mask.shape != conditioning.shape[:2]:
            raise Img2MusicError(f"conditioning {conditioning.shape} and mask {mask.shape} do not fit together")
        if weight is not None and np.any(np.asarray(weight)[mask > 0] != 1.0):
            raise Img2MusicError("the transformers reference takes no token weights (calibration never needs them)")
        if not reset and conditioning.shape[0] != self.batch:
            raise Img2MusicError("a conditioning with another batch size needs a fresh cache")
        with torch.no_grad():
            states = torch.from_numpy(np.ascontiguousarray(conditioning, dtype=np.float32))  # (B2, N, D_t5)
            if hasattr(self.musicgen, "enc_to_dec_proj"):
                states = self.musicgen.enc_to_dec_proj(states)  # (B2, N, D)
            self._states = states * torch.from_numpy(mask)[..., None]
        self._mask = torch.from_numpy(mask)
        self.batch = conditioning.shape[0]
        if reset or self._cache is None:
            self.reset()
        else:  # keep the music so far; the new conditioning's cross K/V are computed on the next pass
            self._cache = EncoderDecoderCache(self._cache.self_attention_cache, DynamicCache())

    def reset(self) -> None:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.position = 0
        self._cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def _run(self, tokens: np.ndarray) -> np.ndarray:
        """(B2, K, S) tokens at the next S positions -> the last one's (B2, K, V) logits."""
        import torch

        if self._states is None:
            raise Img2MusicError("set_conditioning() must come before step()")
        b2, k, s = tokens.shape
        if self.position + s > self.config.max_length:
            raise Img2MusicError(f"the KV cache holds {self.config.max_length} positions; re-prime a window to go on")
        with torch.no_grad():
            out = self.musicgen.decoder(
                input_ids=torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).reshape(b2 * k, s),
                encoder_hidden_states=self._states, encoder_attention_mask=self._mask,
                past_key_values=self._cache, use_cache=True,
            )
        self._cache = out.past_key_values
        self.position += s
        return out.logits.reshape(b2, k, s, -1)[:, :, -1].numpy()  # (B2, K, V)

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run(np.asarray(input_ids)[..., None])

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        self.reset()
        return self._run(np.asarray(tokens))

    def cache_rows(self, layer: int, kind: str, rows: int) -> np.ndarray:
        cached = self._cache.self_attention_cache.layers[layer]
        return (cached.keys if kind == "key" else cached.values)[:, :, :rows].numpy().copy()  # (B2, H, rows, 64)

    def close(self) -> None:
        self._states = self._mask = self._cache = None
