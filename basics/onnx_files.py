"""Saving ONNX models the one way every graph of a bundle is saved (onnx imported inside)."""

from __future__ import annotations

import os
from pathlib import Path


def save_model(model: "onnx.ModelProto", path: str | os.PathLike) -> None:  # noqa: F821
    """Save with weights in a side file (``<name>.data``): real sizes pass protobuf's 2 GB limit."""
    import onnx

    path = Path(path)
    data = path.with_suffix(path.suffix + ".data")
    if data.exists():
        data.unlink()
    large = sum(t.ByteSize() for t in model.graph.initializer) > 256 * 2**20
    if large:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
