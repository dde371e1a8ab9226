"""Live music from a camera (or video, slideshow, generated scenes), endless and seamless.

Usage::

    python runtime/live.py --camera 0 --engines engines/small
    python runtime/live.py --camera rtsp://10.0.0.5/stream --engines engines/small --record room.wav
    python runtime/live.py --camera "nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! \\
        videoconvert ! video/x-raw,format=BGR ! appsink" --engines engines/small   # Jetson CSI
    python runtime/live.py --video walk.mp4 --engines engines/small --no-audio --record walk.wav
    python runtime/live.py --images photos/ --interval 8 --engines engines/small
    python runtime/live.py --synthetic --engines engines/tiny --no-audio --record out.wav --duration 20

Runs until Ctrl-C / SIGTERM (or ``--duration`` seconds of music); the WAV is finalized
either way. A status line shows buffer, real-time factor, underflows, frame age and
the current directive; ``--metrics FILE`` appends the same as JSON lines every second.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as `python runtime/live.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from basics.errors import Img2MusicError, run_cli, setup_logging
from runtime.cli_types import add_provider_arguments, non_negative, positive
from runtime.live_engine import LiveConfig
from runtime.sampling import SamplingConfig
from runtime.scene import SceneConfig


def build_parser() -> argparse.ArgumentParser:
    d, s, sc = LiveConfig(), SamplingConfig(), SceneConfig()
    p = argparse.ArgumentParser(prog="live.py", description="Live camera-to-music.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("source (exactly one)")
    src.add_argument("--camera", default=None, metavar="SPEC",
                     help="camera index, /dev/video* path, RTSP/HTTP URL or GStreamer pipeline (contains '!')")
    src.add_argument("--video", default=None, metavar="FILE", help="video file, played at its frame rate, looped")
    src.add_argument("--images", default=None, metavar="DIR", help="folder of images shown as a slideshow")
    src.add_argument("--interval", type=positive(float), default=10.0, help="slideshow seconds per image")
    src.add_argument("--synthetic", action="store_true", help="generated scenes (no camera needed)")
    src.add_argument("--scene-seconds", type=positive(float), default=6.0, help="synthetic: seconds per scene")
    src.add_argument("--stale-after", type=positive(float), default=d.stale_after,
                     help="seconds without a good frame before the source is reopened")
    p.add_argument("--engines", required=True, metavar="DIR", help="engine bundle from export/build_engines.py")
    p.add_argument("--threads", type=positive(int), default=None, help="CPU threads for onnxruntime (default: all)")
    add_provider_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("--device", default=None, help="sound output device (index or name; default: system default)")
    out.add_argument("--rate", type=positive(int), default=None,
                     help="output sample rate (default: the device's own rate; model rate with --no-audio)")
    out.add_argument("--no-audio", action="store_true", help="no sound card (headless); audio is paced by a clock")
    out.add_argument("--record", default=None, metavar="WAV", help="also record the output to this WAV file")
    out.add_argument("--duration", type=positive(float), default=None,
                     help="stop after this many seconds of music (default: run until stopped)")
    out.add_argument("--metrics", default=None, metavar="JSONL", help="append one JSON line of metrics per second")
    g = p.add_argument_group("sampling")
    g.add_argument("--guidance-scale", type=float, default=s.guidance_scale, help="classifier-free guidance scale")
    g.add_argument("--temperature", type=positive(float), default=s.temperature, help="sampling temperature")
    g.add_argument("--top-k", type=int, default=s.top_k, help="keep the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=s.top_p, help="nucleus sampling mass (0 = off)")
    g.add_argument("--seed", type=int, default=s.seed, help="sampling seed (also the synthetic scenes' seed)")
    lv = p.add_argument_group("live behaviour")
    lv.add_argument("--chunk-frames", type=positive(int), default=d.chunk_frames,
                    help="code frames generated per chunk (50 = 1 s)")
    lv.add_argument("--buffer", type=positive(float), default=d.buffer_seconds,
                    help="seconds of audio kept ahead of the sound card (the buffer target)")
    lv.add_argument("--scene-threshold", type=positive(float), default=sc.threshold,
                    help="CLIP cosine distance that counts as a new scene")
    lv.add_argument("--scene-confirm", type=positive(int), default=sc.confirm,
                    help="consecutive different embeddings needed for a scene change")
    lv.add_argument("--min-dwell", type=non_negative, default=sc.min_dwell,
                    help="seconds after a scene change before another may happen")
    lv.add_argument("--pixel-gate", type=non_negative, default=sc.pixel_gate,
                    help="skip CLIP when a 32x32 grey thumbnail moved less than this (mean 0-255; 0 = always embed)")
    lv.add_argument("--embed-interval", type=positive(float), default=d.embed_interval,
                    help="seconds between CLIP embeddings of the newest frame")
    lv.add_argument("--transition", type=non_negative, default=d.transition_seconds,
                    help="seconds over which the music moves to a new scene (0 = at once)")
    lv.add_argument("--transition-mode", choices=("blend", "reprime"), default=d.transition_mode,
                    help="blend: interpolate conditioning keeping the KV cache; reprime: re-prime each step")
    lv.add_argument("--window-seconds", type=positive(float), default=None,
                    help="generation window before re-priming (default: the context budget measures this machine "
                         "at start-up and chooses; capped by the model's positions)")
    lv.add_argument("--keep-seconds", type=positive(float), default=None,
                    help="music carried into the next window as its prompt (default: the context budget's choice)")
    lv.add_argument("--stall-seconds", type=positive(float), default=d.stall_seconds,
                    help="seconds without any fresh music before the playout fades to silence (until then it "
                         "repeats recent music)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def _check_record_path(path: str) -> None:
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise Img2MusicError(f"--record: directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise Img2MusicError(f"--record: directory is not writable: {parent}")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (systemd stop) ends the run like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from runtime.live_sources import make_source

    source = make_source(args.camera, args.video, args.images, args.synthetic, args.interval,
                         args.scene_seconds, args.seed)
    if args.record:
        _check_record_path(args.record)
    if not Path(args.engines).is_dir():
        raise Img2MusicError(f"engine bundle not found: {args.engines}")
    config = LiveConfig(
        chunk_frames=args.chunk_frames, buffer_seconds=args.buffer, transition_seconds=args.transition,
        transition_mode=args.transition_mode, embed_interval=args.embed_interval,
        window_seconds=args.window_seconds, keep_seconds=args.keep_seconds, duration=args.duration,
        stall_seconds=args.stall_seconds,
        stale_after=args.stale_after,
        scene=SceneConfig(threshold=args.scene_threshold, confirm=args.scene_confirm, min_dwell=args.min_dwell,
                          pixel_gate=args.pixel_gate),
        sampling=SamplingConfig(guidance_scale=args.guidance_scale, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed),
    )
    device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    summary = run_live(args.engines, source, config, no_audio=args.no_audio, device=device, rate=args.rate,
                       record=args.record, metrics=args.metrics, threads=args.threads, provider=args.provider,
                       cuda_graph=args.cuda_graph)
    print(summary)
    return 0


def run_live(engines, source, config: LiveConfig, no_audio: bool = True, device=None, rate: int | None = None,
             record: str | None = None, metrics: str | None = None, threads: int | None = None,
             provider: str = "cpu", cuda_graph: bool = True,
             engine_hook=None) -> str:
    """One live session; returns the summary line. ``engine_hook(engine)`` runs before the
    start (tests use it to slow the generator or stop it from another thread)."""
    from runtime.audio_files import WavRecorder
    from runtime.audio_sink import ClockSink, RingBuffer, SoundDeviceSink, device_rate
    from runtime.live_engine import LiveEngine
    from runtime.live_status import StatusReporter
    from runtime.onnx_pipeline import OnnxPipeline
    from runtime.playout import Playout

    # Live runs CLIP, playout and the source beside the decoder: ORT's busy-waiting
    # threads would take their cores (measured on 2 cores, small-random int4: RTF of the
    # generator 1.14 with spinning, 0.93 without).
    pipeline = OnnxPipeline.load(engines, threads=threads, spinning=False, provider=provider, cuda_graph=cuda_graph)
    out_rate = rate or (pipeline.sample_rate if no_audio else device_rate(device))
    ring = RingBuffer(int(out_rate * (config.buffer_seconds + 30)))  # room for the re-prime boost
    recorder = WavRecorder(record, out_rate) if record else None
    playout = Playout(ring, out_rate, target=config.buffer_seconds, low_water=config.low_water, recorder=recorder,
                      stall_seconds=config.stall_seconds)
    engine = LiveEngine(pipeline, source, config, playout, out_rate, report=print)
    if engine_hook is not None:
        engine_hook(engine)
    sink = ClockSink(ring, out_rate) if no_audio else SoundDeviceSink(ring, out_rate, device)
    reporter = StatusReporter(engine, sink, metrics)
    previous = None
    if _main_thread():
        # SIGTERM (systemd stop) ends the run like Ctrl-C; SIGINT is installed explicitly
        # since a shell that starts us in the background leaves it ignored
        previous = (signal.signal(signal.SIGTERM, _terminate), signal.signal(signal.SIGINT, signal.default_int_handler))
    stopped = "finished"
    try:
        playout.start()
        sink.start()
        reporter.start()
        engine.run()
    except KeyboardInterrupt:
        stopped = "stopped"
    finally:
        engine.stop_event.set()
        playout.close()
        playout.finish()
        playout.feed()  # whatever was generated reaches the recorder
        sink.close()
        last = reporter.close()
        if recorder is not None:
            recorder.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
    text = (f"{stopped}: {last['music_s']:.2f} s of music, {last['scene_changes']} scene changes, "
            f"{last['underflows']} underflows, {last['reconnects']} source reconnects, "
            f"degrade cheaper/repeat/silence {last['degrade_cheaper']}/{last['degrade_repeats']}/"
            f"{last['degrade_silences']}, RTF {last['rtf']:.2f}")
    if recorder is not None:
        text += f"\nrecorded {recorder.samples / out_rate:.2f} s to {recorder.path}"
    return text


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def cli() -> None:
    """Console-script entry point (img2music-live)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
