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
    assert steps["cuda graph parity"]["result"]["agreement"] == {"greedy": 1.0, "sampled": 1.0}
    latency = steps["decoder step latency"]["result"]
    assert set(latency) == {"16", "64"} and all(v["all_in_ms"] > 0 for v in latency.values())
    assert steps["cuda graph parity"]["result"]["graph_layout_used"] is True
    assert steps["end to end"]["result"]["audio_seconds"] == 1.0
    md = (out / "gpu_check.md").read_text()
    assert "dry run, CPU" in md and "| 16 |" in md


def test_a_missing_wheelhouse_is_one_clear_error(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--wheelhouse", str(tmp_path / "no"),
                           "--dry-run"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr


def test_the_dry_run_parity_can_fail(tiny_fp16_bundle, monkeypatch):
    """The dry run's parity compares the CUDA-graph layout (on the CPU provider) with plain runs:
    a layout that went wrong is caught, not compared with itself."""
    import pytest

    from img2music.basics.errors import Img2MusicError
    from img2music.benchmarks.gpu_check import graph_parity
    from img2music.runtime.backends.ort_decoder import OrtDecoderSession

    real = OrtDecoderSession.prefill

    def wrong(self, tokens):  # a prefill of the layout that loses the last prompt token
        return real(self, tokens[:, :, :-1]) if self.graph_layout and tokens.shape[2] > 1 else real(self, tokens)

    monkeypatch.setattr(OrtDecoderSession, "prefill", wrong)
    with pytest.raises(Img2MusicError, match="tokens differ"):
        graph_parity(tiny_fp16_bundle, "cpu", frames=60)


def test_steps_skip_with_their_reason_and_within_the_budget(tmp_path, monkeypatch):
    """No TensorRT library: skipped, whatever get_available_providers lists; a step whose
    estimate does not fit the time left: skipped; the results are on disk after each step."""
    import onnxruntime

    from img2music.benchmarks import gpu_check

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "libnvinfer.so.10" in gpu_check.tensorrt_missing()
    check = gpu_check.Check(tmp_path, budget_s=30, dry_run=False)
    check.run(gpu_check.Step("cheap", lambda: {"x": 1}, 1))
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["steps"]["cheap"]["ok"] is True
    check.run(gpu_check.Step("costly", lambda: {"x": 2}, 60))
    check.run(gpu_check.Step("tensorrt", lambda: {"x": 3}, 1, gpu_check.tensorrt_missing))
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert steps["costly"]["ok"] is None and steps["costly"]["skipped"].startswith("budget: needs ~60 s")
    assert steps["tensorrt"]["ok"] is None and "libnvinfer.so.10" in steps["tensorrt"]["skipped"]
    assert "| costly | skipped |" in (tmp_path / "gpu_check.md").read_text()


def test_the_plan_carries_the_wheelhouse_in_parts_that_fit(tmp_path, monkeypatch):
    from img2music.benchmarks import gpu_plan

    wheelhouse = ROOT / "wheelhouse" / "plan-test"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    try:
        for name, mib in (("onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl.part-aa", 50),
                          ("onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl.part-ab", 50),
                          ("soundfile-0.14.0-py2.py3-none-any.whl", 1)):
            with open(wheelhouse / name, "wb") as f:
                f.truncate(mib * 2**20)
        monkeypatch.setattr(gpu_plan, "tree_bytes", lambda root: 5 * 2**20)
        calls = gpu_plan.calls(ROOT, wheelhouse, 480, 560)
    finally:
        import shutil

        shutil.rmtree(wheelhouse)
    assert [len(c["carry"]) for c in calls] == [1, 2] and all(c["travels_mib"] <= 64 for c in calls)
    assert "gpu_check.sh --wheelhouse wheelhouse/plan-test" in calls[-1]["command"]
    assert calls[0]["command"].startswith("ls -l")
