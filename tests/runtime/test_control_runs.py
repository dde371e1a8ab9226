"""The control surface in whole ``live.py`` runs: a control server that dies ends the run, a
run stops within 2 s with clients held, reloads do not grow memory (#30)."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("prometheus_client")

from tests.runtime.control_clients import ROOT  # noqa: E402


def _live(tiny_bundle, *args, script: str = "") -> tuple[subprocess.Popen, str, int]:
    """live.py on the tiny bundle with HTTP and WebSocket control (``script``: Python run first,
    a fault injected); the process, the HTTP base URL and the WebSocket port once ready."""
    from tests.runtime.test_live_http import _free_ports, _wait_ready

    http, ws = _free_ports(2)
    code = script + "from img2music.runtime.cli.live import cli\ncli()\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "--synthetic", "--engines", str(tiny_bundle), "--no-audio",
                             "--threads", "2", "--http", str(http), "--ws", str(ws), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{http}"
    try:
        _wait_ready(base)
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate(timeout=30)[1][-2000:]) from None
    return proc, base, ws


def test_a_dead_control_server_ends_the_run(tiny_bundle):
    """The WebSocket server's accept loop ended by EMFILE (what 300 clients did at 1024 fds): not
    a server that never accepts again, unnoticed, but exit 1 naming it (systemd restarts)."""
    pytest.importorskip("websockets")
    script = ("import errno, time\n"
              "import websockets.sync.server as s\n"
              "def serve_forever(self):\n"
              "    time.sleep(1.0)\n"
              "    raise OSError(errno.EMFILE, 'Too many open files')\n"
              "s.Server.serve_forever = serve_forever\n")
    start = time.monotonic()
    proc, _, _ = _live(tiny_bundle, "--duration", "60", script=script)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 1, err[-2000:]
    assert "the websocket server thread died (OSError: [Errno 24] Too many open files)" in err
    assert time.monotonic() - start < 40  # at once, not after 60 s of music


def test_a_run_stops_within_two_seconds_with_clients_held(tiny_bundle):
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    proc, base, ws_port = _live(tiny_bundle, "--duration", "600")
    port = int(base.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    held[0].sendall(b"GET /events HTTP/1.0\r\n\r\n")
    held[1].sendall(b"GET /healthz HTTP/1.0\r\n")  # half sent
    client = connect(f"ws://127.0.0.1:{ws_port}/", open_timeout=5)
    client.recv(timeout=5)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # systemd's stop
    try:
        proc.wait(timeout=10)
    finally:
        proc.kill()
        for s in held:
            s.close()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert time.monotonic() - start < 2.0


HEAPS = """
import ctypes, sys
import img2music.runtime.cli.live as live


def heaps():  # glibc's own count of its malloc arenas
    libc = ctypes.CDLL(None)
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
    libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    return buf.value.decode().count("<heap nr=")


real = live.main
live.main = lambda argv=None: [real(argv), print("arenas", heaps())][0]
live.cli()
"""


def test_reloads_do_not_grow_memory(tiny_bundle, tmp_path):
    """The cause: sessions opened by short-lived threads (at start and every reload) and freed by
    another left their pages in up to 16 glibc arenas (8 per core): 40 reloads of the tiny bundle
    grew live.py 125 -> 248 MB. The CLI allows two arenas before any thread starts."""
    import ctypes
    import os
    import shutil

    if not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"):
        pytest.skip("glibc only")
    bundles = tmp_path / "bundles"
    a, b = shutil.copytree(tiny_bundle, bundles / "a"), shutil.copytree(tiny_bundle, bundles / "b")
    from tests.runtime.test_live_http import _free_ports, _get, _post, _wait_ready

    port = _free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    proc = subprocess.Popen([sys.executable, "-c", HEAPS, "--synthetic", "--engines", str(a), "--no-audio",
                             "--threads", "2", "--duration", "600", "--http", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base)
        for bundle in (b, a, b):  # reloads open sessions from new threads
            assert _post(base + "/control", {"bundle": str(bundle)})[0] == 202
            deadline = time.monotonic() + 30
            while json.loads(_get(base + "/control")[1])["bundle"] != str(bundle.resolve()):
                assert time.monotonic() < deadline, "the reload never took over"
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    arenas = [int(line.split()[1]) for line in out.splitlines() if line.startswith("arenas ")]
    assert arenas and arenas[0] <= 2, (arenas, err[-2000:])
