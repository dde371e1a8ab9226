"""Fixtures of the runtime tests: the tiny-stereo models and bundle, built once per session
(test_stereo.py checks them against transformers, test_live_stereo.py plays them live)."""

import pytest


@pytest.fixture(scope="session")
def stereo_models():
    from img2music.basics.models import build_preset

    return build_preset("tiny-stereo", seed=0)


@pytest.fixture(scope="session")
def stereo_bundle(tmp_path_factory, stereo_models):
    from img2music.export.bundle_build import build_bundle

    root = tmp_path_factory.mktemp("bundles") / "tiny-stereo"
    lines = []
    build_bundle(root, stereo_models, report=lines.append)
    assert not any("✗" in line for line in lines)
    return root
