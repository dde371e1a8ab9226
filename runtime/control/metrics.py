"""What ``/metrics`` serves: the reporter's per-second snapshot as Prometheus metrics.

One source of truth: the same snapshot as the status line and the JSON-lines metrics, plus the
client library's ``process_*`` metrics (RSS, CPU seconds, open files) and the decoder-step
histogram. A scrape is rendered at most once a second (:class:`ScrapeCache`): a client asking
600 times a second costs what one does.
"""

from __future__ import annotations

import threading
import time

from img2music.basics.errors import Img2MusicError


def _prometheus():
    try:
        import prometheus_client
    except ImportError:
        raise Img2MusicError("--http needs prometheus_client: pip install 'img2music[live]'") from None
    return prometheus_client


COUNTERS = {  # snapshot key -> (metric name without _total, help)
    "music_s": ("img2music_music_seconds", "Seconds of music generated"),
    "underflows": ("img2music_underflows", "Sound-card reads that found the buffer short"),
    "underflow_s": ("img2music_underflow_seconds", "Seconds of silence from buffer underflows"),
    "sink_outages": ("img2music_sound_output_outages", "Times the sound output went away"),
    "sink_outage_s": ("img2music_sound_output_outage_seconds", "Seconds without sound output (ended outages)"),
    "reconnects": ("img2music_source_reconnects", "Times the frame source was reopened"),
    "open_failures": ("img2music_source_open_failures", "Failed attempts to open the frame source"),
    "scene_changes": ("img2music_scene_changes", "Scene changes"),
    "frames": ("img2music_source_frames", "Frames read from the source"),
    "recorded_s": ("img2music_recorded_seconds", "Seconds of music recorded"),
    "record_lost_s": ("img2music_record_lost_seconds", "Seconds of music not recorded (disk full)"),
    "paused_s": ("img2music_paused_seconds", "Seconds of silence written while paused"),
    "degrade_fill_s": ("img2music_degrade_fill_seconds", "Seconds of repeated audio the playout ladder inserted"),
    "degrade_silence_s": ("img2music_degrade_silence_seconds", "Seconds of silence the playout ladder inserted"),
    "bundle_reloads": ("img2music_bundle_reloads", "Bundles swapped in while running"),
    "bundle_reload_failures": ("img2music_bundle_reload_failures", "Bundle reloads that failed (the old one played on)"),
}
GAUGES = {
    "buffer_s": ("img2music_buffer_seconds", "Seconds of audio buffered ahead of the sound card"),
    "rtf": ("img2music_real_time_factor", "Compute seconds per second of music (under 1 keeps up)"),
    "frame_age_s": ("img2music_frame_age_seconds", "Age of the newest frame"),
    "degrade_level": ("img2music_degrade_level", "Playout ladder: 0 normal, 1 cheaper, 2 repeat, 3 silence"),
    "first_audio_s": ("img2music_time_to_first_audio_seconds", "Seconds from start to the first audio out"),
    "uptime_s": ("img2music_uptime_seconds", "Seconds since the live run started"),
    "paused": ("img2music_paused", "1 while paused (silence on purpose, no decoder), 0 while playing or fading"),
}
DEGRADE_STEPS = ("cheaper", "repeats", "silences")
SOURCE_STATES = ("waiting", "open failed", "stalled", "streaming")


class LiveCollector:
    """A prometheus_client collector over the reporter's newest snapshot."""

    def __init__(self, reporter, provider: str = "cpu", control=None, refusals=None) -> None:
        self.reporter, self.provider, self.control = reporter, provider, control
        self.refusals = refusals
        """() -> {reason: count} of refused requests (the servers'), or None."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        s = self.reporter.last or {}
        for key, (name, text) in COUNTERS.items():
            if s.get(key) is not None:
                yield CounterMetricFamily(name, text, value=float(s[key]))
        for key, (name, text) in GAUGES.items():
            if s.get(key) is not None:
                yield GaugeMetricFamily(name, text, value=float(s[key]))
        steps = CounterMetricFamily("img2music_degrade_steps", "Playout ladder steps taken", labels=["step"])
        for step in DEGRADE_STEPS:
            steps.add_metric([step], float(s.get(f"degrade_{step}", 0)))
        yield steps
        state = s.get("source_state", "")
        source = GaugeMetricFamily("img2music_source_state", "1 for the frame source's current state",
                                   labels=["state"])
        for name in SOURCE_STATES:
            source.add_metric([name], 1.0 if state.startswith(name) else 0.0)
        yield source
        if self.control is not None:
            changes = CounterMetricFamily("img2music_control_changes", "Accepted control changes", labels=["field"])
            for name, count in self.control.settings()["changes"].items():
                changes.add_metric([name], float(count))
            yield changes
        if self.refusals is not None:
            refused = CounterMetricFamily("img2music_requests_refused", "Requests refused by the control surface",
                                          labels=["reason"])
            for reason, count in sorted(self.refusals().items()):
                refused.add_metric([reason], float(count))
            yield refused
        build = self.reporter.build
        yield InfoMetricFamily("img2music_build", "Version, bundle, precision and provider", value={
            "version": build.get("version", ""), "bundle": build.get("bundle", ""),
            "precision": build.get("precision", ""), "provider": self.provider})


STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def step_latency_histogram():
    """The decoder-step latency histogram: observed by the live engine after every decoder pass,
    served on ``/metrics`` (made before both, so neither is patched into the other)."""
    return _prometheus().Histogram("img2music_decoder_step_seconds", "One decoder pass with guidance and sampling",
                                   registry=None, buckets=STEP_BUCKETS)


class ScrapeCache:
    """The rendered ``/metrics`` text, kept for ``seconds``: the snapshot under it changes once a second."""

    def __init__(self, registry, seconds: float = 1.0, clock=time.monotonic) -> None:
        self.registry, self.seconds, self.clock = registry, seconds, clock
        self._text, self._at = b"", float("-inf")
        self._lock = threading.Lock()
        self.renders = 0

    def text(self) -> bytes:
        with self._lock:
            now = self.clock()
            if now - self._at >= self.seconds:
                self._text, self._at = _prometheus().generate_latest(self.registry), now
                self.renders += 1
            return self._text
