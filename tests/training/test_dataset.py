"""Phase I on 48 real photographs with tiny BLIP-2 / Llama / MusicGen: every step runs,
an interrupted build resumes without redoing work and ends identical to a clean one."""

import json

import numpy as np
import pytest

from img2music.basics.errors import Img2MusicError
from img2music.training.dataset_builder import BatchLimit, Builder
from img2music.training.dataset_input import read_items, stratified_split
from img2music.training.dataset_store import TENSORS, load_index, load_split
from tests.training.conftest import EMOTIONS, CountingBuilder, _config


def test_phase1_builds_every_step(tiny_dataset):
    info, items = load_index(tiny_dataset)
    assert len(items) == 48 and info["format"] == 1 and info["captioner"] == "tiny"
    assert sum(info["splits"].values()) == 48 and info["splits"]["train"] >= 36
    assert {it["caption_source"] for it in items} == {"manifest", "captioner"}
    assert all(it["directive"] is not None for it in items)
    train = load_split(tiny_dataset, "train")
    assert set(train) == set(TENSORS)
    assert train["clip_embeds"].shape[1] == 16 and train["t5_hidden"].shape[1:] == (16, 32)
    assert train["audio_codes"].shape[1:] == (4, 50)
    paired = [it for it in items if it["audio"]]
    assert len(paired) == 12
    # paired audio: a 1 s tone -> 50 real frames; no audio: 0.5 s generated from the target
    masks = {tuple(m) for split in ("train", "val", "test") for m in load_split(tiny_dataset, split)["audio_mask"].sum(1, keepdims=True)}
    assert masks == {(50,), (25,)}
    # stratified: every emotion in every split; no picture in two splits
    for split in ("train", "val", "test"):
        assert {it["emotion"] for it in items if it["split"] == split} == set(EMOTIONS)


def test_interrupted_build_resumes_without_redoing_work(tmp_path, photo_manifest, tiny_dataset, tiny_models):
    out = tmp_path / "resumed"
    counts = {}
    first = CountingBuilder(_config(photo_manifest, out, limit_batches=5), report=lambda s: None, counts=counts)
    first._models = tiny_models
    with pytest.raises(BatchLimit):
        first.build()
    assert counts == {"clip": 40}  # 5 batches of 8, then "interrupted"
    lines = []
    second = CountingBuilder(_config(photo_manifest, out), report=lines.append, counts=counts)
    second._models = tiny_models
    second.build()
    assert "clip: 48 items, 40 cached, 8 to do" in lines
    assert counts == {step: 48 for step in ("clip", "captions", "directives", "t5", "codes")}  # each item once
    again = CountingBuilder(_config(photo_manifest, out), report=lambda s: None, counts={})
    again._models = tiny_models
    again.build()
    assert again.counts == {}  # a finished build re-run does nothing but rewrite the shards
    # identical to the uninterrupted build
    assert (out / "index.jsonl").read_text() == (tiny_dataset / "index.jsonl").read_text()
    for split in ("train", "val", "test"):
        a, b = load_split(out, split), load_split(tiny_dataset, split)
        for key in TENSORS:
            np.testing.assert_array_equal(a[key], b[key])


def test_no_llm_ablation_uses_the_caption(tmp_path, photo_manifest, tiny_models):
    builder = Builder(_config(photo_manifest, tmp_path / "blip-only", no_llm=True, generate_codes=0.0),
                      report=lambda s: None)
    builder._models = tiny_models
    builder.build()
    info, items = load_index(tmp_path / "blip-only")
    assert info["llm"] is None and all(it["directive"] == it["caption"] for it in items)


def test_split_keeps_one_picture_in_one_split(tmp_path, photo_manifest):
    rows = [json.loads(line) for line in photo_manifest.read_text().splitlines()]
    # the same picture listed twice (two soundtracks): both rows must land together
    doubled = rows + [dict(rows[0], text="another soundtrack")]
    manifest = photo_manifest.parent / "doubled.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in doubled))
    items = read_items(str(manifest))
    splits = stratified_split(items, seed=0)
    assert splits[0] == splits[-1]
    assert splits == stratified_split(items, seed=0)  # deterministic
    assert splits != stratified_split(items, seed=1)


@pytest.mark.parametrize("content, message", [
    ('{"audio": "x.wav"}\n', "has no image"),
    ('{"image": "missing.jpg"}\n', "image file not found"),
    ("not json\n", "is not JSON"),
])
def test_bad_manifests_are_refused(tmp_path, content, message):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(content)
    with pytest.raises(Img2MusicError, match=message):
        read_items(str(manifest))


def test_cli_stops_and_resumes(tmp_path, photo_manifest):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "training/build_dataset.py", "--input", str(photo_manifest), "--out", str(tmp_path / "d"),
           "--preset", "tiny", "--captioner", "tiny", "--llm", "tiny", "--batch-size", "16", "--audio-seconds", "1"]
    r = subprocess.run(cmd + ["--limit-batches", "2"], capture_output=True, text=True, cwd=root)
    assert r.returncode == 3 and "run the same command again to resume" in r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "clip: 48 items, 32 cached, 16 to do" in r.stdout and "dataset written" in r.stdout
    r = subprocess.run(cmd[:2] + ["--input", str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 2 and r.stderr.startswith("error: input not found")
