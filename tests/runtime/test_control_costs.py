"""What one client may cost a live run (loopback only, bounded loops): oversized and slow
requests, held streams, floods of cheap requests, bursts that would buy expensive work, OSC
addresses, WebSocket clients, descriptors. One test per finding of the security issue (#30)."""

import logging
import socket
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

pytest.importorskip("prometheus_client")

from img2music.basics.errors import Img2MusicError  # noqa: E402
from img2music.runtime.control.dispatcher import LiveControl  # noqa: E402
from img2music.runtime.control.http_server import MAX_CONNECTIONS, MAX_EVENT_STREAMS, LiveHttpServer  # noqa: E402
from tests.runtime.control_clients import ROOT, reporter, request  # noqa: E402
from tests.runtime.fake_clock import FakeClock  # noqa: E402
from tests.runtime.test_live_transport import fake_engine  # noqa: E402


# -- what one client may cost ----------------------------------------------------------------------
def test_oversized_headers_are_refused_not_buffered(server):
    with socket.create_connection(server.address[:2], timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n" + b"X-Pad: " + b"a" * 60000 + b"\r\n" + b"X-More: b\r\n" * 50)
        status = s.recv(64)
    assert status.startswith(b"HTTP/1.0 431")


def test_slow_and_held_clients_are_dropped_and_capped(monkeypatch):
    from img2music.runtime.control import http_server

    monkeypatch.setattr(http_server._Handler, "timeout", 0.5)
    srv = LiveHttpServer(reporter(), "127.0.0.1", 0).start()
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):  # half-sent requests, each holding a slot until the timeout
            s = socket.create_connection(srv.address[:2], timeout=5)
            s.sendall(b"GET /healthz HTTP/1.0\r\n")
            held.append(s)
        time.sleep(0.1)
        extra = socket.create_connection(srv.address[:2], timeout=5)
        assert extra.recv(64).startswith(b"HTTP/1.0 503")  # the accepting thread answers; no thread made
        extra.close()
        assert srv.refusals["connections"] >= 1
        time.sleep(1.0)  # the half-sent ones time out and give their slots back
        assert srv.connection_slots.active == 0
        assert request(srv, "GET", "/healthz")[0] == 200
    finally:
        for s in held:
            s.close()
        srv.close()


def test_a_request_trickled_in_is_dropped_at_its_deadline(monkeypatch):
    """A byte every 0.3 s never trips a per-read timeout; the request's own deadline (here 1 s)
    ends it, so 32 such clients cannot hold every slot for hours."""
    from img2music.runtime.control import http_server

    monkeypatch.setattr(http_server, "IO_TIMEOUT", 1.0)
    srv = LiveHttpServer(reporter(), "127.0.0.1", 0).start()
    try:
        with socket.create_connection(srv.address[:2], timeout=5) as s:
            start, closed = time.monotonic(), False
            s.sendall(b"GET /healthz HTTP/1.0\r\nX-Slow: ")
            while time.monotonic() - start < 4 and not closed:
                time.sleep(0.3)
                try:
                    s.sendall(b"a")
                except OSError:
                    closed = True
            elapsed = time.monotonic() - start
        assert closed and elapsed < 2.0, elapsed
        assert srv.refusals["slow"] == 1 and srv.connection_slots.active == 0
    finally:
        srv.close()


def test_one_client_holds_half_the_connections_at_most():
    """16 half-sent requests from 127.0.0.1, then one from 127.0.0.2 (the same machine: one
    client): 503, while the server has 16 more for others."""
    from img2music.runtime.control.http_server import MAX_PER_CLIENT

    srv = LiveHttpServer(reporter(), "127.0.0.1", 0).start()
    held = []
    try:
        for _ in range(MAX_PER_CLIENT):
            held.append(socket.create_connection(srv.address[:2], timeout=5))
            held[-1].sendall(b"GET /healthz HTTP/1.0\r\n")
        time.sleep(0.1)
        extra = socket.create_connection(srv.address[:2], timeout=5, source_address=("127.0.0.2", 0))
        assert extra.recv(64).startswith(b"HTTP/1.0 503")
        extra.close()
        assert srv.connection_slots.active == MAX_PER_CLIENT < MAX_CONNECTIONS
    finally:
        for s in held:
            s.close()
        srv.close()


def test_event_streams_are_capped(server):
    streams = []
    try:
        for _ in range(MAX_EVENT_STREAMS):
            s = socket.create_connection(server.address[:2], timeout=5)
            s.sendall(b"GET /events HTTP/1.0\r\nHost: %s:%d\r\n\r\n" % (server.address[0].encode(), server.address[1]))
            assert s.recv(64).startswith(b"HTTP/1.0 200")
            streams.append(s)
        assert request(server, "GET", "/events")[0] == 503
        assert server.refusals["event_streams"] == 1
    finally:
        for s in streams:
            s.close()


def test_shutdown_with_clients_held_takes_under_two_seconds():
    srv = LiveHttpServer(reporter(), "127.0.0.1", 0).start()
    held = [socket.create_connection(srv.address[:2], timeout=5) for _ in range(3)]
    held[0].sendall(b"GET /events HTTP/1.0\r\n\r\n")
    held[1].sendall(b"GET /healthz HTTP/1.0\r\n")  # half sent
    time.sleep(0.2)
    start = time.monotonic()
    srv.close()
    assert time.monotonic() - start < 2.0
    for s in held:
        s.close()


def test_ipv6_binds_work():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        srv = LiveHttpServer(reporter(), "::1", 0).start()
    except Img2MusicError as exc:
        pytest.skip(f"::1 cannot be bound here: {exc}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{srv.address[1]}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        srv.close()


# -- no cheap request buys expensive work --------------------------------------------------------
def test_a_new_prompt_never_runs_t5_on_the_music_thread(tiny_bundle):
    """The first prompt opens T5 (a second or more on a real-size bundle) and runs it: in the
    thread that asked, so the compute thread, which makes the music, finds the encoding kept."""
    import threading

    from img2music.runtime.loop.prompt import LivePrompt
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    pipeline = OnnxPipeline.load(tiny_bundle, threads=1, verify_hashes=False)
    text, where = pipeline.text, []
    opener = text._session
    assert callable(opener) and not hasattr(opener, "run")  # not opened before a prompt

    def open_and_watch():
        session = opener()
        where.append(("open", threading.current_thread().name))
        return SimpleNamespace(run=lambda *a: where.append(("run", threading.current_thread().name))
                               or session.run(*a))

    text._session = open_and_watch
    engine = fake_engine()
    engine.pipeline, engine.prompt = pipeline, LivePrompt()
    engine.set_prompt = lambda **fields: engine.prompt.change(pipeline, None, **fields)
    control = LiveControl(engine)
    worker = threading.Thread(target=control.submit, args=({"prompt": "slow warm piano"},), name="http-request")
    worker.start()
    worker.join(30)
    assert where == [("open", "http-request"), ("run", "http-request")]
    control.apply_pending()  # the compute thread's side
    assert engine.prompt.text == "slow warm piano" and len(where) == 2  # no T5 run there


def test_frames_are_encoded_once_and_scrapes_rendered_once_a_second(server, monkeypatch):
    from img2music.runtime.control import http_server, metrics

    encoded = []
    real = http_server.frame_jpeg
    monkeypatch.setattr(http_server, "frame_jpeg", lambda frame: encoded.append(1) or real(frame))
    for _ in range(50):
        assert request(server, "GET", "/frame.jpg")[0] == 200
    assert len(encoded) == 1
    clock = FakeClock()
    cache = metrics.ScrapeCache(server.registry, clock=clock)
    for _ in range(100):
        cache.text()
    clock.now += 1.0
    cache.text()
    assert cache.renders == 2


def test_osc_addresses_are_bounded_and_never_kept(caplog):
    pytest.importorskip("pythonosc")
    from pythonosc.udp_client import SimpleUDPClient

    from img2music.runtime.control.osc_server import LiveOscServer

    caplog.set_level(logging.WARNING)
    server = LiveOscServer(LiveControl(fake_engine()), "127.0.0.1", 0).start()
    client = SimpleUDPClient(*server.address)

    def until(count: int) -> None:
        deadline = time.monotonic() + 5
        while server.received < count and time.monotonic() < deadline:
            time.sleep(0.002)

    try:
        for i in range(100):  # 8 kB addresses: dropped before python-osc parses (and compiles) them
            client.send_message(f"/img2music/{i:04d}" + "x" * 8000, 1.0)
            time.sleep(0.001)
        client.send_message("/img2music/temperature", 1.0)
        until(1)
        assert server.received == 1 and server.refusals["osc"] == 100
        for i in range(100):  # short unknown ones reach the handler: refused, logged once a second
            client.send_message(f"/img2music/no\nFORGED {i}", 1.0)
            until(i + 2)
    finally:
        server.close()
    assert server.received == 101 and server.refusals["osc"] == 200
    assert not hasattr(server, "_warned") and len(server.guard._logged) <= 1
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(lines) <= 6 and all(len(line) < 600 and "\n" not in line for line in lines)


def test_a_flood_of_cheap_requests_is_paced(server):
    """700 /frame.jpg a second once took ~12 s of a minute's music on two cores (the request
    threads' CPU and interpreter lock): now one address gets RATE a second after a burst."""
    import threading

    from img2music.runtime.control.http_server import BURST, RATE

    served, stop = [], time.monotonic() + 1.5

    def hammer():
        while time.monotonic() < stop:
            try:
                served.append(request(server, "GET", "/frame.jpg")[0])
            except OSError:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert served.count(200) <= BURST + RATE * 1.5 + 4 + 2, len(served)  # + the 4 waiting, + timing slack
    assert served.count(200) >= BURST
    start = time.monotonic()
    assert request(server, "GET", "/healthz")[0] == 200  # the flood over, its turn comes within 2 s
    assert time.monotonic() - start < 2.5


def test_osc_floods_are_dropped_before_parsing():
    pytest.importorskip("pythonosc")
    from pythonosc.udp_client import SimpleUDPClient

    from img2music.runtime.control.osc_server import RATE, LiveOscServer

    server = LiveOscServer(LiveControl(fake_engine()), "127.0.0.1", 0).start()
    client = SimpleUDPClient(*server.address)
    try:
        start = time.monotonic()
        for i in range(600):
            client.send_message("/img2music/temperature", 1.0)
            if i % 50 == 49:
                time.sleep(0.002)  # let the server read: the kernel's buffer is not what is tested
        elapsed = time.monotonic() - start
        time.sleep(0.3)
    finally:
        server.close()
    assert server.received <= RATE + RATE * elapsed + 5, (server.received, elapsed)
    assert server.refusals["osc_pace"] >= 600 - server.received - 50  # the rest: paced (or the kernel's)


def test_silent_websocket_sockets_are_capped_before_a_byte_is_read():
    """websockets makes threads for every accepted socket and waits 5 s for its handshake: past
    the cap a socket is closed at once, so 60 silent ones cost no more than the cap's threads."""
    import threading

    from img2music.runtime.control.ws_server import MAX_SOCKETS_PER_CLIENT, LiveWebSocketServer

    pytest.importorskip("websockets")
    server = LiveWebSocketServer(reporter(), LiveControl(fake_engine()), "127.0.0.1", 0).start()
    threads = threading.active_count()
    silent = []
    try:
        for _ in range(60):
            silent.append(socket.create_connection(server.address, timeout=5))
        time.sleep(0.5)
        added = threading.active_count() - threads
        closed = 0
        for s in silent:
            s.settimeout(0.05)
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, OSError):
                pass
        assert closed == 60 - MAX_SOCKETS_PER_CLIENT, closed
        assert added <= 2 * MAX_SOCKETS_PER_CLIENT + 2, added
        assert server.refusals["ws_sockets"] == 60 - MAX_SOCKETS_PER_CLIENT
    finally:
        for s in silent:
            s.close()
        server.close()


def test_websocket_clients_are_capped():
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    from img2music.runtime.control.ws_server import MAX_CLIENTS, LiveWebSocketServer

    server = LiveWebSocketServer(reporter(), LiveControl(fake_engine()), "127.0.0.1", 0).start()
    url = "ws://%s:%d/" % server.address
    clients = []
    try:
        for _ in range(MAX_CLIENTS):
            clients.append(connect(url, open_timeout=5))
            clients[-1].recv(timeout=5)  # its first status: the handler runs
        extra = connect(url, open_timeout=5)
        with pytest.raises(Exception) as info:
            extra.recv(timeout=5)
        assert "1013" in str(info.value) and server.refusals["ws_clients"] == 1
    finally:
        for c in clients:
            c.close()
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 2.0


def test_the_unit_leaves_the_capped_clients_room_for_descriptors():
    """300 WebSocket clients under systemd's default 1024 descriptors killed the server's thread
    (EMFILE). The caps bound what clients can hold; the unit raises the limit far above that."""
    from img2music.runtime.control.ws_server import MAX_CLIENTS

    unit = (ROOT / "deploy" / "img2music-live.service").read_text()
    limits = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert len(limits) == 1 and int(limits[0]) >= 4096
    # per HTTP connection 1 fd, per WebSocket client 4 (measured), listeners, a camera, sound
    assert MAX_CONNECTIONS + MAX_EVENT_STREAMS + 4 * MAX_CLIENTS + 64 < int(limits[0]) // 8
