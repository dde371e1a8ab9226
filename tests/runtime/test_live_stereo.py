"""live.py with a stereo bundle (tiny-stereo, as musicgen-stereo-*): two channels through the
resampler, the playout and its ladder, the transport, the ring, the sinks and the recording.

The parts: every stage's stereo is its mono, channel by channel (a mono run of each channel
is the oracle), and a sound card gets both channels. End to end: a still image played
headless with a pause, a refused mono reload and an accepted stereo one; a video played to a
PulseAudio null sink, whose monitor must hear two different, non-silent channels (a mono
run would give it the same signal twice)."""

import json
import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from img2music.runtime.audio.playout import Playout
from img2music.runtime.audio.recording import LiveRecording
from img2music.runtime.audio.resampler import Resampler
from img2music.runtime.audio.sinks import ClockSink, RingBuffer, SoundDeviceSink
from img2music.runtime.loop.transport import Transport
from tests.runtime.fake_clock import FakeClock
from tests.runtime.live_runs import last_metrics, played_seconds

ROOT = Path(__file__).resolve().parents[2]


def _two_tones(frames: int, rate: int) -> np.ndarray:
    """(frames, 2): a different tone in each channel, so a swap or a mix would show."""
    t = np.arange(frames) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 3 * t), 0.3 * np.cos(2 * np.pi * 7 * t)], axis=1).astype(np.float32)


def channel_stats(audio: np.ndarray) -> tuple[float, float, float, float]:
    """(RMS left, RMS right, RMS of left - right, their correlation) of (S, 2) audio. The tiny
    random EnCodec puts a large common part (an offset near 0.13) in every row it decodes, so
    the channels correlate at ~0.99 and differ by ~0.01 RMS; one signal twice differs by 0
    (a 16-bit step is 3e-5)."""
    audio = np.asarray(audio, np.float64)
    left, right = np.sqrt(np.mean(np.square(audio), axis=0))
    difference = np.sqrt(np.mean(np.square(audio[:, 0] - audio[:, 1])))
    return float(left), float(right), float(difference), float(np.corrcoef(audio[:, 0], audio[:, 1])[0, 1])


def _ladder(channels_audio: np.ndarray, recorder=None) -> tuple[Playout, np.ndarray]:
    """Drive one playout down the whole ladder (cheaper, repeats, a stall's fade to silence,
    the fade back in, the end) with a fake clock; returns it and everything the ring gave out."""
    rate, clock = 1000, FakeClock()
    channels = 1 if channels_audio.ndim == 1 else channels_audio.shape[1]
    ring = RingBuffer(rate * 20, channels)
    playout = Playout(ring, rate, target=1.0, low_water=0.15, crossfade=0.05, repeat_seconds=0.5,
                      stall_seconds=3.0, clock=clock, recorder=recorder)
    out = []

    def drain(seconds):
        block = np.empty((max(0, int(seconds * rate)),) + channels_audio.shape[1:], np.float32)  # (n,) or (n, C)
        ring.read_into(block)
        out.append(block)

    playout.submit(channels_audio[:rate])  # pre-roll
    playout.feed()
    drain(0.6)
    playout.feed()  # below half the target: cheaper
    for i in range(3):  # behind, fresh audio trickling in: repeats
        clock.now += 0.5
        drain(ring.available() / rate - 0.1)
        playout.feed()
        playout.submit(channels_audio[rate + 100 * i: rate + 100 * (i + 1)])
        playout.feed()
    clock.now += 3.5  # a stall: fade to silence
    drain(ring.available() / rate - 0.1)
    playout.feed()
    playout.feed()
    drain(0.15)
    playout.submit(channels_audio[2 * rate:])  # back: fade in
    playout.feed()
    playout.finish()
    playout.feed()
    drain(ring.available() / rate)
    return playout, np.concatenate(out)


def test_the_stereo_ladder_is_the_mono_ladder_on_each_channel(tmp_path):
    audio = _two_tones(4000, 1000)
    recording = LiveRecording(str(tmp_path / "ladder.wav"), 1000, channels=2)
    stereo, heard = _ladder(audio, recorder=recording)
    recording.close()
    left, heard_left = _ladder(np.ascontiguousarray(audio[:, 0]))
    right, heard_right = _ladder(np.ascontiguousarray(audio[:, 1]))
    assert stereo.ring.data.shape == (20000, 2) and heard.shape == (len(heard_left), 2)
    np.testing.assert_array_equal(heard[:, 0], heard_left)  # repeats, fades, silence: the same samples
    np.testing.assert_array_equal(heard[:, 1], heard_right)
    counts = stereo.counts
    assert (counts.cheaper, counts.repeats, counts.silences, counts.recoveries) == (1, 3, 1, 1), counts
    assert counts == left.counts == right.counts
    assert stereo.ring.underflows == 0
    recorded, rate = sf.read(str(tmp_path / "ladder.wav"), dtype="float32")
    assert rate == 1000 and recorded.shape == (stereo.ring.written, 2)
    np.testing.assert_allclose(recorded, heard[: len(recorded)], atol=1 / 2**15)  # 16-bit PCM


def test_transport_pause_resume_and_a_reload_seam_keep_both_channels():
    rate = 1000
    audio = _two_tones(3000, rate)

    def run(chunk: np.ndarray, seam: np.ndarray) -> np.ndarray:
        t, out = Transport(rate), []
        out.append(t.shape(chunk[:500]))
        t.crossfade_from(seam)  # a reloaded bundle's first audio joins the old one's tail
        out.append(t.shape(chunk[500:1000]))
        t.pause(0.2)
        out.append(t.shape(chunk[1000:1500]))  # fades out over 200 frames, then paused
        assert t.paused
        out.append(t.shape(chunk[1500:2000]))
        t.resume()
        out.append(t.shape(chunk[2000:]))  # fades back in
        return np.concatenate(out)

    seam = _two_tones(50, rate)[::-1] * 2
    stereo = run(audio, seam)
    assert stereo.shape == (3000, 2)
    for c in range(2):  # every gain applied to both channels alike: each is its mono run
        np.testing.assert_array_equal(stereo[:, c], run(np.ascontiguousarray(audio[:, c]),
                                                        np.ascontiguousarray(seam[:, c])))
    np.testing.assert_array_equal(stereo[:500], audio[:500])
    np.testing.assert_array_equal(stereo[550:1000], audio[550:1000])  # after the 50-frame seam
    assert np.abs(stereo[500:550] - audio[500:550]).max() > 0.1  # the old tail fading out under it
    assert np.all(stereo[1200:2000] == 0)  # paused: silence in both channels
    np.testing.assert_allclose(stereo[2100:], audio[2100:], atol=1e-7)  # faded back in (50 frames)


def test_the_stereo_resampler_streams_each_channel_as_mono():
    audio = _two_tones(32000, 32000)
    chunks = range(0, 32000, 640)
    stereo = Resampler(32000, 48000, channels=2)
    out = np.concatenate([stereo(audio[i:i + 640]) for i in chunks] + [stereo(np.zeros((0, 2)), last=True)])
    assert out.shape[1] == 2 and abs(len(out) - 48000) <= 1
    for c in range(2):
        mono = Resampler(32000, 48000)
        alone = np.concatenate([mono(audio[i:i + 640, c]) for i in chunks] + [mono(np.zeros(0), last=True)])
        assert len(alone) == len(out)
        assert np.abs(out[:, c] - alone).max() < 1e-5


def test_sinks_take_both_channels_and_fit_the_device(monkeypatch):
    import img2music.runtime.audio.sinks as audio_sink

    monkeypatch.setattr(audio_sink, "_sounddevice", lambda: SimpleNamespace())  # no PortAudio needed
    frames = _two_tones(256, 1000)
    for device_channels, expected in ((2, frames), (1, frames.mean(axis=1, keepdims=True))):
        ring = RingBuffer(1000, channels=2)
        ring.write(frames)
        sink = SoundDeviceSink(ring, 1000, blocksize=256)
        outdata = np.full((256, device_channels), 9.0, np.float32)  # what PortAudio hands the callback
        sink._callback(outdata, 256, None, 0)
        np.testing.assert_allclose(outdata, expected, atol=1e-7)
        assert ring.consumed == 256 and ring.underflows == 0
    mono = RingBuffer(1000)
    mono.write(frames[:, 0].copy())
    outdata = np.zeros((256, 2), np.float32)
    SoundDeviceSink(mono, 1000, blocksize=256)._callback(outdata, 256, None, 0)
    np.testing.assert_array_equal(outdata, np.repeat(frames[:, :1], 2, axis=1))  # mono: as before, on both
    clock_sink = ClockSink(RingBuffer(1000, channels=2), 1000, blocksize=64)
    assert clock_sink._scratch.shape == (64, 2)


def test_a_stereo_recording_rotates_by_bytes(tmp_path):
    recording = LiveRecording(str(tmp_path / "room.wav"), 1000, max_bytes=44 + 4 * 2500, channels=2)  # 2.5 s a file
    for _ in range(6):
        recording.write(np.full((1000, 2), 0.25, dtype=np.float32))
    recording.close()
    shapes = []
    for segment in recording.segments:
        with wave.open(segment.path) as w:
            shapes.append((w.getnframes(), w.getnchannels()))
    assert shapes == [(2000, 2)] * 3 and recording.samples == 6000


# -- end to end --------------------------------------------------------------------


def _live(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "runtime" / "live.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **kw)


def _quiet_stretch(audio: np.ndarray, rate: int, window: float = 0.05) -> float:
    """Longest stretch (seconds) in which every channel's RMS stays under 1e-4."""
    n = int(window * rate)
    blocks = audio[: len(audio) // n * n].reshape(-1, n, audio.shape[1])
    quiet = np.all(np.sqrt(np.mean(np.square(blocks), axis=1)) < 1e-4, axis=1)
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return longest * window


def test_stereo_live_from_a_still_image_with_pause_and_reload(stereo_bundle, tiny_bundle, photos, tmp_path):
    pytest.importorskip("prometheus_client")
    from tests.runtime.test_live_http import _free_port, _get, _post, _wait_ready

    folder = tmp_path / "still"
    folder.mkdir()
    photos["astronaut"].save(folder / "astronaut.png")
    copy = shutil.copytree(stereo_bundle, tmp_path / "stereo-copy")  # a valid reload: the same channels
    wav, metrics, port = tmp_path / "live.wav", tmp_path / "m.jsonl", _free_port()
    duration = 14.0
    # tiny-stereo runs at RTF ~0.8 on two cores (EnCodec decodes two rows: 0.3 s per second of
    # music); a reload's loading shares the cores for ~3 s, which a 3 s buffer absorbs
    proc = _live("--images", str(folder), "--interval", "1000", "--engines", str(stereo_bundle), "--no-audio",
                 "--threads", "2", "--duration", str(duration), "--record", str(wav), "--metrics", str(metrics),
                 "--http", str(port), "--buffer", "3",
                 "--reload-dir", os.path.commonpath([stereo_bundle, tiny_bundle, tmp_path]))
    base = f"http://127.0.0.1:{port}"

    def until(what: str, condition, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline and proc.poll() is None, f"timed out waiting for {what}"
            time.sleep(0.05)

    def control() -> dict:
        return json.loads(_get(base + "/control")[1])

    try:
        _wait_ready(base)
        time.sleep(1.0)
        code, answer = _post(base + "/control", {"bundle": str(tiny_bundle)})  # mono: refused, as before
        assert code == 409 and "channels is 1, this run's is 2" in answer["error"], answer
        assert _post(base + "/control", {"transport": "pause"})[0] == 202
        until("the pause", lambda: control()["transport"] == "paused")
        time.sleep(1.5)
        assert _post(base + "/control", {"transport": "resume"})[0] == 202
        until("the resume", lambda: control()["transport"] == "playing")
        assert _post(base + "/control", {"bundle": str(copy)})[0] == 202
        until("the reload", lambda: control()["bundle"] == str(copy.resolve()))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert "0 underflows" in out and "bundle reloads 1 (failed 0)" in out, out
    last = last_metrics(metrics)
    assert last["channels"] == 2 and last["underflows"] == 0 and last["degrade_silences"] == 0
    audio, rate = sf.read(str(wav), dtype="float32")
    assert rate == 32000 and audio.ndim == 2 and audio.shape[1] == 2
    # paused silence counts toward --duration; a slower host's repeats are added
    assert abs(len(audio) / rate - played_seconds(duration, last)) <= 0.01
    left, right, difference, correlation = channel_stats(audio)
    print(f"\nheadless stereo: {len(audio) / rate:.3f} s x {audio.shape[1]}, RMS L {left:.4f} R {right:.4f}, "
          f"RMS L-R {difference:.4f}, corr {correlation:.4f}, quiet {_quiet_stretch(audio, rate):.2f} s")
    assert left > 1e-3 and right > 1e-3  # music in both channels
    assert difference > 1e-3  # each channel decoded from its own codebooks, not one signal twice
    assert _quiet_stretch(audio, rate) >= 0.8  # the pause: silence in both channels


def test_stereo_reaches_the_sound_card_as_two_channels(stereo_bundle, photos, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from img2music.benchmarks.fault_servers import PulseServer, pulse_available

    why = pulse_available()
    if why:
        pytest.skip(why)
    video = tmp_path / "walk.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for name in ("astronaut", "coffee"):
        frame = cv2.resize(np.asarray(photos[name].convert("RGB"))[:, :, ::-1], (320, 240))
        for _ in range(20):
            writer.write(frame)
    writer.release()
    pulse = PulseServer(tmp_path / "pulse").start()
    wav, metrics = tmp_path / "card.wav", tmp_path / "m.jsonl"
    try:
        # a 3 s buffer: tiny-stereo's RTF ~0.8 leaves a 1 s buffer little room on a shared host
        proc = _live("--video", str(video), "--engines", str(stereo_bundle), "--threads", "2", "--duration", "8",
                     "--buffer", "3", "--record", str(wav), "--metrics", str(metrics), env=pulse.env)
        try:
            deadline = time.monotonic() + 60
            while last_metrics(metrics).get("music_s", 0) < 3:
                assert time.monotonic() < deadline and proc.poll() is None, "no music within 60 s"
                time.sleep(0.2)
            heard = pulse.record(3.0, tmp_path / "heard.wav")  # what the null sink plays (5+ s are left)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        pulse.stop()
    assert proc.returncode == 0, err[-2000:]
    assert "0 underflows" in out, out
    last = last_metrics(metrics)
    assert last["channels"] == 2
    card, card_rate = sf.read(str(heard), dtype="float32")
    # parecord takes a moment to connect on a busy machine: half a second of two channels is plenty
    assert card.ndim == 2 and card.shape[1] == 2 and len(card) > card_rate // 2
    left, right, difference, correlation = channel_stats(card)
    recorded = sf.info(str(wav))
    print(f"\nsound card: {len(card) / card_rate:.2f} s x {card.shape[1]} at {card_rate} Hz, RMS L {left:.4f} "
          f"R {right:.4f}, RMS L-R {difference:.4f}, corr {correlation:.4f}; recorded {recorded.duration:.3f} s "
          f"x {recorded.channels} at {recorded.samplerate} Hz")
    assert left > 1e-3 and right > 1e-3 and difference > 1e-3  # a mono run gives the sink L == R
    assert recorded.channels == 2 and abs(recorded.duration - played_seconds(8.0, last)) <= 0.01
