"""Where live audio goes: a ring buffer drained by the sound card (or a clock), plus WAV.

- :class:`RingBuffer`: single producer (the playout thread), single consumer (the
  sound-card callback). Preallocated; the consumer side copies into the caller's
  buffer, zero-fills what is missing and counts it as an underflow. No locks: each
  side only advances its own counter, and under the GIL an int store is atomic.
- :class:`SoundDeviceSink`: a sounddevice ``OutputStream`` whose callback only reads
  the ring into preallocated scratch and copies it to the device's channels (mono to
  every channel, stereo as it is, stereo on a mono device as the channels' mean): it
  never allocates audio buffers, blocks or raises. A watchdog reopens a stream that
  died (no callback for ``dead_after`` seconds, or inactive) with back-off.
- :class:`ClockSink`: ``--no-audio``: drains the ring at real time, so pacing,
  underflow counting and degradation behave exactly as with a sound card.

Audio is mono ``(S,)`` or, from a stereo bundle, ``(S, C)`` frames (runtime.audio.frames);
the ring holds the bundle's channels, and every count here is in frames. The model's rate
becomes the device's before the ring (``runtime.audio.resampler``).

Recording (``--record``) goes through ``runtime.audio.recording.LiveRecording``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from img2music.basics.background import BackgroundThread
from img2music.basics.errors import Img2MusicError
from img2music.runtime.audio.frames import silence

log = logging.getLogger(__name__)


class RingBuffer:
    """Float32 ring of ``capacity`` frames of ``channels`` samples (mono: a 1-D ring)."""

    def __init__(self, capacity: int, channels: int = 1) -> None:
        self.data = silence(capacity, channels)  # (capacity,) or (capacity, channels)
        self.capacity, self.channels = capacity, channels
        self.written = 0  # total frames written (producer only)
        self.consumed = 0  # total frames read (consumer only)
        self.underflows = 0  # reads that came up short
        self.underflow_samples = 0
        self.end_of_stream = False  # set by the producer after its last write
        self.first_read_at: float | None = None
        """When the consumer first took audio (monotonic): the first audio out, to the callback's
        precision (a status report a second later would be a second late)."""

    def available(self) -> int:
        return self.written - self.consumed

    def space(self) -> int:
        return self.capacity - self.available()

    def write(self, samples: np.ndarray) -> int:
        """Copy as much of ``samples`` as fits; returns how many were taken."""
        n = min(len(samples), self.space())
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.data[start : start + first] = samples[:first]
        self.data[: n - first] = samples[first:n]
        self.written += n
        return n

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` ((n,) mono, (n, channels) otherwise) from the ring; the shortfall is
        zeros and counted."""
        want = len(out)
        n = min(want, self.available())
        start = self.consumed % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self.data[start : start + first]
        out[first:n] = self.data[: n - first]
        if n and self.first_read_at is None:
            self.first_read_at = time.monotonic()
        if n < want:
            out[n:] = 0.0
            if self.written > 0 and not self.end_of_stream:  # start-up and the end are not underflows
                self.underflows += 1
                self.underflow_samples += want - n
        self.consumed += n
        return n


class ClockSink:
    """Drains a ring at ``rate`` samples per second in real time (headless runs)."""

    def __init__(self, ring: RingBuffer, rate: int, blocksize: int = 1024) -> None:
        self.ring, self.rate, self.blocksize = ring, rate, blocksize
        self._scratch = silence(blocksize, ring.channels)
        self.background = BackgroundThread("clock-sink", self._run)
        self.reopens = 0

    def start(self) -> "ClockSink":
        self.background.start()
        return self

    def _run(self) -> None:
        period = self.blocksize / self.rate
        next_time = time.monotonic()
        while not self.background.stopping.is_set():
            next_time += period
            delay = next_time - time.monotonic()
            if delay > 0:
                self.background.wait(delay)
            elif delay < -1.0:
                next_time = time.monotonic()  # the machine stalled (suspend): do not burst
            self.ring.read_into(self._scratch)

    def close(self) -> None:
        self.background.stop()


def _sounddevice():
    try:
        import sounddevice
    except ImportError:
        raise Img2MusicError("sound output needs sounddevice: pip install 'img2music[live]' "
                             "(or run with --no-audio)") from None
    except OSError as exc:  # the wheel is there but the PortAudio library is not
        raise Img2MusicError(f"sound output needs PortAudio ({exc}); install libportaudio2 "
                             "or run with --no-audio") from None
    return sounddevice


def device_rate(device: str | int | None) -> int:
    """The output device's default sample rate (commonly 48000)."""
    sd = _sounddevice()
    try:
        info = sd.query_devices(device, "output")
    except (ValueError, sd.PortAudioError) as exc:
        raise Img2MusicError(f"no usable output device {device!r}: {exc}") from None
    return int(info["default_samplerate"])


class SoundDeviceSink:
    """The sound card: a callback that drains the ring; reopened when the stream dies."""

    def __init__(self, ring: RingBuffer, rate: int, device: str | int | None = None, blocksize: int = 1024,
                 dead_after: float = 2.0) -> None:
        self.sd = _sounddevice()
        self.ring, self.rate, self.device, self.blocksize = ring, rate, device, blocksize
        self.dead_after = dead_after
        self.channels = 1  # the device's, once opened (the music's are ring.channels)
        self._scratch = silence(max(blocksize, 16384), ring.channels)
        self._last_callback = time.monotonic()
        self.reopens = 0
        self.status_flags = 0  # callbacks where PortAudio reported a device under/overflow
        self.outages = 0
        """Times the sound output stopped (stream died, device or sound server gone)."""
        self.outage_seconds = 0.0
        """Seconds without sound output, over the outages that have ended."""
        self._outage_since: float | None = None  # last callback before the current outage
        self._opened_at = 0.0
        self.stream = None
        self.background = BackgroundThread("sound-watchdog", self._watch)
        """The watchdog that reopens a dead stream (:meth:`_watch`)."""

    def _callback(self, outdata, frames, time_info, status) -> None:
        # Audio thread: no allocation of audio buffers, no locks, nothing that can raise.
        if status:
            self.status_flags += 1
        block = self._scratch[:frames]  # (frames,) or (frames, C)
        self.ring.read_into(block)
        if block.ndim == 1:
            outdata[:] = block[:, None]  # mono music on every device channel
        elif outdata.shape[1] == block.shape[1]:
            outdata[:] = block
        else:  # stereo music on a mono device: the channels' mean, written in place
            np.mean(block, axis=1, out=outdata[:, 0])
        self._last_callback = time.monotonic()

    def _open(self) -> None:
        info = self.sd.query_devices(self.device, "output")
        self.channels = 2 if int(info["max_output_channels"]) >= 2 else 1
        self.stream = self.sd.OutputStream(
            samplerate=self.rate, blocksize=self.blocksize, device=self.device, channels=self.channels,
            dtype="float32", callback=self._callback)
        self.stream.start()
        self._last_callback = self._opened_at = time.monotonic()

    def start(self) -> "SoundDeviceSink":
        try:
            self._open()
        except (self.sd.PortAudioError, ValueError) as exc:
            raise Img2MusicError(f"cannot open output device {self.device!r}: {exc}") from None
        self.background.start()
        return self

    def _watch(self) -> None:
        delay = 0.5
        while not self.background.wait(0.25):
            stream = self.stream
            silent_for = time.monotonic() - self._last_callback
            if stream is not None and stream.active and silent_for < self.dead_after:
                delay = 0.5
                if self._outage_since is not None and self._last_callback > self._opened_at:
                    lasted = self._opened_at - self._outage_since
                    self.outage_seconds += lasted
                    self._outage_since = None
                    log.warning("sound output back after %.1f s", lasted)
                continue
            if self._outage_since is None:
                self._outage_since = self._last_callback
                self.outages += 1
                log.warning("audio stream died (active=%s, no callback for %.1f s); reopening",
                            getattr(stream, "active", None), silent_for)
            self._close_stream()
            try:
                self._open()
                self.reopens += 1
            except Exception as exc:
                log.info("reopening the audio device failed (%s); retry in %.1f s", exc, delay)
                self.background.wait(delay)
                delay = min(delay * 2, 2.0)  # cheap to try; the music is waiting

    def _close_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception as exc:
                log.debug("closing the stream failed: %s", exc)

    def close(self) -> None:
        self.background.stop()
        self._close_stream()
