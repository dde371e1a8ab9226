"""The runtime refuses corrupt or mismatched bundles with one clear error."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from img2music.basics.errors import Img2MusicError
from img2music.runtime.bundle.loading import load_bundle
from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

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
        (bundle / "encodec_stream_back.onnx").unlink()
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


def test_manifest_round_trips_through_its_types(tiny_bundle):
    """The exporter writes through the same classes the runtime parses: nothing lost either way."""
    from img2music.runtime.bundle.manifest import BundleManifest

    data = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest = BundleManifest.from_dict(data)
    assert manifest.to_dict() == data
    assert BundleManifest.from_dict(manifest.to_dict()) == manifest
    assert manifest.model.clip.image.image_mean == (0.48145466, 0.4578275, 0.40821073)  # tuples, as in the config


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["decoder"].pop("num_heads"), "decoder.num_heads is missing"),
    (lambda m: m["audio"].update(sample_rate="32000"), "audio.sample_rate should be int, is str"),
    (lambda m: m["clip"]["image"].update(image_std=[0.5, 0.5]), "clip.image.image_std should have 3 items"),
    (lambda m: m["graphs"]["cross_kv"]["inputs"][0].update(shape=[1.5]), "graphs.cross_kv.inputs[0].shape"),
    (lambda m: m["files"]["projector.onnx"].update(bytes=None), "files.projector.onnx.bytes is missing"),
    (lambda m: m.pop("conditioning"), "conditioning is missing"),
])
def test_a_malformed_manifest_names_the_field(tiny_bundle, tmp_path, edit, message):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Img2MusicError, match=f"corrupt bundle manifest .*{re.escape(message)}"):
        load_bundle(bundle)


def test_schema_1_bundles_still_run(tiny_bundle, tmp_path, photos):
    """Bundles from before the full-sequence EnCodec graph was dropped: it is listed and hashed,
    not run; everything else is the same."""
    from img2music.runtime.bundle.loading import sha256_file
    from img2music.runtime.generation.sampling import SamplingConfig

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["schema_version"] = 1
    shutil.copy(bundle / "encodec_stream_back.onnx", bundle / "encodec_decode.onnx")  # any graph file will do
    manifest["files"]["encodec_decode.onnx"] = {"sha256": sha256_file(bundle / "encodec_decode.onnx"),
                                                "bytes": (bundle / "encodec_decode.onnx").stat().st_size}
    manifest["graphs"]["encodec_decode"] = dict(manifest["graphs"]["encodec_stream_back"], file="encodec_decode.onnx")
    del manifest["kv_cache"]  # schema 1 wrote it for quantized bundles only
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    old = OnnxPipeline.load(bundle)
    assert old.bundle.manifest.kv_cache.dtype == "float32"
    sampling = SamplingConfig(seed=3)
    np.testing.assert_array_equal(old([photos["coffee"]], 0.5, sampling).audio,
                                  OnnxPipeline.load(tiny_bundle)([photos["coffee"]], 0.5, sampling).audio)


def test_an_unreadable_bundle_file_is_one_clear_error(tiny_bundle, monkeypatch):
    """A file the service user cannot read: permission denied, named (not a raw
    PermissionError; monkeypatched since root, which runs CI, reads everything)."""
    import img2music.runtime.bundle.loading as bundle_module

    real = bundle_module.os.access
    monkeypatch.setattr(bundle_module.os, "access",
                        lambda path, mode: False if str(path).endswith("decoder_step.onnx") else real(path, mode))
    with pytest.raises(Img2MusicError, match=r"cannot read bundle file .*decoder_step\.onnx: permission denied"):
        load_bundle(tiny_bundle, verify_hashes=False)
