"""systemd's notify protocol for the live service: READY once audio plays, WATCHDOG while it
keeps playing, STATUS with the one-line state.

Hand-written (a dozen lines of socket code) rather than a dependency: the protocol is one
datagram per message to ``$NOTIFY_SOCKET`` (see sd_notify(3)); python-systemd needs
libsystemd headers to build, sdnotify is unmaintained. Without ``NOTIFY_SOCKET`` (not under
systemd, or ``Type=simple``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    """``ready()`` / ``watchdog()`` / ``status(text)`` to the service manager, if there is one."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address = None
        self.sent_ready = False
        if address:
            # '@' names a socket in the abstract namespace (a leading NUL byte)
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _send(self, message: str) -> None:
        if self.address is None:
            return
        try:
            self._socket.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:  # the manager went away: nothing to tell, not a reason to stop the music
            log.debug("sd_notify %r failed: %s", message[:20], exc)

    def ready(self) -> None:
        if not self.sent_ready:
            self.sent_ready = True
            self._send("READY=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self._send("STATUS=" + text.replace("\n", " "))

    def close(self) -> None:
        if self.address is not None:
            self._send("STOPPING=1")
            self._socket.close()
            self.address = None
