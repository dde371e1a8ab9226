"""bench_live.py rtf on the tiny bundle: the decider's last line, its JSON and the
competing-load phases (the run is real; only the bundle is tiny)."""

import json
import re

from img2music.benchmarks import bench_live


def test_rtf_with_a_competing_load(tiny_bundle, tmp_path, capsys):
    out, metrics = tmp_path / "rtf.json", tmp_path / "m.jsonl"
    metrics.write_text('{"stale": "line from an earlier run"}\n')  # must not be read
    assert bench_live.main(["rtf", "--engines", str(tiny_bundle), "--seconds", "10", "--scene-seconds", "2",
                            "--load", "3:7", "--metrics", str(metrics), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = re.fullmatch(r"live/batch RTF ratio ([\d.]+); live RTF ([\d.]+); batch RTF ([\d.]+); "
                        r"silences (\d+); recoveries (\d+)", lines[-2])  # the machine line follows
    assert last, lines[-2]
    r = json.loads(out.read_text())["results"][0]
    assert float(last.group(1)) == r["ratio"] and float(last.group(2)) == r["live_rtf"]
    assert abs(r["ratio"] - r["live_rtf"] / r["batch_rtf"]) < 0.01
    assert sum(r["live_rtf_parts"].values()) > 0 and len(r["batch_rtfs"]) == 2 and len(r["python_loop_s"]) == 3
    assert r["silences"] == 0  # tiny is ~25x faster than real time, even at half speed
    load = r["load"]
    # timers on a busy host fire late, never early
    assert 2.9 < load["from_s"] < 4.5 and 6.9 < load["to_s"] < 8.5 and load["processes"] >= 1
    phases = {p["phase"]: p for p in load["phases"]}
    assert set(phases) == {"before", "during", "after"}, load
    # the claim: the music never stops (a short underflow under the load is the benchmark's to report)
    assert all(p["degrade_silences"] == 0 for p in phases.values())
    # paced by the clock sink while the load runs (before it the 1 s pre-roll is generated at once,
    # after it the run drains its buffer)
    assert 0.3 < phases["during"]["music_per_wall_s"] < 2.0 and phases["before"]["music_per_wall_s"] > 0.3
    assert any(w for p in phases.values() for w in p["windows_frames"])


def test_load_needs_start_before_stop(tiny_bundle, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        bench_live.main(["rtf", "--engines", str(tiny_bundle), "--load", "5:2", "--metrics", "m.jsonl"])
    assert e.value.code == 2 and "START < STOP" in capsys.readouterr().err


def test_soak_reports_the_ladder_and_memory(tiny_bundle, tmp_path, capsys):
    out, metrics = tmp_path / "soak.json", tmp_path / "soak.jsonl"
    assert bench_live.main(["soak", "--engines", str(tiny_bundle), "--seconds", "6", "--scene-seconds", "2",
                            "--noise", "0", "--metrics", str(metrics), "--out", str(out)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["music_s"] >= 6.0 and r["wall_s"] > 5 and r["rss_max_mb"] > 0
    assert r["degrade_silences"] == 0 and r["underflows"] == 0 and r["windows_frames"]
    # clean cuts every 2 s (timed from the source's start, so a slow start-up sees one more), no
    # changes out of noise
    assert 1 <= r["scene_changes"] <= 4
    assert "recoveries" in capsys.readouterr().out


def test_latency_runs_whole_on_tiny(tiny_bundle, tmp_path, capsys):
    """bench_live.py latency, the whole command (its transition costs crashed once on the
    (conditioning, mask, weight) triples the blend takes)."""
    out = tmp_path / "latency.json"
    assert bench_live.main(["latency", "--engines", str(tiny_bundle), "--switches", "2", "--switch-every", "3",
                            "--out", str(out)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["detected"] >= 1 and r["latency_median_s"] > 0
    assert r["blend_step_ms"] > 0 and r["reprime_step_ms"] > 0
    assert "scene change -> first changed sample out" in capsys.readouterr().out
