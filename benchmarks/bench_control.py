"""What cheap requests and connection floods cost a live run (loopback only).

    python benchmarks/bench_control.py --engines engines/small-int4 --runs 3 --out results/control.json

Each run starts ``runtime/live.py --synthetic --no-audio --http --ws`` as a user would and plays
``--seconds`` of music while this script, after the first audio:

- ``baseline``: sends nothing (the repeats this host makes anyway);
- ``bursts``: 100 ``{"scene": "now"}`` at once, 15 s later 30 new prompts at once (at 60 s of
  music; times scale with ``--seconds``);
- ``changes``: what a burst gets accepted now, sent alone: two scenes 1 s apart (pacing spreads
  the 100 over ~2 s, so a second one is taken), 15 s later one prompt; ``bursts`` minus
  ``changes`` is what the other 127 requests cost;
- ``frames``: ``/frame.jpg`` from 4 threads as fast as they are answered, for 25 s (likewise);
- ``floods``: ``--header-clients`` connections each sending 6.4 MB of headers, then
  ``--ws-clients`` WebSocket clients held at once; the process's RSS, threads and open files
  before, during and after, and whether the WebSocket server still accepts afterwards.

The figure of merit is the seconds of repeated audio (the playout's degradation ladder filling
in for music that was late) over the baseline's, medians of ``--runs`` runs of each, in one
process so the host is the same. ``--live-script`` and ``--pythonpath`` run another checkout's
live.py the same way (a before/after in one session).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli
from img2music.benchmarks.fault_servers import free_ports
from img2music.benchmarks.machine import machine_record, python_loop_seconds

ROOT = Path(__file__).resolve().parents[1]
MODES = ("baseline", "bursts", "changes", "frames", "floods")
REPEATED = ("baseline", "bursts", "changes")
"""The modes run ``--runs`` times (the others once)."""
SUMMARY = ("music_s", "rtf", "degrade_fill_s", "degrade_repeats", "degrade_silences", "underflows")


def _commit(script: str) -> str | None:
    """The git commit of the checkout ``script`` is in (and "+changes" when it has any): which
    tree a before/after ran."""
    folder = str(Path(script).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "")


def _process(pid: int) -> dict:
    """RSS (MB), threads and open files of ``pid``, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _post(base: str, body: dict) -> str:
    request = urllib.request.Request(base + "/control", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return str(r.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError as exc:
        return type(exc).__name__


def _counts(codes: list[str]) -> dict:
    return {c: codes.count(c) for c in sorted(set(codes))}


def _bursts(base: str, seconds: float, out: dict) -> None:
    time.sleep(seconds / 4)
    out["scene_burst"] = _counts([_post(base, {"scene": "now"}) for _ in range(100)])
    time.sleep(seconds / 4)
    out["prompt_burst"] = _counts([_post(base, {"prompt": f"slow warm piano number {i}"}) for i in range(30)])


def _changes(base: str, seconds: float, out: dict) -> None:
    time.sleep(seconds / 4)
    out["scenes"] = _post(base, {"scene": "now"})
    time.sleep(1.05)
    out["scenes"] += " " + _post(base, {"scene": "now"})
    time.sleep(seconds / 4 - 1.05)
    out["prompt"] = _post(base, {"prompt": "slow warm piano number 0"})


def _frames(base: str, seconds: float, out: dict) -> None:
    time.sleep(seconds / 12)
    served, stop, length = [], time.monotonic() + seconds * 25 / 60, seconds * 25 / 60

    def fetch():
        while time.monotonic() < stop:
            try:
                with urllib.request.urlopen(base + "/frame.jpg", timeout=10) as r:
                    r.read()
                    served.append(1)
            except OSError:
                pass

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out["frames_per_s"] = round(len(served) / length, 1)


def _floods(pid: int, http: int, ws: int, header_clients: int, ws_clients: int, out: dict) -> None:
    from websockets.sync.client import connect

    time.sleep(2)
    out["before"] = _process(pid)

    def headers():
        try:
            with socket.create_connection(("127.0.0.1", http), timeout=30) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n")
                for i in range(99):
                    s.sendall(b"X-%d: " % i + b"a" * 64000 + b"\r\n")
                s.sendall(b"\r\n")
                s.recv(100)
        except OSError:
            pass  # refused early: what a capped server does

    threads = [threading.Thread(target=headers) for _ in range(header_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out["after_headers"] = _process(pid)
    with contextlib.ExitStack() as clients:
        connected = 0
        for _ in range(ws_clients):
            try:
                clients.enter_context(connect(f"ws://127.0.0.1:{ws}/", open_timeout=3))
                connected += 1  # the handshake completed; past the cap the server then closes it (1013)
            except Exception:  # refused (429) or timed out: counted as not connected
                pass
        time.sleep(1)
        out["ws_clients_connected"], out["with_ws_clients"] = connected, _process(pid)
    time.sleep(2)
    try:
        with connect(f"ws://127.0.0.1:{ws}/", open_timeout=5) as c:
            c.recv(timeout=5)
        out["ws_accepts_after"] = True
    except Exception as exc:
        out["ws_accepts_after"] = f"no: {type(exc).__name__}"
    out["after_clients_gone"] = _process(pid)


def one_run(mode: str, args, env: dict, tmp: Path, index: int) -> dict:
    http, ws = free_ports(2)
    metrics = tmp / f"{mode}-{index}.jsonl"
    command = [sys.executable, args.live_script, "--synthetic", "--engines", args.engines, "--no-audio",
               "--threads", str(args.threads), "--duration", str(args.seconds), "--scene-seconds", "20",
               "--http", str(http), "--ws", str(ws), "--metrics", str(metrics)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    base, out, deadline = f"http://127.0.0.1:{http}", {"mode": mode}, time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise Img2MusicError(f"live.py did not start: {proc.stderr.read().decode()[-800:]}") from None
            time.sleep(0.2)
    if mode == "bursts":
        _bursts(base, args.seconds, out)
    elif mode == "changes":
        _changes(base, args.seconds, out)
    elif mode == "frames":
        _frames(base, args.seconds, out)
    elif mode == "floods":
        _floods(proc.pid, http, ws, args.header_clients, args.ws_clients, out)
    proc.wait(timeout=args.seconds * 4 + 120)
    last = json.loads(metrics.read_text().splitlines()[-1])
    out.update({k: last.get(k) for k in SUMMARY}, exit=proc.returncode)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_control.py", description="Repeats bought by control bursts and floods.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--engines", required=True, help="bundle directory")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--runs", type=int, default=3, help="runs of baseline, bursts and changes each (frames, floods: one)")
    p.add_argument("--seconds", type=float, default=60.0, help="music per run")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the live run")
    p.add_argument("--header-clients", type=int, default=40, help="floods: connections sending 6.4 MB of headers")
    p.add_argument("--ws-clients", type=int, default=300, help="floods: WebSocket clients held at once")
    p.add_argument("--live-script", default=str(ROOT / "runtime" / "live.py"), help="the live.py to start")
    p.add_argument("--pythonpath", default=None, help="PYTHONPATH for it (another checkout: its own img2music)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise Img2MusicError(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    env = dict(os.environ, **({"PYTHONPATH": args.pythonpath} if args.pythonpath else {}))
    loop_before, runs = python_loop_seconds(), []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs):
            for mode in modes if index == 0 else [m for m in modes if m in REPEATED]:
                runs.append(one_run(mode, args, env, Path(tmp), index))
                print(json.dumps(runs[-1]), flush=True)
    repeats = {m: statistics.median(r["degrade_fill_s"] for r in runs if r["mode"] == m)
               for m in modes if any(r["mode"] == m for r in runs)}
    result = {"machine": machine_record(), "engines": args.engines, "live_script": args.live_script,
              "commit": _commit(args.live_script),
              "runs": runs, "median_repeats_s": repeats,
              "python_loop_s": [round(loop_before, 2), round(python_loop_seconds(), 2)]}
    if "baseline" in repeats:
        result["added_over_baseline_s"] = {m: round(v - repeats["baseline"], 2) for m, v in repeats.items()
                                           if m != "baseline"}
    print(f"{args.live_script}: repeats (s, medians) {repeats}; added over the baseline "
          f"{result.get('added_over_baseline_s')}; pure-Python loop {result['python_loop_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
