"""Pause, resume, fade out and bundle reload in one live run of the tiny bundle, controlled
over HTTP and OSC; the recording, the metrics and the summary say what was heard."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.runtime.live_runs import played_seconds  # noqa: E402
from tests.runtime.test_live_http import _free_ports, _get, _post, _wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 0.05
"""Seconds per RMS window of the recording."""


def _until(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def _metrics(base: str) -> dict:
    """Single-sample families by name, the decoder step count and the build's bundle label."""
    families = list(text_string_to_metric_families(_get(base + "/metrics")[1]))
    value = {f.name: f.samples[0].value for f in families if len(f.samples) == 1}
    for f in families:
        for s in f.samples:
            if s.name == "img2music_decoder_step_seconds_count":
                value["steps"] = s.value
            if s.name == "img2music_build_info":
                value["bundle"] = s.labels["bundle"]
    return value


def _silent_runs(rms: np.ndarray, seconds: float = 1.0) -> list[tuple[int, int]]:
    """(first, end) window indices of stretches of at least ``seconds`` under RMS 1e-4."""
    runs, start = [], None
    for i, quiet in enumerate(np.append(rms < 1e-4, False)):
        if quiet and start is None:
            start = i
        elif not quiet and start is not None:
            if (i - start) * WINDOW >= seconds:
                runs.append((start, i))
            start = None
    return runs


def test_pause_fade_out_resume_and_reload_while_playing(tiny_bundle, tmp_path):
    good = shutil.copytree(tiny_bundle, tmp_path / "copy")  # the same bundle elsewhere: a valid reload
    corrupt = shutil.copytree(tiny_bundle, tmp_path / "corrupt")
    graph = corrupt / "projector.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash check at load finds it
    graph.write_bytes(bytes(data))
    other = shutil.copytree(tiny_bundle, tmp_path / "other-rate")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["audio"]["frame_rate"] = 75
    (other / "manifest.json").write_text(json.dumps(manifest))

    wav, metrics = tmp_path / "out.wav", tmp_path / "m.jsonl"
    port, osc_port = _free_ports(2)
    # the script below takes ~14 s of sleeps and fades plus its requests and two loads, and the
    # generator runs 3 s ahead: 30 s leaves the last resume room on a host twice as slow
    duration = 30.0
    proc = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines",
                             str(tiny_bundle), "--no-audio", "--threads", "2", "--duration", str(duration),
                             "--scene-seconds", "1000", "--first-frame-wait", "30", "--record", str(wav),
                             "--metrics", str(metrics), "--http", str(port), "--osc", str(osc_port), "-v",
                             # a reload's loading shares the cores with the generator; 3 s ahead absorbs
                             # it on a shared CI host (1 s did not, once: one "cheaper" ladder step)
                             "--buffer", "3",
                             # the copies live beside this test, not beside the started bundle
                             "--reload-dir", os.path.commonpath([tiny_bundle, tmp_path])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"

    def control() -> dict:
        return json.loads(_get(base + "/control")[1])

    try:
        _wait_ready(base)
        time.sleep(1.0)  # music first
        # bad requests change nothing
        assert _post(base + "/control", {"transport": "stop"})[0] == 400
        assert _post(base + "/control", {"fade_out": 0})[0] == 400
        assert _post(base + "/control", {"bundle": str(tmp_path / "nope")})[0] == 400
        code, answer = _post(base + "/control", {"bundle": str(other)})
        assert code == 409 and "frame_rate is 75" in answer["error"]
        assert control()["changes"] == {} and control()["transport"] == "playing"

        # a corrupt bundle: the error is shown, the music goes on with the old one
        assert _post(base + "/control", {"bundle": str(corrupt)})[0] == 202
        failed = _until(lambda: (c := control())["reload"] == "failed" and c, "the corrupt bundle to fail")
        assert "sha256" in failed["reload_error"] and failed["bundle"] == str(tiny_bundle)

        # pause: the decoder rests, silence flows, health stays good past HEALTHY_WITHIN
        assert _post(base + "/control", {"transport": "pause"})[0] == 202
        _until(lambda: control()["transport"] == "paused", "the pause")
        before = _metrics(base)
        time.sleep(6.5)  # longer than /healthz's 5 s: the silence must count as flowing
        assert _get(base + "/healthz") == (200, "ok\n")
        assert _post(base + "/control", {"transport": "pause"})[0] == 202  # paused already: accepted, nothing to do
        during = _metrics(base)
        assert during["steps"] == before["steps"] and during["img2music_paused"] == 1
        print(f"\nCPU while paused: {during['process_cpu_seconds'] - before['process_cpu_seconds']:.2f} s "
              f"over {during['img2music_uptime_seconds'] - before['img2music_uptime_seconds']:.1f} s")
        assert _post(base + "/control", {"transport": "resume"})[0] == 202
        _until(lambda: control()["transport"] == "playing", "the resume")
        time.sleep(1.5)

        # reload: the copy takes over at a chunk boundary
        assert _post(base + "/control", {"bundle": str(good)})[0] == 202
        _until(lambda: control()["bundle"] == str(good.resolve()), "the reloaded bundle")
        _until(lambda: _metrics(base)["bundle"] == str(good.resolve()), "the build info to name it")  # next snapshot
        time.sleep(1.0)

        # fade out over 2 s of audio (OSC), stay paused a little, resume (OSC)
        from pythonosc.udp_client import SimpleUDPClient

        osc = SimpleUDPClient("127.0.0.1", osc_port)
        osc.send_message("/img2music/fade_out", 2.0)
        _until(lambda: control()["transport"] == "fading", "the fade")
        _until(lambda: control()["transport"] == "paused", "the end of the fade")
        time.sleep(1.5)
        osc.send_message("/img2music/resume", [])
        final = _until(lambda: (c := control())["transport"] == "playing" and c, "the resume over OSC")
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert final["changes"] == {"bundle": 2, "transport": 4, "fade_out": 1}
    assert "bundle reloads 1 (failed 1)" in out and "0 underflows" in out
    assert f"bundle {good.resolve()} took over" in err and "scene change 1" in err
    assert "does not match its sha256" in err

    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["underflows"] == 0 and last["bundle"] == str(good.resolve())
    assert (last["degrade_cheaper"], last["degrade_repeats"], last["degrade_silences"]) == (0, 0, 0)
    assert last["bundle_reloads"] == 1 and last["bundle_reload_failures"] == 1 and last["transport"] == "playing"
    assert last["paused_s"] > 6 and last["music_s"] + last["paused_s"] == pytest.approx(duration, abs=0.05)

    import soundfile as sf

    audio, rate = sf.read(str(wav), dtype="float32")
    assert len(audio) / rate == pytest.approx(played_seconds(duration, last), abs=0.01)  # paused silence counts
    n = int(WINDOW * rate)
    rms = np.sqrt(np.mean(audio[: len(audio) // n * n].reshape(-1, n) ** 2, axis=1))
    runs = _silent_runs(rms)
    assert len(runs) == 2, runs  # the pause and the end of the fade; none at the reload
    (pause_start, pause_end), (fade_end, fade_resume) = runs
    second = int(1 / WINDOW)
    assert (pause_end - pause_start) * WINDOW > 6
    assert rms[pause_start - second:pause_start].mean() > 1e-3  # music, then the pause
    assert rms[pause_end:pause_end + second].mean() > 1e-3  # and music again after the resume
    assert rms[fade_resume:fade_resume + second].mean() > 1e-3
    fade = rms[fade_end - 2 * second:fade_end].reshape(8, -1).mean(axis=1)  # 2 s in quarters
    level = rms[fade_end - 3 * second:fade_end - 2 * second].mean()  # the second before the fade
    assert fade[:2].mean() > 0.7 * level and fade[-2:].mean() < 0.4 * fade[:2].mean()
    assert np.all(np.diff(fade) < 0.15 * level), fade  # going down, give or take the music's own swell
