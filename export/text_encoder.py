"""t5_encoder.onnx + tokenizer.json: MusicGen's text path in the bundle.

The T5 encoder is traced as it is (fp32; quantized bundles give it 8-bit weights in
calibration/) and its output is zeroed where the mask is 0, as the prompt bank stores
its encodings. The tokenizer goes in as the ``tokenizers`` library's JSON, so the
runtime tokenizes without transformers; padding and truncation are switched off in the
file: the runtime encodes one prompt at a time and refuses one that is too long rather
than cutting it (a cut prompt would be silently different music).
"""

from __future__ import annotations

import json
from pathlib import Path

from img2music.basics.errors import Img2MusicError
from img2music.basics.model_config import TextConfig
from img2music.runtime.pipeline.text_encoder import TOKENIZER_FILE

MAX_PROMPT_TOKENS = 512
"""T5's tokenizers are made for 512 tokens (``model_max_length``); relative positions would
take more, but nothing was trained on longer text."""


def export_text_encoder(models, out: Path) -> TextConfig:
    """Write ``t5_encoder.onnx`` and ``tokenizer.json`` into ``out``; returns the manifest's text section."""
    import torch

    from img2music.basics.graph_specs import t5_encoder_spec
    from img2music.export.torch_export import T5EncoderGraph, export_module

    tokenizer = models.t5_tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise Img2MusicError(f"MusicGen's tokenizer ({type(tokenizer).__name__}) has no tokenizers-library form "
                             "(tokenizer.json); build the bundle with --no-text, or give a checkpoint that has one")
    data = json.loads(backend.to_str())
    data["truncation"], data["padding"] = None, None
    (out / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    text_dim = models.musicgen.config.text_encoder.hidden_size
    # A padded row in the example: the traced graph must keep the mask path (an all-ones
    # example could let the attention skip its mask and trace that branch).
    ids = torch.tensor([[5, 6, 7, 8, 1], [5, 6, 1, 0, 0]], dtype=torch.long)
    mask = (torch.arange(5)[None] < torch.tensor([[5], [3]])).long()
    export_module(T5EncoderGraph(models.musicgen.text_encoder), (ids, mask), t5_encoder_spec(text_dim),
                  out / "t5_encoder.onnx")
    limit = int(getattr(tokenizer, "model_max_length", MAX_PROMPT_TOKENS) or MAX_PROMPT_TOKENS)
    return TextConfig(TOKENIZER_FILE, min(limit, MAX_PROMPT_TOKENS),
                      int(models.musicgen.config.text_encoder.vocab_size))
