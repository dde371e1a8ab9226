"""The fault soak's report: RSS slope, gaps between metrics lines, recordings read back
with the strict ``wave`` module, native lines on stderr (on made-up inputs with known answers)."""

import json
import wave

import numpy as np

from img2music.benchmarks.fault_soak import metrics_report, recording_report, stderr_report


def test_metrics_report_slope_and_gaps(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = []
    for t in range(0, 3600, 1):
        if 1000 <= t < 1004:
            continue  # a 5 s gap between two lines
        rows.append({"uptime_s": float(t), "rss_mb": 100.0 + 2.0 * t / 3600, "music_s": t, "underflows": 0})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = metrics_report(path)
    assert report["metrics_lines"] == 3596 and report["max_metrics_gap_s"] == 5.0
    assert abs(report["rss_slope_mb_per_h"] - 2.0) < 0.01
    assert report["final"]["music_s"] == 3599 and report["final"]["record_state"] is None


def test_recording_report_reads_every_file_strictly(tmp_path):
    with wave.open(str(tmp_path / "room.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(32000)
        w.writeframes(np.zeros(64000, np.int16).tobytes())
    (tmp_path / "room.1.wav").write_bytes(b"RIFF\0\0\0\0WAVE")  # a header cut short
    files = {f["file"]: f for f in recording_report(tmp_path)["recordings"]}
    assert files["room.wav"] == {"file": "room.wav", "seconds": 2.0, "wave_reads_all": True}
    assert "wave_error" in files["room.1.wav"]


def test_stderr_report_counts_native_lines_and_tracebacks(tmp_path):
    path = tmp_path / "err"
    path.write_text("ok line\nALSA lib pulse.c:242:(pulse_connect) refused\nTraceback (most recent call last):\n"
                    "Expression 'ret' failed in 'src/hostapi/alsa/pa_linux_alsa.c', line: 1736\n")
    report = stderr_report(path)
    assert (report["stderr_lines"], report["native_lines"], report["tracebacks"]) == (4, 2, 1)
