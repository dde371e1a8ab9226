"""Export-time validation: every graph in ONNX Runtime vs its torch module.

Like optimum's validation: random inputs, one line per output with ✓/✗, the max
absolute difference and the tolerance; the build fails on any ✗. The decoder step
is checked over several consecutive steps (cache positions 0..n-1), with guidance
rows whose mask is all zero, against transformers' decoder with its own cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FP32_TOLERANCE = 1e-4


@dataclass
class OutputCheck:
    """One compared output."""

    graph: str
    """Graph name."""
    output: str
    """Output (and where it applies, the step) compared."""
    max_abs_diff: float
    """max |ONNX Runtime - torch|."""
    tolerance: float
    """Largest difference accepted."""
    detail: str = ""
    """Replaces the max-difference text for checks that are not a difference (e.g. an SNR)."""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        if self.detail:
            return f"  {mark} {self.graph}.{self.output}: {self.detail}"
        return f"  {mark} {self.graph}.{self.output}: max |Δ| {self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e})"


def compare(graph: str, names, ours, reference, tolerance: float = FP32_TOLERANCE) -> list[OutputCheck]:
    checks = []
    for name, a, b in zip(names, ours, reference):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            checks.append(OutputCheck(graph, f"{name} (shape {a.shape} vs {b.shape})", float("inf"), tolerance))
            continue
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        checks.append(OutputCheck(graph, name, diff, tolerance))
    return checks


def validate_clip(session, models, batch: int = 2, seed: int = 0) -> list[OutputCheck]:
    import torch

    from img2music.export.torch_export import ClipVisionGraph

    size = models.image_config.crop_height
    pixels = np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = ClipVisionGraph(models.clip)(torch.from_numpy(pixels)).numpy()
    return compare("clip_vision", ["image_embeds"], session.run(None, {"pixel_values": pixels}), [ref])


def validate_projector(session, projector, clip_dim: int, batch: int = 3, seed: int = 0) -> list[OutputCheck]:
    """The projector graph vs the torch projector (prompt bank: vs its numpy selection)."""
    import torch

    embeds = np.random.default_rng(seed).standard_normal((batch, clip_dim)).astype(np.float32)
    outs = session.run(None, {"image_embeds": embeds})
    ref = projector(torch.from_numpy(embeds))
    expected = [ref.conditioning.detach().numpy(), ref.mask.numpy()]
    names = ["conditioning", "conditioning_mask"]
    if len(outs) == 4:  # prompt bank: also the chosen directive
        bank = projector.bank
        sel = bank.select(embeds)
        expected += [sel.indices, sel.scores]
        names += ["directive_index", "directive_score"]
    return compare("projector", names, outs, expected)


def validation_conditioning(models, batch: int, cond_len: int, seed: int):
    """Random conditioning for B rows + B null rows (zero states, zero mask), one row padded."""
    rng = np.random.default_rng(seed)
    d_t5 = models.musicgen.config.text_encoder.hidden_size
    cond = rng.standard_normal((batch, cond_len, d_t5)).astype(np.float32)
    mask = np.ones((batch, cond_len), dtype=np.int64)
    mask[0, cond_len // 2 :] = 0
    cond = np.concatenate([cond * mask[..., None], np.zeros_like(cond)]).astype(np.float32)
    mask = np.concatenate([mask, np.zeros_like(mask)])
    return cond, mask


def validate_cross_kv(session, models, batch: int = 2, cond_len: int = 7, seed: int = 0) -> list[OutputCheck]:
    import torch

    from img2music.runtime.generation.conditioning import log_weights

    cond, mask = validation_conditioning(models, batch, cond_len, seed)
    # row 0 weighs its last attended token by 2.5 and its first by 0 (floored): a prompt's weighting
    weight = np.ones(mask.shape, dtype=np.float32)
    weight[0, cond_len // 2 - 1], weight[0, 0] = 2.5, 0.0
    names = [o.name for o in session.get_outputs()]
    outs = session.run(names, {"conditioning": cond, "conditioning_mask": mask,
                               "conditioning_log_weight": log_weights(weight)})
    mg = models.musicgen
    with torch.no_grad():
        states = torch.from_numpy(cond)
        if hasattr(mg, "enc_to_dec_proj"):
            states = mg.enc_to_dec_proj(states)
        states = states * torch.from_numpy(mask)[..., None]
        expected = []
        heads = mg.config.decoder.num_attention_heads
        for layer in mg.decoder.model.decoder.layers:
            k = layer.encoder_attn.k_proj(states).unflatten(-1, (heads, -1))  # (B2, N, H, 64)
            v = layer.encoder_attn.v_proj(states).unflatten(-1, (heads, -1))
            expected += [k.permute(0, 2, 1, 3).numpy(), v.permute(0, 2, 1, 3).numpy()]
    bias = np.where(mask == 1, np.log(np.maximum(weight, 1e-30)), np.finfo(np.float32).min)
    expected.append(bias.astype(np.float32)[:, None, None, :])
    return compare("cross_kv", names, outs, expected)


def validate_decoder_step(decoder_session, models, steps: int = 6, batch: int = 2, cond_len: int = 7,
                          seed: int = 0) -> list[OutputCheck]:
    """``steps`` consecutive steps (positions 0..steps-1) vs transformers' decoder with its cache."""
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    mg = models.musicgen
    k = models.num_codebooks
    vocab = models.decoder_config().vocab_size  # code ids 0..vocab-1, the pad id (vocab) included below
    cond, mask = validation_conditioning(models, batch, cond_len, seed)
    decoder_session.set_conditioning(cond, mask)
    rng = np.random.default_rng(seed + 1)
    with torch.no_grad():
        states = torch.from_numpy(cond)
        if hasattr(mg, "enc_to_dec_proj"):
            states = mg.enc_to_dec_proj(states)
        states = states * torch.from_numpy(mask)[..., None]
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        checks = []
        for pos in range(steps):
            ids = rng.integers(0, vocab + 1, (2 * batch, k)).astype(np.int64)
            out = mg.decoder(
                input_ids=torch.from_numpy(ids).reshape(-1, 1), encoder_hidden_states=states,
                encoder_attention_mask=torch.from_numpy(mask), past_key_values=cache, use_cache=True,
            )
            cache = out.past_key_values
            ref = out.logits.reshape(2 * batch, k, -1).numpy()
            ours = decoder_session.step(ids).copy()
            checks += compare("decoder_step", [f"logits@{pos}"], [ours], [ref])
    # The in-place cache rows written so far vs transformers' cache.
    layer0_key = decoder_session.cache_rows(0, "key", steps)
    ref_key = cache.self_attention_cache.layers[0].keys.numpy()
    checks += compare("decoder_step", [f"present_key.0[:{steps}]"], [layer0_key], [ref_key])
    # Prefill: S tokens into an empty cache in one run, then one more step.
    window = rng.integers(0, vocab + 1, (2 * batch, k, steps + 3)).astype(np.int64)
    nxt = rng.integers(0, vocab, (2 * batch, k)).astype(np.int64)
    with torch.no_grad():
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = mg.decoder(input_ids=torch.from_numpy(window).reshape(-1, window.shape[2]), encoder_hidden_states=states,
                         encoder_attention_mask=torch.from_numpy(mask), past_key_values=cache, use_cache=True)
        ref_prefill = out.logits.reshape(2 * batch, k, window.shape[2], -1)[:, :, -1].numpy()
        out = mg.decoder(input_ids=torch.from_numpy(nxt).reshape(-1, 1), encoder_hidden_states=states,
                         encoder_attention_mask=torch.from_numpy(mask), past_key_values=out.past_key_values,
                         use_cache=True)
        ref_next = out.logits.reshape(2 * batch, k, -1).numpy()
    ours_prefill = decoder_session.prefill(window).copy()
    ours_next = decoder_session.step(nxt).copy()
    checks += compare("decoder_step", [f"logits@prefill{window.shape[2]}", "logits@after_prefill"],
                      [ours_prefill, ours_next], [ref_prefill, ref_next])
    return checks


def validate_encodec_stream(front_session, back_session, models, batch: int = 2, frames: int = 60, chunk: int = 7,
                            seed: int = 0, int8_front_session=None) -> list[OutputCheck]:
    """Both stream graphs vs their torch modules, and the ONNX stream vs the full decode (SNR);
    with ``int8_front_session``, that variant's stream vs the full decode too (its own bar)."""
    import torch

    from img2music.export.encodec_stream import EncodecStreamFront, lstm_shape
    from img2music.runtime.pipeline.encodec_stream import EncodecStreamDecoder, onnx_stream_functions, snr_db

    codec = models.musicgen.audio_encoder
    layers, channels = lstm_shape(codec)
    rng = np.random.default_rng(seed)
    d = models.decoder_config()
    codes = rng.integers(0, d.vocab_size, (batch, d.delay_span, frames)).astype(np.int64)  # one channel's codebooks
    h = rng.standard_normal((layers, batch, channels)).astype(np.float32) * 0.1
    c = rng.standard_normal((layers, batch, channels)).astype(np.float32) * 0.1
    with torch.no_grad():
        ref_front = EncodecStreamFront(codec)(torch.from_numpy(codes), torch.from_numpy(h), torch.from_numpy(c))
        hidden = ref_front[0]  # transformers' own upsampling layers: the oracle of the rewritten back
        for layer in codec.decoder.layers[2:]:
            hidden = layer(hidden)
        ref_back = hidden.numpy()
        full = codec.decode(torch.from_numpy(codes)[None], [None]).audio_values[:, 0].numpy()
    front = front_session.run(None, {"audio_codes": codes, "lstm_h": h, "lstm_c": c})
    checks = compare("encodec_stream_front", ["lstm_frames", "lstm_h_out", "lstm_c_out"], front,
                     [t.numpy() for t in ref_front])
    back = back_session.run(None, {"lstm_frames": ref_front[0].numpy()})
    checks += compare("encodec_stream_back", ["audio_values"], back, [ref_back])
    variants = [("encodec_stream", front_session, STREAM_MIN_SNR_DB)]
    if int8_front_session is not None:
        variants.append(("encodec_stream_int8_lstm", int8_front_session, INT8_LSTM_MIN_SNR_DB))
    for name, front_graph, bar in variants:
        stream = EncodecStreamDecoder(*onnx_stream_functions(front_graph, back_session), (layers, batch, channels),
                                      models.hop_length)
        audio = np.concatenate([stream.push(codes[:, :, i : i + chunk]) for i in range(0, frames, chunk)]
                               + [stream.flush()], axis=1)
        # An SNR as a check: "difference" = dB below the bar (0 when it passes).
        snr = snr_db(full, audio) if audio.shape == full.shape else float("-inf")
        checks.append(OutputCheck(name, f"stream_vs_full_decode@chunk{chunk}", max(0.0, bar - snr), 0.0,
                                  detail=f"SNR {snr:.1f} dB (>= {bar:.0f} dB)"))
    return checks


STREAM_MIN_SNR_DB = 90.0
INT8_LSTM_MIN_SNR_DB = 60.0
"""The int8-LSTM front's bar against the full decode: small-random measured 75 dB (random
weights; a trained LSTM may differ, which is what the bar is for)."""



def validate_text_encoder(session, tokenizer_path, models, prompts: list[str]) -> list[OutputCheck]:
    """t5_encoder vs transformers' T5 on real prompts (padded batch), and the bundle's tokenizer
    (``tokenizers`` alone, as the runtime reads it) vs transformers' tokenizer, id for id."""
    import torch

    from img2music.runtime.pipeline.text_encoder import load_tokenizer

    batch = models.t5_tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = models.musicgen.text_encoder(**batch).last_hidden_state * batch["attention_mask"][..., None]
    outs = session.run(None, {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()})
    checks = compare("t5_encoder", ["text_hidden"], outs, [ref.numpy()])
    tokenizer = load_tokenizer(tokenizer_path)
    differ = sum(tokenizer.encode(p).ids != models.t5_tokenizer(p)["input_ids"] for p in prompts)
    checks.append(OutputCheck("tokenizer", "ids_vs_transformers", float(differ), 0.0,
                              detail=f"{len(prompts) - differ} of {len(prompts)} prompts tokenized identically"))
    return checks
