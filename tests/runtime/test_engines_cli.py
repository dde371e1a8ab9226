"""generate.py --engines and build_engines.py as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from runtime.sampling import SamplingConfig
from tests.conftest import max_abs

ROOT = Path(__file__).resolve().parents[2]


def run(script, *args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_engines_wav_equals_reference(tiny_bundle, tiny_pipeline, photo_files, photos, tmp_path):
    names = ["rocket", "logo"]
    args = ["--engines", tiny_bundle, "--seconds", "1.5", "--greedy", "--out", tmp_path]
    for n in names:
        args += ["--image", photo_files[n]]
    proc = run("runtime/generate.py", *args)
    assert proc.returncode == 0, proc.stderr
    assert "cross_kv" in proc.stdout and "directive:" in proc.stdout
    from PIL import Image

    # the reference reads the same files the CLI read (JPEG decoding included)
    images = [Image.open(photo_files[n]) for n in names]
    ref = tiny_pipeline(images, 1.5, SamplingConfig(greedy=True))
    for i, n in enumerate(names):
        audio, sr = sf.read(tmp_path / f"{n}.wav", dtype="float32")
        assert sr == 32000 and audio.shape == ref.audio[i].shape == (75 * 640,)
        assert max_abs(audio, ref.audio[i]) <= 1e-4
        assert ref.directives[i] in proc.stdout


def test_engines_path_never_imports_torch(tiny_bundle, photo_files, tmp_path):
    code = (
        "import sys; from runtime.generate import main; "
        f"main(['--engines', {str(tiny_bundle)!r}, '--image', {photo_files['coffee']!r}, '--seconds', '0.2', "
        f"'--out', {str(tmp_path)!r}, '--no-progress']); "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_build_engines_cli(tmp_path):
    out = tmp_path / "engines"
    proc = run("export/build_engines.py", "--preset", "tiny", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "✗" not in proc.stdout and proc.stdout.count("✓") >= 10
    assert "[8/8]" in proc.stdout and (out / "manifest.json").is_file()
    assert not (tmp_path / "engines.partial").exists()
    again = run("export/build_engines.py", "--preset", "tiny", "--out", out)
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
    help_text = " ".join(run("export/build_engines.py", "--help").stdout.split())
    assert "(default: auto)" in help_text and "(default: onnxruntime)" in help_text
