"""The sound server (PulseAudio, through PortAudio's ALSA host API) crashes mid-run and
comes back: the outage is counted and summarised, the music goes on to the sound card
afterwards, the recording holds --duration, and PortAudio/ALSA's raw lines stay out of
stderr. Needs pulseaudio, parecord and libportaudio2 (skipped without them)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from img2music.benchmarks.fault_servers import PulseServer, pulse_available
from tests.runtime.live_runs import last_metrics, played_seconds

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pulse(tmp_path):
    why = pulse_available()
    if why:
        pytest.skip(why)
    server = PulseServer(tmp_path / "pulse").start()
    yield server
    server.stop()


def _wait_for_music(metrics: Path, seconds: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last_metrics(metrics).get("music_s", 0) >= seconds:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {seconds} s of music within {timeout} s")


def test_sound_server_crash_and_return(tiny_bundle, pulse, tmp_path):
    wav, metrics = tmp_path / "out.wav", tmp_path / "m.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines", str(tiny_bundle),
         "--threads", "2", "--duration", "12", "--record", str(wav), "--metrics", str(metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=pulse.env)
    _wait_for_music(metrics, 3)
    pulse.stop()
    time.sleep(4)
    pulse.start()
    # the reopen retries back off up to 2 s: listen once the run says its output is back
    deadline = time.monotonic() + 30
    while last_metrics(metrics).get("sink_outage_s", 0) == 0:  # counted when the output is back
        assert time.monotonic() < deadline and proc.poll() is None, "the sound output did not come back"
        time.sleep(0.2)
    heard = pulse.record(2.0, tmp_path / "heard.wav")  # the sink after the outage
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (proc.returncode, err[-1500:])
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    outages = rows[-1]["sink_outages"]
    # one server restart; on a busy CI host a stream reopened while the restarted server still
    # loads its modules was dropped once more (seen once: 2), and came back all the same
    assert 1 <= outages <= 2, rows[-1]
    assert 3.5 <= rows[-1]["sink_outage_s"] <= 12, rows[-1]
    assert f"{outages} sound output outages" in out, out
    assert "sound output back after" in err and "audio stream died" in err
    for noise in ("pa_linux_alsa", "ALSA lib", "Expression '", "Traceback"):
        assert noise not in err, err[-1500:]
    audio, _ = sf.read(str(heard))
    assert len(audio) > 0 and float(np.sqrt(np.mean(np.square(audio)))) > 1e-3  # music, not silence
    info = sf.info(str(wav))
    assert abs(info.frames / info.samplerate - played_seconds(12.0, rows[-1])) < 0.01
