"""Watching and steering a live run: status, HTTP, OSC, WebSocket, bundle reloads, systemd.

- ``requests``: what a control request may ask (fields, ranges) and who may ask it (token).
- ``dispatcher``: :class:`LiveControl`, the queue from any thread to the compute thread.
- ``reload``: another engine bundle while the music plays.
- ``status``: the status line and the JSON-lines metrics, one snapshot a second.
- ``http_server``, ``page``: ``/metrics``, ``/healthz``, ``/readyz``, the status page, ``/control``.
- ``osc_server``, ``ws_server``: the same control over OSC/UDP and a WebSocket.
- ``systemd``: READY, WATCHDOG and STATUS for ``Type=notify`` units.

May import: img2music.basics, img2music.runtime.bundle, img2music.runtime.generation,
img2music.runtime.pipeline, img2music.runtime.audio, img2music.runtime.loop.
"""
