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


@pytest.fixture()
def server():
    """An HTTP control server on loopback over the fake engine, with a camera frame to serve."""
    import numpy as np

    from img2music.runtime.control.dispatcher import LiveControl
    from img2music.runtime.control.http_server import LiveHttpServer
    from tests.runtime.control_clients import reporter
    from tests.runtime.test_live_transport import fake_engine

    engine = fake_engine()
    frame = np.full((48, 64, 3), 120, np.uint8)
    srv = LiveHttpServer(reporter(), "127.0.0.1", 0, control=LiveControl(engine),
                         latest_frame=lambda: (frame, 7, 0.1)).start()
    srv.engine = engine
    yield srv
    srv.close()
