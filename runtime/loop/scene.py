"""Scene-change detection on CLIP image embeddings, with hysteresis.

Frames are embedded at a bounded rate (the caller's job); each embedding is compared
with the embedding of the scene the music currently follows. A change is declared only
when

1. the cosine distance to the current scene exceeds ``threshold`` for ``confirm``
   embeddings in a row (one odd frame, a passing hand, does nothing), and
2. those embeddings agree with each other (pairwise distance below
   ``stable_fraction * threshold``): flicker between two views is not a new scene, and
3. at least ``min_dwell`` seconds have passed since the last change, so a busy room
   cannot make the music thrash.

The new scene's embedding is the mean of the confirming embeddings.

Before CLIP, :class:`FrameGate` compares a 32x32 grey thumbnail with the one of the last
embedded frame: a still room (sensor noise averages out in the thumbnail) costs no CLIP
run at all, which on two cores is the difference between keeping up and falling behind.

:class:`Scene` is what the music follows (conditioning, mask, directive); :func:`blend` is
a transition's conditioning part-way from one scene to the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Scene:
    """A scene the music can follow: its conditioning, directive and first sighting."""

    conditioning: np.ndarray  # (1, N, D): the image's tokens, then a prompt's (runtime.loop.prompt)
    mask: np.ndarray  # (1, N)
    directive: str | None
    started: float  # monotonic time of the first frame that showed it
    weight: np.ndarray | None = None  # (1, N) token weights (None: all 1)
    image: tuple[np.ndarray, np.ndarray] | None = None  # the image's own (conditioning, mask)
    prompt: str | None = None

    @property
    def bound(self) -> tuple:
        """(conditioning, mask, weight): what the decoder is given."""
        return self.conditioning, self.mask, self.weight


@dataclass
class SceneConfig:
    threshold: float = 0.12
    """Cosine distance (1 - cos) to the current scene that counts as 'different'. Real
    CLIP ViT-B/32 puts two views of one room at ~0.02-0.06 and two rooms at 0.15-0.4."""
    confirm: int = 2
    """Consecutive different embeddings needed to declare a change."""
    stable_fraction: float = 0.5
    """Confirming embeddings must be within ``stable_fraction * threshold`` of each other."""
    min_dwell: float = 4.0
    """Seconds after a change during which no new change is declared."""
    pixel_gate: float = 2.0
    """Mean absolute thumbnail difference (0-255) below which a frame is not embedded."""
    max_skip: float = 5.0
    """Embed at least this often even when the thumbnails say nothing changed."""


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0
    return 1.0 - float(np.dot(a, b)) / (na * nb)


class SceneTracker:
    """Feed embeddings with :meth:`update`; it returns the new scene's embedding on a change."""

    def __init__(self, config: SceneConfig | None = None) -> None:
        self.config = config or SceneConfig()
        self.current: np.ndarray | None = None
        self.candidates: list[np.ndarray] = []
        self.last_change = float("-inf")
        self.changes = 0
        self.last_distance = 0.0
        self.change_started = 0.0
        """Time of the first embedding of the latest confirmed change (for latency)."""
        self._candidate_since = 0.0

    def update(self, embedding: np.ndarray, now: float) -> np.ndarray | None:
        """One (D,) embedding at time ``now`` (s) -> the new scene embedding, or None."""
        embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
        c = self.config
        if self.current is None:  # the first scene
            self.current, self.last_change, self.change_started = embedding, now, now
            return embedding
        self.last_distance = cosine_distance(self.current, embedding)
        if self.last_distance <= c.threshold:
            self.candidates.clear()
            return None
        if self.candidates and cosine_distance(self.candidates[-1], embedding) > c.stable_fraction * c.threshold:
            self.candidates = [embedding]  # flicker: the 'new scene' is not holding still
            self._candidate_since = now
            return None
        if not self.candidates:
            self._candidate_since = now
        self.candidates.append(embedding)
        if len(self.candidates) < c.confirm or now - self.last_change < c.min_dwell:
            return None
        return self._change(np.mean(self.candidates, axis=0), self._candidate_since, now)

    def force(self, embedding: np.ndarray, now: float) -> np.ndarray:
        """Make ``embedding`` the scene now, whatever the thresholds say (a cue from outside)."""
        return self._change(np.asarray(embedding, dtype=np.float32).reshape(-1), now, now)

    def _change(self, scene: np.ndarray, started: float, now: float) -> np.ndarray:
        self.current = scene
        self.candidates.clear()
        self.change_started, self.last_change = started, now
        self.changes += 1
        return self.current


class FrameGate:
    """Decides whether a frame is worth a CLIP run (see the module docstring)."""

    SIZE = 32

    def __init__(self, config: SceneConfig | None = None) -> None:
        self.config = config or SceneConfig()
        self.last: np.ndarray | None = None
        self.last_time = float("-inf")
        self.passed = 0
        self.skipped = 0

    @classmethod
    def thumbnail(cls, frame: np.ndarray) -> np.ndarray:
        from PIL import Image

        grey = Image.fromarray(frame).convert("L").resize((cls.SIZE, cls.SIZE), Image.Resampling.BOX)
        return np.asarray(grey, dtype=np.float32)

    def __call__(self, frame: np.ndarray, now: float, must: bool = False) -> bool:
        """True when ``frame`` should be embedded; ``must`` (a change being confirmed) forces it."""
        thumb = self.thumbnail(frame)
        c = self.config
        if (must or self.last is None or now - self.last_time >= c.max_skip
                or c.pixel_gate <= 0 or float(np.abs(thumb - self.last).mean()) > c.pixel_gate):
            self.last, self.last_time = thumb, now
            self.passed += 1
            return True
        self.skipped += 1
        return False


def blend(old: tuple, new: tuple, alpha: float) -> tuple:
    """(conditioning, mask, weight) part-way from ``old`` to ``new`` (alpha in [0, 1]); masks
    are unioned, a token present on one side only is weighted by that side's share; token
    weights (None: all 1) move linearly, so a prompt's weight glides too."""
    if alpha >= 1.0:
        return new
    (oc, om, ow), (nc, nm, nw) = old, new
    n = max(oc.shape[1], nc.shape[1])
    oc, nc = (np.pad(c, ((0, 0), (0, n - c.shape[1]), (0, 0))) for c in (oc, nc))
    om, nm = (np.pad(m, ((0, 0), (0, n - m.shape[1]))) for m in (om, nm))
    cond = (1 - alpha) * oc * om[..., None] + alpha * nc * nm[..., None]  # (1, N, D)
    weight = None
    if ow is not None or nw is not None:
        # a weight has its mask's shape; missing ones are 1, padding too
        ow, nw = (np.pad(np.ones(m.shape, np.float32) if w is None else w, ((0, 0), (0, n - m.shape[1])),
                         constant_values=1.0) for w, m in ((ow, old[1]), (nw, new[1])))
        weight = ((1 - alpha) * ow + alpha * nw).astype(np.float32)  # (1, N)
    return cond.astype(np.float32), np.maximum(om, nm), weight
