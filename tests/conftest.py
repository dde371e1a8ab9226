"""Shared fixtures: tiny models (built once per session) and real photographs."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
# This host's measurements (runtime.pipeline.host_cache) go to a folder of the test run's own,
# shared by its subprocesses: a developer's ~/.cache never decides a test.
os.environ.setdefault("IMG2MUSIC_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="img2music-cache-"))

import numpy as np
import pytest
from PIL import Image

# Real photographs of different sizes and aspects, incl. grayscale and RGBA.
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "logo", "page", "colorwheel")


def photo(name: str) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    return Image.fromarray(array)


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory, photos) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, img in photos.items():
        path = folder / (f"{name}.jpg" if img.mode == "RGB" else f"{name}.png")
        img.save(path)
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="session")
def tiny_models():
    from img2music.basics.models import build_preset

    return build_preset("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_models):
    from img2music.runtime.torch_reference import ReferencePipeline

    return ReferencePipeline(tiny_models)


@pytest.fixture(scope="session")
def tiny_checkpoint_dirs(tmp_path_factory, tiny_models):
    """The tiny preset saved as ordinary checkpoint directories (musicgen/, clip/)."""
    from img2music.basics.models import save_models

    mg, clip = save_models(tiny_models, tmp_path_factory.mktemp("tiny-checkpoints"))
    return str(mg), str(clip)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_models):
    """The tiny preset exported as an engine bundle (validated during the build)."""
    from img2music.export.bundle_build import build_bundle

    root = tmp_path_factory.mktemp("bundles") / "tiny"
    lines = []
    build_bundle(root, tiny_models, report=lines.append)
    return root


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bundle):
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    return OnnxPipeline.load(tiny_bundle, threads=2)


def quick_quantization(precision: str):
    """Calibration options small enough for tests (the defaults run 250-step generations)."""
    from img2music.calibration.build_quantized import QuantizationOptions
    from img2music.calibration.kv_calibration import KvCalibrationConfig

    return QuantizationOptions(precision=precision, image_limit=18, kv=KvCalibrationConfig(steps=80, batch=4),
                               report_steps=120)


@pytest.fixture(scope="session", params=["int8", "int4"])
def tiny_quantized_bundle(request, tmp_path_factory, tiny_models):
    from img2music.export.bundle_build import build_bundle

    root = tmp_path_factory.mktemp("bundles") / f"tiny-{request.param}"
    build_bundle(root, tiny_models, report=lambda line: None, quantization=quick_quantization(request.param))
    return root


@pytest.fixture(scope="session")
def tiny_fp16_bundle(tmp_path_factory, tiny_models):
    """The tiny preset as a GPU (fp16) bundle; its accuracy report runs on the CPU."""
    from img2music.export.bundle_build import build_bundle

    root = tmp_path_factory.mktemp("bundles") / "tiny-fp16"
    build_bundle(root, tiny_models, report=lambda line: None, quantization=quick_quantization("fp16"))
    return root


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """A local Ray cluster (head node, 2 CPUs) for the scale-out tests; its address.

    Started with Ray's own CLI as a user would (`ray start --head`), stopped at the end."""
    import re
    import shutil
    import socket
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("ray", reason="the Ray tests need the 'ray' extra")
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             check=True, capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, RAY_AUTH_MODE="disabled"))  # a private test cluster
    # the head listens on this machine's node IP (not 127.0.0.1); it prints the address to join
    found = re.search(r"--address='([^']+)'", started.stdout + started.stderr)
    yield found.group(1) if found else f"127.0.0.1:{port}"
    subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
