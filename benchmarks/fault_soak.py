"""An unattended installation's bad hour, on a schedule, and what the music did about it.

``soak``: one ``live.py`` run reading a network camera (a local MJPEG server) and playing
through a real sound server (a private PulseAudio with a null sink), recording onto a small
tmpfs. Every ``--cycle`` seconds: the camera goes down and comes back, the sound server is
killed and restarted, the disk under the recording fills up and is freed again. Reported:
exit code, RSS slope, underflow seconds, sound outages, source reconnects, recording pauses
and lost seconds, each recording file read back with Python's strict ``wave`` module, the
largest gap between metrics lines (a silent death would show there), what the sound card
heard after each server restart, and raw native lines or tracebacks on stderr.

``camera-runs``: N short runs in which the camera goes down and comes back: exit code and
WAV length each time (the SIGABRT-at-exit finding was intermittent).

    sudo python -m img2music.benchmarks.fault_soak soak --engines engines/tiny --seconds 3600 \\
        --out benchmarks/results/cpu-2core/fault_soak.json

Needs root for the tmpfs (or ``--record-dir`` on a file system you may fill) and
``pulseaudio``, ``parecord`` and ``libportaudio2``.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.benchmarks.fault_servers import MJPEGServer, PulseServer, pulse_available
from img2music.benchmarks.machine import machine_record, python_loop_seconds

ROOT = Path(__file__).resolve().parents[1]


def camera_jpegs() -> list[bytes]:
    from PIL import Image
    from skimage import data

    jpegs = []
    for name in ("astronaut", "coffee", "chelsea"):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((160, 120)).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    return jpegs


def live_command(engines: str, camera_url: str, seconds: float, record: Path, metrics: Path, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "runtime" / "live.py"), "--camera", camera_url, "--engines", engines,
            "--threads", "2", "--duration", str(seconds), "--record", str(record), "--metrics", str(metrics),
            "--stale-after", "2", "--scene-threshold", "0.02", *extra]


def fill_disk(directory: Path) -> Path:
    """Write a filler file until the file system is full; returns it (delete it to free)."""
    filler = directory / "filler.bin"
    block = b"\0" * 2**20
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def rms(path: Path) -> float:
    import soundfile as sf

    audio, _ = sf.read(str(path))
    return float(np.sqrt(np.mean(np.square(audio)))) if len(audio) else 0.0


class Schedule:
    """Runs the fault events at their wall-clock offsets while the live process runs."""

    def __init__(self, proc: subprocess.Popen, start: float) -> None:
        self.proc, self.start, self.events = proc, start, []

    def at(self, offset: float) -> bool:
        """Sleep until ``offset`` seconds after the start; False if the process ended first."""
        while time.monotonic() - self.start < offset:
            if self.proc.poll() is not None:
                return False
            time.sleep(0.2)
        return self.proc.poll() is None

    def log(self, what: str, **info) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.start, 1), "event": what, **info})
        print(f"[{self.events[-1]['t_s']:7.1f} s] {what} {info if info else ''}", flush=True)


def soak(engines: str, seconds: float, cycle: float, workdir: Path, record_dir: Path | None,
         tmpfs_mb: int, record_max_mb: float) -> dict:
    why = pulse_available()
    if why:
        raise SystemExit(f"error: the soak needs a sound server: {why}")
    workdir.mkdir(parents=True, exist_ok=True)
    mounted = None
    if record_dir is None:
        record_dir = workdir / "rec"
        record_dir.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m", "tmpfs", str(record_dir)]).returncode:
            raise SystemExit("error: mounting a tmpfs for the recording needs root (or pass --record-dir)")
        mounted = record_dir
    loop_before = python_loop_seconds()
    metrics, record = workdir / "metrics.jsonl", record_dir / "room.wav"
    metrics.unlink(missing_ok=True)
    camera = MJPEGServer(camera_jpegs()).start()
    pulse = PulseServer(workdir / "pulse").start()
    out, err = open(workdir / "live.out", "w"), open(workdir / "live.err", "w")  # noqa: SIM115
    proc = subprocess.Popen(live_command(engines, camera.url, seconds, record, metrics,
                                         "--record-max-mb", str(record_max_mb)),
                            stdout=out, stderr=err, text=True, cwd=ROOT, env=pulse.env)
    plan = Schedule(proc, time.monotonic())
    heard = []
    try:
        for k in range(int(seconds // cycle) + 1):
            base = k * cycle
            if not plan.at(base + 0.2 * cycle):
                break
            camera.stop()
            plan.log("camera down")
            if not plan.at(base + 0.2 * cycle + 20):
                break
            camera.start()
            plan.log("camera up")
            if not plan.at(base + 0.5 * cycle):
                break
            outage_s = last_metrics(metrics).get("sink_outage_s", 0.0)
            pulse.stop()
            plan.log("sound server killed")
            time.sleep(5)
            pulse.start()
            plan.log("sound server restarted")
            deadline = time.monotonic() + 30
            while last_metrics(metrics).get("sink_outage_s", 0.0) <= outage_s and time.monotonic() < deadline:
                time.sleep(0.2)  # the outage ends when the first callback after a reopen runs
            plan.log("sound output back", outage_s=round(last_metrics(metrics)["sink_outage_s"] - outage_s, 2))
            level = rms(pulse.record(2.0, workdir / f"heard_{k}.wav"))
            heard.append(level)
            plan.log("sink heard", rms=round(level, 4))
            if not plan.at(base + 0.7 * cycle):
                break
            filler = fill_disk(record_dir)
            plan.log("disk full", free_mb=round(os.statvfs(record_dir).f_bavail * os.statvfs(record_dir).f_frsize
                                                / 2**20, 2))
            if not plan.at(base + 0.7 * cycle + 45):
                filler.unlink()
                break
            filler.unlink()
            plan.log("disk freed")
        code = proc.wait(timeout=seconds * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
        err.close()
        camera.stop()
        pulse.stop()
    report = {"machine": machine_record(), "python_loop_s_before": round(loop_before, 3),
              "python_loop_s_after": round(python_loop_seconds(), 3), "engines": engines, "seconds": seconds,
              "cycle_s": cycle, "exit_code": code, "events": plan.events,
              "sink_heard_rms_after_restart": [round(x, 4) for x in heard],
              **metrics_report(metrics), **recording_report(record_dir),
              **stderr_report(workdir / "live.err"),
              "summary": (workdir / "live.out").read_text().strip().splitlines()[-3:]}
    if mounted is not None:
        subprocess.run(["umount", str(mounted)])
    return report


def last_metrics(path: Path) -> dict:
    lines = path.read_text().splitlines() if path.exists() else []
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue  # the line being written
    return {}


def metrics_report(path: Path) -> dict:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    last = rows[-1]
    times = np.array([r["uptime_s"] for r in rows])
    rss = np.array([r["rss_mb"] for r in rows])
    settled = times >= times[-1] / 6  # after the first sixth of the run: warm-up allocations are done
    slope = float(np.polyfit(times[settled] / 3600, rss[settled], 1)[0]) if settled.sum() > 10 else None
    keys = ("music_s", "uptime_s", "underflows", "underflow_s", "sink_outages", "sink_outage_s", "reconnects",
            "open_failures", "degrade_cheaper", "degrade_repeats", "degrade_silences", "scene_changes",
            "record_state", "recorded_s", "record_lost_s", "record_files", "rss_mb")
    return {"metrics_lines": len(rows), "max_metrics_gap_s": round(float(np.diff(times).max()), 2),
            "rss_mb_first": rss[0], "rss_mb_max": float(rss.max()),
            "rss_slope_mb_per_h": None if slope is None else round(slope, 2),
            "final": {k: last.get(k) for k in keys}}


def recording_report(record_dir: Path) -> dict:
    files = []
    for path in sorted(record_dir.glob("room*.wav")):
        try:
            with wave.open(str(path)) as w:
                frames = w.getnframes()
                readable = len(w.readframes(frames)) == frames * w.getsampwidth() * w.getnchannels()
                files.append({"file": path.name, "seconds": round(frames / w.getframerate(), 2),
                              "wave_reads_all": readable})
        except (wave.Error, EOFError) as exc:
            files.append({"file": path.name, "wave_error": str(exc)})
    return {"recordings": files}


def stderr_report(path: Path) -> dict:
    text = path.read_text(errors="replace")
    native = ("pa_linux_alsa", "ALSA lib", "Expression '", "[ WARN", "cap_", "terminate called")
    return {"stderr_lines": len(text.splitlines()), "tracebacks": text.count("Traceback"),
            "native_lines": sum(any(n in line for n in native) for line in text.splitlines()),
            "stderr_tail": text.splitlines()[-8:]}


def camera_runs(engines: str, runs: int, seconds: float, workdir: Path) -> dict:
    import soundfile as sf

    workdir.mkdir(parents=True, exist_ok=True)
    camera = MJPEGServer(camera_jpegs()).start()
    results = []
    try:
        for i in range(runs):
            wav, metrics = workdir / f"cam_{i}.wav", workdir / f"cam_{i}.jsonl"
            wav.unlink(missing_ok=True)
            metrics.unlink(missing_ok=True)
            proc = subprocess.Popen(live_command(engines, camera.url, seconds, wav, metrics, "--no-audio"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (metrics.exists() and any(
                    json.loads(x)["music_s"] >= 3 for x in metrics.read_text().splitlines())):
                time.sleep(0.2)
            camera.stop()
            time.sleep(4)
            camera.start()
            out, err = proc.communicate(timeout=seconds * 10)
            last = json.loads(metrics.read_text().splitlines()[-1])
            info = sf.info(str(wav))
            results.append({"exit_code": proc.returncode, "wav_s": round(info.frames / info.samplerate, 3),
                            "reconnects": last["reconnects"], "underflows": last["underflows"],
                            "stderr_noise": sum(n in err for n in ("Traceback", "terminate called", "[ WARN"))})
            print(f"run {i + 1}/{runs}: {results[-1]}", flush=True)
    finally:
        camera.stop()
    return {"machine": machine_record(), "engines": engines, "duration_s": seconds, "runs": results,
            "exit_0": sum(r["exit_code"] == 0 for r in results),
            "wav_equals_duration": sum(abs(r["wav_s"] - seconds) < 0.02 for r in results)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("soak", help="one long run with faults on a schedule", formatter_class=DefaultsHelpFormatter)
    s.add_argument("--seconds", type=float, default=3600.0, help="seconds of music")
    s.add_argument("--cycle", type=float, default=300.0, help="seconds between rounds of faults")
    s.add_argument("--record-dir", type=Path, default=None,
                   help="where the recording goes and the disk is filled (default: a tmpfs mounted for the run)")
    s.add_argument("--tmpfs-mb", type=int, default=700, help="size of that tmpfs")
    s.add_argument("--record-max-mb", type=float, default=100.0, help="live.py --record-max-mb")
    c = sub.add_parser("camera-runs", help="short runs with the camera down and back",
                       formatter_class=DefaultsHelpFormatter)
    c.add_argument("--runs", type=int, default=5, help="how many runs")
    c.add_argument("--seconds", type=float, default=12.0, help="seconds of music per run")
    for sp in (s, c):
        sp.add_argument("--engines", required=True, help="bundle directory (the tiny preset is what the issue asks)")
        sp.add_argument("--workdir", type=Path, default=Path("fault_soak"), help="scratch directory")
        sp.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.mode == "soak":
        result = soak(args.engines, args.seconds, args.cycle, args.workdir, args.record_dir, args.tmpfs_mb,
                      args.record_max_mb)
    else:
        result = camera_runs(args.engines, args.runs, args.seconds, args.workdir)
    text = json.dumps(result, indent=1, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
