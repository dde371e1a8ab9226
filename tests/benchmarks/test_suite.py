"""The benchmark suite on the tiny bundle: fast, complete, schema-valid, with a chart."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def suite_output(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--bundle", str(tiny_bundle), "--baseline", "torch",
         "--text-pipeline", "tiny", "--out", str(out), "--repeats", "3", "--e2e-repeats", "1",
         "--rtf-seconds", "2,4", "--reprime-steps", "40", "--positions", "16,256,1500"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    return proc, out, time.perf_counter() - start


def test_suite_runs_and_prints_its_table(suite_output):
    proc, out, seconds = suite_output
    assert proc.returncode == 0, proc.stderr
    print(f"\ntiny suite: {seconds:.0f} s")  # its speed is the benchmarks' business, not a pass/fail test's
    assert "| stage |" in proc.stdout


def test_json_is_valid_and_complete(suite_output):
    _, out, _ = suite_output
    results = json.loads((out / "results.json").read_text())
    schema = json.loads((ROOT / "benchmarks" / "results_schema.json").read_text())
    jsonschema.validate(results, schema)
    assert set(results["backends"]) == {"transformers-eager", "ort-fp32"}
    for backend in results["backends"].values():
        for stage in results["stage_names"]:
            timing = backend["stages"][stage]
            assert timing["median_ms"] > 0 and timing["p90_ms"] >= timing["median_ms"] >= timing["min_ms"]
        assert all(r and r["rtf"] > 0 for r in backend["rtf"].values())
        assert backend["peak_rss_mb"] > 0
    assert "decoder_step@1500" in results["stage_names"]
    ort = results["backends"]["ort-fp32"]
    assert ort["ratio_vs_reference"]["time_to_first_audio"] > 0
    comp = results["thesis_comparison"]
    assert comp["text_mediated_seconds"] > comp["musicgen_seconds"] > 0
    assert set(results["text_pipeline"]["stages"]) == {"captioner", "llm", "t5"}
    assert results["machine"]["cpu"] and results["machine"]["cores_available"] >= 1


def test_markdown_and_chart_written(suite_output):
    _, out, _ = suite_output
    md = (out / "results.md").read_text()
    assert "decoder_step@16" in md and "real-time factor" in md and "text-mediated" in md
    png = (out / "stages.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_schema_rejects_a_missing_stage_number(suite_output):
    _, out, _ = suite_output
    results = json.loads((out / "results.json").read_text())
    del results["backends"]["ort-fp32"]["stages"]["clip_vision"]["median_ms"]
    schema = json.loads((ROOT / "benchmarks" / "results_schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(results, schema)


def test_bad_arguments_fail_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--bundle", str(tmp_path),
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0 and "not an engine bundle" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("target, args, why", [("os:_exit", (3,), "exit code 3"),
                                               ("os:abort", (), "killed by signal 6")])
def test_a_child_that_dies_fails_the_suite_instead_of_hanging(target, args, why):
    from img2music.basics.errors import Img2MusicError
    from img2music.benchmarks.run import run_isolated

    outcome = []

    def run():
        try:
            run_isolated(target, *args)
        except Img2MusicError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)  # the old suite waited on the child's queue forever
    assert not thread.is_alive(), "run_isolated hangs on a dead child"
    assert outcome and f"died without a result ({why}" in outcome[0], outcome
