"""live.py --http: Prometheus /metrics (parsed by prometheus_client's own parser),
/healthz and /readyz with the systemd watchdog's notion of health, bad requests."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from img2music.basics.errors import Img2MusicError  # noqa: E402
from img2music.benchmarks.fault_servers import free_ports as _free_ports  # noqa: E402  (the tests import it from here)
from img2music.runtime.control.http_server import HEALTHY_WITHIN, LiveHttpServer, parse_address  # noqa: E402
from tests.runtime.live_runs import played_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_ready(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _get(base + "/readyz")[0] == 200:
                return
        except OSError:
            pass  # not listening yet (the bundle is loading)
        time.sleep(0.2)
    raise AssertionError(f"{base}/readyz never said 200")


def _free_port() -> int:
    return _free_ports(1)[0]


def test_parse_address():
    assert parse_address("9090") == ("127.0.0.1", 9090)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:9090") == ("::1", 9090)
    for bad in ("host:port", "70000", ""):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_health_follows_the_audio(tmp_path):
    now = [100.0]
    reporter = SimpleNamespace(last=None, build={"version": "x"}, first_audio_at=None, last_flowing_at=0.0)
    server = LiveHttpServer(reporter, "127.0.0.1", 0, clock=lambda: now[0]).start()
    base = "http://%s:%d" % server.address
    try:
        assert _get(base + "/readyz")[0] == 503
        assert _get(base + "/healthz") == (200, "starting\n")  # alive while starting
        reporter.first_audio_at = reporter.last_flowing_at = 101.0
        now[0] = 101.0 + HEALTHY_WITHIN - 0.5
        assert _get(base + "/readyz") == (200, "ready\n") and _get(base + "/healthz") == (200, "ok\n")
        now[0] = 101.0 + HEALTHY_WITHIN + 1  # the music stopped reaching the sound card
        code, text = _get(base + "/healthz")
        assert code == 503 and "no music has reached the sound card for 6 s" in text
        assert _get(base + "/readyz")[0] == 200  # still ready: it did start
        assert _get(base + "/nope")[0] == 404 and _get(base + "/metrics", "POST")[0] == 405
    finally:
        server.close()


def _check_metrics(base: str, bundle) -> None:
    """/metrics of a running tiny live run, parsed by prometheus_client's own parser."""
    code, text = _get(base + "/metrics")
    assert code == 200 and _get(base + "/healthz") == (200, "ok\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {f.name: f.samples[0].value for f in families.values() if len(f.samples) == 1}
    assert families["img2music_music_seconds"].type == "counter" and value["img2music_music_seconds"] > 1
    assert value["img2music_underflows"] == 0 and 0 < value["img2music_time_to_first_audio_seconds"] < 60
    assert 0 < value["img2music_buffer_seconds"] <= 5 and value["img2music_real_time_factor"] > 0
    assert value["process_resident_memory_bytes"] > 50e6
    build = families["img2music_build_info"].samples[0].labels
    assert build["bundle"] == str(bundle) and build["precision"] == "fp32" and build["provider"] == "cpu"
    states = {s.labels["state"]: s.value for s in families["img2music_source_state"].samples}
    assert states["streaming"] == 1 and sum(states.values()) == 1
    latency = {s.name: s.value for s in families["img2music_decoder_step_seconds"].samples
               if s.labels.get("le") in (None, "+Inf")}
    steps_done = latency["img2music_decoder_step_seconds_count"]
    assert steps_done >= 50 * value["img2music_music_seconds"] * 0.5  # every decoder pass is observed
    assert 0 < latency["img2music_decoder_step_seconds_sum"] / steps_done < 0.1  # tiny: milliseconds a step
    steps = {s.labels["step"]: s.value for s in families["img2music_degrade_steps"].samples}
    assert steps == {"cheaper": 0, "repeats": 0, "silences": 0}
    changes = {s.labels["field"]: s.value for s in families["img2music_control_changes"].samples}
    assert changes["guidance_scale"] == 200 and changes["scene"] == 1


def test_a_taken_port_is_one_clear_error(tiny_bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines",
                               str(tiny_bundle), "--no-audio", "--duration", "2", "--http", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: --http: cannot listen on 127.0.0.1:{port}" in proc.stderr, proc.stderr[-1500:]


# -- control ---------------------------------------------------------------------------
from img2music.runtime.control.dispatcher import LiveControl  # noqa: E402
from img2music.runtime.control.requests import ControlError, validate  # noqa: E402


@pytest.mark.parametrize("body, message", [
    ({}, "expected a JSON object"), ([1], "expected a JSON object"), ({"volume": 1}, "unknown field(s) volume"),
    ({"guidance_scale": "3"}, "must be a number"), ({"guidance_scale": True}, "must be a number"),
    ({"guidance_scale": float("nan")}, "must be a number"), ({"guidance_scale": 0.5}, "must be in [1.0, 20.0]"),
    ({"top_k": 3.5}, "must be an integer"), ({"top_p": 1.5}, "must be in [0.0, 1.0]"),
    ({"scene": "later"}, "scene must be one of 'now'"),
])
def test_bad_control_requests_are_named(body, message):
    with pytest.raises(ControlError, match=None) as info:
        validate(body)
    assert message in str(info.value) and info.value.status == 400
    assert validate({"guidance_scale": 4, "top_k": 100.0, "scene": "now"}) == {
        "guidance_scale": 4.0, "top_k": 100, "scene": "now"}


def _post(url: str, body, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _fake_engine():
    from tests.runtime.test_live_transport import fake_engine

    applied = []
    engine = fake_engine()
    engine.set_sampling = lambda s: (applied.append(s), setattr(engine, "sampling", s))
    return engine, applied


def test_control_tokens_sizes_and_refusals():
    engine, applied = _fake_engine()
    control = LiveControl(engine)
    reporter = SimpleNamespace(last=None, build={}, first_audio_at=None, last_flowing_at=0.0)
    server = LiveHttpServer(reporter, "127.0.0.1", 0, control=control, token="s3cret-token-0123456789").start()
    url = "http://%s:%d/control" % server.address
    try:
        assert _post(url, {"guidance_scale": 4.0})[0] == 401  # no token
        assert _post(url, {"guidance_scale": 4.0}, token="wrong")[0] == 401
        assert applied == [] and control.settings()["changes"] == {}  # refused requests change nothing
        code, answer = _post(url, {"guidance_scale": 4.0, "top_k": 50}, token="s3cret-token-0123456789")
        assert code == 202 and answer == {"accepted": {"guidance_scale": 4.0, "top_k": 50}}
        control.apply_pending()  # what the compute thread does between actions
        assert engine.sampling.guidance_scale == 4.0 and engine.sampling.top_k == 50
        token = "s3cret-token-0123456789"
        assert _post(url, None, token=token, raw=b"{not json")[0] == 400
        assert _post(url, None, token=token, raw=b"x" * 5000)[0] == 413
        code, answer = _post(url, {"top_k": 4096}, token=token)
        assert code == 400 and "the codebook size" in answer["error"]
        code, answer = _post(url, {"scene": "now"}, token=token)
        assert code == 409 and "no frame yet" in answer["error"]
        assert _get(url)[0] == 200 and control.settings()["changes"] == {"guidance_scale": 1, "top_k": 1}
    finally:
        server.close()
    with pytest.raises(Img2MusicError, match="off loopback.*needs --http-token-file"):  # no token: no start
        LiveHttpServer(reporter, "0.0.0.0", 0, control=LiveControl(engine))
    open_server = LiveHttpServer(reporter, "0.0.0.0", 0, control=LiveControl(engine), public_metrics=True).start()
    try:
        code, answer = _post("http://127.0.0.1:%d/control" % open_server.address[1], {"guidance_scale": 2.0})
        assert code == 403 and "needs --http-token-file" in answer["error"]
        assert _get("http://127.0.0.1:%d/metrics" % open_server.address[1])[0] == 200  # what the flag opens
        assert _get("http://127.0.0.1:%d/frame.jpg" % open_server.address[1])[0] == 401  # and nothing else
    finally:
        open_server.close()


def test_control_reaches_the_music_under_load(tiny_bundle, tmp_path):
    """A forced scene change and 200 guidance changes in 10 s on loopback, then one change each
    over OSC and the WebSocket: every request answered, the changes applied (and in /metrics),
    the music uninterrupted (0 underflows, no repeats, no silence)."""
    token = "tok-" + "x" * 20
    (tmp_path / "token").write_text(token + "\n")
    wav, metrics = tmp_path / "out.wav", tmp_path / "m.jsonl"
    port, osc_port, ws_port = _free_ports(3)
    proc = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines",
                             str(tiny_bundle), "--no-audio", "--threads", "2", "--duration", "22",
                             # 22 s: the checks below end well before the music on a host twice as slow
                             "--scene-seconds", "1000", "--first-frame-wait", "30",  # no fallback scene first
                             # 3 s ahead: a second-long stall of a shared CI host is not what this tests
                             "--buffer", "3",
                             "--record", str(wav), "--metrics", str(metrics),
                             "--http", str(port), "--http-token-file", str(tmp_path / "token"),
                             "--osc", str(osc_port), "--ws", str(ws_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base)
        assert _post(base + "/control", {"scene": "now"}, token=token)[0] == 202
        codes, start = [], time.monotonic()
        for i in range(200):
            time.sleep(max(0.0, start + i * 0.05 - time.monotonic()))
            codes.append(_post(base + "/control", {"guidance_scale": 3.0 + 0.5 * (i % 2)}, token=token)[0])
        # paced at 20 a second; each waits for its answer, which shares the GIL with the music
        assert codes == [202] * 200 and time.monotonic() - start < 30
        from pythonosc.udp_client import SimpleUDPClient

        SimpleUDPClient("127.0.0.1", osc_port).send_message("/img2music/temperature", 0.9)
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{ws_port}/?token={token}") as ws:
            ws.send(json.dumps({"top_p": 0.9}))
            while (answer := json.loads(ws.recv(timeout=5)))["type"] != "answer":
                pass
            assert answer["status"] == 202
        deadline = time.monotonic() + 10  # OSC is asynchronous and the compute thread applies between actions
        while True:
            settings = json.loads(_get(base + "/control")[1])
            if settings["changes"].get("temperature") and settings["sampling"]["top_p"] == 0.9 \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert settings["changes"] == {"scene": 1, "guidance_scale": 200, "temperature": 1, "top_p": 1}
        assert settings["sampling"]["top_p"] == 0.9
        _check_metrics(base, tiny_bundle)
        assert settings["sampling"]["temperature"] == pytest.approx(0.9)  # OSC floats are 32-bit
        assert settings["sampling"]["guidance_scale"] == 3.5  # the last one, applied
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-1500:]
    assert f"serving the status page, /metrics, /healthz and /readyz on http://127.0.0.1:{port}" in err
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["underflows"] == 0 and last["degrade_silences"] == 0 and last["degrade_repeats"] == 0
    assert last["scene_changes"] == 1  # the forced one: the synthetic scene never changes by itself
    import soundfile as sf

    info = sf.info(str(wav))
    assert abs(info.frames / info.samplerate - played_seconds(22.0, last)) < 0.01


def test_osc_messages_reach_the_control():
    from pythonosc.udp_client import SimpleUDPClient

    from img2music.runtime.control.osc_server import LiveOscServer

    engine, applied = _fake_engine()
    control = LiveControl(engine)
    server = LiveOscServer(control, "127.0.0.1", 0).start()
    client = SimpleUDPClient(*server.address)
    try:
        client.send_message("/img2music/guidance", 5.5)
        client.send_message("/img2music/top_k", 100)
        client.send_message("/img2music/guidance", "loud")  # refused: not a number
        client.send_message("/img2music/volume", 1.0)  # refused: unknown address
        client.send_message("/img2music/guidance", 0.2)  # refused: out of range
        deadline = time.monotonic() + 5
        while server.received < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        control.apply_pending()
    finally:
        server.close()
    assert server.received == 5 and server.refusals["osc"] == 3
    assert engine.sampling.guidance_scale == 5.5 and engine.sampling.top_k == 100
    assert control.settings()["changes"] == {"guidance_scale": 1, "top_k": 1}


def test_page_events_and_frame_without_a_browser():
    """The page's three resources over plain HTTP (the browser test needs chromium)."""
    import io

    import numpy as np
    from PIL import Image

    snapshot = {"music_s": 12.5, "buffer_s": 1.0, "rtf": 0.3, "underflows": 0, "underflow_s": 0.0,
                "degrade_level": 0, "degrade_cheaper": 0, "degrade_repeats": 0, "degrade_silences": 0,
                "scene_changes": 2, "directive": "slow jazz", "source_state": "streaming", "sink_outages": 0,
                "sink_outage_s": 0.0, "frame_age_s": 0.1, "rss_mb": 100.0}
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :320] = (255, 0, 0)  # left half red (RGB)
    latest = [(None, 0, float("inf"))]
    reporter = SimpleNamespace(last=snapshot, build={}, first_audio_at=1.0, last_flowing_at=1.0)
    server = LiveHttpServer(reporter, "127.0.0.1", 0, latest_frame=lambda: latest[0]).start()
    base = "http://%s:%d" % server.address
    try:
        code, html = _get(base + "/")
        assert code == 200 and 'new EventSource("/events")' in html
        assert not re.search(r"""(src|href)=["']?(https?:)?//|url\(|@import""", html)  # nothing from outside
        placeholder = Image.open(io.BytesIO(urllib.request.urlopen(base + "/frame.jpg", timeout=5).read()))
        assert placeholder.size == (320, 240)  # before the first frame: a placeholder, not a 404
        latest[0] = (frame, 7, 0.1)
        thumb = np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(base + "/frame.jpg", timeout=5).read())))
        assert thumb.shape == (240, 320, 3) and thumb[120, 80, 0] > 200 and thumb[120, 240, 0] < 50
        with urllib.request.urlopen(base + "/events", timeout=5) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            line = stream.readline().decode()
        event = json.loads(line.removeprefix("data: "))
        assert event["directive"] == "slow jazz" and event["frame_id"] == 7 and event["music_s"] == 12.5
        assert "rss_mb" not in event and "sampling" not in event  # the page's view, no control here
    finally:
        server.close()


def test_websocket_status_and_control():
    from websockets.sync.client import connect

    from img2music.runtime.control.ws_server import LiveWebSocketServer

    engine, applied = _fake_engine()
    control = LiveControl(engine)
    reporter = SimpleNamespace(last={"music_s": 3.0, "directive": "slow jazz"}, build={})
    token = "ws-token-0123456789abcdef"
    server = LiveWebSocketServer(reporter, control, "127.0.0.1", 0, token=token).start()
    url = "ws://%s:%d/" % server.address
    try:
        with connect(url + "?token=" + token) as ws:
            status = json.loads(ws.recv(timeout=5))
            assert status["type"] == "status" and status["directive"] == "slow jazz"
            ws.send(json.dumps({"guidance_scale": 4.5}))
            answers = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
            answer = next(a for a in answers if a["type"] == "answer")
            assert answer == {"type": "answer", "status": 202, "accepted": {"guidance_scale": 4.5}}
            ws.send("{oops")
            while (answer := json.loads(ws.recv(timeout=5)))["type"] != "answer":
                pass
            assert answer["status"] == 400 and "not JSON" in answer["error"]
        with connect(url, additional_headers={"Authorization": "Bearer wrong"}) as ws:
            ws.send(json.dumps({"guidance_scale": 2.0}))
            while (answer := json.loads(ws.recv(timeout=5)))["type"] != "answer":
                pass
            assert answer["status"] == 401
        control.apply_pending()
        assert engine.sampling.guidance_scale == 4.5 and control.settings()["changes"] == {"guidance_scale": 1}
    finally:
        server.close()
