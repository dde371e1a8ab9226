"""Tracing torch modules to ONNX (clip_vision, a trained projector, the EnCodec stream graphs, t5_encoder).

Uses torch's TorchScript-based exporter (``dynamo=False``): the dynamo exporter in
torch 2.13 fails on EnCodec's data-dependent padding, and the traced graphs are
validated against the modules anyway (``export.validation``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from img2music.basics.graph_specs import GraphSpec
from img2music.export.onnx_graph import OPSET


def export_module(module, example_inputs: tuple, spec: GraphSpec, path: Path) -> None:
    """Trace ``module(*example_inputs)`` into ``path`` with the spec's names and dynamic axes."""
    import onnx
    import torch

    from img2music.basics.onnx_files import save_model

    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        torch.onnx.export(
            module.eval(), example_inputs, str(tmp), input_names=spec.input_names,
            output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(), opset_version=OPSET,
            dynamo=False, do_constant_folding=True,
        )
    model = onnx.load(str(tmp), load_external_data=True)
    for extra in tmp.parent.glob(tmp.name + "*"):
        extra.unlink()
    # the tracer names some static sizes symbolically (e.g. a mask built with torch.ones);
    # the spec is the contract, so its fixed sizes are written into the graph's outputs
    for value, tensor in zip(model.graph.output, spec.outputs):
        for dim, size in zip(value.type.tensor_type.shape.dim, tensor.shape):
            if isinstance(size, int):
                dim.dim_value = size
    model.metadata_props.append(onnx.StringStringEntryProto(key="graph", value=spec.name))
    save_model(model, path)


def _module_base():
    from torch import nn

    return nn.Module


class ClipVisionGraph(_module_base()):
    """pixel_values (B, 3, S, S) -> image_embeds (B, D_clip): CLIP's projected image features."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):
        out = self.clip.get_image_features(pixel_values=pixel_values)
        return getattr(out, "pooler_output", out)


class ProjectorGraph(_module_base()):
    """image_embeds (B, D_clip) -> conditioning (B, N, D_t5), conditioning_mask (B, N): a trained projector."""

    def __init__(self, projector) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, image_embeds):
        out = self.projector(image_embeds)
        return out.conditioning, out.mask


class T5EncoderGraph(_module_base()):
    """input_ids (B, T), attention_mask (B, T) -> text_hidden (B, T, D_t5), zero where masked."""

    def __init__(self, text_encoder) -> None:
        super().__init__()
        self.encoder = text_encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden * attention_mask[..., None].to(hidden.dtype)  # (B, T, D_t5)
