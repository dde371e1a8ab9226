"""Pause, resume and fade out a live run (``POST /control {"transport": "pause"}``, OSC ...).

A gain envelope on the fresh audio, at the model's rate, before the resampler and the
playout. The compute thread applies it to every chunk it submits
(:meth:`Transport.shape`), so a change is heard once the audio already buffered ahead of
the sound card (``--buffer``, 1 s by default) has played: the same delay as every other
control. The envelope is equal-power (the amplitude is ``sin(u * pi / 2)`` of a position
``u`` that moves linearly), so neither end clicks.

States (:attr:`Transport.state`):

- ``playing``: gain 1 (or on its way up after a resume);
- ``fading``: on its way down, over :data:`RAMP_SECONDS` for a pause or the given seconds
  of audio for a fade-out; the decoder runs meanwhile;
- ``paused``: silent; the decoder does not run. The compute thread keeps the buffer at its
  target with zeros (:meth:`LiveEngine._paused_tick`), written as ordinary audio: the sound
  card never runs dry (no underflows), the playout's ladder sees no lack of audio, the
  watchdog and ``/healthz`` see audio flowing, ``--record`` records the silence and
  ``--duration`` counts it.

A resume fades the music back in over :data:`RAMP_SECONDS` from where the decoder stopped
(its cache is kept: the piece goes on; the music generated after the fade ended was never
heard). The buffer is full of silence by then, so the first chunk has the whole buffer to
arrive in. Pause while paused or fading, resume while playing: nothing to do (accepted).

A reloaded bundle starts a new piece; :meth:`Transport.crossfade_from` joins the old
stream's last audio onto the new stream's first with an equal-power crossfade.

Audio is (S,) mono or (S, C) from a stereo bundle (runtime.audio.frames); the envelope
scales a frame's channels alike.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from img2music.runtime.audio.frames import per_frame

log = logging.getLogger(__name__)

RAMP_SECONDS = 0.05
"""Length of a pause's fade and of a resume's fade-in: long enough not to click, short
enough to feel immediate."""
STATES = ("playing", "fading", "paused")


class Transport:
    """The envelope and its state; used by the compute thread only (others read :attr:`state`)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.state = "playing"
        self._u = 1.0  # envelope position: 1 full, 0 silent
        self._slope = 0.0  # change of the position per sample
        self._seam: np.ndarray | None = None  # an old stream's last audio, to crossfade from
        self.silence_samples = 0
        """Samples of silence submitted while paused (the model's rate)."""
        self.pauses = 0
        """Times the music reached silence by a pause or a fade-out."""

    @property
    def paused(self) -> bool:
        return self.state == "paused"

    def pause(self, seconds: float = RAMP_SECONDS, why: str = "pause") -> bool:
        """Fade to silence over ``seconds`` of audio (from full gain), then pause. Returns
        False when there is nothing to do (paused already, or a fade at least as fast is on)."""
        slope = -1.0 / max(1.0, seconds * self.rate)
        if self.paused or (self.state == "fading" and self._slope <= slope):
            return False
        self.state, self._slope = "fading", slope
        log.info("%s: fading out over %.2f s of audio", why, self._u * seconds)
        return True

    def resume(self) -> bool:
        """Fade back in over :data:`RAMP_SECONDS`; False when playing already."""
        if self.state == "playing":
            return False
        self.state, self._slope = "playing", 1.0 / max(1.0, RAMP_SECONDS * self.rate)
        log.info("resume: fading in over %.2f s", RAMP_SECONDS)
        return True

    def crossfade_from(self, tail: np.ndarray) -> None:
        """The next audio shaped starts with ``tail`` ((S,) or (S, C), as the audio) fading out under it."""
        self._seam = np.asarray(tail, dtype=np.float32) if len(tail) else None

    def shape(self, audio: np.ndarray) -> np.ndarray:
        """``audio`` ((S,) or (S, C), the model's rate) with the envelope applied; the position moves on."""
        audio = self._join(audio)
        if self._slope == 0.0:
            return audio if self._u >= 1.0 else np.zeros_like(audio)
        n = len(audio)
        u = np.clip(self._u + self._slope * np.arange(1, n + 1), 0.0, 1.0)
        out = (audio * per_frame(np.sin(u * (math.pi / 2)), audio)).astype(np.float32)
        self._u = float(u[-1]) if n else self._u
        if self._slope < 0 and self._u <= 0.0:
            self.state, self._slope = "paused", 0.0
            self.pauses += 1
            log.info("paused: the decoder rests, silence flows to the sound card")
        elif self._slope > 0 and self._u >= 1.0:
            self._slope = 0.0
        return out

    def _join(self, audio: np.ndarray) -> np.ndarray:
        seam, self._seam = self._seam, None
        if seam is None or self._u <= 0.0:
            return audio
        n = min(len(seam), len(audio))
        t = np.linspace(0.0, math.pi / 2, n, dtype=np.float32)
        head = seam[:n] * per_frame(np.cos(t), audio) + audio[:n] * per_frame(np.sin(t), audio)
        return np.concatenate([head, audio[n:]]).astype(np.float32)
