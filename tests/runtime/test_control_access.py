"""Who may steer and read a live run, and what it takes as a value (loopback only): web pages of
other origins, DNS-rebinding hosts, off-loopback binds without a token, hostile values, forged
log lines, file names and reload folders. One test per finding of the security issue (#30)."""

import json
import logging
import socket
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("prometheus_client")

from img2music.basics.errors import Img2MusicError  # noqa: E402
from img2music.runtime.control.dispatcher import LiveControl  # noqa: E402
from img2music.runtime.control.http_server import LiveHttpServer  # noqa: E402
from tests.runtime.control_clients import TOKEN, post, reporter, request  # noqa: E402
from tests.runtime.test_live_transport import fake_engine  # noqa: E402


# -- who may steer ------------------------------------------------------------------------------
def test_pages_of_other_origins_and_forms_never_steer(server):
    pause = b'{"transport": "pause"}'
    assert post(server, pause, Content_Type="text/plain")[0] == 415  # a form / no-cors fetch
    assert post(server, pause, Content_Type="application/x-www-form-urlencoded")[0] == 415
    assert post(server, pause, Origin="http://evil.example")[0] == 403
    assert post(server, pause, Origin="http://127.0.0.1:1")[0] == 403  # another port is another origin
    assert request(server, "OPTIONS", "/control")[0] == 405  # no CORS preflight is ever granted
    assert server.control.settings()["changes"] == {}
    code, answer = post(server, pause, Origin="http://%s:%d" % server.address[:2])  # its own page
    assert code == 202 and answer == {"accepted": {"transport": "pause"}}
    assert post(server, b'{"transport": "resume"}')[0] == 202  # a program: no Origin


@pytest.mark.parametrize("path", ["/frame.jpg", "/control", "/events", "/"])
def test_a_rebinding_host_is_refused(server, path):
    port = server.address[1]
    assert request(server, "GET", path, host=f"rebind.attacker.example:{port}")[0] == 421
    assert request(server, "POST", "/control", b'{"transport":"pause"}', {"Content-Type": "application/json"},
                    host=f"rebind.attacker.example:{port}")[0] == 421
    if path != "/events":
        assert request(server, "GET", path, host=f"localhost:{port}")[0] == 200
        assert request(server, "GET", path, host=f"127.0.0.1:{port}")[0] == 200
    assert server.control.settings()["changes"] == {}


def test_hosts_that_name_nothing_are_refused_and_a_trailing_dot_is_answered(server):
    port = server.address[1]
    for host in ("", "[evil.example", "[::1"):
        assert request(server, "GET", "/control", host=host)[0] == 421, host
    assert request(server, "GET", "/control", host=f"localhost.:{port}")[0] == 200
    assert _post_raw(server, Origin="http://[::1")[0] == 403  # an Origin that does not parse: refused, answered


def _post_raw(srv, **headers):
    return request(srv, "POST", "/control", b'{"transport": "pause"}',
                   {"Content-Type": "application/json", **headers})


def test_a_token_in_the_url_is_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    srv = LiveHttpServer(reporter(), "127.0.0.1", 0, token=TOKEN).start()
    try:
        assert request(srv, "GET", f"/metrics?token={TOKEN}")[0] == 200
        assert request(srv, "GET", "/metrics?token=wrong-guess")[0] == 200  # loopback reads are open
    finally:
        srv.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("/metrics?" in line for line in lines)  # the request was logged, its query was not
    assert not any(TOKEN in line or "wrong-guess" in line for line in lines)


def test_names_given_are_answered():
    srv = LiveHttpServer(reporter(), "127.0.0.1", 0, allow_hosts=("kiosk.lan",)).start()
    try:
        assert request(srv, "GET", "/healthz", host=f"kiosk.lan:{srv.address[1]}")[0] == 200
        assert request(srv, "GET", "/healthz", host=f"other.lan:{srv.address[1]}")[0] == 421
    finally:
        srv.close()


def test_off_loopback_reads_need_the_token():
    srv = LiveHttpServer(reporter(), "0.0.0.0", 0, token=TOKEN, latest_frame=lambda: (None, 0, 1.0)).start()
    try:
        for path in ("/frame.jpg", "/events", "/", "/metrics", "/control"):
            assert request(srv, "GET", path)[0] == 401, path
        assert request(srv, "GET", f"/frame.jpg?token={TOKEN}")[0] == 200
        assert request(srv, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        srv.close()
    public = LiveHttpServer(reporter(), "0.0.0.0", 0, token=TOKEN, public_metrics=True).start()
    try:
        assert request(public, "GET", "/metrics")[0] == 200 and request(public, "GET", "/healthz")[0] == 200
        assert request(public, "GET", "/frame.jpg")[0] == 401  # camera frames never
    finally:
        public.close()


def test_an_off_loopback_bind_without_a_token_does_not_start(tmp_path):
    from img2music.runtime import ServerConfig

    with pytest.raises(Img2MusicError, match="needs --http-token-file, or --http-public-metrics"):
        ServerConfig(http=("0.0.0.0", 9090))
    with pytest.raises(Img2MusicError, match="--ws on 0.0.0.0 .* needs --http-token-file"):
        ServerConfig(ws=("0.0.0.0", 9091), public_metrics=True)
    ServerConfig(http=("0.0.0.0", 9090), public_metrics=True)  # reads of /metrics, /healthz, /readyz alone


# -- bad values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    (b'{"top_k": NaN}', "not a finite number"), (b'{"temperature": Infinity}', "not a finite number"),
    (b'{"top_p": 1e400}', "not a finite number"), (b'{"top_k": ' + b"1" + b"0" * 400 + b"}", "digits is no setting"),
    (b"[" * 2000 + b"]" * 2000, "nested deeper"), (b'{"prompt": "a\\ud800b"}', "lone surrogate"),
    (b'{"prompt": {"a": {"b": {"c": {"d": {"e": 1}}}}}}', "nested deeper"), (b"\xff\xfe{}", "not JSON"),
])
def test_every_bad_value_is_a_400(server, body, message):
    code, answer = post(server, body)
    assert code == 400 and message in answer["error"], answer
    assert request(server, "GET", "/healthz")[0] == 200  # still answering


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_float_for_an_integer_is_a_clear_refusal(value):  # as OSC sends it: no JSON parsing
    from img2music.runtime.control.requests import ControlError, validate

    with pytest.raises(ControlError, match="top_k must be an integer"):
        validate({"top_k": value})


def test_log_lines_escape_what_users_send(server, caplog):
    caplog.set_level(logging.INFO)
    forged = "calm\nWARNING forged line\x1b[31m red"
    server.engine.pipeline.text = SimpleNamespace(token_ids=lambda text: [1], encode=lambda text: None)
    assert post(server, json.dumps({"prompt": forged}).encode())[0] == 202
    line = next(r.getMessage() for r in caplog.records if "control (" in r.getMessage())
    assert "\n" not in line and "\x1b" not in line and "\\n" in line and "\\x1b" in line


def test_refusals_are_logged_once_a_second_per_client(server, caplog):
    caplog.set_level(logging.WARNING)
    for _ in range(30):
        post(server, b'{"transport": "pause"}', Origin="http://evil.example")
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refused) <= 2 and server.refusals["origin"] == 30


def test_a_failing_handler_is_counted_not_a_traceback_on_stderr(server, monkeypatch, capfd, caplog):
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(server, "frame_jpeg", lambda: 1 / 0)
    for _ in range(5):
        with pytest.raises((IndexError, ValueError, OSError)):  # closed unanswered
            request(server, "GET", "/frame.jpg")
    deadline = time.monotonic() + 2
    while server.refusals["error"] < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.refusals["error"] == 5
    assert "Traceback" not in capfd.readouterr().err
    assert len([r for r in caplog.records if "ZeroDivisionError" in r.getMessage()]) in (1, 2)


def test_a_websocket_from_another_origin_or_host_is_refused():
    pytest.importorskip("websockets")
    from collections import Counter

    from websockets.sync.client import connect

    from img2music.runtime.control.ws_server import LiveWebSocketServer

    engine, refusals = fake_engine(), Counter()  # one count for the run, as a session shares it
    http = LiveHttpServer(reporter(), "127.0.0.1", 0, refusals=refusals).start()
    server = LiveWebSocketServer(reporter(), LiveControl(engine), "127.0.0.1", 0, refusals=refusals,
                                 http_port=http.address[1]).start()
    url = "ws://%s:%d/" % server.address
    try:
        for origin in ("http://evil.example", f"http://203.0.113.7:{http.address[1]}",  # a page on any address
                       "http://[::1", "http://127.0.0.1:99999"):  # and ones that do not parse
            with pytest.raises(Exception, match="403"):
                connect(url, origin=origin, open_timeout=5, additional_headers={"X-Try": origin})
        with connect(url, origin=f"http://127.0.0.1:{http.address[1]}", open_timeout=5):
            pass  # the run's own page
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: rebind.attacker.example\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 421")
        with connect(url, open_timeout=5) as ws:  # a program: no Origin
            ws.send(json.dumps({"transport": "pause"}))
            answer = next(m for m in (json.loads(ws.recv(timeout=5)) for _ in range(3)) if m["type"] == "answer")
            assert answer["status"] == 202
        assert refusals == {"ws_origin": 4, "ws_host": 1}
        metrics = request(http, "GET", "/metrics")[1].decode()
        assert 'img2music_requests_refused_total{reason="ws_origin"} 4.0' in metrics
    finally:
        server.close()
        http.close()


# -- files and tokens ------------------------------------------------------------------------------
def test_manifest_file_names_stay_inside_the_bundle(tiny_bundle, tmp_path):
    import shutil

    from img2music.runtime.bundle.loading import load_bundle

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["../outside.onnx"] = manifest["files"]["projector.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Img2MusicError, match="not a file name inside the bundle"):
        load_bundle(bundle, verify_hashes=False)


def test_reloads_come_from_the_reload_folder_only(tiny_bundle, tmp_path):
    from img2music.runtime.control.reload import BundleReloader
    from img2music.runtime.control.requests import ControlError

    engine = fake_engine()
    reloader = BundleReloader(engine, root=str(tmp_path / "allowed"))
    (tmp_path / "allowed").mkdir()
    with pytest.raises(ControlError, match="reloads come from") as info:
        reloader.reserve(str(tiny_bundle))
    assert info.value.status == 403
    with pytest.raises(ControlError, match="reloads come from"):
        reloader.reserve(str(tmp_path / "allowed" / ".." / ".." ))


def test_a_token_file_others_can_read_is_a_warning(tmp_path, caplog):
    from img2music.runtime.session.config import read_token_file

    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o644)
    assert read_token_file(str(path)) == TOKEN
    assert "can be read by other users" in caplog.text
    caplog.clear()
    path.chmod(0o600)
    read_token_file(str(path))
    assert "can be read by other users" not in caplog.text
