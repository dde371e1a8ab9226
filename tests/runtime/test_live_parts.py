"""Live runtime parts on their own: frames, scenes, ring, playout degradation, resampling."""

import numpy as np
import pytest

from img2music.runtime.audio.playout import Playout
from img2music.runtime.audio.resampler import Resampler
from img2music.runtime.audio.sinks import RingBuffer
from img2music.runtime.loop.engine import blend
from img2music.runtime.loop.scene import SceneConfig, SceneTracker
from img2music.runtime.loop.sources import MAX_SIDE, sanitize_frame
from tests.runtime.fake_clock import FakeClock


def test_sanitize_repairs_or_drops_odd_frames(photos):
    rgb = np.asarray(photos["astronaut"])  # (512, 512, 3) uint8
    out = sanitize_frame(rgb[:, :, ::-1], bgr=True)
    np.testing.assert_array_equal(out, rgb)  # BGR from OpenCV -> RGB
    gray = np.asarray(photos["camera"])
    assert sanitize_frame(gray).shape == (512, 512, 3)
    assert sanitize_frame(gray[:, :, None]).shape == (512, 512, 3)
    bgra = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(sanitize_frame(bgra, bgr=False), rgb)
    np.testing.assert_array_equal(sanitize_frame(rgb.astype(np.uint16) << 8, bgr=False), rgb)
    as_float = sanitize_frame(rgb.astype(np.float32) / 255, bgr=False)
    assert np.abs(as_float.astype(int) - rgb).max() <= 1
    huge = np.zeros((4000, 6000, 3), np.uint8)
    assert max(sanitize_frame(huge).shape[:2]) == MAX_SIDE
    for garbage in (None, "frame", np.zeros((0, 0, 3), np.uint8), np.zeros((8, 8, 3), np.uint8),
                    np.zeros((64, 64, 5), np.uint8), np.zeros((64, 64, 3), bool),
                    np.full((64, 64, 3), np.nan, np.float32), np.zeros((2, 64, 64, 3), np.uint8),
                    np.zeros((64, 64, 3), object)):
        assert sanitize_frame(garbage) is None


def _unit(v):
    return np.asarray(v, np.float32) / np.linalg.norm(v)


def test_scene_tracker_confirms_and_ignores_flicker():
    a, b, c = _unit([1, 0, 0]), _unit([0, 1, 0]), _unit([0, 0, 1])
    tracker = SceneTracker(SceneConfig(threshold=0.1, confirm=2, min_dwell=1.0))
    assert tracker.update(a, 0.0) is not None  # the first scene
    assert tracker.update(a + 0.01, 0.5) is None  # sensor noise
    # flicker between two other views: each differs from the last, never confirmed
    for i, v in enumerate([b, c, b, c, b, c]):
        assert tracker.update(v, 1.0 + i * 0.5) is None
    assert tracker.changes == 0
    assert tracker.update(b, 5.0) is None  # first sighting of a steady new scene
    new = tracker.update(b, 5.5)
    np.testing.assert_allclose(new, b)
    assert tracker.changes == 1 and tracker.change_started == 5.0
    # min dwell: right after a change, even a confirmed other scene waits
    assert tracker.update(a, 5.6) is None and tracker.update(a, 5.7) is None
    assert tracker.update(a, 6.6) is not None and tracker.changes == 2


def test_ring_buffer_wraps_and_counts_underflows():
    ring = RingBuffer(10)
    out = np.empty(4, np.float32)
    assert ring.read_into(out) == 0 and ring.underflows == 0  # before the first audio: start-up
    assert ring.write(np.arange(8, dtype=np.float32)) == 8
    assert ring.write(np.arange(8, dtype=np.float32)) == 2  # full
    ring.read_into(out)
    np.testing.assert_array_equal(out, [0, 1, 2, 3])
    assert ring.write(np.arange(100, 104, dtype=np.float32)) == 4  # wraps
    got = np.empty(12, np.float32)
    assert ring.read_into(got) == 10
    np.testing.assert_array_equal(got, [4, 5, 6, 7, 0, 1, 100, 101, 102, 103, 0, 0])
    assert ring.underflows == 1 and ring.underflow_samples == 2


def _drain(ring, seconds, rate):
    ring.read_into(np.empty(int(seconds * rate), np.float32))


def test_playout_ladder_keeps_music_playing_and_recovers():
    """cheaper settings -> repeats for as long as fresh audio keeps coming -> silence only
    after a stall -> fade back in and recover (a fake clock, a deterministic feeder)."""
    rate, clock = 1000, FakeClock()
    ring = RingBuffer(rate * 20)
    playout = Playout(ring, rate, target=1.0, low_water=0.15, crossfade=0.05, repeat_seconds=0.5,
                      stall_seconds=3.0, clock=clock)
    tone = np.sin(np.arange(6 * rate) * 0.05).astype(np.float32)
    playout.submit(tone[:rate])  # pre-roll reached
    playout.feed()
    assert ring.available() == rate - playout.xfade  # the crossfade tail is held back
    _drain(ring, 0.6, rate)
    playout.feed()
    assert playout.level == 1 and playout.counts.cheaper == 1  # below half the target
    for i in range(5):  # behind for a while, fresh audio trickling in: repeats, never silence
        clock.now += 0.5
        _drain(ring, ring.available() / rate - 0.1, rate)
        playout.feed()
        assert playout.counts.repeats == 2 * i + 1 and playout.level == 2
        playout.submit(tone[rate + 100 * i : rate + 100 * (i + 1)])
        playout.feed()
        clock.now += 0.5
        _drain(ring, ring.available() / rate - 0.1, rate)
        playout.feed()
    assert playout.counts.silences == 0 and playout.counts.repeats == 10
    clock.now += 3.5  # nothing fresh for longer than the stall limit: fade to silence
    _drain(ring, ring.available() / rate - 0.1, rate)
    playout.feed()
    assert playout.counts.silences == 1 and playout.level == 3
    assert ring.underflows == 0  # every read so far found audio (or deliberate silence)
    playout.submit(tone[2 * rate :])  # the generator is back
    playout.feed()
    assert playout.level == 0 and playout.counts.recoveries == 1
    written = ring.written + len(playout._held)
    assert written == playout.fresh_out + round((playout.counts.fill_seconds + playout.counts.silence_seconds) * rate)
    assert 4.0 < playout.counts.fill_seconds < 5.0  # ten 0.5 s repeats, less their crossfades


def test_a_slow_generator_that_keeps_stepping_is_not_a_stall():
    """No fresh audio for three stall limits, but decoder steps keep coming (a host so slow
    that one chunk outlasts the limit): repeats, never silence; once the steps stop too,
    silence after the limit."""
    rate, clock = 1000, FakeClock()
    ring = RingBuffer(rate * 60)
    playout = Playout(ring, rate, target=1.0, low_water=0.15, crossfade=0.05, repeat_seconds=0.5,
                      stall_seconds=3.0, clock=clock)
    playout.submit(np.sin(np.arange(rate) * 0.05).astype(np.float32))
    playout.feed()
    for _ in range(90):  # 9 s, a step every 0.1 s
        clock.now += 0.1
        playout.progress()
        _drain(ring, max(0.0, ring.available() / rate - 0.1), rate)
        playout.feed()
    assert playout.counts.silences == 0 and playout.counts.repeats >= 10 and playout.level == 2
    for _ in range(31):  # the steps stop: a stall after 3 s
        clock.now += 0.1
        _drain(ring, max(0.0, ring.available() / rate - 0.1), rate)
        playout.feed()
    assert playout.counts.silences == 1 and playout.level == 3
    assert ring.underflows == 0


def test_playout_crossfades_repeats_without_clicks():
    rate = 8000
    ring = RingBuffer(rate * 10)
    playout = Playout(ring, rate, target=0.5, low_water=0.15, crossfade=0.02, repeat_seconds=0.25)
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    playout.submit(tone)
    playout.feed()
    _drain(ring, 0.9, rate)
    playout.feed()  # repeat inserted
    playout.submit(tone)
    playout.feed()
    playout.finish()
    playout.feed()
    out = np.empty(ring.available(), np.float32)
    ring.read_into(out)
    # a 220 Hz tone at 0.5 moves at most 0.5 * 2pi * 220 / 8000 = 0.087 per sample; a
    # hard splice would jump by up to 1.0
    assert np.abs(np.diff(out)).max() < 0.2


def test_resampler_streams_without_seams():
    t = np.arange(32000) / 32000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    whole = Resampler(32000, 48000)(tone, last=True)
    r = Resampler(32000, 48000)
    parts = [r(tone[i : i + 640], last=i + 640 >= len(tone)) for i in range(0, len(tone), 640)]
    streamed = np.concatenate(parts)
    assert abs(len(streamed) - 48000) <= 1
    n = min(len(whole), len(streamed))
    assert np.abs(whole[:n] - streamed[:n]).max() < 1e-4
    spectrum = np.abs(np.fft.rfft(streamed[:48000]))
    assert abs(np.argmax(spectrum) * 48000 / 48000 - 440) <= 1
    same = Resampler(32000, 32000)
    np.testing.assert_array_equal(same(tone), tone)


def test_blend_interpolates_conditioning():
    old = (np.ones((1, 3, 4), np.float32), np.array([[1, 1, 0]]), None)
    new = (np.full((1, 5, 4), 3.0, np.float32), np.array([[1, 1, 1, 1, 0]]), None)
    cond, mask, weight = blend(old, new, 0.25)
    assert cond.shape == (1, 5, 4) and weight is None
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0]])
    np.testing.assert_allclose(cond[0, :, 0], [1.5, 1.5, 0.75, 0.75, 0.0])
    assert blend(old, new, 1.0) is new
    # a prompt (weight 3) joining: its tokens' weights glide from 1 (absent) to 3
    prompted = (new[0], new[1], np.array([[1, 1, 1, 3, 3]], np.float32))
    _, _, weight = blend(old, prompted, 0.25)
    np.testing.assert_allclose(weight, [[1, 1, 1, 1.5, 1.5]])


@pytest.mark.parametrize("bad", [dict(), dict(camera="0", synthetic=True), dict(video="/nope.mp4"),
                                 dict(images="/nope"), dict(camera="/dev/video99")])
def test_make_source_refuses_bad_choices(bad):
    from img2music.basics.errors import Img2MusicError
    from img2music.runtime.loop.config import SourceConfig
    from img2music.runtime.loop.sources import make_source

    with pytest.raises(Img2MusicError):
        make_source(SourceConfig(**bad))


def test_frame_gate_skips_still_frames_only(photos):
    from img2music.runtime.loop.scene import FrameGate

    rng = np.random.default_rng(0)
    room = np.asarray(photos["coffee"].convert("RGB")).astype(np.float32)
    noisy = lambda: np.clip(room + rng.normal(0, 4, room.shape), 0, 255).astype(np.uint8)  # noqa: E731
    gate = FrameGate(SceneConfig(pixel_gate=2.0, max_skip=5.0))
    assert gate(noisy(), 0.0)  # the first frame
    assert not any(gate(noisy(), 0.1 * i) for i in range(1, 20))  # sensor noise: no CLIP runs
    assert gate(np.asarray(photos["rocket"].convert("RGB").resize(photos["coffee"].size)), 2.1)  # a new view
    assert gate(noisy(), 2.2)  # and back
    assert gate(noisy(), 2.3, must=True)  # a change being confirmed is always embedded
    assert gate(noisy(), 7.4)  # at least every max_skip seconds
    assert gate.skipped == 19 and gate.passed == 5
    always = FrameGate(SceneConfig(pixel_gate=0.0))
    frame = noisy()
    assert always(frame, 0.0) and always(frame, 0.1)


def test_status_line_fits_an_80_column_terminal_and_log_lines_clear_it(monkeypatch):
    """One row, never wrapped (a wrapped line scrolls the pane on every redraw); a log line
    printed meanwhile starts by clearing the row instead of gluing onto it."""
    import io
    import logging
    import os

    import img2music.runtime.control.status as live_status

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    snap = {"music_s": 12.5, "buffer_s": 0.9, "rtf": 0.93, "underflows": 0, "frame_age_s": 0.1,
            "scene_changes": 3, "degrade_level": 0, "rss_mb": 310.0,
            "directive": "progressive metal with odd-meter riffs and double bass drums, 145 BPM, intense"}
    assert len(live_status.status_line(snap)) > 150
    monkeypatch.setattr(live_status, "snapshot", lambda *a: dict(snap))
    monkeypatch.setattr(live_status.shutil, "get_terminal_size", lambda fallback=None: os.terminal_size((80, 24)))
    term = Terminal()
    handler = logging.StreamHandler(term)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        reporter = live_status.StatusReporter(engine=None, sink=None, metrics_path=None, stream=term, interval=60)
        reporter.start()
        reporter.report()
        logging.getLogger("runtime.test").warning("a warning while the status line is drawn")
        reporter.close()
        logging.getLogger("runtime.test").warning("after")
    finally:
        root.removeHandler(handler)
    rows = [r.split("\033[K")[-1] for part in term.getvalue().split("\n") for r in part.split("\r")]
    status = [r for r in rows if r.startswith("music")]
    assert status and all(len(r) <= 79 for r in status)
    assert "\r\033[Ka warning while the status line is drawn" in term.getvalue()
    assert term.getvalue().endswith("\nafter\n")  # the formatter is given back at close


def test_session_configs_check_themselves_once_and_are_frozen(tmp_path):
    """Each part of a LiveSessionConfig refuses a bad value with one clear error when built, and
    nothing can be patched in afterwards."""
    import dataclasses

    from img2music.basics.errors import Img2MusicError
    from img2music.runtime import (
        BackendConfig,
        EngineConfig,
        LiveSessionConfig,
        OutputConfig,
        ServerConfig,
        SourceConfig,
    )

    bad = [(lambda: SourceConfig(), "exactly one source"),
           (lambda: SourceConfig(synthetic=True, interval=0), "--interval"),
           (lambda: EngineConfig(chunk_frames=0), "--chunk-frames"),
           (lambda: EngineConfig(transition_mode="morph"), "transition_mode"),
           (lambda: EngineConfig(prompt_weight=11.0), "prompt weight"),
           (lambda: OutputConfig(record=str(tmp_path / "no" / "x.wav")), "directory does not exist"),
           (lambda: ServerConfig(token_file=str(tmp_path / "t")), "needs --http or --ws"),
           (lambda: BackendConfig(str(tmp_path / "none")), "engine bundle not found"),
           (lambda: BackendConfig(str(tmp_path), provider="rocm"), "unknown provider"),
           (lambda: LiveSessionConfig(BackendConfig(str(tmp_path)), EngineConfig()), "must be a SourceConfig")]
    for make, message in bad:
        with pytest.raises(Img2MusicError, match=message):
            make()
    config = LiveSessionConfig(BackendConfig(str(tmp_path)), SourceConfig(synthetic=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.engine.sampling = None


def test_the_sound_starts_after_the_preroll_and_the_target_ramps_up():
    """A short pre-roll (the first audio sooner), then the ladder's target grows to the buffer at
    TARGET_RAMP seconds per second: never tripping the ladder while the generator fills it."""
    from img2music.runtime.audio.playout import TARGET_RAMP, Playout

    clock = FakeClock()
    ring = RingBuffer(48000 * 4)
    playout = Playout(ring, 1000, target=2.0, preroll=0.5, clock=clock)
    playout.submit(np.ones(400, np.float32))
    playout.feed()
    assert ring.available() == 0  # 0.4 s queued: not yet
    playout.submit(np.ones(200, np.float32))
    playout.feed()
    assert ring.available() > 0 and playout.target_now() == 0.5
    clock.now += 2.0
    assert playout.target_now() == pytest.approx(0.5 + 2.0 * TARGET_RAMP)
    clock.now += 100.0
    assert playout.target_now() == 2.0
    assert Playout(RingBuffer(100), 1000, target=1.0).preroll == 1.0  # no pre-roll given: the whole target


def test_the_first_chunk_is_the_preroll():
    from types import SimpleNamespace

    from img2music.runtime.loop.engine import LiveEngine
    from img2music.runtime.pipeline.encodec_stream import LOOKAHEAD_FRAMES

    engine = SimpleNamespace(frames_done=0, playout=SimpleNamespace(level=0),
                             pipeline=SimpleNamespace(frame_rate=50),
                             config=SimpleNamespace(chunk_frames=25, preroll_seconds=0.5, buffer_seconds=1.0))
    assert LiveEngine._chunk(engine) == 25 + LOOKAHEAD_FRAMES
    engine.frames_done = 29
    assert LiveEngine._chunk(engine) == 25
