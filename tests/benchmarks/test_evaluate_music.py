"""benchmarks/evaluate_music.py end to end with tiny random models: six skimage photographs,
the reference, the fp32 bundle and the int4 bundle; then the text kinds and the bad inputs."""

import json

import numpy as np
import pytest

from img2music.basics.errors import run_cli
from img2music.benchmarks import music_metrics as mm
from img2music.benchmarks.evaluate_music import main

INT4 = pytest.mark.parametrize("tiny_quantized_bundle", ["int4"], indirect=True)
"""The int4 bundle of the shared tiny bundles (tests/conftest.py)."""

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "colorwheel")
TEXTS = ("slow contemplative cello solo, warm pads", "bright acoustic folk with fingerpicked guitar",
         "epic orchestral score with brass and timpani", "fast techno drums, 130 BPM",
         "calm ambient drone with soft synth pads", "playful jazz piano trio")
METRICS = ("fad_clap", "fad_encodec", "kl", "clap_text", "clap_image", "imsm", "cosine", "mae")
TINY_METERS = ["--clip", "tiny", "--clap", "tiny", "--classifier", "tiny", "--encodec", "tiny"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, photo_files):
    """Six photographs with texts; the first four with reference audio (tones in noise)."""
    import soundfile

    folder = tmp_path_factory.mktemp("melbench")
    rows = []
    for i, name in enumerate(NAMES):
        row = {"id": name, "image": photo_files[name], "text": TEXTS[i]}
        if i < 4:
            t = np.arange(64000) / 32000
            tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.05 * np.random.default_rng(i).normal(size=t.size)
            soundfile.write(folder / f"{name}.wav", tone.astype(np.float32), 32000)
            row["audio"] = f"{name}.wav"  # relative to the manifest
        rows.append(row)
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _argv(manifest, out, systems, *extra):
    argv = ["--manifest", str(manifest), "--out", str(out), "--seconds", "2", "--greedy", "--no-progress",
            *TINY_METERS]
    for s in systems:
        argv += ["--system", s]
    return argv + list(extra)


@pytest.fixture(scope="module")
def three_systems(manifest, tiny_bundle, tiny_quantized_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    systems = ["reference=reference:tiny", f"fp32=bundle:{tiny_bundle}", f"int4=bundle:{tiny_quantized_bundle}"]
    argv = _argv(manifest, out, systems, "--fad-model", "clap", "--fad-model", "encodec")
    code = run_cli(main, argv)
    return code, out, argv


@INT4
def test_every_metric_for_every_system(three_systems):
    code, out, _ = three_systems
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in result["systems"]] == ["reference", "fp32", "int4"]
    assert result["items"] == 6 and result["reference_audio"] == 4
    for system in result["systems"]:
        m = system["metrics"]
        assert set(METRICS) <= set(m), system["name"]
        assert all(np.isfinite(m[k]) for k in METRICS)
        assert 0.0 <= m["imsm"] <= 1.0 and -1.0 <= m["clap_text"] <= 1.0 and -1.0 <= m["clap_image"] <= 1.0
        assert m["fad_clap"] >= 0 and m["fad_encodec"] >= 0 and m["kl"] >= 0
        assert len(system["per_item"]["imsm"]) == 6
        assert system["per_item"]["kl"][4:] == [None, None]  # no reference audio there


@INT4
def test_fp32_bundle_scores_what_the_reference_scores(three_systems):
    """Greedy decoding: the bundle's tokens equal transformers', so every score agrees; the
    int4 bundle makes other music (not a copy of the same files)."""
    _, out, _ = three_systems
    rows = {s["name"]: s for s in json.loads((out / "results.json").read_text())["systems"]}
    for key in ("imsm", "clap_image", "clap_text", "cosine", "mae"):
        np.testing.assert_allclose(rows["fp32"]["per_item"][key], rows["reference"]["per_item"][key], atol=2e-4)
    import soundfile

    fp32, _ = soundfile.read(out / "audio" / "fp32" / "astronaut.wav")
    int4, _ = soundfile.read(out / "audio" / "int4" / "astronaut.wav")
    assert len(fp32) == len(int4) == 64000 and np.abs(fp32 - int4).max() > 1e-3


@INT4
def test_fad_and_kl_follow_from_the_cached_embeddings(three_systems):
    """The reported FAD / KL recomputed by hand from the cached embeddings."""
    _, out, _ = three_systems
    result = json.loads((out / "results.json").read_text())
    system = next(s for s in result["systems"] if s["name"] == "int4")
    ours = np.concatenate([np.load(out / "audio" / "int4" / f"{n}.encodec-tiny.npy") for n in NAMES])
    theirs = np.concatenate([np.load(out / "reference_embeddings" / f"{n}.encodec-tiny.npy") for n in NAMES[:4]])
    assert ours.shape[1] == theirs.shape[1] and len(ours) == 6 * 100  # one row per EnCodec frame
    assert system["metrics"]["fad_encodec"] == pytest.approx(mm.frechet_distance(ours, theirs), rel=1e-9)
    p = np.stack([np.load(out / "reference_embeddings" / f"{n}.labels-tiny.npy") for n in NAMES[:4]])
    q = np.stack([np.load(out / "audio" / "int4" / f"{n}.labels-tiny.npy") for n in NAMES[:4]])
    assert system["metrics"]["kl"] == pytest.approx(float(mm.kl_divergence(p, q).mean()), rel=1e-5)


@INT4
def test_table_and_chart(three_systems):
    _, out, _ = three_systems
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| system | made by | FAD (CLAP) ↓ | FAD (EnCodec) ↓ | KL ↓ | CLAP text ↑")
    assert [line.split("|")[1].strip() for line in table[2:5]] == ["reference", "fp32", "int4"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@INT4
def test_a_second_run_resumes_and_a_changed_setting_is_refused(three_systems, capsys):
    code, out, argv = three_systems
    wavs = sorted((out / "audio").rglob("*.wav"))
    assert len(wavs) == 18
    before = {p: p.stat().st_mtime_ns for p in wavs}
    first = json.loads((out / "results.json").read_text())
    assert run_cli(main, argv) == 0
    assert {p: p.stat().st_mtime_ns for p in wavs} == before  # nothing made twice
    again = json.loads((out / "results.json").read_text())
    assert [s["metrics"] for s in again["systems"]] == [s["metrics"] for s in first["systems"]]
    capsys.readouterr()
    changed = [a if a != "2" else "3" for a in argv]  # --seconds 3 into the same directories
    assert run_cli(main, changed) == 2
    assert "holds music made with" in capsys.readouterr().err


def test_text_mediated_and_text_systems(manifest, tiny_bundle, tmp_path):
    """caption (tiny BLIP-2), caption+llm (tiny Llama), the text alone and image + text."""
    systems = [f"blip=caption:{tiny_bundle}", f"blip-llm=caption+llm:{tiny_bundle}", f"text=text:{tiny_bundle}",
               f"both=bundle+text:{tiny_bundle}"]
    argv = _argv(manifest, tmp_path, systems, "--limit", "2", "--captioner", "tiny", "--llm", "tiny",
                 "--classifier", "none", "--fad-model", "none", "--prompt-weight", "2")
    assert run_cli(main, argv) == 0
    rows = {s["name"]: s for s in json.loads((tmp_path / "results.json").read_text())["systems"]}
    assert set(rows) == {"blip", "blip-llm", "text", "both"}
    for name in ("blip", "blip-llm"):
        texts = rows[name]["texts"]
        assert set(texts) == {"astronaut", "coffee"} and all(isinstance(t, str) and t for t in texts.values())
    assert rows["blip"]["texts"] != rows["blip-llm"]["texts"]
    for row in rows.values():
        assert "kl" not in row["metrics"] and "fad_clap" not in row["metrics"]
        assert 0.0 <= row["metrics"]["imsm"] <= 1.0
    assert json.loads((tmp_path / "audio" / "both" / "system.json").read_text())["prompt_weight"] == 2.0
    assert json.loads((tmp_path / "audio" / "text" / "coffee.json").read_text())["prompt"] == TEXTS[1]


@pytest.mark.parametrize("case,expected", [
    ("no-manifest", "manifest not found"),
    ("missing-image", "row 4: image file not found"),
    ("bad-system", "expected NAME=KIND:TARGET"),
    ("unknown-kind", "unknown kind 'onnx'"),
    ("not-a-bundle", "is not an engine bundle"),
    ("same-name", "two systems share a name: a"),
    ("no-text", "needs a text for every item; 1 have none: rocket"),
    ("missing-clap", "CLAP (--clap) model directory not found"),
])
def test_bad_input_is_one_clear_error(case, expected, manifest, tiny_bundle, tmp_path, capsys):
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:  # the copy lives elsewhere: its relative audio paths made absolute
        if "audio" in row:
            row["audio"] = str(manifest.parent / row["audio"])
    bad = tmp_path / "bad.jsonl"
    if case == "missing-image":
        rows[3]["image"] = str(tmp_path / "gone.jpg")
    if case == "no-text":
        del rows[3]["text"]
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    systems = {"bad-system": ["fp32"], "unknown-kind": [f"a=onnx:{tiny_bundle}"], "not-a-bundle": [f"a=bundle:{tmp_path}"],
               "same-name": [f"a=bundle:{tiny_bundle}", f"a=bundle:{tiny_bundle}"],
               "no-text": [f"a=bundle:{tiny_bundle}", f"b=text:{tiny_bundle}"]}.get(case, [f"a=bundle:{tiny_bundle}"])
    argv = _argv(tmp_path / "none.jsonl" if case == "no-manifest" else bad, tmp_path / "out", systems)
    if case == "missing-clap":
        argv += ["--clap", str(tmp_path / "no-clap")]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "out" / "audio").exists()  # refused before any music was made
