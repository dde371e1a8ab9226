"""The live runtime's supervisor: the threads the music depends on, checked by the compute
thread between its actions.

A thread that dies (an exception nobody expected) or stops making progress cannot be
trusted to be restarted in place: its state may be half-updated. So the process ends at
once with exit code 1 and the thread's own error, and the service manager (systemd's
``Restart=on-failure``) starts a clean one. What *can* fail and be repaired in place is
handled where it happens: a camera is reopened (runtime.loop.source_thread), a sound device
reopened (runtime.audio.sinks), a full disk stops the recording or the metrics only.
Never a process that is up, silent and claims to be healthy.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from img2music.basics.errors import RuntimeFault

log = logging.getLogger(__name__)


class LiveThreadFailed(RuntimeFault):
    """A thread the music depends on died or hung."""


class ThreadWatch:
    """``watch(name, thread, beat)``; :meth:`check` raises :class:`LiveThreadFailed` for a
    thread that has ended, or whose ``beat()`` (seconds of its last progress, monotonic)
    is older than ``stuck_after``."""

    def __init__(self, stuck_after: float = 10.0, clock=time.monotonic) -> None:
        self.stuck_after, self.clock = stuck_after, clock
        self._watched: list[tuple[str, threading.Thread, Callable[[], float] | None]] = []
        self._errors: dict[str, str] = {}
        self._previous_hook = None

    def install(self) -> "ThreadWatch":
        """Record the exceptions that end threads (their message goes into the exit error)."""
        self._previous_hook = threading.excepthook
        threading.excepthook = self._record
        return self

    def uninstall(self) -> None:
        if self._previous_hook is not None:
            threading.excepthook, self._previous_hook = self._previous_hook, None

    def _record(self, args) -> None:
        self._errors[getattr(args.thread, "name", "?")] = f"{args.exc_type.__name__}: {args.exc_value}"
        self._previous_hook(args)  # the traceback still reaches stderr / the journal

    def watch(self, name: str, thread: threading.Thread, beat: Callable[[], float] | None = None) -> None:
        self._watched.append((name, thread, beat))

    def check(self) -> None:
        now = self.clock()
        for name, thread, beat in self._watched:
            if thread.ident is not None and not thread.is_alive():
                why = self._errors.get(thread.name, "it ended")
                raise LiveThreadFailed(f"the {name} thread died ({why}); exiting so that the service manager "
                                       "restarts the process")
            if beat is not None and now - beat() > self.stuck_after:
                raise LiveThreadFailed(f"the {name} thread made no progress for {now - beat():.0f} s; exiting so "
                                       "that the service manager restarts the process")
