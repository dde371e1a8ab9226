"""The wheel: one import name (img2music), and ``import img2music`` needs nothing installed.

Built from the files a clean clone has (git's tracked and not-ignored files, copied apart), so
a leftover build/ or egg-info here cannot hide a missing package from the wheel."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the clean-clone copy needs it")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    clone = tmp_path_factory.mktemp("clone")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(clone)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("img2music-*.whl")
    return path


def test_the_wheel_installs_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"img2music"}, sorted(top)
    packages = {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")}
    for role in ("basics", "runtime", "export", "training", "calibration", "benchmarks"):
        assert f"img2music/{role}" in packages
    for data in ("img2music/runtime/control/page.html", "img2music/basics/directives.txt",
                 "img2music/benchmarks/results_schema.json"):
        assert data in names, data
    assert not [n for n in names if n.startswith("img2music/tests/")]


def test_import_img2music_needs_nothing_but_the_wheel(wheel, tmp_path):
    """The public API's names without numpy, onnxruntime or anything else: a bare interpreter
    (-I: no site-packages, no user paths) with only the unpacked wheel on its path."""
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = ("import sys; sys.path.insert(0, %r); import img2music; print(img2music.__all__); "
            "import img2music.runtime as r; assert r.__all__ == img2music.__all__; "
            "assert not [m for m in ('numpy', 'onnxruntime', 'torch') if m in sys.modules]") % str(tmp_path)
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "'OnnxPipeline'" in proc.stdout and "'LiveSession'" in proc.stdout
