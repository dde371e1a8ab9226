"""The live status line as an 80-column terminal shows it: one row, redrawn in place,
never wrapped or scrolled, with the summary below it (a real pty, read through the
pyte terminal emulator)."""

import fcntl
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_in_pty(cmd: list[str], columns: int, rows: int = 24) -> bytes:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "", "LINES": ""})
    os.close(slave)
    data = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, data[-1500:]
    return data


def test_status_line_is_one_row_of_an_80_column_terminal(tiny_bundle):
    pyte = pytest.importorskip("pyte")
    data = _run_in_pty([sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines",
                        str(tiny_bundle), "--no-audio", "--threads", "2", "--duration", "6"], columns=80)
    assert data.count(b"\r\x1b[K") >= 3  # several redraws happened
    screen = pyte.HistoryScreen(80, 24, history=1000)
    stream = pyte.ByteStream(screen)
    stream.feed(data)
    rows = [line.rstrip() for line in screen.display]
    status = [i for i, row in enumerate(rows) if row.startswith("music ") and "| buffer" in row]
    assert len(status) == 1, rows  # one status row, not fragments of wrapped ones
    assert len(rows[status[0]]) <= 79
    assert rows[status[0] + 1].startswith("finished: 6.00 s of music"), rows
    assert not screen.history.top, "the terminal scrolled"  # 24 rows were enough: nothing scrolled away
