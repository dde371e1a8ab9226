"""Pause / resume / fade out and bundle reload, without a live run: the envelope, the
control fields' checks, the reloader's one-at-a-time rule and the bundle compatibility
check (the live run is in test_live_reload.py)."""

import json
import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from img2music.runtime.control.dispatcher import LiveControl
from img2music.runtime.control.reload import BundleReloader, incompatibility
from img2music.runtime.control.requests import ControlError, validate
from img2music.runtime.loop.prompt import LivePrompt
from img2music.runtime.loop.transport import RAMP_SECONDS, Transport

RATE = 32000


def _sine(seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def _shaped(transport: Transport, audio: np.ndarray, chunk: int = 4000) -> np.ndarray:
    """Shaped in chunks, as the compute thread submits them."""
    return np.concatenate([transport.shape(audio[i:i + chunk]) for i in range(0, len(audio), chunk)])


def test_pause_ramps_down_without_a_click_and_resume_ramps_back():
    t = Transport(RATE)
    assert t.shape(_sine(0.1)).max() == pytest.approx(0.5, abs=1e-3) and t.state == "playing"
    assert t.pause() and t.state == "fading"
    out = _shaped(t, _sine(0.5), chunk=1000)
    ramp = int(RAMP_SECONDS * RATE)
    assert t.state == "paused" and t.paused and t.pauses == 1
    assert np.all(out[ramp:] == 0.0)  # silence after the ramp, to the sample
    envelope = np.abs(out[:ramp]).reshape(-1, 80).max(axis=1)  # 2.5 ms windows
    assert np.all(np.diff(envelope) <= 1e-3) and envelope[0] > 0.45
    assert np.max(np.abs(np.diff(out))) <= 0.5 * 2 * np.pi * 440 / RATE + 1e-3  # no step larger than the sine's own
    assert not t.pause() and not t.pause(4.0)  # paused already: nothing to do
    assert t.resume() and t.state == "playing" and not t.resume()  # playing already: nothing to do
    back = _shaped(t, _sine(0.2), chunk=1000)
    head = np.abs(back[:ramp]).reshape(-1, 80).max(axis=1)
    assert head[0] < 0.05 and np.all(np.diff(head) >= -1e-3) and np.abs(back[ramp:]).max() == pytest.approx(0.5, 1e-2)
    assert np.max(np.abs(np.diff(back))) <= 0.5 * 2 * np.pi * 440 / RATE + 1e-3


def test_fade_out_is_equal_power_over_the_given_seconds_of_audio():
    t = Transport(RATE)
    assert t.pause(2.0, why="fade out") and t.state == "fading"
    out = _shaped(t, np.ones(3 * RATE, np.float32), chunk=RATE // 2)  # 0.5 s chunks, as the engine submits
    assert t.state == "paused"
    gain = out[: 2 * RATE]
    expected = np.sin(np.pi / 2 * (1 - np.arange(1, 2 * RATE + 1) / (2 * RATE)))
    assert np.max(np.abs(gain - expected)) < 1e-4 and np.all(np.diff(gain) <= 0)
    assert np.all(out[2 * RATE:] == 0.0)
    # a pause during a slow fade makes it quick; a slower fade during a quick one changes nothing
    t = Transport(RATE)
    t.pause(10.0)
    t.shape(np.ones(RATE, np.float32))
    assert t.pause() and not t.pause(20.0)
    assert np.all(_shaped(t, np.ones(RATE, np.float32))[int(RAMP_SECONDS * RATE):] == 0.0)


def test_a_bundle_seam_is_an_equal_power_crossfade():
    t = Transport(RATE)
    tail = np.ones(2560, np.float32)  # the old stream's held-back 80 ms
    t.crossfade_from(tail)
    out = t.shape(np.ones(8000, np.float32))
    x = np.linspace(0, np.pi / 2, 2560)
    assert np.allclose(out[:2560], np.cos(x) + np.sin(x), atol=1e-5) and np.all(out[2560:] == 1.0)
    t.pause()
    t.shape(np.ones(8000, np.float32))
    t.crossfade_from(tail)  # while paused: nothing of the old stream is heard
    assert np.all(t.shape(np.ones(100, np.float32)) == 0.0)


# -- control fields ------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ({"transport": "stop"}, "transport must be one of 'pause', 'resume'"),
    ({"transport": 1}, "transport must be one of"),
    ({"fade_out": 0.05}, "fade_out must be in [0.1, 60.0]"), ({"fade_out": 61}, "fade_out must be in"),
    ({"fade_out": "4"}, "fade_out must be a number"), ({"fade_out": True}, "fade_out must be a number"),
    ({"transport": "pause", "fade_out": 2.0}, "give one of transport, fade_out per request"),
    ({"bundle": 3}, "bundle must be a string"), ({"bundle": ""}, "bundle must be a string of 1 to 4096"),
    ({"bundle": "x" * 5000}, "bundle must be a string"),
])
def test_bad_new_fields_are_named(body, message):
    with pytest.raises(ControlError) as info:
        validate(body)
    assert message in str(info.value) and info.value.status == 400


def fake_engine(model=None, root="/bundles/a"):
    """What LiveControl and BundleReloader read of an engine."""
    from img2music.runtime.generation.sampling import SamplingConfig

    engine = SimpleNamespace(config=SimpleNamespace(sampling=SamplingConfig()), sampling=SamplingConfig(),
                             transport=Transport(RATE),
                             source=SimpleNamespace(latest=lambda: (None, None, 0.0)), budget=None,
                             window=SimpleNamespace(window_frames=250), swapped=[], prompt=LivePrompt(),
                             pipeline=SimpleNamespace(bundle=SimpleNamespace(root=root, model=model or SimpleNamespace(
                                 decoder=SimpleNamespace(vocab_size=2048)))))
    engine.set_sampling = lambda s: setattr(engine, "sampling", s)
    engine.swap_pipeline = engine.swapped.append
    return engine


def test_transport_requests_are_applied_and_repeats_are_harmless(tmp_path):
    engine = fake_engine()
    control = LiveControl(engine)
    assert control.submit({"transport": "pause"}) == {"transport": "pause"}
    control.apply_pending()
    assert engine.transport.state == "fading" and control.settings()["transport"] == "fading"
    engine.transport.shape(np.ones(RATE, np.float32))
    assert control.settings()["transport"] == "paused"
    assert control.submit({"transport": "pause"}) == {"transport": "pause"}  # 202, nothing to do
    assert control.submit({"fade_out": 3.0}) == {"fade_out": 3.0}
    control.apply_pending()
    assert engine.transport.state == "paused"
    control.submit({"transport": "resume"})
    control.submit({"transport": "resume"})
    control.apply_pending()
    assert engine.transport.state == "playing"
    assert control.settings()["changes"] == {"transport": 4, "fade_out": 1}
    for bad in ({"transport": "stop"}, {"bundle": str(tmp_path / "nope")}, {"bundle": str(tmp_path)}):
        with pytest.raises(ControlError) as info:
            control.submit(bad)
        assert info.value.status == 400  # not a directory; a directory without a manifest
    assert "no such directory" in _error(control, {"bundle": str(tmp_path / "nope")})
    assert "no manifest.json" in _error(control, {"bundle": str(tmp_path)})
    assert control.settings()["changes"] == {"transport": 4, "fade_out": 1} and control.reloader.state == "idle"


def _error(control, body) -> str:
    with pytest.raises(ControlError) as info:
        control.submit(body)
    return str(info.value)


# -- bundle reload ---------------------------------------------------------------------------
def _copy(bundle, to, edit=None):
    shutil.copytree(bundle, to)
    if edit is not None:
        path = to / "manifest.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))
    return to


def test_a_bundle_for_other_audio_is_refused_at_once(tiny_bundle, tmp_path):
    from img2music.runtime.bundle.loading import load_bundle

    model = load_bundle(tiny_bundle, verify_hashes=False).model
    engine = fake_engine(model)
    control = LiveControl(engine)

    def rate(m):
        m["audio"]["sample_rate"] = 48000

    other = _copy(tiny_bundle, tmp_path / "48k", rate)
    code = pytest.raises(ControlError, control.submit, {"bundle": str(other)})
    assert code.value.status == 409 and "audio sample_rate is 48000" in str(code.value)
    assert incompatibility(model, model, 250) is None
    assert "holds" in incompatibility(model, model, model.decoder.max_frames + 1)
    assert control.reloader.state == "idle" and control.settings()["changes"] == {}

    def no_text(m):
        m.pop("text")

    textless = _copy(tiny_bundle, tmp_path / "no-text", no_text)
    engine.prompt = LivePrompt("slow jazz piano")  # a prompt in force: a bundle without T5 cannot take over
    code = pytest.raises(ControlError, control.submit, {"bundle": str(textless)})
    assert code.value.status == 409 and "no text encoder" in str(code.value)
    engine.prompt = LivePrompt()
    assert control.reloader.reserve(str(textless)) == str(textless.resolve())


def test_one_reload_at_a_time_and_a_failure_keeps_the_old_bundle(tiny_bundle, tmp_path):
    from img2music.runtime.bundle.loading import load_bundle

    engine = fake_engine(load_bundle(tiny_bundle, verify_hashes=False).model)
    release, loaded = threading.Event(), SimpleNamespace(bundle=SimpleNamespace(root="new"))

    def load(path, running):
        release.wait(10)
        if path.endswith("bad"):
            raise RuntimeError("bundle file decoder_step.onnx does not match its sha256")
        return loaded

    control = LiveControl(engine)
    control.reloader = reloader = BundleReloader(engine, load=load)
    good, bad = _copy(tiny_bundle, tmp_path / "good"), _copy(tiny_bundle, tmp_path / "bad")
    assert control.submit({"bundle": str(good)}) == {"bundle": str(good.resolve())}
    control.apply_pending()  # starts the loading thread
    assert reloader.state == "loading" and control.settings()["reload"] == "loading"
    refused = pytest.raises(ControlError, control.submit, {"bundle": str(bad)})
    assert refused.value.status == 409 and "one reload at a time" in str(refused.value)
    release.set()
    _until(lambda: reloader.state == "ready")
    control.apply_pending()  # the compute thread swaps it in between two actions
    assert engine.swapped == [loaded] and reloader.state == "idle" and reloader.reloads == 1
    release.clear()
    control.submit({"bundle": str(bad)})
    control.apply_pending()
    release.set()
    _until(lambda: reloader.state == "failed")
    control.apply_pending()
    settings = control.settings()
    assert engine.swapped == [loaded] and reloader.failures == 1
    assert settings["reload"] == "failed" and "sha256" in settings["reload_error"]
    assert settings["reload_path"] == str(bad.resolve()) and settings["changes"] == {"bundle": 2}


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_osc_pause_resume_fade_and_bundle(tiny_bundle, tmp_path):
    from pythonosc.udp_client import SimpleUDPClient

    from img2music.runtime.bundle.loading import load_bundle
    from img2music.runtime.control.osc_server import LiveOscServer

    engine = fake_engine(load_bundle(tiny_bundle, verify_hashes=False).model)
    control = LiveControl(engine)
    started = []
    control.reloader.start = started.append  # no loading here: the request is what is tested
    server = LiveOscServer(control, "127.0.0.1", 0).start()
    client = SimpleUDPClient(*server.address)
    sent = [("/img2music/fade_out", 4.0), ("/img2music/pause", []), ("/img2music/resume", 1.0),
            ("/img2music/bundle", str(tiny_bundle)), ("/img2music/fade_out", 0.01),
            ("/img2music/bundle", str(tmp_path / "nope")), ("/img2music/fade_out", [])]
    try:
        for address, value in sent:
            client.send_message(address, value)
        _until(lambda: server.received == len(sent), timeout=5)
    finally:
        server.close()
    assert server.refusals["osc"] == 3  # fade_out out of range, no such bundle, fade_out without seconds
    assert control.settings()["changes"] == {"fade_out": 1, "transport": 2, "bundle": 1}
    control.apply_pending()
    assert started == [str(tiny_bundle.resolve())]
    assert engine.transport.state == "playing"  # fade, pause, then resume: applied in order
