"""The limits every control server shares, on a fake clock: per-client pacing, connection slots,
and the spacing and coalescing of changes that buy real work (#30)."""

from types import SimpleNamespace

import numpy as np
import pytest

from img2music.runtime.control.dispatcher import LiveControl
from img2music.runtime.control.requests import ControlError
from tests.runtime.fake_clock import FakeClock
from tests.runtime.test_live_transport import fake_engine


def test_each_client_is_paced():
    from img2music.runtime.control.guard import ClientPace

    clock = FakeClock()
    pace = ClientPace(rate=20.0, burst=4, max_wait=1.0, clock=clock)
    assert [pace.admit("a") for _ in range(4)] == [0.0] * 4  # the burst
    assert [round(pace.admit("a"), 3) for _ in range(2)] == [0.05, 0.1]  # then one turn every 1/20 s
    assert pace.admit("b") == 0.0  # another client has its own turns
    assert pace.admit("a", queue=False) is None and round(pace.admit("a"), 3) == 0.15  # a drop takes no turn
    for _ in range(17):
        pace.admit("a")
    assert pace.admit("a") is None  # over a second of waiting: dropped
    clock.now += 10.0
    assert pace.admit("a") == 0.0


def test_loopback_is_one_client_and_an_ipv6_host_its_64():
    """A local program can send from any of 127/8 and a LAN host from any of its /64: neither
    buys a new burst that way (the key is ``guard.client_key``)."""
    from img2music.runtime.control.guard import ClientPace, ConnectionSlots

    pace = ClientPace(rate=20.0, burst=4, max_wait=0.0, clock=FakeClock())
    assert [pace.admit(f"127.0.0.{i}", queue=False) for i in range(1, 5)] == [0.0] * 4
    assert pace.admit("127.0.0.9", queue=False) is None and pace.admit("::1", queue=False) is None
    assert [pace.admit(f"2001:db8::{i}", queue=False) for i in range(1, 5)] == [0.0] * 4
    assert pace.admit("2001:db8::ff", queue=False) is None and pace.admit("2001:db8:0:1::1", queue=False) == 0.0
    slots = ConnectionSlots(4, per_client=2)
    assert [slots.take("127.0.0.1"), slots.take("127.0.0.2"), slots.take("127.0.0.3")] == [True, True, False]
    assert slots.take("10.0.0.1") and slots.take("10.0.0.2") and not slots.take("10.0.0.3")  # the cap
    slots.give("127.0.0.2")
    assert slots.take("127.0.0.5") and slots.active == 4


def _burst_engine():
    engine = fake_engine()
    engine.source = SimpleNamespace(latest=lambda: (np.zeros((4, 4, 3), np.uint8), 1, 0.0))
    engine.encoded, engine.forced, engine.prompts = [], [], []
    engine.pipeline.text = SimpleNamespace(token_ids=lambda text: [1], encode=engine.encoded.append)
    engine.force_scene = lambda: engine.forced.append(1)
    engine.set_prompt = lambda **kw: engine.prompts.append(kw)
    return engine


def test_bursts_of_scenes_and_prompts_cost_one_each():
    clock = FakeClock()
    engine = _burst_engine()
    encoded, forced, prompts = engine.encoded, engine.forced, engine.prompts
    control = LiveControl(engine, clock=clock)
    codes = []
    for i in range(100):
        try:
            control.submit({"scene": "now"})
            codes.append(202)
        except ControlError as exc:
            codes.append(exc.status)
    assert codes.count(202) == 1 and codes.count(429) == 99
    for i in range(30):
        try:
            control.submit({"prompt": f"prompt {i}"})
        except ControlError as exc:
            assert exc.status == 429
    assert encoded == ["prompt 0"]  # T5 once, in the requester's thread, before the music hears of it
    control.apply_pending()
    assert forced == [1] and prompts == [{"text": "prompt 0"}]
    clock.now += 1.0
    control.submit({"prompt": "later"})
    control.submit({"guidance_scale": 4.0})
    control.submit({"guidance_scale": 5.0})  # coalesced: the newest wins, applied once
    control.apply_pending()
    assert prompts[-1] == {"text": "later"} and engine.sampling.guidance_scale == 5.0


def test_a_weight_fader_is_never_refused_and_its_last_position_is_heard():
    clock = FakeClock()
    engine = _burst_engine()
    control = LiveControl(engine, clock=clock)
    control.submit({"prompt": "warm strings"})
    control.apply_pending()
    for step in range(30):  # a desk's fader, 30 values in half a second: all accepted
        control.submit({"prompt_weight": 1.0 + step / 10})
        clock.now += 1 / 60
        control.apply_pending()
    assert engine.prompts == [{"text": "warm strings"}]  # under a second since the last prompt change
    clock.now += 0.6
    control.apply_pending()
    assert engine.prompts[-1] == {"weight": 3.9} and len(engine.prompts) == 2  # the last position, once


def test_a_refused_change_does_not_use_up_the_spacing(tmp_path):
    clock = FakeClock()
    engine = _burst_engine()
    control = LiveControl(engine, clock=clock, reload_dir=str(tmp_path))
    with pytest.raises(ControlError):  # no such bundle: nothing changes, the prompt included
        control.submit({"prompt": "x", "bundle": str(tmp_path / "missing")})
    assert control.submit({"prompt": "y"}) == {"prompt": "y"}  # not a 429
