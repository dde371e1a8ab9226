"""benchmarks/gpu_check.sh without a GPU: its plumbing (--dry-run: the tiny preset on the CPU
provider) and its wheelhouse handling. What it measures on a GPU is not proven here."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_runs_every_step(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    payload = os.urandom(300_000)  # a wheel that travelled in parts: joined again, byte for byte
    (wheelhouse / "big-1.0-py3-none-any.whl.part-aa").write_bytes(payload[:200_000])
    (wheelhouse / "big-1.0-py3-none-any.whl.part-ab").write_bytes(payload[200_000:])
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--wheelhouse", str(wheelhouse),
                           "--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (wheelhouse / "big-1.0-py3-none-any.whl").read_bytes() == payload
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["dry_run"] is True
    steps = results["steps"]
    assert set(steps) == {"machine", "build tiny fp16", "cuda graph parity", "decoder step latency", "end to end"}
    assert all(s["ok"] for s in steps.values()), {k: s.get("error") for k, s in steps.items()}
    assert steps["build tiny fp16"]["result"]["failures"] == []
    assert steps["cuda graph parity"]["result"]["equal"] is True
    latency = steps["decoder step latency"]["result"]["ort cpu"]
    assert set(latency) == {"16", "64"} and all(v["all_in_ms"] > 0 for v in latency.values())
    assert steps["end to end"]["result"]["audio_seconds"] == 1.0
    md = (out / "gpu_check.md").read_text()
    assert "dry run, CPU" in md and "| 16 |" in md


def test_a_missing_wheelhouse_is_one_clear_error(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--wheelhouse", str(tmp_path / "no"),
                           "--dry-run"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
