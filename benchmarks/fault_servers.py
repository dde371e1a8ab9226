"""Things the fault-injection tests and the fault soak switch off and on again: a network
camera (a local HTTP MJPEG server) and a sound server (a private PulseAudio with a null
sink, the real audio stack down to a sound card that records what it heard)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: all held open while picking (closed one by one, the
    kernel may hand the same port out twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class MJPEGServer:
    """``http://127.0.0.1:PORT/stream.mjpg``: multipart JPEG frames at ``fps``; stop() and
    start() again on the same port (a camera that goes down and comes back)."""

    def __init__(self, jpegs: list[bytes], fps: float = 10.0) -> None:
        self.jpegs, self.period = jpegs, 1.0 / fps
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self.httpd = None

    def start(self) -> "MJPEGServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while server.httpd is not None and server.httpd is self.server:
                        jpg = server.jpegs[i % len(server.jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpg) + jpg + b"\r\n")
                        i += 1
                        time.sleep(server.period)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()


def pulse_available() -> str | None:
    """Why a PulseAudio sound server cannot be used here, or None when it can."""
    if shutil.which("pulseaudio") is None or shutil.which("parecord") is None:
        return "no pulseaudio (apt-get install pulseaudio libasound2-plugins libportaudio2)"
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"no PortAudio for sounddevice ({exc})"
    return None


class PulseServer:
    """A private PulseAudio daemon on its own socket with one null sink (the default).

    Clients find it through ``env`` (``PULSE_SERVER``), so a test never touches a user's
    own sound server; stop() kills it (an outage), start() brings it back on the same socket."""

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "pulse.sock"
        self.env = {**os.environ, "PULSE_SERVER": f"unix:{self.socket}"}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "PulseServer":
        self.socket.unlink(missing_ok=True)
        log = open(self.dir / "pulseaudio.log", "ab")  # noqa: SIM115 - handed to the daemon
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--system=no",
             "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
             "-L", "module-null-sink sink_name=nullsink", "-L", "module-always-sink"],
            stdout=log, stderr=log, env={**self.env, "HOME": str(self.dir)}, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"pulseaudio did not start: {(self.dir / 'pulseaudio.log').read_text()[-500:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # a crash, not a polite shutdown
            proc.wait(timeout=10)

    def record(self, seconds: float, path: str | os.PathLike) -> Path:
        """What the null sink plays during the next ``seconds``, as a WAV."""
        proc = subprocess.Popen(["parecord", "--device=nullsink.monitor", "--file-format=wav", str(path)],
                                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(seconds)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        return Path(path)
