"""generate.py --engines and build_engines.py as a user runs them."""

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from img2music.runtime.generation.sampling import SamplingConfig
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
        "import sys; from img2music.runtime.cli.generate import main; "
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
    assert "[8/8] manifest.json" in proc.stdout and (out / "manifest.json").is_file()
    assert not (tmp_path / "engines.partial").exists()
    again = run("export/build_engines.py", "--preset", "tiny", "--out", out)
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
    help_text = " ".join(run("export/build_engines.py", "--help").stdout.split())
    assert "(default: fp32)" in help_text and "--tensorrt" in help_text


def test_engines_any_length_through_windows(tiny_bundle, photo_files, tmp_path):
    """Longer than one window (2 s windows here, as 30 s ones are on real models): the exact
    length, written as it was made, the same music as the Python API's stream."""
    from img2music.runtime.generation.core import Windowing
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline
    from img2music.runtime.pipeline.preprocess import load_image

    proc = run("runtime/generate.py", "--engines", tiny_bundle, "--image", photo_files["coffee"], "--seconds", "7",
               "--window-seconds", "2", "--keep-seconds", "0.5", "--seed", "4", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    audio, sr = sf.read(tmp_path / "coffee.wav", dtype="float32")
    assert sr == 32000 and audio.shape == (350 * 640,)
    assert "350 code frames" in proc.stdout
    pipeline = OnnxPipeline.load(tiny_bundle, threads=2)
    stream = pipeline.stream([load_image(photo_files["coffee"])], 7.0, SamplingConfig(seed=4),
                             window=Windowing(window_frames=100, keep_frames=25))
    api = np.concatenate([c.audio for c in stream], axis=1)[0]
    assert pipeline.generator.reprimes == 4  # 100 frames, then 75 new per window
    assert max_abs(audio, api) <= 1e-4


def wav_header_sizes(path):
    """(RIFF size, data chunk size, file size) read from the bytes, as a strict reader would."""
    data = Path(path).read_bytes()
    riff = struct.unpack("<I", data[4:8])[0]
    pos, sizes = 12, {}
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        sizes[chunk] = size
        pos += 8 + size + (size & 1)
    return riff, sizes.get(b"data"), len(data)


def test_ctrl_c_keeps_valid_wavs(tiny_bundle, photo_files, tmp_path):
    """SIGINT while generating a long piece: exit 130, one line saying what was kept, and WAVs
    whose headers match their data (flushed chunk by chunk)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "generate.py"), "--engines", str(tiny_bundle),
                             "--image", photo_files["rocket"], "--image", photo_files["coffee"], "--seconds", "600",
                             "--out", str(out), "--no-progress", "--threads", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            # a Ctrl-C at a terminal: a suite started in the background (`cmd &`)
                            # passes SIGINT on as ignored, and Python then keeps ignoring it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wav = out / "rocket.wav"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (wav.exists() and wav.stat().st_size > 32000 * 4 * 6):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: kept" in stderr, stderr
    for name in ("rocket.wav", "coffee.wav"):
        kept = float(stderr.split(f" s in {out / name}")[0].split(" ")[-1])
        # at least the first 5 s chunk (4.92 s: the delay pattern and the streaming decoder hold
        # back 4 frames); coffee.wav may be a chunk behind rocket.wav when the signal falls
        # between the two files' writes of one chunk
        assert 4.9 <= kept < 600
        riff, data_size, size = wav_header_sizes(out / name)
        assert riff == size - 8 and data_size == round(kept * 32000) * 4
        audio, sr = sf.read(out / name, dtype="float32")
        assert abs(len(audio) / sr - kept) < 1e-4 and np.all(np.isfinite(audio))
