"""The runtime refuses corrupt or mismatched bundles with one clear error."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.bundle import load_bundle
from runtime.errors import Img2MusicError
from runtime.onnx_pipeline import OnnxPipeline

ROOT = Path(__file__).resolve().parents[2]


def damaged_copy(tiny_bundle, tmp_path, how: str) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if how == "truncated":
        data = (bundle / "decoder_step.onnx").read_bytes()
        (bundle / "decoder_step.onnx").write_bytes(data[: len(data) // 2])
    elif how == "missing":
        (bundle / "encodec_decode.onnx").unlink()
    elif how == "hash":
        path = bundle / "cross_kv.onnx"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different content
        path.write_bytes(bytes(data))
    elif how == "manifest-json":
        manifest_path.write_text(manifest_path.read_text()[:-200])
    elif how == "schema":
        manifest["schema_version"] = 99
        manifest_path.write_text(json.dumps(manifest))
    elif how == "edited-spec":
        manifest["graphs"]["decoder_step"]["inputs"][0]["shape"] = ["batch", 8]
        manifest_path.write_text(json.dumps(manifest))
    elif how == "edited-config":
        manifest["decoder"]["num_layers"] += 1
        manifest_path.write_text(json.dumps(manifest))
    elif how == "no-manifest":
        manifest_path.unlink()
    elif how == "graph-not-listed":
        del manifest["files"]["projector.onnx"]
        manifest_path.write_text(json.dumps(manifest))
    else:
        raise ValueError(how)
    return bundle


CASES = {
    "truncated": "bytes",
    "missing": "missing",
    "hash": "sha256",
    "manifest-json": "corrupt bundle manifest",
    "schema": "schema",
    "edited-spec": "manifest says",
    "edited-config": "decoder config does not match",
    "no-manifest": "not an engine bundle",
    "graph-not-listed": "not listed",
}


@pytest.mark.parametrize("how", sorted(CASES))
def test_damaged_bundle_is_refused(tiny_bundle, tmp_path, how):
    bundle = damaged_copy(tiny_bundle, tmp_path, how)
    with pytest.raises(Img2MusicError, match=CASES[how]):
        OnnxPipeline.load(bundle)


@pytest.mark.parametrize("how", ["truncated", "hash", "schema"])
def test_cli_refuses_damaged_bundle(tiny_bundle, tmp_path, photo_files, how):
    bundle = damaged_copy(tiny_bundle, tmp_path, how)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "runtime" / "generate.py"), "--engines", str(bundle), "--image",
         photo_files["coffee"], "--seconds", "0.2", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:") and CASES[how] in proc.stderr
    assert not list((tmp_path / "out").glob("*.wav"))


def test_intact_bundle_loads(tiny_bundle):
    assert load_bundle(tiny_bundle).precision == "fp32"
