"""argparse value types shared by the CLIs: a bad number is one clear usage error."""

from __future__ import annotations

import argparse
import math


def number(kind=float, low: float | None = None, high: float | None = None, above: bool = False):
    """A parser for finite numbers of ``kind`` in [low, high] (``above``: strictly > low);
    "nan" and "inf" parse as floats but mean nothing as a setting."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole ' if kind is int else ''}number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and (value <= low if above else value < low):
            wanted = "a positive number" if above and low == 0 else f"{'>' if above else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} number"  # argparse names the type in its errors
    return parse


def positive(kind=float):
    """A parser for numbers > 0 (finite) of ``kind``."""
    return number(kind, 0, above=True)


non_negative = number(float, 0)
"""A float >= 0 (finite)."""
non_negative_int = number(int, 0)
finite = number(float)
unit_interval = number(float, 0, 1)


positive_float = positive(float)


def add_provider_arguments(parser: argparse.ArgumentParser) -> None:
    """--provider and --no-cuda-graph, as every CLI that runs a bundle takes them."""
    from img2music.runtime.backends.providers import PROVIDERS

    parser.add_argument("--provider", choices=PROVIDERS, default="cpu",
                        help="where the bundle runs: cpu (any bundle), cuda or tensorrt (fp16 bundles, onnxruntime-gpu)")
    parser.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                        help="GPU: run the decoder step without CUDA-graph replay")


def add_encodec_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """--encodec: which streaming EnCodec front runs (``runtime.pipeline.encodec_choice``)."""
    parser.add_argument("--encodec", choices=("auto", "float32", "int8"), default=default,
                        help="streaming EnCodec front: float32 (equal to the full decode), int8 (the bundle's "
                             "int8-LSTM variant, >= 60 dB), auto (the faster of the two here, measured once per "
                             "host and bundle)")


def add_sampling_arguments(parser: argparse.ArgumentParser, seed_help: str = "sampling seed") -> None:
    """--guidance-scale, --temperature, --top-k, --top-p and --seed, checked and with the
    SamplingConfig defaults, as every CLI that generates takes them."""
    from img2music.runtime.generation.sampling import SamplingConfig

    d = SamplingConfig()
    parser.add_argument("--guidance-scale", type=finite, default=d.guidance_scale,
                        help="classifier-free guidance scale (<= 1 turns guidance off)")
    parser.add_argument("--temperature", type=positive_float, default=d.temperature, help="sampling temperature")
    parser.add_argument("--top-k", type=non_negative_int, default=d.top_k,
                        help="keep the k most likely tokens (0 = all)")
    parser.add_argument("--top-p", type=unit_interval, default=d.top_p, help="nucleus sampling mass (0 = off)")
    parser.add_argument("--seed", type=int, default=d.seed, help=seed_help)


def prompt_text(text: str) -> str:
    """A --prompt: words, not only white space (the prompt's length is checked against the bundle's limit later)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the prompt is empty: give some words, e.g. --prompt \"slow warm piano\"")
    return text.strip()


def add_prompt_arguments(parser) -> None:
    """--prompt and --prompt-weight, as generate.py and live.py take them (``runtime.generation.conditioning``)."""
    from img2music.runtime.generation.conditioning import PROMPT_WEIGHT_RANGE

    low, high = PROMPT_WEIGHT_RANGE
    parser.add_argument("--prompt", type=prompt_text, default=None, metavar="TEXT",
                        help="text prompt, e.g. \"slow, warm, no drums\": with an image it joins the image's "
                             "conditioning, alone it is plain MusicGen text-to-music (bundles: built with text)")
    parser.add_argument("--prompt-weight", type=number(float, low, high), default=None, metavar="W",
                        help=f"how much the prompt counts against the image, {low:g}..{high:g}: 1 joins them as "
                             "MusicGen would, 0 ignores the prompt, 2 doubles its share of the attention (default 1)")


def check_prompt_arguments(args, has_image: bool) -> float:
    """The prompt weight to use; one clear error for a weight that has nothing to weigh."""
    from img2music.basics.errors import Img2MusicError

    if args.prompt_weight is not None and args.prompt is None:
        raise Img2MusicError("--prompt-weight needs --prompt")
    if args.prompt_weight is not None and not has_image:
        raise Img2MusicError("--prompt-weight weighs the prompt against an image; without --image it has nothing "
                             "to weigh against")
    return 1.0 if args.prompt_weight is None else args.prompt_weight
