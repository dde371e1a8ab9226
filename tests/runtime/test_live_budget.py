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
