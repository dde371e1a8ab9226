"""argparse value types shared by the CLIs: a bad number is one clear usage error."""

from __future__ import annotations

import argparse
import math


def positive(kind=float):
    """A parser for numbers > 0 (finite) of ``kind``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative(text: str) -> float:
    """A float >= 0 (finite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


positive_float = positive(float)


def add_provider_arguments(parser: argparse.ArgumentParser) -> None:
    """--provider and --no-cuda-graph, as every CLI that runs a bundle takes them."""
    from runtime.backends import PROVIDERS

    parser.add_argument("--provider", choices=PROVIDERS, default="cpu",
                        help="where the bundle runs: cpu (any bundle), cuda or tensorrt (fp16 bundles, onnxruntime-gpu)")
    parser.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                        help="GPU: run the decoder step without CUDA-graph replay")
