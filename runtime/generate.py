"""One-shot generation: image files -> WAV files, with per-stage timings.

Usage::

    python runtime/generate.py --preset tiny --image photo.jpg --seconds 5 --out out/
    python runtime/generate.py --engines engines/small --image photo.jpg --seconds 10 --out out/
    python runtime/generate.py --musicgen facebook/musicgen-small \\
        --clip openai/clip-vit-base-patch32 --image a.jpg --image b.png --seconds 10 --out out/

With ``--engines`` the exported bundle runs on ONNX Runtime (no torch); otherwise the
PyTorch reference pipeline runs the models directly. Every image gets ``<stem>.wav`` (float32, the model's sample rate) in ``--out``. The
projector is the zero-shot prompt bank; the chosen directive is printed per image.
Bad input (missing/unreadable image, bad duration, unwritable output) is reported
before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as `python runtime/generate.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from export.presets import PRESETS  # plain data: imports neither torch nor transformers
from runtime.cli_types import positive_float
from runtime.audio_files import prepare_output_dir, wav_names, write_wav
from runtime.errors import Img2MusicError, run_cli, setup_logging
from runtime.preprocess import check_images
from runtime.sampling import SamplingConfig



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate.py",
        description="Turn images into music (one WAV per image).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--image", action="append", required=True, metavar="PATH",
                   help="image file; repeat for a batch (one WAV each)")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="length of the music per image, in seconds")
    p.add_argument("--out", default="out", help="output directory for the WAV files")
    src = p.add_argument_group("models: an engine bundle, a preset, or checkpoints "
                               "(default facebook/musicgen-small + openai/clip-vit-base-patch32)")
    src.add_argument("--engines", default=None, metavar="DIR",
                     help="engine bundle from export/build_engines.py (runs on onnxruntime, no torch)")
    src.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime (default: all cores)")
    src.add_argument("--preset", choices=PRESETS, default=None,
                     help="built-in random-weight models: tiny (tests, demo) or real sizes (benchmarks)")
    src.add_argument("--musicgen", default=None, help="MusicGen hub id or local directory")
    src.add_argument("--clip", default=None, help="CLIP hub id or local directory")
    s = p.add_argument_group("sampling")
    d = SamplingConfig()
    s.add_argument("--guidance-scale", type=float, default=d.guidance_scale,
                   help="classifier-free guidance scale (<= 1 turns guidance off)")
    s.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature")
    s.add_argument("--top-k", type=int, default=d.top_k, help="keep the k most likely tokens (0 = all)")
    s.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass (0 = off)")
    s.add_argument("--seed", type=int, default=d.seed, help="sampling seed")
    s.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    sampling = SamplingConfig(
        guidance_scale=args.guidance_scale, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, greedy=args.greedy,
    )
    if sum(bool(x) for x in (args.engines, args.preset, args.musicgen or args.clip)) > 1:
        raise Img2MusicError("give one of --engines, --preset or --musicgen/--clip")
    # Everything the user typed is checked before the (slow) model load.
    images = check_images(args.image)
    out_dir = prepare_output_dir(args.out)

    from tqdm import tqdm

    from runtime.delay_pattern import frames_for_seconds, steps_for_frames
    from runtime.timing import StageTimer

    timer = StageTimer()
    if args.engines:
        from runtime.onnx_pipeline import OnnxPipeline

        with timer.stage("load bundle"):
            pipeline = OnnxPipeline.load(args.engines, threads=args.threads)
    else:
        from export.models import load_models
        from runtime.reference import ReferencePipeline

        with timer.stage("load models"):
            models = load_models(preset=args.preset, musicgen=args.musicgen, clip=args.clip)
        with timer.stage("prompt bank"):
            pipeline = ReferencePipeline(models)
    frames = frames_for_seconds(args.seconds, pipeline.frame_rate)
    steps = steps_for_frames(frames, pipeline.num_codebooks)
    start = time.perf_counter()
    with tqdm(total=steps, desc="decoder steps", unit="step", disable=args.no_progress, file=sys.stderr) as bar:
        # transformers may run one forward more than the steps that produce tokens
        result = pipeline(images, args.seconds, sampling, on_step=lambda: bar.n < steps and bar.update(1))
    gen_seconds = time.perf_counter() - start
    timer.merge(result.timer)
    with timer.stage("write wav"):
        paths = [write_wav(out_dir / name, audio, result.sample_rate)
                 for name, audio in zip(wav_names(args.image), result.audio)]

    audio_seconds = result.audio.shape[1] / result.sample_rate
    for i, path in enumerate(paths):
        directive = result.directives[i] if result.directives else "(trained projector)"
        print(f"{args.image[i]} -> {path}  ({audio_seconds:.2f} s)  directive: {directive}")
    print()
    print(timer.table())
    print(f"\n{len(paths)} x {audio_seconds:.2f} s of audio, {steps} decoder steps, "
          f"real-time factor {gen_seconds / audio_seconds:.2f} (generation / audio length, batch of {len(paths)})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
