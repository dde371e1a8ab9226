"""Faults an unattended installation meets, injected into real live runs (tiny bundle):
a full disk under the recording and the metrics, and SIGKILL / power loss mid-recording."""

import errno
import json
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from img2music.runtime import EngineConfig
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.loop.scene import SceneConfig
from img2music.runtime.loop.sources import SyntheticSource
from tests.runtime.live_runs import run_session

ROOT = Path(__file__).resolve().parents[2]


def _config(duration, **kw):
    # a 3 s buffer outlasts the stalls of a shared host (a repeat would break the exact sample
    # counts below); the watchdog test, which wants the ladder, asks for 1 s
    kw.setdefault("buffer_seconds", 3.0)
    return EngineConfig(duration=duration, scene=SceneConfig(threshold=0.02, min_dwell=1.0),
                      sampling=SamplingConfig(seed=1), **kw)


class FullDisk:
    """A recorder file whose disk fills up after ``room`` samples (OSError ENOSPC, as a
    write(2) into a full file system raises)."""

    def __init__(self, file, room: int) -> None:
        self._file, self.room = file, room

    def write(self, audio):
        if len(audio) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(audio)
        return self._file.write(audio)

    def __getattr__(self, name):
        return getattr(self._file, name)


def test_full_disk_pauses_the_recording_not_the_music(tiny_bundle, tmp_path, caplog):
    """The disk fills after 2 s of recording and has room again a moment later: one error,
    the first file valid up to the last flush, the music to --duration, the recording
    resumed in rec.1.wav, and every second of music either recorded or counted as lost."""
    wav = tmp_path / "rec.wav"
    held = {}

    def hook(engine):
        held["e"] = engine
        recording = engine.playout.recorder
        recording.retry_every = 0.5  # seconds; 30 by default
        recording.current.file = FullDisk(recording.current.file, room=2 * 32000)  # room for 2 s

    caplog.set_level("WARNING")
    summary = run_session(tiny_bundle, SyntheticSource(seed=1), _config(8.0), record=str(wav), threads=2,
                       on_engine=hook)
    engine = held["e"]
    recording = engine.playout.recorder
    assert engine.music_samples == 8 * 32000  # the music went on to --duration
    assert engine.playout.ring.underflows == 0 and engine.playout.counts.silences == 0
    errors = [r.message for r in caplog.records if "recording paused" in r.message]
    assert len(errors) == 1 and "no space left on the device" in errors[0], errors  # one error, not one per block
    assert [r.message for r in caplog.records if "recording resumed in" in r.message and "rec.1.wav" in r.message]
    with wave.open(str(wav)) as w:  # a strict reader: every sample written before the disk filled
        first = w.getnframes()
        assert len(w.readframes(first)) == 2 * first
    assert 1.0 * 32000 <= first <= 2 * 32000
    with wave.open(str(tmp_path / "rec.1.wav")) as w:
        second = w.getnframes()
    assert second > 0 and [s.path for s in recording.segments] == [str(wav), str(tmp_path / "rec.1.wav")]
    assert first + second + recording.lost_samples == 8 * 32000  # recorded or counted, nothing unaccounted
    assert "s not recorded (1 pauses: cannot write" in summary and "+1 more: " in summary, summary


def test_recording_never_overwrites_and_rotates_by_size(tmp_path, caplog):
    from img2music.runtime.audio.recording import LiveRecording

    (tmp_path / "room.wav").write_bytes(b"an earlier run's recording")
    caplog.set_level("WARNING")
    recording = LiveRecording(str(tmp_path / "room.wav"), 1000, max_bytes=44 + 2 * 2500)  # 2.5 s a file
    assert "nothing is overwritten" in caplog.text
    for _ in range(6):
        recording.write(np.full(1000, 0.25, dtype=np.float32))
    recording.close()
    assert (tmp_path / "room.wav").read_bytes() == b"an earlier run's recording"
    lengths = []
    for segment in recording.segments:
        with wave.open(segment.path) as w:
            lengths.append(w.getnframes())
    assert [Path(s.path).name for s in recording.segments] == ["room.1.wav", "room.2.wav", "room.3.wav"]
    assert lengths == [2000, 2000, 2000] and recording.samples == 6000 and recording.lost_samples == 0


def test_full_disk_under_the_metrics_keeps_the_music(tiny_bundle, tmp_path, caplog):
    """--metrics on a full disk (/dev/full answers every write with ENOSPC)."""
    caplog.set_level("ERROR")
    held = {}
    summary = run_session(tiny_bundle, SyntheticSource(seed=1), _config(3.0), metrics="/dev/full", threads=2,
                       on_engine=lambda e: held.update(e=e))
    assert held["e"].music_samples == 3 * 32000 and "0 underflows" in summary
    assert [r.message for r in caplog.records if "metrics stopped" in r.message][:1], caplog.text


def test_sigkill_leaves_a_wav_strict_readers_read(tiny_bundle, tmp_path):
    """The header's sizes are rewritten at every flush: after SIGKILL (or power loss) Python's
    wave module reads the recording up to the last flush."""
    wav, metrics = tmp_path / "killed.wav", tmp_path / "m.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines",
                             str(tiny_bundle), "--no-audio", "--record", str(wav), "--metrics", str(metrics),
                             "--threads", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.3)
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if any(r["music_s"] >= 5 for r in rows):
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 32000 and w.getsampwidth() == 2 and w.getnchannels() == 1
        n = w.getnframes()
        data = np.frombuffer(w.readframes(n), dtype="<i2")
    assert n >= 2 * 32000 and len(data) == n  # at least two flushes, all of it readable
    assert np.abs(data).max() > 0  # music, not a zero-filled file
    assert wav.stat().st_size >= 44 + 2 * n


def test_metrics_rotate_by_size_and_name_the_build(tiny_bundle, tmp_path):
    """Weeks unattended must not fill the disk: FILE rotates to FILE.1 .. FILE.3 at the
    size limit; every line names the version, the bundle and its precision."""
    metrics = tmp_path / "m.jsonl"
    run_session(tiny_bundle, SyntheticSource(seed=1), _config(6.0), metrics=str(metrics), threads=2,
             metrics_max_mb=1500 / 2**20)  # ~2 lines per file
    files = sorted(tmp_path.glob("m.jsonl*"))
    assert [f.name for f in files] == ["m.jsonl", "m.jsonl.1", "m.jsonl.2", "m.jsonl.3"]
    assert all(f.stat().st_size < 3000 for f in files)
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert rows and all(r["bundle"] == str(tiny_bundle) and r["precision"] == "fp32" and r["version"] for r in rows)


class LateCamera(SyntheticSource):
    """A camera that cannot be opened until ``ready_after`` seconds (never, by default)."""

    def __init__(self, ready_after: float = float("inf")) -> None:
        super().__init__(scene_seconds=1000, seed=4, noise=0.0)
        self.name, self.ready_after, self.ready_at = "camera 7", ready_after, None

    def open(self):
        if self.ready_at is None:  # from the first attempt: loading the bundle takes its own time
            self.ready_at = time.monotonic() + self.ready_after
        if time.monotonic() < self.ready_at:
            raise RuntimeError("cannot open camera 7")
        return self


def test_camera_absent_at_start_plays_from_the_fallback(tiny_bundle, tmp_path):
    """No camera: the music starts from the fallback image after --first-frame-wait and
    --duration ends the run; the metrics say why (not 'healthy, 0 reconnects')."""
    metrics = tmp_path / "m.jsonl"
    held = {}
    summary = run_session(tiny_bundle, LateCamera(), _config(3.0, first_frame_wait=0.5), metrics=str(metrics),
                       threads=2, on_engine=lambda e: held.update(e=e))
    assert held["e"].music_samples == 3 * 32000 and "0 underflows" in summary
    last = [json.loads(line) for line in metrics.read_text().splitlines()][-1]
    assert last["fallback_used"] and last["open_failures"] >= 1
    assert last["source_state"] == f"open failed {last['open_failures']} times"


def test_a_camera_that_appears_later_takes_over(tiny_bundle, tmp_path):
    metrics = tmp_path / "m.jsonl"
    held = {}
    run_session(tiny_bundle, LateCamera(ready_after=2.0), _config(8.0, first_frame_wait=0.5),
             metrics=str(metrics), threads=2, on_engine=lambda e: held.update(e=e))
    engine = held["e"]
    assert engine.fallback_used and engine.tracker.changes >= 1  # the camera's picture is a scene change
    states = [json.loads(line)["source_state"] for line in metrics.read_text().splitlines()]
    assert states[0].startswith("open failed") and states[-1] == "streaming"
    assert engine.playout.counts.silences == 0 and engine.playout.ring.underflows == 0


def test_systemd_notify_ready_watchdog_and_its_stop_on_a_stall(tiny_bundle, tmp_path, monkeypatch):
    """A fake NOTIFY_SOCKET: READY=1 after the first audio, WATCHDOG=1 while music flows,
    STATUS= lines; when the generator stalls into silence the WATCHDOG pets stop."""
    import socket

    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    received: list[tuple[float, str]] = []
    done = threading.Event()

    def listen():
        while not done.is_set():
            try:
                message = server.recv(4096).decode()
            except socket.timeout:
                continue
            received.append((time.monotonic(), message))  # stamped on arrival, not before the wait

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    held = {}

    def stall_after_four_seconds(engine):  # the generator stops for good at 4 s of music
        held["e"] = engine
        fast = engine.pipeline.generator.next_frames

        def next_frames(count, sampling, on_step=None):
            if engine.music_samples >= 4 * 32000:
                held.setdefault("stalled_at", time.monotonic())
                engine.stop_event.wait(30)
            return fast(count, sampling, on_step)

        engine.pipeline.generator.next_frames = next_frames

    def stop_later():
        time.sleep(12)
        held["stopped_at"] = time.monotonic()
        held["e"].stop_event.set()

    threading.Thread(target=stop_later, daemon=True).start()
    run_session(tiny_bundle, SyntheticSource(seed=1), _config(None, stall_seconds=2.0, buffer_seconds=1.0),
             threads=2, on_engine=stall_after_four_seconds)
    done.set()
    listener.join()
    server.setblocking(False)
    while True:  # what came after the listener's last look
        try:
            message = server.recv(4096).decode()
        except BlockingIOError:
            break
        received.append((time.monotonic(), message))
    server.close()
    messages = [m for _, m in received]
    assert messages.count("READY=1") == 1 and messages[-1] == "STOPPING=1"
    assert any(m.startswith("STATUS=music") for m in messages)
    pets = [t for t, m in received if m == "WATCHDOG=1"]
    stalled = held["stalled_at"]
    assert sum(t < stalled for t in pets) >= 2  # petted while music played
    # the buffer (~1 s), then repeats until the 2 s stall limit, then silence: no pets after that
    assert not [t for t in pets if stalled + 5.0 < t < held["stopped_at"]], (
        [round(t - stalled, 3) for t in pets], round(held["stopped_at"] - stalled, 3))
    assert held["e"].playout.counts.silences == 1


def test_a_dead_playout_thread_ends_the_process_non_zero(tiny_bundle, tmp_path):
    """An unexpected error in the playout thread: not a process that stays up silent past
    --duration claiming health, but exit 1 at once with the thread's own error."""
    script = (
        "import sys\n"
        "import img2music.runtime.audio.playout as p\n"
        "real = p.Playout.feed\n"
        "def feed(self):\n"
        "    if self.fresh_out > 2 * 32000:\n"
        "        raise RuntimeError('injected fault')\n"
        "    real(self)\n"
        "p.Playout.feed = feed\n"
        "from img2music.runtime.cli.live import cli\n"
        "cli()\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script, "--synthetic", "--engines", str(tiny_bundle), "--no-audio",
                           "--duration", "60", "--threads", "2"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: the playout thread died (RuntimeError: injected fault)" in proc.stderr
    assert time.monotonic() - start < 40  # at once, not at --duration (60 s of music)


def test_a_hung_playout_thread_ends_the_run(tiny_bundle):
    from img2music.runtime.loop.thread_watch import LiveThreadFailed

    def hang(engine):
        real = engine.playout.feed

        def feed():
            if engine.playout.fresh_out > 32000 and threading.current_thread() is engine.playout.background.thread:
                time.sleep(60)  # a hang in the playout thread: alive, no progress
            real()

        engine.playout.feed = feed

    with pytest.raises(LiveThreadFailed, match="playout thread made no progress"):
        # 3 s, not the 10 s default: the status thread ticks every second, the others faster
        run_session(tiny_bundle, SyntheticSource(seed=1), _config(40.0, thread_stuck_seconds=3.0), threads=2,
                 on_engine=hang)


class FakeSoundServer:
    """A stand-in for the sounddevice module whose server can go away: streams stop calling
    back and report inactive, opening fails while it is down (as with PulseAudio stopped)."""

    class PortAudioError(Exception):
        pass

    def __init__(self, rate: int) -> None:
        self.up, self.rate = True, rate

    def query_devices(self, device, kind):
        if not self.up:
            raise self.PortAudioError("Error querying device -1")
        return {"max_output_channels": 2, "default_samplerate": self.rate}

    def OutputStream(self, samplerate, blocksize, device, channels, dtype, callback):  # noqa: N802 (sounddevice's name)
        if not self.up:
            raise self.PortAudioError("Error opening OutputStream: Internal PortAudio error")
        server = self

        class Stream:
            def __init__(self):
                self.alive = True

            @property
            def active(self):
                return self.alive and server.up

            def start(self):
                def run():
                    out = np.zeros((blocksize, channels), np.float32)
                    while self.active:
                        callback(out, blocksize, None, 0)
                        time.sleep(blocksize / samplerate)

                threading.Thread(target=run, daemon=True).start()

            def abort(self):
                self.alive = False

            def close(self):
                self.alive = False

        return Stream()


def test_sound_server_outage_is_counted_and_recovered(monkeypatch):
    import img2music.runtime.audio.sinks as audio_sink
    from img2music.runtime.audio.sinks import RingBuffer, SoundDeviceSink

    server = FakeSoundServer(8000)
    monkeypatch.setattr(audio_sink, "_sounddevice", lambda: server)
    ring = RingBuffer(8000 * 30)
    ring.write(np.ones(8000 * 20, np.float32))
    # dead_after 1 s: a busy host may hold the fake callback thread for a moment; the outage
    # below is found by the stream's inactive state, not by missing callbacks
    sink = SoundDeviceSink(ring, 8000, blocksize=400, dead_after=1.0).start()
    time.sleep(0.6)
    server.up = False  # the sound server goes away for ~1.5 s
    time.sleep(1.5)
    assert sink.outages == 1
    during = ring.consumed
    server.up = True
    deadline = time.monotonic() + 5
    while sink.outage_seconds == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    sink.close()
    assert sink.outages == 1 and sink.reopens == 1
    # down ~1.5 s; the reopen retries back off 0.5, 1, 2 s, so the one that succeeds lands ~3.5 s
    # after the outage began, or one retry later (~5.5 s) when the main thread was slow
    assert 1.0 < sink.outage_seconds < 6.5, sink.outage_seconds
    assert ring.consumed > during  # the music reaches the card again
