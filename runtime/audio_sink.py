"""Where live audio goes: a ring buffer drained by the sound card (or a clock), plus WAV.

- :class:`RingBuffer`: single producer (the playout thread), single consumer (the
  sound-card callback). Preallocated; the consumer side copies into the caller's
  buffer, zero-fills what is missing and counts it as an underflow. No locks: each
  side only advances its own counter, and under the GIL an int store is atomic.
- :class:`SoundDeviceSink`: a sounddevice ``OutputStream`` whose callback only reads
  the ring into preallocated scratch and broadcasts it to the device's channels: it
  never allocates audio buffers, blocks or raises. A watchdog reopens a stream that
  died (no callback for ``dead_after`` seconds, or inactive) with back-off.
- :class:`ClockSink`: ``--no-audio``: drains the ring at real time, so pacing,
  underflow counting and degradation behave exactly as with a sound card.
- :class:`Resampler`: model rate -> device rate with soxr's streaming resampler (no
  seams between chunks).

Recording (``--record``) goes through ``runtime.live_recording.LiveRecording``.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from basics.errors import Img2MusicError

log = logging.getLogger(__name__)


class RingBuffer:
    """Mono float32 ring of ``capacity`` samples."""

    def __init__(self, capacity: int) -> None:
        self.data = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.written = 0  # total samples written (producer only)
        self.consumed = 0  # total samples read (consumer only)
        self.underflows = 0  # reads that came up short
        self.underflow_samples = 0
        self.end_of_stream = False  # set by the producer after its last write

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
        """Fill ``out`` (1-D) from the ring; the shortfall is zeros and counted."""
        want = len(out)
        n = min(want, self.available())
        start = self.consumed % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self.data[start : start + first]
        out[first:n] = self.data[: n - first]
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
        self._scratch = np.zeros(blocksize, dtype=np.float32)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clock-sink", daemon=True)
        self.reopens = 0

    @property
    def thread(self):
        """The background thread (for the supervisor, runtime.thread_watch)."""
        return self._thread

    def start(self) -> "ClockSink":
        self._thread.start()
        return self

    def _run(self) -> None:
        period = self.blocksize / self.rate
        next_time = time.monotonic()
        while not self._stop.is_set():
            next_time += period
            delay = next_time - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:
                next_time = time.monotonic()  # the machine stalled (suspend): do not burst
            self.ring.read_into(self._scratch)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


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
        self.channels = 1
        self._scratch = np.zeros(max(blocksize, 16384), dtype=np.float32)
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
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="sound-watchdog", daemon=True)

    def _callback(self, outdata, frames, time_info, status) -> None:
        # Audio thread: no allocation of audio buffers, no locks, nothing that can raise.
        if status:
            self.status_flags += 1
        mono = self._scratch[:frames]
        self.ring.read_into(mono)
        outdata[:] = mono[:, None]
        self._last_callback = time.monotonic()

    def _open(self) -> None:
        info = self.sd.query_devices(self.device, "output")
        self.channels = 2 if int(info["max_output_channels"]) >= 2 else 1
        self.stream = self.sd.OutputStream(
            samplerate=self.rate, blocksize=self.blocksize, device=self.device, channels=self.channels,
            dtype="float32", callback=self._callback)
        self.stream.start()
        self._last_callback = self._opened_at = time.monotonic()

    @property
    def thread(self):
        """The background thread (for the supervisor, runtime.thread_watch)."""
        return self._watchdog

    def start(self) -> "SoundDeviceSink":
        try:
            self._open()
        except (self.sd.PortAudioError, ValueError) as exc:
            raise Img2MusicError(f"cannot open output device {self.device!r}: {exc}") from None
        self._watchdog.start()
        return self

    def _watch(self) -> None:
        delay = 0.5
        while not self._stop.wait(0.25):
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
                self._stop.wait(delay)
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
        self._stop.set()
        if self._watchdog.is_alive():
            self._watchdog.join(timeout=2)
        self._close_stream()


class Resampler:
    """Streaming model-rate -> device-rate conversion (soxr, high quality)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = None
        if in_rate != out_rate:
            try:
                import soxr
            except ImportError:
                raise Img2MusicError(f"resampling {in_rate} -> {out_rate} Hz needs soxr: "
                                     "pip install 'img2music[live]'") from None
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if self._stream is None:
            return audio
        return self._stream.resample_chunk(audio, last=last)
