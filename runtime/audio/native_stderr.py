"""Native libraries' raw stderr lines turned into our own log records.

PortAudio's ALSA host API prints every failed call while a sound server is away
(``Expression 'ret' failed in 'src/hostapi/alsa/pa_linux_alsa.c', line: 1736``, five lines
per reopen attempt, measured: 21 lines for one 8 s PulseAudio restart) and ALSA adds
``ALSA lib pulse.c:242:(pulse_connect) ...``. Neither has a switch: PortAudio writes with
an internal ``vfprintf(stderr)`` (Debian's build exports no ``PaUtil_SetDebugPrintFunction``),
so the journal of an unattended installation fills with lines that say nothing our own
``audio stream died`` / ``sound output back after`` lines do not.

:func:`install` points file descriptor 2 at a pipe read by one thread: lines from a known
native source go to the log at INFO (``-v`` shows them) and are counted; anything else is
passed through unchanged. Python's own ``sys.stderr`` is moved to a duplicate of the
original descriptor first, so tracebacks and log lines never depend on that thread.
Written here rather than with ``wurlitzer`` because we filter line by line and keep
Python's stderr off the pipe, which is most of the code either way.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

log = logging.getLogger(__name__)

NATIVE_LINE = re.compile(
    rb"^(Expression '.*' failed in '.*pa_.*\.c'"  # PortAudio's PA_ENSURE
    rb"|ALSA lib "  # libasound's default error handler
    rb"|PaAlsaStream|PaUnixThread"  # PortAudio assertions
    rb"|\[ ?(WARN|ERROR|INFO):\d+@"  # OpenCV's logger when OPENCV_LOG_LEVEL was overridden
    rb"|\s*$)"  # the blank lines PortAudio prints between its messages
)

_state: dict = {}


def native_lines() -> int:
    """How many native lines were taken off stderr since :func:`install`."""
    return _state.get("count", 0)


def install() -> bool:
    """Filter descriptor 2 (once per process); False where it cannot (no fd 2)."""
    if _state:
        return True
    try:
        original = os.dup(2)
    except OSError:
        return False
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    # Python writes to the original descriptor from now on, line-buffered as before
    sys.stderr = open(original, "w", buffering=1, encoding=sys.stderr.encoding,  # noqa: SIM115 - process lifetime
                      errors="backslashreplace", closefd=False)
    os.dup2(write_end, 2)
    os.close(write_end)
    _state.update(count=0, original=original)
    threading.Thread(target=_forward, args=(read_end, original), name="native-stderr", daemon=True).start()
    return True


def _forward(read_end: int, original: int) -> None:
    pending = b""
    while True:
        try:
            data = os.read(read_end, 65536)
        except OSError:
            return
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if NATIVE_LINE.match(line):
                _state["count"] += 1
                if line.strip():
                    log.info("native: %s", line.decode("utf-8", "replace"))
            else:
                try:
                    os.write(original, line + b"\n")
                except OSError:
                    pass
