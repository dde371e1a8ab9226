"""Clients for the control-surface tests: a raw HTTP request with any Host and body, a JSON POST
(the ``server`` fixture, an HTTP server on the fake engine, is in conftest.py)."""

import json
import socket
from pathlib import Path
from types import SimpleNamespace

TOKEN = "s3cret-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def reporter():
    return SimpleNamespace(last={"music_s": 1.0}, build={}, first_audio_at=None, last_flowing_at=0.0)


def request(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             host: str | None = None) -> tuple[int, bytes]:
    """One raw HTTP/1.0 request (any Host header, any body), the status and body back."""
    with socket.create_connection(srv.address[:2], timeout=5) as s:
        lines = [f"{method} {path} HTTP/1.0", f"Host: {'%s:%d' % srv.address[:2] if host is None else host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def post(srv, body: bytes, **headers) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | {k.replace("_", "-"): v for k, v in headers.items()}
    code, data = request(srv, "POST", "/control", body, headers)
    return code, json.loads(data or b"{}")
