"""generate.py --manifest: a batch of photographs and prompts to WAVs + an index, resumable,
in one process and on a local Ray cluster (the same music), with a worker killed mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, photo_files):
    """Eight skimage photographs (one with a prompt, weight 2) and a prompt alone."""
    folder = tmp_path_factory.mktemp("batch")
    rows = [{"image": path} for name, path in photo_files.items() if name != "page"]
    rows.append({"image": photo_files["page"], "text": "slow jazz piano", "prompt_weight": 2, "id": "page-jazz"})
    rows.append({"text": "fast techno drums"})
    path = folder / "pictures.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _generate(bundle, manifest, out, *extra, seconds=2):
    cmd = [sys.executable, "runtime/generate.py", "--engines", str(bundle), "--manifest", str(manifest), "--out",
           str(out), "--seconds", str(seconds), "--threads", "1", "--no-progress", *extra]
    return cmd


def _index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def in_process(tiny_bundle, manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("in-process")
    r = subprocess.run(_generate(tiny_bundle, manifest, out), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_every_row_becomes_a_wav_and_an_index_line(in_process):
    out, stdout = in_process
    assert "9 pieces made, 0 already in" in stdout
    index = _index(out)
    ids = [r["id"] for r in index]
    assert sorted(ids) == sorted(["astronaut", "coffee", "chelsea", "rocket", "camera", "logo", "colorwheel",
                                  "page-jazz", "prompt-9"])
    for record in index:
        audio, rate = soundfile.read(out / record["wav"])
        assert rate == 32000 and len(audio) == 64000 and record["seconds"] == 2.0
        assert np.abs(audio).max() > 0
    jazz = next(r for r in index if r["id"] == "page-jazz")
    assert jazz["prompt"] == "slow jazz piano" and jazz["prompt_weight"] == 2.0 and jazz["directive"]
    alone = next(r for r in index if r["id"] == "prompt-9")
    assert alone["image"] is None and alone["directive"] is None
    assert len({r["seed"] for r in index}) == 9  # each item its own seed


def test_a_rerun_resumes(in_process, tiny_bundle, manifest):
    out, _ = in_process
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    r = subprocess.run(_generate(tiny_bundle, manifest, out), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "0 pieces made, 9 already in" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.wav")} == before


def test_ray_makes_the_same_music(in_process, tiny_bundle, manifest, ray_address, tmp_path):
    """Two Ray workers, each with the bundle loaded once, against the single process: every
    WAV equal sample for sample (seeds fixed by item, one onnxruntime thread each)."""
    out, _ = in_process
    r = subprocess.run(_generate(tiny_bundle, manifest, tmp_path, "--ray", ray_address, "--ray-workers", "2"),
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "9 pieces made" in r.stdout
    ours = {rec["id"]: rec for rec in _index(tmp_path)}
    theirs = {rec["id"]: rec for rec in _index(out)}
    assert ours.keys() == theirs.keys()
    for item_id, record in ours.items():
        assert {k: v for k, v in record.items()} == theirs[item_id]
        a, _ = soundfile.read(tmp_path / record["wav"])
        b, _ = soundfile.read(out / record["wav"])
        np.testing.assert_array_equal(a, b)


def test_a_killed_ray_worker_changes_nothing(tiny_bundle, manifest, ray_address, tmp_path):
    """SIGKILL one worker while the batch runs: Ray restarts it and retries its piece; every
    item ends up in the index exactly once with a whole WAV."""
    proc = subprocess.Popen(_generate(tiny_bundle, manifest, tmp_path, "--ray", ray_address, "--ray-workers", "2",
                                      seconds=12), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    killed, lines_then = None, None
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline and killed is None:
        index = tmp_path / "index.jsonl"
        lines = len(index.read_text().splitlines()) if index.exists() else 0
        if lines >= 1:
            pids = subprocess.run(["pgrep", "-f", r"MapBatches\(RayPieceMaker\)"], capture_output=True,
                                  text=True).stdout.split()
            if pids:
                os.kill(int(pids[0]), signal.SIGKILL)
                killed, lines_then = int(pids[0]), lines
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert killed is not None and lines_then < 9, "no worker was killed while the batch ran"
    index = _index(tmp_path)
    assert sorted(r["id"] for r in index) == sorted(set(r["id"] for r in index)) and len(index) == 9
    for record in index:
        assert soundfile.info(str(tmp_path / record["wav"])).frames == 12 * 32000
    assert not list(tmp_path.glob(".*.part.wav"))


def test_a_bad_item_is_reported_and_retried(tiny_bundle, manifest, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:2] + [{"image": str(broken)}]
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    r = subprocess.run(_generate(tiny_bundle, m, out), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "2 pieces made" in r.stdout and "broken:" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 items failed")
    assert len(_index(out)) == 2
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(broken, format="JPEG")
    r = subprocess.run(_generate(tiny_bundle, m, out), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "1 pieces made, 2 already in" in r.stdout


@pytest.mark.parametrize("rows,extra,expected", [
    ([{"id": "x"}], [], "row 1 has neither an image nor a text"),
    ([{"text": "a", "id": "same"}, {"text": "b", "id": "same"}], [], "id 'same' repeats"),
    ([{"text": "a", "prompt_weight": 2}], [], "a prompt_weight needs both an image and a text"),
    ([{"text": "a", "image": "IMG", "prompt_weight": 11}], [], "the prompt weight must be a number in [0, 10]"),
    ([{"image": "missing.jpg"}], [], "image file not found"),
    ([{"text": "a"}], ["--image", "IMG"], "leave out --image / --prompt"),
    ([{"text": "a"}], ["--gpus-per-worker", "1"], "--gpus-per-worker must be >= 0, and > 0 only with"),
])
def test_bad_batches_are_one_clear_error(rows, extra, expected, tiny_bundle, photo_files, tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps({k: photo_files["coffee"] if v == "IMG" else v for k, v in row.items()}) + "\n"
                         for row in rows))
    extra = [photo_files["coffee"] if a == "IMG" else a for a in extra]
    r = subprocess.run(_generate(tiny_bundle, m, tmp_path / "out", *extra), capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_ray_needs_a_manifest_and_a_manifest_needs_a_bundle(tiny_bundle, manifest, tmp_path):
    for cmd, expected in (
        ([sys.executable, "runtime/generate.py", "--engines", str(tiny_bundle), "--ray"], "--ray runs a --manifest"),
        ([sys.executable, "runtime/generate.py", "--preset", "tiny", "--manifest", str(manifest)],
         "--manifest runs an engine bundle"),
    ):
        r = subprocess.run(cmd + ["--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), r.stderr
