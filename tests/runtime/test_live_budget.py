"""The live scheduler's decisions and the context budget, with a fake clock and made-up costs."""

import numpy as np
import pytest

from img2music.runtime.generation.core import Windowing
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.loop.budget import HEADROOM, ContextBudget, Costs, choose_window, keep_for, projected_rtf
from img2music.runtime.loop.engine import MAX_LOOK_DELAY, next_action
from tests.runtime.fake_clock import FakeClock

# small-random int4 on two calm cores: 9.5 ms at 16 positions, 20 ms at 1500 (docs/benchmarks.md)
INT4 = Costs(step_base_ms=9.4, step_per_position_ms=(20.0 - 9.5) / 1484, prefill_per_frame_ms=5.4,
             encodec_per_second_ms=80.0)


def test_next_action():
    assert next_action(10.0, buffered=0.5, target=1.0, next_look=10.2) == ("generate", 0.0)
    assert next_action(10.0, buffered=0.5, target=1.0, next_look=9.9) == ("generate", 0.0)  # music first
    assert next_action(10.0, buffered=0.5, target=1.0, next_look=10.0 - MAX_LOOK_DELAY - 0.01)[0] == "look"  # overdue
    assert next_action(10.0, buffered=1.2, target=1.0, next_look=9.9) == ("look", 0.0)
    action, wait = next_action(10.0, buffered=1.3, target=1.0, next_look=10.25)
    assert action == "wait" and wait == pytest.approx(0.25)  # until the next look
    action, wait = next_action(10.0, buffered=1.1, target=1.0, next_look=10.25)
    assert action == "wait" and wait == pytest.approx(0.1)  # until the buffer needs music


def test_projection_and_choice():
    short, full = Windowing(500, 100), Windowing(1500, 250)
    assert projected_rtf(INT4, short, 4, 50) < projected_rtf(INT4, full, 4, 50)
    window, rtf = choose_window(INT4, 4, 50, 2044)
    assert rtf <= HEADROOM and window.window_frames <= 1500
    assert window.keep_frames == keep_for(window.window_frames, 50)
    # every longer window projects over the headroom
    assert all(projected_rtf(INT4, Windowing(w, keep_for(w, 50)), 4, 50) > HEADROOM
               for w in range(window.window_frames + 50, 1501, 50))
    fast = INT4.scaled(0.3)
    assert choose_window(fast, 4, 50, 2044)[0] == Windowing(1500, 250)  # a fast machine gets MusicGen's 30 s
    slow_window, slow_rtf = choose_window(INT4.scaled(3.0), 4, 50, 2044)
    assert slow_rtf > HEADROOM and slow_window.window_frames < window.window_frames  # the cheapest there is


def test_windows_come_from_the_checkpoints_own_limits():
    fast = INT4.scaled(0.3)
    # a decoder with 100 positions (96 frames after the delay pattern): its whole context, half of it prompt
    assert choose_window(fast, 4, 50, 96)[0] == Windowing(96, 48)
    assert choose_window(INT4.scaled(3.0), 4, 50, 96)[0] == Windowing(96, 48)  # nothing shorter to fall back to
    # 100 frames per second: windows and prompts in seconds, not in 50 Hz frames
    assert choose_window(fast, 4, 100, 4000)[0] == Windowing(3000, 500)
    assert choose_window(fast, 4, 100, 2044)[0] == Windowing(2044, 340)


def test_budget_shortens_the_window_when_the_machine_slows_down_and_lengthens_it_after():
    clock = FakeClock()
    budget = ContextBudget(INT4, 4, 50, 2044, horizon=10.0, clock=clock)
    start = budget.window

    def run(factor: float, chunks: int, behind: bool = False) -> list:
        """Chunks of 0.5 s costing what the current window costs on a machine ``factor`` times slower."""
        changes = []
        for _ in range(chunks):
            clock.now += 0.5
            cost = projected_rtf(INT4.scaled(factor), budget.window, 4, 50) * 0.5
            changes.append(budget.observe(cost, 0.5, behind=behind))
        return [c for c in changes if c is not None]

    assert run(1.0, 40) == []  # as projected: no change
    slower = run(2.0, 80, behind=True)  # now twice as slow (another process took a core)
    sizes = [start.window_frames] + [w.window_frames for w in slower]
    assert len(slower) >= 1 and sizes == sorted(sizes, reverse=True)  # shorter, step by step
    assert slower[-1] == choose_window(INT4.scaled(2.0), 4, 50, 2044)[0] and budget.slowdown == pytest.approx(2.0)
    assert run(2.0, 40, behind=True) == []  # settled
    restored = run(1.0, 80)  # the load goes
    assert restored and restored[-1] == start


def test_a_shorter_window_applies_at_the_next_step(tiny_onnx, tiny_pipeline):
    bank = tiny_pipeline.projector.bank
    gen = tiny_onnx.generator
    sampling = SamplingConfig(seed=0)
    gen.start(bank.t5_hidden[[3]], bank.t5_mask[[3]], sampling, window=Windowing(400, 100))
    first = gen.next_frames(200, sampling)
    assert gen.reprimes == 0
    gen.set_window(Windowing(150, 50))  # already past it: re-primed from the last 50 frames at once
    after = gen.next_frames(10, sampling)
    assert gen.reprimes == 1 and gen.prompt_frames == 50 and after.shape == (1, 4, 10)
    np.testing.assert_array_equal(gen.frames[:, :, :50], first[:, :, 150:200])
    gen.next_frames(200, sampling)
    assert gen.reprimes == 3  # windows of 150 frames from now on: 100 new frames each


# -- costs kept per host and bundle ------------------------------------------------------------
def test_the_host_cache_keeps_measurements_per_key(tmp_path, caplog):
    from img2music.runtime.pipeline.host_cache import HostCache

    path = tmp_path / "host.json"
    a = HostCache({"bundle": "b1", "threads": 2}, path)
    assert a.get("costs@25") is None
    a.put("costs@25", {"x": 1})
    assert HostCache({"bundle": "b1", "threads": 2}, path).get("costs@25") == {"x": 1}
    assert HostCache({"bundle": "b1", "threads": 4}, path).get("costs@25") is None  # another thread count
    assert HostCache({"bundle": "b2", "threads": 2}, path).get("costs@25") is None  # another bundle
    path.write_text("{half a file")
    assert a.get("costs@25") is None  # unreadable: measured again
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if (ro / "probe").exists() or __import__("os").access(ro, __import__("os").W_OK):
            pytest.skip("running as a user who can write anywhere (root): a read-only cache is not reachable")
        HostCache({"k": 1}, ro / "sub" / "host.json").put("x", {"y": 2})  # a warning, nothing else
        assert "measured again at each start" in caplog.text
    finally:
        ro.chmod(0o700)


def test_two_start_ups_choose_the_same_window_and_the_running_budget_is_remembered(tiny_bundle, tmp_path,
                                                                                    monkeypatch):
    from img2music.runtime import OnnxPipeline
    from img2music.runtime.loop.budget import start_window

    monkeypatch.setenv("IMG2MUSIC_CACHE_DIR", str(tmp_path))
    first = OnnxPipeline.load(tiny_bundle, threads=2)
    cond = first.condition(None, prompt="slow warm piano")
    window, _, costs, budget, source = start_window(first, cond.conditioning, cond.mask, SamplingConfig(), None, 25)
    assert source == "measured" and costs.encodec_per_second_ms > 0 and costs.step_base_ms > 0
    again = OnnxPipeline.load(tiny_bundle, threads=2)
    window2, _, costs2, _, source2 = start_window(again, cond.conditioning, cond.mask, SamplingConfig(), None, 25)
    assert source2 == "kept" and window2 == window and costs2.to_dict() == costs.to_dict()
    budget.remember(costs.scaled(40.0))  # what a re-choice under a 40x slowdown keeps
    third = OnnxPipeline.load(tiny_bundle, threads=2)
    window3, rtf3, costs3, _, _ = start_window(third, cond.conditioning, cond.mask, SamplingConfig(), None, 25)
    assert costs3.step_base_ms == pytest.approx(costs.step_base_ms * 40, rel=1e-3)
    assert window3.window_frames <= window.window_frames and rtf3 > 0
    other = OnnxPipeline.load(tiny_bundle, threads=1)  # another thread count: measured again
    assert start_window(other, cond.conditioning, cond.mask, SamplingConfig(), None, 25)[4] == "measured"


def test_encodec_auto_measures_both_fronts_once_and_float32_is_the_default(tiny_bundle, tmp_path, monkeypatch):
    from img2music.basics.errors import Img2MusicError
    from img2music.runtime import OnnxPipeline

    monkeypatch.setenv("IMG2MUSIC_CACHE_DIR", str(tmp_path))
    assert OnnxPipeline.load(tiny_bundle, threads=2).encodec_front == "encodec_stream_front"
    auto = OnnxPipeline.load(tiny_bundle, threads=2, encodec="auto")
    measured = auto.encodec_choice
    assert measured["why"] == "measured" and measured["int8_ms_per_s"] > 0 and measured["float32_ms_per_s"] > 0
    faster = "int8" if measured["int8_ms_per_s"] < measured["float32_ms_per_s"] else "float32"
    assert measured["front"] == faster
    again = OnnxPipeline.load(tiny_bundle, threads=2, encodec="auto").encodec_choice
    assert again["why"] == "cached" and again["front"] == faster
    assert OnnxPipeline.load(tiny_bundle, threads=2, encodec="int8").encodec_front == "encodec_stream_front_int8"
    with pytest.raises(Img2MusicError, match="unknown EnCodec choice"):
        OnnxPipeline.load(tiny_bundle, threads=2, encodec="fast")


@pytest.mark.parametrize("int8_ms", [50.0, 200.0])  # int8 faster, then float32 faster
def test_a_kept_choice_of_either_front_is_reported_as_kept(tiny_bundle, tmp_path, monkeypatch, int8_ms):
    """Once float32 was measured faster, the next start opens the float32 front alone: it said
    "no int8 front" then (a CI run where float32 happened to win), not "cached"."""
    from img2music.runtime import OnnxPipeline
    from img2music.runtime.pipeline import encodec_choice

    monkeypatch.setenv("IMG2MUSIC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(encodec_choice, "stream_ms_per_second",
                        lambda front, back, model, chunk: int8_ms if front is fronts["int8"] else 100.0)
    fronts = {}
    real_choose = encodec_choice.choose_front

    def choose(sessions, *args, **kwargs):
        fronts["int8"] = sessions.get(encodec_choice.ENCODEC_FRONT_INT8)
        return real_choose(sessions, *args, **kwargs)

    monkeypatch.setattr("img2music.runtime.pipeline.onnx_pipeline.choose_front", choose)
    front = "int8" if int8_ms < 100 else "float32"
    first = OnnxPipeline.load(tiny_bundle, threads=2, encodec="auto").encodec_choice
    assert (first["why"], first["front"]) == ("measured", front)
    again = OnnxPipeline.load(tiny_bundle, threads=2, encodec="auto").encodec_choice
    assert (again["why"], again["front"]) == ("cached", front)
