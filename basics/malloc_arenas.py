"""Fewer glibc malloc arenas for a long-running process that opens sessions from many threads.

glibc gives each new thread that allocates its own arena (up to 8 per core) and returns an
arena's freed pages to the system only from its top, so memory freed among another thread's
live allocations stays with the process. Bundle sessions are opened by a short-lived pool of
threads (at start and at every reload) and freed from another thread when a reload replaces
them: 100 reloads of the 7 MB tiny bundle took ``live.py`` from 126 to 233 MB, still creeping
(16 arenas); with two arenas, 112 -> 166 MB after the first 10 and 165 MB after 100. Opening
a bundle's sessions 40 times from 4 short-lived threads: 47 -> 157 MB; with two arenas
47 -> 86 MB, flat after the first 10. ONNX Runtime allocates tensors from its own arena, so
the decoder does not depend on malloc's. ``tests/runtime/test_control_runs.py`` reloads
and counts the arenas.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
"""glibc's mallopt parameter number (malloc.h)."""


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` malloc arenas from now on (call before threads start). False where it
    does not apply: not glibc, or ``MALLOC_ARENA_MAX`` set by the user (theirs wins)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not Linux, or a libc without it
        return False
    if not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"):  # musl's mallopt does nothing useful
        return False
    done = bool(mallopt(M_ARENA_MAX, arenas))
    log.debug("malloc arenas limited to %d: %s", arenas, done)
    return done
