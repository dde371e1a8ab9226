"""projector.onnx for the zero-shot prompt bank: the selection as a graph.

image_embeds (B, D_clip) -> L2-normalise -> cosine with every directive ->
argmax -> gather that directive's T5 encoding and mask. The same interface as a
trained projector's graph, plus the chosen index and score (the runtime shows the
directive's text, which is stored in the manifest). Ties go to the first directive,
as numpy's argmax (``basics.prompt_bank``) does.
"""

from __future__ import annotations

import numpy as np

from img2music.basics.graph_specs import projector_spec
from img2music.basics.prompt_bank import PromptBank
from img2music.export.onnx_graph import FLOAT, INT64, GraphBuilder


def build_prompt_bank_graph(bank: PromptBank) -> "onnx.ModelProto":  # noqa: F821
    p, n, d_t5 = bank.t5_hidden.shape
    clip_dim = bank.text_embeds.shape[1]
    spec = projector_spec(clip_dim, n, d_t5, prompt_bank=True)
    g = GraphBuilder("projector")
    g.input("image_embeds", FLOAT, spec.inputs[0].shape)
    norm = g.op("ReduceL2", ["image_embeds"], axes=[1], keepdims=1)  # (B, 1); axes is an attribute before opset 18
    unit = g.op("Div", ["image_embeds", g.op("Max", [norm, g.const(1e-12, np.float32)])])
    sims = g.op("MatMul", [unit, g.weight("directive_text_embeds_t", bank.text_embeds.T.astype(np.float32))])  # (B, P)
    index = g.op("ArgMax", [sims], axis=1, keepdims=0, select_last_index=0)  # (B,)
    score = g.op("GatherElements", [sims, g.op("Unsqueeze", [index, g.const([1])])], axis=1)  # (B, 1)
    cond = g.op("Gather", [g.weight("directive_t5_hidden", bank.t5_hidden.astype(np.float32)), index], axis=0)
    mask = g.op("Gather", [g.weight("directive_t5_mask", bank.t5_mask.astype(np.int64)), index], axis=0)
    g.output(cond, "conditioning", FLOAT, spec.outputs[0].shape)
    g.output(mask, "conditioning_mask", INT64, spec.outputs[1].shape)
    g.output(index, "directive_index", INT64, spec.outputs[2].shape)
    g.output(g.op("Squeeze", [score, g.const([1])]), "directive_score", FLOAT, spec.outputs[3].shape)
    return g.model({"graph": "projector", "projector": "prompt_bank", "directives": str(p)})
