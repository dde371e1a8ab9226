"""Building an engine bundle: loaded models -> validated ONNX graphs + manifest.json.

``export/build_engines.py`` is the command line over :func:`build_bundle`; tests, the
demo and the benchmarks call it directly. Writes clip_vision, projector (the prompt
bank's selection, or a trained projector), cross_kv, decoder_step (in-place
GroupQueryAttention KV cache) and the two graphs of the exact streaming EnCodec decoder
(encodec_stream_front/back) and, unless ``text=False``, MusicGen's T5 encoder with its
tokenizer for text prompts (t5_encoder, tokenizer.json); validates each against its torch
module (one ✓/✗ line per output; any ✗ fails the build) and writes manifest.json with
configs, hashes and versions. The prompt bank's T5 encodings are computed here (an image
needs no T5 at run time). With quantization options the fp32 graphs are then calibrated
and quantized (calibration/).

No full-sequence EnCodec graph: a stream of any chunk size equals the full decode
(validated here at >= 90 dB), so one EnCodec serves batch and live generation and the
bundle does not ship the decoder's weights twice (schema 2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable

from img2music.basics.errors import Img2MusicError
from img2music.runtime.bundle.manifest import ENCODEC_FRONT_INT8

log = logging.getLogger(__name__)

Report = Callable[[str], None]


class _Steps:
    """Numbered progress lines through ``report``: ``[3/8] what  (+12.3 s)``."""

    def __init__(self, total: int, report: Report) -> None:
        self.total, self.n, self.start, self.report = total, 0, time.perf_counter(), report

    def __call__(self, what: str) -> None:
        self.n += 1
        self.report(f"[{self.n}/{self.total}] {what}  (+{time.perf_counter() - self.start:.1f} s)")


def build_bundle(out: Path, models, seed: int = 0, report: Report | None = None, quantization=None,
                 projector_checkpoint: str | None = None, text: bool = True, release_weights: bool = False) -> dict:
    """Export, validate and describe every graph into ``out`` (which must not exist); returns
    the manifest as written. ``report`` receives progress and ✓/✗ lines (default: the log);
    ``quantization``: ``calibration.build_quantized.QuantizationOptions`` for fp16/int8/int4;
    ``projector_checkpoint``: a train.py checkpoint replacing the prompt bank; ``text=False``
    leaves the text encoder out (image-only bundles, ~110M parameters smaller for t5-base);
    ``release_weights=True`` frees the torch weights once every graph is exported and validated
    (the caller's ``models`` keep their configs but no weights: the CLI's choice, so that a
    musicgen-medium build's calibration fits in 24 GB); with the transformers decoder as the
    quantization's reference (``QuantizationOptions.reference``, musicgen-large) the decoder is
    freed after the accuracy report instead.

    int8 / int4: the decoder graph is written with quantized weights straight from the torch
    weights (``export.decoder_step.DecoderWeights``) into ``out/converted``; the float32 decoder
    graph is written and validated only when it is the reference."""
    import torch

    from img2music.basics.graph_specs import (
        attention_dtype,
        clip_vision_spec,
        cross_kv_spec,
        decoder_step_spec,
        encodec_stream_specs,
        projector_spec,
        t5_encoder_spec,
    )
    from img2music.basics.onnx_files import save_model
    from img2music.basics.prompt_bank import PromptBankProjector, build_prompt_bank, load_directives
    from img2music.calibration.quantize import BLOCK_SIZE, WEIGHT_BITS
    from img2music.export.bundle_writer import write_manifest
    from img2music.export.cross_kv import build_cross_kv
    from img2music.export.decoder_step import DecoderWeights, build_decoder_step
    from img2music.export.encodec_stream import EncodecStreamBack, EncodecStreamFront, lstm_shape
    from img2music.export.prompt_bank_graph import build_prompt_bank_graph
    from img2music.export.text_encoder import export_text_encoder
    from img2music.export.torch_export import ClipVisionGraph, ProjectorGraph, export_module
    from img2music.export.validation import (
        validate_clip,
        validate_cross_kv,
        validate_decoder_step,
        validate_encodec_stream,
        validate_projector,
        validate_text_encoder,
    )
    from img2music.runtime.backends.ort_decoder import OrtDecoderSession
    from img2music.runtime.backends.ort_session import create_session, weights_over

    report = report or log.info
    quantized_weights = quantization is not None and quantization.precision in WEIGHT_BITS
    step = _Steps(7 + (quantization is not None) + quantized_weights + text, report)
    out.mkdir(parents=True)
    mg = models.musicgen
    decoder_config = models.decoder_config()
    d = decoder_config
    clip_dim = int(models.clip.config.projection_dim)
    text_dim = mg.config.text_encoder.hidden_size
    checks = []

    def run_checks(new):
        for c in new:
            report(c.line())
        checks.extend(new)

    trained = None
    if projector_checkpoint is None:
        step("prompt bank: embedding directives with CLIP text + T5")
        bank = build_prompt_bank(models)
        projector, num_tokens, directives = PromptBankProjector(bank), bank.num_tokens, bank.directives
    else:
        step(f"trained projector: {projector_checkpoint}")
        projector, trained = load_trained_projector(projector_checkpoint, clip_dim, text_dim)
        num_tokens, directives = projector.config.num_tokens, None
    lstm_layers, lstm_channels = lstm_shape(mg.audio_encoder)
    specs = {
        "clip_vision": clip_vision_spec(models.image_config.crop_height, clip_dim),
        "projector": projector_spec(clip_dim, num_tokens, text_dim, prompt_bank=trained is None),
        "cross_kv": cross_kv_spec(text_dim, d.num_layers, d.num_heads, d.head_dim),
        "decoder_step": decoder_step_spec(d.num_codebooks, d.vocab_size, d.num_layers, d.num_heads, d.head_dim),
    }
    # EnCodec is mono: a stereo decoder's channels are decoded apart, d.delay_span codebooks each
    specs["encodec_stream_front"], specs["encodec_stream_back"] = encodec_stream_specs(
        d.delay_span, lstm_channels, lstm_layers)

    step("clip_vision.onnx")
    size = models.image_config.crop_height
    export_module(ClipVisionGraph(models.clip), (torch.zeros(1, 3, size, size),), specs["clip_vision"],
                  out / "clip_vision.onnx")
    run_checks(validate_clip(create_session(out / "clip_vision.onnx"), models, seed=seed))

    if trained is None:
        step("projector.onnx (prompt bank selection)")
        save_model(build_prompt_bank_graph(bank), out / "projector.onnx")
    else:
        step(f"projector.onnx (trained {trained['kind']}, {num_tokens} tokens)")
        export_module(ProjectorGraph(projector), (torch.zeros(1, clip_dim),), specs["projector"],
                      out / "projector.onnx")
    run_checks(validate_projector(create_session(out / "projector.onnx"), projector, clip_dim, seed=seed))

    step("cross_kv.onnx")
    save_model(build_cross_kv(mg), out / "cross_kv.onnx")
    cross_session = create_session(out / "cross_kv.onnx")
    run_checks(validate_cross_kv(cross_session, models, seed=seed))

    decoder_bytes = 4 * sum(p.numel() for p in mg.decoder.parameters())
    reference = "onnx" if quantization is None else quantization.resolved_reference(decoder_bytes)
    if reference == "onnx":
        memory = _physical_memory()
        if memory and 2 * decoder_bytes > 0.9 * memory:  # the checkpoint's weights + the graph's
            report(f"warning: a float32 decoder graph of {decoder_bytes / 2**30:.1f} GiB beside the checkpoint's "
                   f"needs about {2 * decoder_bytes / 2**30:.0f} GiB and this machine has {memory / 2**30:.0f}: "
                   "this build may run out of memory (--precision int8 or int4 write no float32 decoder graph)")
        step("decoder_step.onnx (GroupQueryAttention, in-place KV cache)")
        save_model(build_decoder_step(mg.decoder), out / "decoder_step.onnx")
        step_path = out / "decoder_step.onnx"
        decoder = OrtDecoderSession(create_session(step_path, lean=weights_over(step_path)), cross_session,
                                    decoder_config)
        run_checks(validate_decoder_step(decoder, models, seed=seed))
        decoder.close()
    else:
        step(f"decoder_step: no float32 graph ({decoder_bytes / 2**30:.1f} GiB of float32 weights); the accuracy "
             "report measures the quantized graph against transformers")
    if quantized_weights:
        bits = WEIGHT_BITS[quantization.precision]
        step(f"decoder_step.onnx with {bits}-bit MatMulNBits weights, written from the checkpoint's")
        (out / "converted").mkdir()
        save_model(build_decoder_step(mg.decoder, DecoderWeights(bits, BLOCK_SIZE[bits], 8 if bits < 8 else None)),
                   out / "converted" / "decoder_step.onnx")

    step("encodec_stream_front.onnx + encodec_stream_back.onnx (exact streaming decode)")
    codec = mg.audio_encoder
    state = torch.zeros(lstm_layers, 1, lstm_channels)
    export_module(EncodecStreamFront(codec), (torch.zeros(1, d.delay_span, 16, dtype=torch.long), state, state),
                  specs["encodec_stream_front"], out / "encodec_stream_front.onnx")
    export_module(EncodecStreamBack(codec), (torch.zeros(1, lstm_channels, 8),), specs["encodec_stream_back"],
                  out / "encodec_stream_back.onnx")
    int8_front = None
    if quantization is None or quantization.precision != "fp16":  # a CPU bundle: the int8-LSTM front beside
        from img2music.calibration.quantize import quantize_lstm

        quantize_lstm(out / "encodec_stream_front.onnx", out / f"{ENCODEC_FRONT_INT8}.onnx")
        specs[ENCODEC_FRONT_INT8] = dataclasses.replace(specs["encodec_stream_front"], name=ENCODEC_FRONT_INT8)
        int8_front = create_session(out / f"{ENCODEC_FRONT_INT8}.onnx")
    run_checks(validate_encodec_stream(create_session(out / "encodec_stream_front.onnx"),
                                       create_session(out / "encodec_stream_back.onnx"), models, seed=seed,
                                       int8_front_session=int8_front))

    text_config = None
    if text:
        step("t5_encoder.onnx + tokenizer.json (text prompts)")
        text_config = export_text_encoder(models, out)
        specs["t5_encoder"] = t5_encoder_spec(text_dim)
        prompts = (directives or load_directives())[:6] + ["slow jazz piano", "warm strings, no drums, 60 bpm"]
        run_checks(validate_text_encoder(create_session(out / "t5_encoder.onnx"), out / text_config.tokenizer_file,
                                         models, prompts))

    failed = [c for c in checks if not c.ok]
    if failed:
        raise Img2MusicError(f"export validation failed for {len(failed)} output(s): "
                             + ", ".join(f"{c.graph}.{c.output}" for c in failed))
    quantized = None
    if release_weights:  # what runs after this point is ONNX graphs (and the decoder as a torch reference)
        import gc

        for module in [models.clip] + ([mg] if reference == "onnx" else [mg.text_encoder, mg.audio_encoder]):
            module.to("meta")  # configs stay readable
        gc.collect()
    if quantization is not None:
        from img2music.calibration.build_quantized import quantize_bundle

        step(f"{quantization.precision}: " + ("float16 graphs" if quantization.precision == "fp16"
                                              else "calibration, quantization") + ", accuracy report"
             + (" (reference: transformers)" if reference == "torch" else ""))
        torch_reference = None
        if reference == "torch":
            from img2music.calibration.torch_decoder_session import TorchDecoderSession

            torch_reference = TorchDecoderSession(mg, decoder_config)
        quantized = quantize_bundle(out, decoder_config, models.image_config, quantization, report=report,
                                    reference=torch_reference)
        if release_weights:
            mg.to("meta")
        if quantization.precision == "fp16":  # a GPU bundle: its step must replay as a CUDA graph
            quantized["quantization"]["cuda_graph"] = check_cuda_graph(out, report)
        cache = quantized["kv_cache"]["dtype"]
        specs["decoder_step"] = decoder_step_spec(d.num_codebooks, d.vocab_size, d.num_layers, d.num_heads,
                                                  d.head_dim, kv_cache_dtype=cache)
        specs["cross_kv"] = cross_kv_spec(text_dim, d.num_layers, d.num_heads, d.head_dim, attention_dtype(cache))
    step("manifest.json (hashes, configs, versions)")
    if ENCODEC_FRONT_INT8 in specs:
        quantized = dict(quantized or {})
        quantized["graph_precisions"] = {**quantized.get("graph_precisions", {}), ENCODEC_FRONT_INT8: "int8"}
    return write_manifest(out, specs, models, directives, num_tokens, checks, quantized, projector=trained,
                          text=text_config)


def check_cuda_graph(root: Path, report: Callable[[str], None]) -> dict:
    """The fp16 step graph can be captured as a CUDA graph: no node of it would need a host-device
    copy on the CUDA provider (export.cuda_placement); the manifest records where its shape nodes run."""
    import onnx

    from img2music.export.cuda_placement import check_capturable

    model = onnx.load(str(root / "decoder_step.onnx"), load_external_data=False)
    found = check_capturable(model, "decoder_step", host_inputs=frozenset({"total_sequence_length"}))
    report(f"  CUDA graph: decoder_step needs no host-device copy ({len(found.on_cpu)} shape node(s) on the "
           f"CPU: {', '.join(found.on_cpu) or 'none'})")
    return {"capturable": True, "host_nodes": found.on_cpu}


def _physical_memory() -> int | None:
    """Bytes of RAM on this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def load_trained_projector(path: str, clip_dim: int, text_dim: int):
    """(projector module, manifest provenance) from a train.py checkpoint that fits these models."""
    from img2music.training.evaluate import load_checkpoint

    model, state = load_checkpoint(path)
    c = model.config
    if (c.clip_dim, c.cond_dim) != (clip_dim, text_dim):
        raise Img2MusicError(f"projector {path} maps CLIP {c.clip_dim} -> T5 {c.cond_dim}, but these models need "
                             f"{clip_dim} -> {text_dim}: it was trained for other models")
    data = state.get("dataset", {})
    return model, {"kind": state["projector"]["kind"], "checkpoint": str(path), "epoch": state["epoch"],
                   "best_val_latent": state["best"], "dataset": {k: data.get(k) for k in
                                                                 ("preset", "musicgen", "clip", "captioner", "llm",
                                                                  "prompt", "splits")}}
