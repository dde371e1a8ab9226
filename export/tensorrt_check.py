"""Ahead-of-time TensorRT build check with TensorRT-RTX: do the TensorRT graphs of a bundle build?

A machine without a GPU cannot run TensorRT, but TensorRT-RTX (``pip install
tensorrt-rtx``) parses ONNX and builds engines ahead of time for a given compute
capability (8.6 = RTX 3090) with no GPU present. Every graph ``--provider tensorrt``
hands to TensorRT is parsed and built here with the same optimization profile the
runtime asks for, so an op or shape TensorRT cannot take fails in CI, not on the
installation. TensorRT-RTX is not TensorRT (its parser and kernels differ in places):
a pass here is necessary, not sufficient; the GPU check runs the real thing.

Usage::

    python export/tensorrt_check.py engines/tiny-fp16 [--compute-capability 8.6]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging
from img2music.runtime.backends.providers import TENSORRT_GRAPHS, tensorrt_profile
from img2music.runtime.bundle.loading import load_bundle


@dataclass
class BuildResult:
    graph: str
    ok: bool
    detail: str
    """Engine size, or what failed (the parser's or builder's first error)."""

    def line(self) -> str:
        return f"  {'✓' if self.ok else '✗'} {self.graph}: {self.detail}"


def tensorrt_rtx():
    try:
        import tensorrt_rtx
    except ImportError:
        raise Img2MusicError("the TensorRT build check needs TensorRT-RTX: pip install tensorrt-rtx "
                             "(Linux x86_64; part of the dev extra)") from None
    return tensorrt_rtx


def check_bundle(root: str | Path, compute_capability: str = "8.6") -> list[BuildResult]:
    """Build every TensorRT graph of a bundle for ``compute_capability`` (no GPU needed)."""
    trt = tensorrt_rtx()
    bundle = load_bundle(root, verify_hashes=False)
    target = getattr(trt.ComputeCapability, "SM" + compute_capability.replace(".", ""), None)
    if target is None:
        raise Img2MusicError(f"TensorRT-RTX {trt.__version__} cannot build for compute capability {compute_capability}")
    results = []
    for name in TENSORRT_GRAPHS:
        logger = _Errors(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(bundle.graph_path(name))):
            first = parser.get_error(0) if parser.num_errors else "no detail"
            results.append(BuildResult(name, False, f"parse failed: {first}"))
            continue
        config = builder.create_builder_config()
        config.num_compute_capabilities = 1
        config.set_compute_capability(target, 0)
        profile = builder.create_optimization_profile()
        for input_name, (lo, opt, hi) in tensorrt_profile(bundle.graph(name).spec(name), bundle.model).items():
            profile.set_shape(input_name, lo, opt, hi)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            results.append(BuildResult(name, False, f"build failed: {logger.first or 'no detail'}"))
        else:
            results.append(BuildResult(name, True, f"engine {engine.nbytes / 2**20:.1f} MiB for SM {compute_capability}"))
    return results


def _Errors(trt):
    """A TensorRT logger that keeps the first error (and prints nothing)."""

    class Errors(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.first = None

        def log(self, severity, msg) -> None:
            if severity <= trt.ILogger.Severity.ERROR and self.first is None:
                self.first = msg.strip().splitlines()[0][:300]

    return Errors()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tensorrt_check.py", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("bundle", help="engine bundle directory")
    p.add_argument("--compute-capability", default="8.6", help="target GPU architecture (8.6 = RTX 3090)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    results = check_bundle(args.bundle, args.compute_capability)
    for r in results:
        print(r.line())
    failed = [r.graph for r in results if not r.ok]
    if failed:
        raise Img2MusicError(f"TensorRT-RTX could not build {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
