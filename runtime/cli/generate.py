"""One-shot generation: image files and/or a text prompt -> WAV files, with per-stage timings.

Usage::

    python runtime/generate.py --preset tiny --image photo.jpg --seconds 5 --out out/
    python runtime/generate.py --engines engines/small --image photo.jpg --prompt "slow jazz piano" --out out/
    python runtime/generate.py --engines engines/small --prompt "slow jazz piano" --out out/  # text alone
    python runtime/generate.py --engines engines/small --image photo.jpg --seconds 10 --out out/
    python runtime/generate.py --musicgen facebook/musicgen-small \\
        --clip openai/clip-vit-base-patch32 --image a.jpg --image b.png --seconds 10 --out out/
    python runtime/generate.py --engines engines/small --manifest pictures.csv --out out/  # a batch
    python runtime/generate.py --engines engines/small --manifest pictures.csv --out out/ --ray --threads 1

With ``--engines`` the exported bundle runs on ONNX Runtime (no torch) and any length
works: past MusicGen's trained 30 s, windows are re-primed from their last seconds
(``--window-seconds`` / ``--keep-seconds``), and the audio is written as it is made
(Ctrl-C keeps valid WAVs of what was made). Otherwise the PyTorch reference pipeline
runs the models directly (transformers ``generate``: one window, at most ~40 s). Every
image gets ``<stem>.wav`` (float32, the model's sample rate) in ``--out`` (a prompt alone:
``prompt.wav``); the chosen prompt-bank directive is printed per image. ``--prompt`` joins
every image's conditioning (``runtime.generation.conditioning`` says how, ``--prompt-weight`` how much).
Bad input (missing/unreadable image, bad duration, empty prompt, unwritable output) is
reported before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging
from img2music.basics.presets import PRESETS  # plain data: imports neither torch nor transformers
from img2music.runtime import SamplingConfig
from img2music.runtime.audio.files import WavRecorder, prepare_output_dir, printable, wav_names
from img2music.runtime.cli.arguments import (
    add_encodec_argument,
    add_prompt_arguments,
    add_provider_arguments,
    add_sampling_arguments,
    check_prompt_arguments,
    positive,
    positive_float,
)
from img2music.runtime.pipeline.preprocess import check_images


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate.py",
        description="Turn images into music (one WAV per image).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--image", action="append", default=None, metavar="PATH",
                   help="image file; repeat for a batch (one WAV each); optional with --prompt")
    add_prompt_arguments(p)
    p.add_argument("--seconds", type=positive_float, default=5.0, help="length of the music per image, in seconds")
    p.add_argument("--out", default="out", help="output directory for the WAV files")
    src = p.add_argument_group("models: an engine bundle, a preset, or checkpoints "
                               "(default facebook/musicgen-small + openai/clip-vit-base-patch32)")
    src.add_argument("--engines", default=None, metavar="DIR",
                     help="engine bundle from export/build_engines.py (runs on onnxruntime, no torch)")
    src.add_argument("--threads", type=positive(int), default=None,
                     help="CPU threads for onnxruntime (default: all cores)")
    add_provider_arguments(src)
    add_encodec_argument(src, default="float32")
    src.add_argument("--window-seconds", type=positive_float, default=30.0,
                     help="--engines: generation window before re-priming (MusicGen's trained 30 s; at most ~40.9 s)")
    src.add_argument("--keep-seconds", type=positive_float, default=12.0,
                     help="--engines: music carried into the next window as its prompt (audiocraft's default)")
    src.add_argument("--preset", choices=PRESETS, default=None,
                     help="built-in random-weight models: tiny (tests, demo) or real sizes (benchmarks)")
    src.add_argument("--musicgen", default=None, help="MusicGen hub id or local directory")
    src.add_argument("--clip", default=None, help="CLIP hub id or local directory")
    s = p.add_argument_group("sampling")
    add_sampling_arguments(s)
    s.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    b = p.add_argument_group("batches: a manifest of images and/or prompts (runtime/pipeline/batch.py)")
    b.add_argument("--manifest", default=None, metavar="FILE",
                   help="CSV/JSONL with image and/or text (prompt), optional id and prompt_weight: one WAV per row "
                        "plus index.jsonl in --out; rerunning resumes (needs --engines)")
    b.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="--manifest on a Ray cluster at ADDRESS; without an address, a local Ray on this machine "
                        "(pip install 'img2music[ray]')")
    b.add_argument("--ray-workers", type=positive(int), default=None,
                   help="Ray workers, each with the bundle loaded once (default: cluster CPUs / --threads, or GPUs)")
    b.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray worker reserves (--provider cuda)")
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
    if args.manifest or args.ray:
        return _batch(args, sampling)
    # Everything the user typed is checked before the (slow) model load.
    if not args.image and args.prompt is None:
        raise Img2MusicError("give --image (one or more), --prompt, or both")
    prompt_weight = check_prompt_arguments(args, has_image=bool(args.image))
    images = check_images(args.image) if args.image else None
    out_dir = prepare_output_dir(args.out)

    from tqdm import tqdm

    from img2music.runtime.generation.delay_pattern import frames_for_seconds
    from img2music.runtime.pipeline.timing import StageTimer

    timer = StageTimer()
    if args.engines:
        from img2music.runtime import OnnxPipeline

        with timer.stage("load bundle"):
            pipeline = OnnxPipeline.load(args.engines, threads=args.threads, provider=args.provider,
                                         cuda_graph=args.cuda_graph, encodec=args.encodec,
                                         encodec_chunk=50)  # auto measures at 1 s pushes: a few seconds once per host
    else:
        from img2music.basics.models import load_models

        with timer.stage("load models"):  # first: it names the missing extra when torch is not installed
            models = load_models(preset=args.preset, musicgen=args.musicgen, clip=args.clip)
        from img2music.runtime.torch_reference import ReferencePipeline
        with timer.stage("prompt bank"):
            pipeline = ReferencePipeline(models)
    frames = frames_for_seconds(args.seconds, pipeline.frame_rate)
    names = wav_names(args.image) if args.image else ["prompt.wav"]
    paths = [out_dir / name for name in names]
    recorders: list[WavRecorder] = []
    start = time.perf_counter()
    try:
        with tqdm(total=frames, desc="music", unit="frame", disable=args.no_progress, file=sys.stderr) as bar:
            if args.engines:
                directives = _stream_to_wavs(pipeline, images, sampling, args, paths, recorders, timer, bar,
                                             prompt_weight)
            else:
                # transformers may run one forward more than the steps that produce tokens
                result = pipeline(images, args.seconds, sampling, on_step=lambda: bar.n < frames and bar.update(1),
                                  prompt=args.prompt, prompt_weight=prompt_weight)
                directives = result.directives
                timer.merge(result.timer)
                with timer.stage("write wav"):
                    channels = result.audio.shape[2] if result.audio.ndim == 3 else 1  # (B, S[, C])
                    for path, audio in zip(paths, result.audio):
                        recorders.append(WavRecorder(str(path), result.sample_rate, channels=channels))
                        recorders[-1].write(audio)
    except KeyboardInterrupt:
        if recorders:
            kept = ", ".join(f"{r.samples / r.rate:.2f} s in {r.path}" for r in recorders)
            print(f"interrupted: kept {kept}", file=sys.stderr)
        raise
    finally:
        for recorder in recorders:
            recorder.close()
    elapsed = time.perf_counter() - start - timer.seconds.get("write wav", 0.0)

    audio_seconds = recorders[0].samples / recorders[0].rate
    for i, path in enumerate(paths):
        what = printable(args.image[i]) if args.image else f"prompt {args.prompt!r}"
        directive = directives[i] if directives else ("(none: text alone)" if not args.image else "(trained projector)")
        extra = f"  + prompt {args.prompt!r} (weight {prompt_weight:g})" if args.image and args.prompt else ""
        print(f"{what} -> {printable(path)}  ({audio_seconds:.2f} s)  directive: {directive}{extra}")
    print()
    print(timer.table())
    print(f"\n{len(paths)} x {audio_seconds:.2f} s of audio, {frames} code frames, "
          f"real-time factor {elapsed / audio_seconds:.2f} (generation / audio length, batch of {len(paths)})")
    return 0


def _batch(args, sampling: SamplingConfig) -> int:
    """--manifest: every row to a WAV + index line, in this process or on Ray."""
    from img2music.runtime.pipeline import batch as bg

    if not args.manifest:
        raise Img2MusicError("--ray runs a --manifest")
    if not args.engines:
        raise Img2MusicError("--manifest runs an engine bundle: give --engines DIR")
    if args.image or args.prompt is not None:
        raise Img2MusicError("--manifest takes the images and prompts from the manifest: leave out --image / --prompt")
    if args.gpus_per_worker < 0 or (args.gpus_per_worker > 0 and args.provider == "cpu"):
        raise Img2MusicError("--gpus-per-worker must be >= 0, and > 0 only with --provider cuda or tensorrt")
    items = bg.read_items(args.manifest)
    out = prepare_output_dir(args.out)
    from img2music.runtime import load_bundle

    load_bundle(args.engines)  # a bad bundle fails here, once, not in every worker
    settings = bg.BatchSettings(args.engines, args.seconds, sampling, args.threads, args.provider,
                                args.window_seconds, args.keep_seconds)
    from tqdm import tqdm

    def progress(**kw):
        return tqdm(disable=args.no_progress, file=sys.stderr, **kw)

    result = bg.run(items, settings, out, progress, ray_address=args.ray, workers=args.ray_workers,
                    gpus_per_worker=args.gpus_per_worker, verbose=args.verbose)
    print(f"{result['made']} pieces made, {result['skipped']} already in {printable(out / bg.INDEX)}, "
          f"{len(result['failed'])} failed")
    if result["failed"]:
        for record in result["failed"][:10]:
            print(f"  {record['id']}: {record['error']}", file=sys.stderr)
        raise Img2MusicError(f"{len(result['failed'])} of {len(items)} items failed (listed above); "
                             "fix them and run the same command again")
    return 0


def _stream_to_wavs(pipeline, images, sampling, args, paths, recorders: list, timer, bar,
                    prompt_weight: float) -> list[str] | None:
    """The ONNX path: chunks into the WAV files as they are made (``recorders`` filled here, so
    the caller can close them on Ctrl-C); stages timed into ``timer``; returns the directives."""
    recorders.extend(WavRecorder(str(path), pipeline.sample_rate, channels=pipeline.channels) for path in paths)
    stream = pipeline.stream_to_files(recorders, images, args.seconds, sampling, window_seconds=args.window_seconds,
                                      keep_seconds=args.keep_seconds, timer=timer, prompt=args.prompt,
                                      prompt_weight=prompt_weight, on_chunk=lambda chunk: bar.update(chunk.codes.shape[2]))
    return stream.directives


def cli() -> None:
    """Console-script entry point (img2music-generate)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
