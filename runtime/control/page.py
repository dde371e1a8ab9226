"""The status page ``live.py --http`` serves at ``/``: one self-contained HTML file
(``live_page.html``: no CDN, works offline), fed by server-sent events from ``/events``
(one JSON object a second) and the newest camera frame from ``/frame.jpg``.

Server-sent events rather than a WebSocket: the page only listens, the standard library's
HTTP server can stream them, and browsers reconnect by themselves.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np

EVENT_KEYS = ("music_s", "buffer_s", "rtf", "underflows", "underflow_s", "degrade_level", "degrade_cheaper",
              "degrade_repeats", "degrade_silences", "scene_changes", "directive", "source_state", "sink_outages",
              "sink_outage_s", "frame_age_s", "transport", "bundle", "reload", "reload_error", "prompt",
              "prompt_weight")
THUMBNAIL_WIDTH = 320


def page_html() -> bytes:
    return resources.files("img2music.runtime.control").joinpath("page.html").read_bytes()


def page_event(snapshot: dict | None, control, frame_id: int) -> dict | None:
    """What the page shows from one status snapshot (None before the first)."""
    if snapshot is None:
        return None
    event = {k: snapshot.get(k) for k in EVENT_KEYS}
    event["frame_id"] = frame_id
    if control is not None:
        event["sampling"] = control.settings()["sampling"]
    return event


def frame_jpeg(frame: np.ndarray | None) -> bytes:
    """(H, W, 3) RGB uint8 -> a JPEG thumbnail; a dark 4:3 placeholder before the first frame
    (an image that answers 404 would be an error in the page's console)."""
    from PIL import Image

    if frame is None:
        image = Image.new("RGB", (THUMBNAIL_WIDTH, THUMBNAIL_WIDTH * 3 // 4), (20, 22, 26))
    else:
        image = Image.fromarray(frame)
        image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()
