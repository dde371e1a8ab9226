"""Live music from a camera (or video, slideshow, generated scenes), endless and seamless.

Usage::

    python runtime/live.py --camera 0 --engines engines/small
    python runtime/live.py --camera rtsp://10.0.0.5/stream --engines engines/small --record room.wav
    python runtime/live.py --camera "nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! \\
        videoconvert ! video/x-raw,format=BGR ! appsink" --engines engines/small   # Jetson CSI
    python runtime/live.py --video walk.mp4 --engines engines/small --no-audio --record walk.wav
    python runtime/live.py --images photos/ --interval 8 --engines engines/small
    python runtime/live.py --synthetic --engines engines/tiny --no-audio --record out.wav --duration 20

Runs until Ctrl-C / SIGTERM (or ``--duration`` seconds of audio); the WAV is finalized
either way. A status line shows buffer, real-time factor, underflows, frame age and
the current directive; ``--metrics FILE`` appends the same as JSON lines every second.
A stereo bundle (a musicgen-stereo checkpoint) plays in stereo: two channels through the
playout to the sound card and ``--record``'s WAV.

The flags become one :class:`~img2music.runtime.LiveSessionConfig` and the run is a
:class:`~img2music.runtime.LiveSession`: this module only parses and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import run_cli, setup_logging
from img2music.basics.malloc_arenas import limit_malloc_arenas
from img2music.runtime import (
    BackendConfig,
    EngineConfig,
    LiveSession,
    LiveSessionConfig,
    OutputConfig,
    SamplingConfig,
    SceneConfig,
    ServerConfig,
    SourceConfig,
)
from img2music.runtime.cli.arguments import (
    add_encodec_argument,
    add_prompt_arguments,
    add_provider_arguments,
    add_sampling_arguments,
    check_prompt_arguments,
    non_negative,
    positive,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="live.py", description="Live camera-to-music.",
                                formatter_class=DefaultsHelpFormatter)
    _source_arguments(p.add_argument_group("source (exactly one)"))
    p.add_argument("--engines", required=True, metavar="DIR", help="engine bundle from export/build_engines.py")
    p.add_argument("--threads", type=positive(int), default=None, help="CPU threads for onnxruntime (default: all)")
    add_provider_arguments(p)
    add_encodec_argument(p, default="auto")
    _output_arguments(p.add_argument_group("output"))
    g = p.add_argument_group("sampling")
    add_sampling_arguments(g, seed_help="sampling seed (also the synthetic scenes' seed)")
    add_prompt_arguments(g)
    _engine_arguments(p.add_argument_group("live behaviour"))
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def _source_arguments(src) -> None:
    d, e = SourceConfig(synthetic=True), EngineConfig()
    src.add_argument("--camera", default=None, metavar="SPEC",
                     help="camera index, /dev/video* path, RTSP/HTTP URL or GStreamer pipeline (contains '!')")
    src.add_argument("--video", default=None, metavar="FILE", help="video file, played at its frame rate, looped")
    src.add_argument("--images", default=None, metavar="DIR", help="folder of images shown as a slideshow")
    src.add_argument("--interval", type=positive(float), default=d.interval, help="slideshow seconds per image")
    src.add_argument("--synthetic", action="store_true", help="generated scenes (no camera needed)")
    src.add_argument("--scene-seconds", type=positive(float), default=d.scene_seconds,
                     help="synthetic: seconds per scene")
    src.add_argument("--stale-after", type=positive(float), default=d.stale_after,
                     help="seconds without a good frame before the source is reopened")
    src.add_argument("--first-frame-wait", type=non_negative, default=e.first_frame_wait,
                     help="seconds to wait for the source's first frame before the music starts from the fallback "
                          "image (the camera takes over as a scene change when it delivers)")
    src.add_argument("--fallback-image", default=None, metavar="PATH",
                     help="picture the music starts from while the source has no frame (default: a calm dusk "
                          "gradient)")


def _output_arguments(out) -> None:
    d = OutputConfig()
    out.add_argument("--device", default=None, help="sound output device (index or name; default: system default)")
    out.add_argument("--rate", type=positive(int), default=None,
                     help="output sample rate (default: the device's own rate; model rate with --no-audio)")
    out.add_argument("--no-audio", action="store_true", help="no sound card (headless); audio is paced by a clock")
    out.add_argument("--record", default=None, metavar="WAV",
                     help="also record the output to this WAV file (16-bit, the bundle's channels; never "
                          "overwritten: an existing file makes it WAV.1.wav, ...; a full disk pauses the recording, "
                          "not the music)")
    out.add_argument("--record-max-mb", type=positive(float), default=d.record_max_mb,
                     help="start a new recording file (WAV.1.wav, ...) when one reaches this size")
    out.add_argument("--duration", type=positive(float), default=None,
                     help="stop after this many seconds of audio: music, and silence while paused (default: run "
                          "until stopped)")
    out.add_argument("--metrics", default=None, metavar="JSONL", help="append one JSON line of metrics per second")
    out.add_argument("--metrics-max-mb", type=positive(float), default=d.metrics_max_mb,
                     help="rotate --metrics at this size (FILE.1 .. FILE.3 keep the older lines)")
    out.add_argument("--http", type=_address, default=None, metavar="[HOST:]PORT",
                     help="serve a status page (/), Prometheus /metrics, /healthz and /readyz on this address; a "
                          "bare port binds 127.0.0.1 (default: off); POST /control changes sampling and scenes, "
                          "pauses, resumes, fades out, reloads the bundle")
    out.add_argument("--osc", type=_address, default=None, metavar="[HOST:]PORT",
                     help="take the same control over OSC/UDP (/img2music/guidance 3.5, /img2music/scene, "
                          "/img2music/pause, ...); "
                          "no authentication: a bare port binds 127.0.0.1 (default: off)")
    out.add_argument("--ws", type=_address, default=None, metavar="[HOST:]PORT",
                     help="two-way control over a WebSocket: status once a second, control requests as JSON "
                          "(the same token rule as --http); a bare port binds 127.0.0.1 (default: off)")
    out.add_argument("--http-token-file", default=None, metavar="PATH",
                     help="file holding the token control requests must carry (Authorization: Bearer TOKEN or "
                          "?token=); with it, loopback needs it too; required off loopback, where reads need it "
                          "as well (default: none: control from this machine only)")
    out.add_argument("--http-allow-host", action="append", default=[], metavar="NAME",
                     help="a host name the servers answer to beyond their address, localhost and IP literals "
                          "(repeat; default: none; other names are refused, against DNS rebinding)")
    out.add_argument("--http-public-metrics", action="store_true",
                     help="off loopback: serve /metrics, /healthz and /readyz without the token (all else needs it)")
    out.add_argument("--reload-dir", default=None, metavar="DIR",
                     help="bundles may be reloaded from this folder only (default: the folder of --engines)")


def _engine_arguments(lv) -> None:
    d, sc = EngineConfig(), SceneConfig()
    lv.add_argument("--chunk-frames", type=positive(int), default=d.chunk_frames,
                    help="code frames generated per chunk (50 = 1 s)")
    lv.add_argument("--buffer", type=positive(float), default=d.buffer_seconds,
                    help="seconds of audio kept ahead of the sound card (the buffer target)")
    lv.add_argument("--preroll", type=positive(float), default=d.preroll_seconds,
                    help="seconds of audio buffered before the sound starts (at most --buffer); the buffer then "
                         "grows to --buffer")
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
                    help="seconds with neither fresh music nor generator progress before the playout fades "
                         "to silence (until then it repeats recent music)")


def _address(text: str) -> tuple[str, int]:
    from img2music.runtime.control.http_server import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> LiveSessionConfig:
    """The flags as one session config (each part checks itself: one clear error)."""
    source = SourceConfig(camera=args.camera, video=args.video, images=args.images, synthetic=args.synthetic,
                          interval=args.interval, scene_seconds=args.scene_seconds, seed=args.seed,
                          stale_after=args.stale_after, fallback_image=args.fallback_image)
    engine = EngineConfig(
        chunk_frames=args.chunk_frames, buffer_seconds=args.buffer, preroll_seconds=args.preroll,
        transition_seconds=args.transition,
        transition_mode=args.transition_mode, embed_interval=args.embed_interval,
        window_seconds=args.window_seconds, keep_seconds=args.keep_seconds, duration=args.duration,
        stall_seconds=args.stall_seconds, first_frame_wait=args.first_frame_wait,
        scene=SceneConfig(threshold=args.scene_threshold, confirm=args.scene_confirm, min_dwell=args.min_dwell,
                          pixel_gate=args.pixel_gate),
        sampling=SamplingConfig(guidance_scale=args.guidance_scale, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed),
        prompt=args.prompt, prompt_weight=check_prompt_arguments(args, has_image=True))
    device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    output = OutputConfig(no_audio=args.no_audio, device=device, rate=args.rate, record=args.record,
                          record_max_mb=args.record_max_mb, metrics=args.metrics, metrics_max_mb=args.metrics_max_mb)
    servers = ServerConfig(http=args.http, osc=args.osc, ws=args.ws, token_file=args.http_token_file,
                           allow_hosts=tuple(args.http_allow_host), public_metrics=args.http_public_metrics,
                           reload_dir=args.reload_dir)
    backend = BackendConfig(args.engines, provider=args.provider, threads=args.threads, cuda_graph=args.cuda_graph,
                            encodec=args.encodec)
    return LiveSessionConfig(backend=backend, source=source, engine=engine, output=output, servers=servers)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    print(LiveSession(config_from_args(args)).run())
    return 0


def cli() -> None:
    """Console-script entry point (img2music-live)."""
    from img2music.runtime.audio import native_stderr

    limit_malloc_arenas()  # before any thread: reloads must not grow the process (basics.malloc_arenas)
    native_stderr.install()  # PortAudio/ALSA's raw lines become -v log lines (not in-process callers' fd 2)
    code = run_cli(main)
    if any(t.name == "source-reader" and t.is_alive() for t in threading.enumerate()):
        # A reader still blocked inside OpenCV/FFmpeg (a hung stream) while the interpreter
        # tears down aborts the process (SIGABRT, exit 134: a core dump and a failed unit).
        # Everything of ours is closed and flushed by now: leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    cli()
