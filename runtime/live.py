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
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as `python runtime/live.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from basics.cli_help import DefaultsHelpFormatter
from basics.errors import Img2MusicError, run_cli, setup_logging
from runtime.cli_types import (
    add_prompt_arguments,
    add_provider_arguments,
    add_sampling_arguments,
    check_prompt_arguments,
    non_negative,
    positive,
)
from runtime.live_config import LiveConfig
from runtime.sampling import SamplingConfig
from runtime.scene import SceneConfig


def build_parser() -> argparse.ArgumentParser:
    d, sc = LiveConfig(), SceneConfig()
    p = argparse.ArgumentParser(prog="live.py", description="Live camera-to-music.",
                                formatter_class=DefaultsHelpFormatter)
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
    src.add_argument("--first-frame-wait", type=non_negative, default=d.first_frame_wait,
                     help="seconds to wait for the source's first frame before the music starts from the fallback "
                          "image (the camera takes over as a scene change when it delivers)")
    src.add_argument("--fallback-image", default=None, metavar="PATH",
                     help="picture the music starts from while the source has no frame (default: a calm dusk "
                          "gradient)")
    p.add_argument("--engines", required=True, metavar="DIR", help="engine bundle from export/build_engines.py")
    p.add_argument("--threads", type=positive(int), default=None, help="CPU threads for onnxruntime (default: all)")
    add_provider_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("--device", default=None, help="sound output device (index or name; default: system default)")
    out.add_argument("--rate", type=positive(int), default=None,
                     help="output sample rate (default: the device's own rate; model rate with --no-audio)")
    out.add_argument("--no-audio", action="store_true", help="no sound card (headless); audio is paced by a clock")
    out.add_argument("--record", default=None, metavar="WAV",
                     help="also record the output to this WAV file (16-bit, the bundle's channels; never "
                          "overwritten: an existing file makes it WAV.1.wav, ...; a full disk pauses the recording, "
                          "not the music)")
    out.add_argument("--record-max-mb", type=positive(float), default=1024.0,
                     help="start a new recording file (WAV.1.wav, ...) when one reaches this size")
    out.add_argument("--duration", type=positive(float), default=None,
                     help="stop after this many seconds of audio: music, and silence while paused (default: run "
                          "until stopped)")
    out.add_argument("--metrics", default=None, metavar="JSONL", help="append one JSON line of metrics per second")
    out.add_argument("--metrics-max-mb", type=positive(float), default=20.0,
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
                     help="file holding the token POST /control must carry (Authorization: Bearer TOKEN); "
                          "required for control on a non-loopback --http/--ws address (default: none)")
    g = p.add_argument_group("sampling")
    add_sampling_arguments(g, seed_help="sampling seed (also the synthetic scenes' seed)")
    add_prompt_arguments(g)
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
                    help="seconds with neither fresh music nor generator progress before the playout fades "
                         "to silence (until then it repeats recent music)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def _check_record_path(path: str) -> None:
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise Img2MusicError(f"--record: directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise Img2MusicError(f"--record: directory is not writable: {parent}")


def _address(text: str) -> tuple[str, int]:
    from runtime.live_http import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise Img2MusicError(f"--http-token-file: cannot read {path}: {exc}") from None
    if len(token) < 16:
        raise Img2MusicError(f"--http-token-file: the token in {path} is shorter than 16 characters")
    return token


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
    fallback = None
    if args.fallback_image:
        import numpy as np

        from runtime.preprocess import load_image

        fallback = np.asarray(load_image(args.fallback_image))  # (H, W, 3) RGB; a bad file fails here, before loading
    if args.http_token_file and not (args.http or args.ws):
        raise Img2MusicError("--http-token-file needs --http or --ws (the token guards their control)")
    token = _read_token(args.http_token_file) if args.http_token_file else None
    if not Path(args.engines).is_dir():
        raise Img2MusicError(f"engine bundle not found: {args.engines}")
    config = LiveConfig(
        chunk_frames=args.chunk_frames, buffer_seconds=args.buffer, transition_seconds=args.transition,
        transition_mode=args.transition_mode, embed_interval=args.embed_interval,
        window_seconds=args.window_seconds, keep_seconds=args.keep_seconds, duration=args.duration,
        stall_seconds=args.stall_seconds,
        stale_after=args.stale_after, first_frame_wait=args.first_frame_wait, fallback_image=fallback,
        scene=SceneConfig(threshold=args.scene_threshold, confirm=args.scene_confirm, min_dwell=args.min_dwell,
                          pixel_gate=args.pixel_gate),
        sampling=SamplingConfig(guidance_scale=args.guidance_scale, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed),
        prompt=args.prompt, prompt_weight=check_prompt_arguments(args, has_image=True),
    )
    device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    summary = run_live(args.engines, source, config, no_audio=args.no_audio, device=device, rate=args.rate,
                       record=args.record, record_max_mb=args.record_max_mb, metrics=args.metrics,
                       metrics_max_mb=args.metrics_max_mb, http=args.http, http_token=token, osc=args.osc,
                       ws=args.ws,
                       threads=args.threads, provider=args.provider, cuda_graph=args.cuda_graph)
    print(summary)
    return 0


def run_live(engines, source, config: LiveConfig, no_audio: bool = True, device=None, rate: int | None = None,
             record: str | None = None, record_max_mb: float = 1024.0, metrics: str | None = None,
             metrics_max_mb: float = 20.0, http: tuple[str, int] | None = None, http_token: str | None = None,
             osc: tuple[str, int] | None = None, ws: tuple[str, int] | None = None, threads: int | None = None,
             provider: str = "cpu", cuda_graph: bool = True,
             engine_hook=None) -> str:
    """One live session; returns the summary line. ``engine_hook(engine)`` runs before the
    start (tests use it to slow the generator or stop it from another thread)."""
    from runtime.audio_sink import ClockSink, RingBuffer, SoundDeviceSink, device_rate
    from runtime.live_engine import LiveEngine
    from runtime.live_recording import LiveRecording
    from runtime.live_status import StatusReporter
    from runtime.onnx_pipeline import OnnxPipeline
    from runtime.playout import Playout
    from runtime.systemd_notify import SystemdNotifier
    from runtime.thread_watch import ThreadWatch

    # One compute thread runs the models one at a time (runtime.live_engine), so ORT's
    # workers may busy-wait between runs as in batch generation. Measured on 2 cores,
    # small-random int4 (bench_live.py rtf): live chunks cost 1.20x batch per second of
    # music with spinning off, 1.00-1.02x with it on. With plenty of headroom the engine
    # turns it off again after measuring (live_budget.SPIN_BELOW): idle spinning burns cores.
    pipeline = OnnxPipeline.load(engines, threads=threads, spinning=True, provider=provider, cuda_graph=cuda_graph)
    if config.prompt is not None:  # a bad prompt or a bundle without text: one error now, not per frame
        pipeline.encode_text(config.prompt)
    out_rate = rate or (pipeline.sample_rate if no_audio else device_rate(device))
    # The bundle's channels (2: a stereo checkpoint) run through to the sound card and the WAV;
    # the playout and the sinks take them from the ring, a reload must keep them (runtime.live_reload).
    channels = pipeline.channels
    ring = RingBuffer(int(out_rate * (config.buffer_seconds + 30)), channels)  # room for the re-prime boost
    recorder = LiveRecording(record, out_rate, max_bytes=int(record_max_mb * 2**20),
                             channels=channels) if record else None
    playout = Playout(ring, out_rate, target=config.buffer_seconds, low_water=config.low_water, recorder=recorder,
                      stall_seconds=config.stall_seconds)
    engine = LiveEngine(pipeline, source, config, playout, out_rate, report=print)
    if engine_hook is not None:
        engine_hook(engine)
    sink = ClockSink(ring, out_rate) if no_audio else SoundDeviceSink(ring, out_rate, device)
    notifier = SystemdNotifier()  # a no-op unless systemd started us with Type=notify
    reporter = StatusReporter(engine, sink, metrics, metrics_max_bytes=int(metrics_max_mb * 2**20), notifier=notifier)
    servers = _control_servers(engine, reporter, http, http_token, osc, ws, provider)  # a taken port fails here
    previous = None
    if _main_thread():
        # SIGTERM (systemd stop) ends the run like Ctrl-C; SIGINT is installed explicitly
        # since a shell that starts us in the background leaves it ignored
        previous = (signal.signal(signal.SIGTERM, _terminate), signal.signal(signal.SIGINT, signal.default_int_handler))
    stopped = "finished"
    watch = ThreadWatch(stuck_after=config.thread_stuck_seconds).install()
    engine.watch = watch
    try:
        playout.start()
        sink.start()
        reporter.start()
        for server in servers:
            server.start()
        watch.watch("playout", playout.thread, lambda: playout.beat)
        watch.watch("sound output", sink.thread)
        watch.watch("status", reporter.thread)
        engine.run()
    except KeyboardInterrupt:
        stopped = "stopped"
    finally:
        watch.uninstall()
        engine.stop_event.set()
        playout.close()
        playout.finish()
        try:
            playout.feed()  # whatever was generated reaches the recorder
        except Exception as exc:  # the playout's own fault: the error that ended the run goes on
            logging.getLogger(__name__).error("the last audio could not be flushed: %s", exc)
        sink.close()
        for server in servers:
            server.close()
        last = reporter.close()
        notifier.close()
        if recorder is not None:
            recorder.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
    text = (f"{stopped}: {last['music_s']:.2f} s of music, {last['scene_changes']} scene changes, "
            f"{last['underflows']} underflows, {last['reconnects']} source reconnects, "
            f"degrade cheaper/repeat/silence {last['degrade_cheaper']}/{last['degrade_repeats']}/"
            f"{last['degrade_silences']}, RTF {last['rtf']:.2f}")
    if last.get("paused_s"):
        text += f", {last['paused_s']:.1f} s paused"
    if last.get("bundle_reloads") or last.get("bundle_reload_failures"):
        text += f", bundle reloads {last['bundle_reloads']} (failed {last['bundle_reload_failures']})"
    if last["sink_outages"]:
        text += f", {last['sink_outages']} sound output outages ({last['sink_outage_s']:.1f} s)"
    if recorder is not None:
        text += "\n" + recorder.describe()
    return text


def _control_servers(engine, reporter, http, token, osc, ws, provider) -> list:
    """The status page / metrics / control (HTTP), OSC and WebSocket servers asked for, bound
    now (before the music starts) and started by the caller; all share one LiveControl."""
    from runtime.live_control import LiveControl
    from runtime.live_http import LiveHttpServer
    from runtime.live_osc import LiveOscServer
    from runtime.live_ws import LiveWebSocketServer

    if not (http or osc or ws):
        return []
    engine.control = LiveControl(engine)
    servers = []
    if http:
        servers.append(LiveHttpServer(reporter, *http, provider=provider, control=engine.control, token=token,
                                      latest_frame=engine.source.latest))
        engine.observe_step = servers[-1].step_latency.observe
    if osc:
        servers.append(LiveOscServer(engine.control, *osc))
    if ws:
        servers.append(LiveWebSocketServer(reporter, engine.control, *ws, token=token,
                                           latest_frame=engine.source.latest))
    return servers


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def cli() -> None:
    """Console-script entry point (img2music-live)."""
    from runtime import native_stderr

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
