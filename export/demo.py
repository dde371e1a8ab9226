"""The built-in demo: real photographs (scikit-image) -> music, on the tiny preset.

Usage::

    python -m img2music.export.demo --out out/demo            # what `make demo` runs
    python -m img2music.export.demo --preset small-random --seconds 10

Writes the photographs to ``<out>/images/``; runs the PyTorch reference pipeline
(one WAV per photograph in ``<out>/reference/``), exports the models into an engine
bundle (``<out>/engines/``) and runs it on ONNX Runtime (``<out>/onnx/``), printing
the chosen directives and per-stage timings of both. Random weights make noise, not
music: the demo shows every stage running and what it costs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli
from img2music.basics.presets import PRESETS

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def write_photos(out_dir: Path) -> list[Path]:
    """Save a few of scikit-image's real photographs as PNG files."""
    try:
        import skimage.data
    except ImportError as exc:
        raise Img2MusicError("the demo's photographs come from scikit-image: pip install 'img2music[dev]'") from exc
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        path = out_dir / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output directory")
    p.add_argument("--preset", default="tiny", choices=PRESETS, help="models to use")
    p.add_argument("--seconds", default="4", help="seconds of music per photograph")
    args = p.parse_args(argv)
    out = Path(args.out)
    photos = write_photos(out / "images")
    print(f"photographs: {', '.join(str(p) for p in photos)}")
    from img2music.basics.models import load_models
    from img2music.export.bundle_build import build_bundle
    from img2music.runtime.cli import generate

    images = [arg for photo in photos for arg in ("--image", str(photo))]
    common = ["--seconds", args.seconds, "--no-progress", *images]
    print("\n== PyTorch reference (transformers) ==")
    generate.main(["--preset", args.preset, "--out", str(out / "reference"), *common])
    print("\n== export: engine bundle ==")
    engines = out / "engines"
    shutil.rmtree(engines, ignore_errors=True)
    build_bundle(engines, load_models(preset=args.preset), report=print)
    print("\n== ONNX Runtime (the exported runtime, no torch) ==")
    return generate.main(["--engines", str(out / "engines"), "--out", str(out / "onnx"), *common])


def cli() -> None:
    """Console-script entry point (img2music-demo)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
