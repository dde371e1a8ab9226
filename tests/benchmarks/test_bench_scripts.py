"""The live benchmarks on the tiny bundle: each runs as a user would run it (real processes,
real sessions) and writes the figures its docstring promises."""

import json

import pytest


def test_bench_control_bursts_and_floods(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("websockets")
    from img2music.benchmarks import bench_control

    out = tmp_path / "control.json"
    assert bench_control.main(["--engines", str(tiny_bundle), "--modes", "baseline,bursts,changes,floods", "--runs", "1",
                               "--seconds", "12", "--header-clients", "3", "--ws-clients", "12",
                               "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    runs = {run["mode"]: run for run in r["runs"]}
    assert set(runs) == {"baseline", "bursts", "changes", "floods"} and all(run["exit"] == 0 for run in r["runs"])
    assert runs["changes"]["scenes"] == "202 202" and runs["changes"]["prompt"] == "202"  # spaced: all taken
    assert all(run["music_s"] == 12.0 for run in r["runs"])
    bursts = runs["bursts"]
    assert bursts["scene_burst"].get("202", 0) <= 3 and bursts["scene_burst"].get("429", 0) >= 97  # one a second
    assert bursts["prompt_burst"].get("202", 0) <= 3
    floods = runs["floods"]
    assert floods["ws_clients_connected"] == 12 and floods["ws_accepts_after"] is True
    assert floods["with_ws_clients"]["threads"] - floods["before"]["threads"] <= 3 * 8 + 2  # 8 clients at most
    assert floods["after_headers"]["rss_mb"] - floods["before"]["rss_mb"] < 15  # 3 x 6.4 MB never buffered
    assert set(r["added_over_baseline_s"]) == {"bursts", "changes", "floods"} and len(r["python_loop_s"]) == 2
    assert "added over the baseline" in capsys.readouterr().out


def test_bench_control_refuses_unknown_modes(tiny_bundle, capsys):
    from img2music.basics.errors import run_cli
    from img2music.benchmarks import bench_control

    assert run_cli(bench_control.main, ["--engines", str(tiny_bundle), "--modes", "bursts,storms"]) == 2
    assert "--modes: unknown storms" in capsys.readouterr().err


def test_bench_startup(tiny_bundle, tmp_path):
    from img2music.benchmarks import bench_startup

    out = tmp_path / "startup.json"
    assert bench_startup.main(["--engines", str(tiny_bundle), "--runs", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert len(r["first_audio_s"]) == 2 and 0 < r["median_s"] < 30 and r["p90_s"] >= r["median_s"]


def test_bench_encodec(tiny_bundle, tmp_path):
    from img2music.benchmarks import bench_encodec

    out = tmp_path / "encodec.json"
    assert bench_encodec.main(["--engines", str(tiny_bundle), "--chunks", "7,25", "--seconds", "2", "--rounds", "1",
                               "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    rows = r["ms_per_second"]
    assert len(rows) >= 2 and any("int8" in name for name in rows)  # as before, and each front it has now
    assert all(set(map(str, by)) == {"7", "25"} and all(ms > 0 for ms in by.values()) for by in rows.values())


def test_bench_step_overhead(capsys):
    from img2music.benchmarks import bench_step_overhead

    assert bench_step_overhead.main(["--steps", "50"]) == 0
    assert "per step outside the graph: median " in capsys.readouterr().out
