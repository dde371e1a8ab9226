"""Every exported graph's inputs, outputs and dynamic axes, declared in one place.

Exporters build graphs that match these specs, export-time validation feeds them,
and the runtime checks the bundle's sessions against them at load time. Dimension
names are symbolic; numbers are fixed by the model config.

Shapes (B2 = rows run together: 2B with classifier-free guidance, else B):

- ``clip_vision``:   pixel_values (B, 3, S, S) -> image_embeds (B, D_clip)
- ``projector``:     image_embeds (B, D_clip) -> conditioning (B, N, D_t5), conditioning_mask (B, N)
                     [+ directive_index (B,), directive_score (B,) for the prompt bank]
- ``t5_encoder``:    input_ids (B, T), attention_mask (B, T) -> text_hidden (B, T, D_t5) (zero where masked)
- ``cross_kv``:      conditioning (B2, N, D_t5), conditioning_mask (B2, N), conditioning_log_weight (B2, N) ->
                     cross_key.{i} / cross_value.{i} (B2, H, N, 64), cross_attention_bias (B2, 1, 1, N)
                     (the bias is the log weight where the mask is 1, the dtype's min where it is 0)
- ``decoder_step``:  input_ids (B2, K, S), seqlens_k (B2,) int32 = cached + S - 1 (positions come
                     from it), total_sequence_length () int32 = cached + S (or the cache length: the
                     in-place cache ignores rows past seqlens_k), cross K/V + bias, past_key.{i} /
                     past_value.{i} (B2, H, L_max, 64) -> logits (B2, K, V), present_key.{i} / present_value.{i}
                     (same buffers as the past: bind one OrtValue to both, see runtime.generation.decoder_session)
- ``encodec_stream_front``: audio_codes (B, K, T) + lstm_h / lstm_c (layers, B, C) ->
                     lstm_frames (B, C, T - 6) + the LSTM state after them (runtime.pipeline.encodec_stream)
- ``encodec_stream_back``: lstm_frames (B, C, W) -> audio_values (B, 1, W * hop)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    """Tensor name in the graph."""
    dtype: str
    """numpy dtype name: float32, int64, int32."""
    shape: tuple
    """Dimensions: ints are fixed, strings are symbolic (dynamic) axes."""


@dataclass(frozen=True)
class GraphSpec:
    """A sub-graph of the bundle."""

    name: str
    """File stem: ``<name>.onnx``."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    notes: str = field(default="")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's ``dynamic_axes`` for this graph."""
        axes = {}
        for t in self.inputs + self.outputs:
            dyn = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if dyn:
                axes[t.name] = dyn
        return axes


def clip_vision_spec(image_size: int, clip_dim: int) -> GraphSpec:
    return GraphSpec(
        "clip_vision",
        (TensorSpec("pixel_values", "float32", ("batch", 3, image_size, image_size)),),
        (TensorSpec("image_embeds", "float32", ("batch", clip_dim)),),
    )


def projector_spec(clip_dim: int, num_tokens: int, text_dim: int, prompt_bank: bool) -> GraphSpec:
    outputs = [
        TensorSpec("conditioning", "float32", ("batch", num_tokens, text_dim)),
        TensorSpec("conditioning_mask", "int64", ("batch", num_tokens)),
    ]
    if prompt_bank:
        outputs += [TensorSpec("directive_index", "int64", ("batch",)),
                    TensorSpec("directive_score", "float32", ("batch",))]
    return GraphSpec("projector", (TensorSpec("image_embeds", "float32", ("batch", clip_dim)),), tuple(outputs))


def t5_encoder_spec(text_dim: int) -> GraphSpec:
    return GraphSpec(
        "t5_encoder",
        (TensorSpec("input_ids", "int64", ("batch", "tokens")),
         TensorSpec("attention_mask", "int64", ("batch", "tokens"))),
        (TensorSpec("text_hidden", "float32", ("batch", "tokens", text_dim)),),
    )


def attention_dtype(kv_cache_dtype: str) -> str:
    """The dtype of cross-attention K/V and bias for a decoder whose self-attention cache has
    ``kv_cache_dtype``: float16 graphs attend in float16 (GPU bundles), every other in float32."""
    return "float16" if kv_cache_dtype == "float16" else "float32"


def cross_kv_spec(text_dim: int, num_layers: int, num_heads: int, head_dim: int, dtype: str = "float32") -> GraphSpec:
    """The conditioning stays float32 in (it comes from the projector); K/V and bias come out in ``dtype``.
    ``conditioning_log_weight`` (log w) scales each token's share of the attention by w (a prompt
    against the image; 0 everywhere: as transformers)."""
    outputs = cross_attention_inputs(num_layers, num_heads, head_dim, dtype)
    outputs.append(TensorSpec("cross_attention_bias", dtype, ("batch", 1, 1, "cond_len")))
    return GraphSpec(
        "cross_kv",
        (TensorSpec("conditioning", "float32", ("batch", "cond_len", text_dim)),
         TensorSpec("conditioning_mask", "int64", ("batch", "cond_len")),
         TensorSpec("conditioning_log_weight", "float32", ("batch", "cond_len"))),
        tuple(outputs),
    )


def cross_attention_inputs(num_layers: int, num_heads: int, head_dim: int,
                           dtype: str = "float32") -> list[TensorSpec]:
    """cross_key.{i} / cross_value.{i} (from cross_kv.onnx), as every decoder graph takes them."""
    inputs = []
    for i in range(num_layers):
        inputs.append(TensorSpec(f"cross_key.{i}", dtype, ("batch", num_heads, "cond_len", head_dim)))
        inputs.append(TensorSpec(f"cross_value.{i}", dtype, ("batch", num_heads, "cond_len", head_dim)))
    return inputs


def decoder_step_spec(num_codebooks: int, vocab: int, num_layers: int, num_heads: int, head_dim: int,
                      kv_cache_dtype: str = "float32") -> GraphSpec:
    """The step graph; with ``kv_cache_dtype="int8"`` the cache is int8 and per-channel
    scales ``k_scale.{i}`` / ``v_scale.{i}`` (1, H, 1, 64) are inputs; with "float16" the
    whole graph computes in float16 (cross-attention inputs included) and only the logits
    come out in float32."""
    cross = attention_dtype(kv_cache_dtype)
    inputs = [
        TensorSpec("input_ids", "int64", ("batch", num_codebooks, "seq")),
        TensorSpec("seqlens_k", "int32", ("batch",)),
        TensorSpec("total_sequence_length", "int32", ()),
        TensorSpec("cross_attention_bias", cross, ("batch", 1, 1, "cond_len")),
    ]
    outputs = [TensorSpec("logits", "float32", ("batch", num_codebooks, vocab))]
    inputs += cross_attention_inputs(num_layers, num_heads, head_dim, cross)
    for i in range(num_layers):
        for kind in ("key", "value"):
            inputs.append(TensorSpec(f"past_{kind}.{i}", kv_cache_dtype, ("batch", num_heads, "cache_len", head_dim)))
            outputs.append(TensorSpec(f"present_{kind}.{i}", kv_cache_dtype, ("batch", num_heads, "cache_len", head_dim)))
    if kv_cache_dtype == "int8":
        for i in range(num_layers):
            for kind in ("k", "v"):
                inputs.append(TensorSpec(f"{kind}_scale.{i}", "float32", (1, num_heads, 1, head_dim)))
    return GraphSpec("decoder_step", tuple(inputs), tuple(outputs))


LM_HEADS_NODE = "lm_heads_matmul"
"""Name of decoder_step's fused output-heads MatMul (int4 bundles keep it at 8 bits)."""


def encodec_stream_specs(num_codebooks: int, channels: int, lstm_layers: int) -> tuple[GraphSpec, GraphSpec]:
    """(front, back) of the exact streaming EnCodec decoder."""
    front = GraphSpec(
        "encodec_stream_front",
        (TensorSpec("audio_codes", "int64", ("batch", num_codebooks, "window")),
         TensorSpec("lstm_h", "float32", (lstm_layers, "batch", channels)),
         TensorSpec("lstm_c", "float32", (lstm_layers, "batch", channels))),
        (TensorSpec("lstm_frames", "float32", ("batch", channels, "frames")),
         TensorSpec("lstm_h_out", "float32", (lstm_layers, "batch", channels)),
         TensorSpec("lstm_c_out", "float32", (lstm_layers, "batch", channels))),
    )
    back = GraphSpec(
        "encodec_stream_back",
        (TensorSpec("lstm_frames", "float32", ("batch", channels, "frames")),),
        (TensorSpec("audio_values", "float32", ("batch", 1, "samples")),),
    )
    return front, back
