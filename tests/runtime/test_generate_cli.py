"""runtime/generate.py as a user runs it (subprocess): output files and bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "runtime" / "generate.py"


def run(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def assert_clean_failure(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip(), "an error message is expected"
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_generates_wavs_from_checkpoint_dirs(tiny_checkpoint_dirs, photo_files, tmp_path):
    mg, clip = tiny_checkpoint_dirs
    out = tmp_path / "out"
    proc = run("--musicgen", mg, "--clip", clip, "--image", photo_files["astronaut"], "--image", photo_files["logo"],
               "--image", photo_files["astronaut"], "--seconds", "0.5", "--out", out, "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.glob("*.wav"))
    assert names == ["astronaut-2.wav", "astronaut.wav", "logo.wav"]
    audio, sr = sf.read(out / "logo.wav", dtype="float32")
    assert sr == 32000 and audio.shape == (25 * 640,)
    directives = [line.split("directive: ")[1] for line in proc.stdout.splitlines() if "directive: " in line]
    assert len(directives) == 3 and directives[0] == directives[2]  # same image, same directive
    assert "directive:" in proc.stdout and "decoder" in proc.stdout and "encodec" in proc.stdout
    assert "real-time factor" in proc.stdout


def test_help_states_defaults():
    proc = run("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "(default: 5.0)" in text and "(default: 250)" in text and "(default: 3.0)" in text


@pytest.mark.parametrize(
    "case",
    ["missing", "text-file", "zero-bytes", "directory", "negative-seconds", "zero-seconds", "unknown-preset",
     "unwritable-out", "preset-and-checkpoint", "bad-temperature", "missing-model", "nan-guidance",
     "inf-guidance", "top-p-above-one", "negative-top-k", "zero-threads", "negative-threads", "image-url"],
)
def test_bad_input_fails_cleanly(case, tmp_path, photo_files):
    good = photo_files["coffee"]
    text = tmp_path / "notes.png"
    text.write_text("hello")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args, expected = {
        "missing": (["--preset", "tiny", "--image", tmp_path / "nope.jpg"], "image not found"),
        "text-file": (["--preset", "tiny", "--image", text], "not a readable image"),
        "zero-bytes": (["--preset", "tiny", "--image", empty], "empty"),
        "directory": (["--preset", "tiny", "--image", tmp_path], "directory"),
        "negative-seconds": (["--preset", "tiny", "--image", good, "--seconds", "-2"], "positive"),
        "zero-seconds": (["--preset", "tiny", "--image", good, "--seconds", "0"], "positive"),
        "unknown-preset": (["--preset", "huge", "--image", good], "invalid choice"),
        "unwritable-out": (["--preset", "tiny", "--image", good, "--out", blocker / "sub"], "cannot write"),
        "preset-and-checkpoint": (["--preset", "tiny", "--musicgen", "x/y", "--image", good], "give one of"),
        "bad-temperature": (["--preset", "tiny", "--image", good, "--temperature", "0"], "temperature"),
        "missing-model": (["--musicgen", tmp_path / "no-model", "--clip", tmp_path / "no-clip", "--image", good,
                           "--out", tmp_path / "o"], "model directory not found"),
        "nan-guidance": (["--preset", "tiny", "--image", good, "--guidance-scale", "nan"], "finite"),
        "inf-guidance": (["--preset", "tiny", "--image", good, "--guidance-scale", "inf"], "finite"),
        "top-p-above-one": (["--preset", "tiny", "--image", good, "--top-p", "2"], "between 0 and 1"),
        "negative-top-k": (["--preset", "tiny", "--image", good, "--top-k", "-1"], ">= 0"),
        "zero-threads": (["--engines", tmp_path, "--image", good, "--threads", "0"], "positive"),
        "negative-threads": (["--engines", tmp_path, "--image", good, "--threads", "-1"], "positive"),
        "image-url": (["--preset", "tiny", "--image", "http://example.com/a.jpg"], "http://example.com/a.jpg"),
    }[case]
    proc = run(*args, "--seconds" if "--seconds" not in args else "--seed", "1" if "--seconds" in args else "0.2")
    assert_clean_failure(proc, expected)


def test_every_input_gets_its_own_file_whatever_its_name(tiny_bundle, photo_files, tmp_path):
    """a/photo.png, b/photo.png and photo-2.png are three files, not two (no silent
    overwrite); a name that is not UTF-8 generates and is printed, not a UnicodeEncodeError."""
    import shutil

    src = photo_files["astronaut"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    inputs = [tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png", tmp_path / "photo-2.png",
              tmp_path / os.fsdecode(b"caf\xe9.png")]  # a Latin-1 name on a UTF-8 system
    for path in inputs:
        shutil.copy(src, path)
    out = tmp_path / "out"
    proc = run("--engines", tiny_bundle, *[x for p in inputs for x in ("--image", p)], "--seconds", "0.2",
               "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["photo.wav", "photo-2.wav", "photo-2-2.wav", "caf\ufffd.wav"]), names
    assert "caf\ufffd.png -> " in proc.stdout
    for name in names:
        assert sf.info(str(out / name)).frames == 10 * 640
