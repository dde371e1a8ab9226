"""One way to run a component's background thread: named, daemon, started and stopped alike.

The live runtime's edge components (playout feeder, clock sink, sound-card watchdog, status
reporter, source supervisor, control servers) each own one thread that the thread watch
supervises (``runtime.loop.thread_watch`` reads :attr:`BackgroundThread.thread`). They used
to write the same start / stop / ``thread`` property six times; this is that code once.
"""

from __future__ import annotations

import threading
from typing import Callable


class BackgroundThread:
    """A daemon thread running ``target()``; :meth:`stop` sets :attr:`stopping` and, for a
    target blocked elsewhere (a server's ``serve_forever``), calls ``interrupt()`` to end it.

    A loop in ``target`` ends with ``while not background.wait(period): ...`` (a wait that
    :meth:`stop` cuts short) or by checking :attr:`stopping`."""

    def __init__(self, name: str, target: Callable[[], None], interrupt: Callable[[], None] | None = None) -> None:
        self.name = name
        self.interrupt = interrupt
        self.stopping = threading.Event()
        """Set by :meth:`stop`: the target's cue to return."""
        self.thread = threading.Thread(target=target, name=name, daemon=True)
        """The thread itself (for the thread watch)."""

    def start(self) -> "BackgroundThread":
        self.thread.start()
        return self

    @property
    def started(self) -> bool:
        return self.thread.ident is not None

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when :meth:`stop` was called (then at once)."""
        return self.stopping.wait(seconds)

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to end and wait up to ``timeout`` seconds; True once it has ended.
        Safe before :meth:`start` and from the thread itself (then it does not wait)."""
        self.stopping.set()
        if not self.started:
            return True
        if self.interrupt is not None and self.thread.is_alive():
            self.interrupt()  # e.g. socketserver's shutdown(): only for a loop that is running
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)
        return not self.thread.is_alive()
