"""training/build_dataset.py --ray: the tiny dataset built on a local Ray cluster (2 workers),
with one worker SIGKILLed mid-step, equals the in-process build; nothing is written twice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from img2music.training.dataset_store import TENSORS, load_index, load_split

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # ~3.5 min of Ray actors loading models on 2 cores: `make test-all`


def _parts(out: Path, step: str) -> list[dict]:
    index = out / "cache" / step / "parts.jsonl"
    return [json.loads(line) for line in index.read_text().splitlines()] if index.exists() else []


@pytest.fixture(scope="module")
def ray_build(tmp_path_factory, photo_manifest, ray_address):
    """The CLI on the Ray cluster with the tiny fixture's settings; the first worker seen
    while the first step (clip) is unfinished is SIGKILLed (Ray Data may retire a step's
    actors before the driver has written their results, so the kill waits for no output)."""
    out = tmp_path_factory.mktemp("phase1-ray") / "data"
    cmd = [sys.executable, "training/build_dataset.py", "--input", str(photo_manifest), "--out", str(out),
           "--preset", "tiny", "--captioner", "tiny", "--llm", "tiny", "--batch-size", "8", "--t5-tokens", "16",
           "--audio-seconds", "1", "--generate-codes", "0.5", "--ray", ray_address, "--ray-workers", "2"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    killed, seen = None, ""
    deadline = time.monotonic() + 600
    while proc.poll() is None and killed is None and time.monotonic() < deadline:
        written = sum(len(part["ids"]) for part in _parts(out, "clip"))
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        workers = [line.split()[0] for line in ps.splitlines() if "StepWorker" in line]
        seen = seen or "\n".join(line for line in ps.splitlines() if "ray::" in line)
        if workers and written < 48:
            os.kill(int(workers[0]), signal.SIGKILL)
            killed = (int(workers[0]), written)
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=900)
    return proc.returncode, stdout, stderr, out, killed, seen, time.perf_counter() - start


def test_the_ray_build_survives_a_killed_worker(ray_build):
    code, stdout, stderr, out, killed, seen, _ = ray_build
    assert code == 0, stderr
    assert killed is not None, f"no worker was killed while the clip step ran; Ray processes seen:\n{seen}"
    assert killed[1] < 48  # clip embeddings written when the worker died (of 48)
    assert "dataset written" in stdout
    for step in ("clip", "captions", "directives", "t5", "codes"):
        ids = [i for part in _parts(out, step) for i in part["ids"]]
        assert len(ids) == 48 and len(set(ids)) == 48, step  # every item once: nothing written twice


def test_ray_build_equals_the_in_process_build(ray_build, tiny_dataset):
    out = ray_build[3]
    info_ray, items_ray = load_index(out)
    info, items = load_index(tiny_dataset)
    assert {k: v for k, v in info_ray.items() if k != "preset"} == {k: v for k, v in info.items() if k != "preset"}
    assert items_ray == items  # ids, captions, directives, splits, shards and rows
    for split in ("train", "val", "test"):
        ours, theirs = load_split(out, split), load_split(tiny_dataset, split)
        for key in TENSORS:
            if ours[key].dtype.kind == "f":  # one torch thread per Ray worker, two here: rounding only
                np.testing.assert_allclose(ours[key], theirs[key], atol=1e-5, err_msg=f"{split}/{key}")
            else:
                np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{split}/{key}")


def test_a_finished_ray_build_is_not_redone(ray_build, photo_manifest, ray_address):
    out = ray_build[3]
    steps = ("clip", "captions", "directives", "t5", "codes")
    parts_before = {step: len(_parts(out, step)) for step in steps}
    r = subprocess.run([sys.executable, "training/build_dataset.py", "--input", str(photo_manifest), "--out", str(out),
                        "--preset", "tiny", "--captioner", "tiny", "--llm", "tiny", "--batch-size", "8",
                        "--t5-tokens", "16", "--audio-seconds", "1", "--generate-codes", "0.5", "--ray", ray_address],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert all(f"{step}: 48 items, 48 cached, 0 to do" in r.stdout for step in steps)
    assert {step: len(_parts(out, step)) for step in steps} == parts_before
