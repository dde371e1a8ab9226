"""Text prompts in a live run: --prompt at start, changed over HTTP and OSC while playing
(runtime.loop.prompt), each change a transition like a scene change."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from img2music.basics.errors import Img2MusicError
from img2music.runtime.control.dispatcher import SPACING
from img2music.runtime.generation.conditioning import Conditioning, with_prompt
from img2music.runtime.loop.prompt import LivePrompt
from img2music.runtime.loop.scene import blend
from tests.runtime.live_runs import last_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_a_prompt_joins_every_scene_and_a_change_recomposes_the_current_one(tiny_onnx, photos):
    cond, mask, directives = tiny_onnx.project(tiny_onnx.embed_images(
        __import__("img2music.runtime.pipeline.preprocess", fromlist=["x"]).preprocess_images([photos["coffee"]], tiny_onnx.image_config)))
    prompt = LivePrompt("slow jazz piano", 1.5)
    scene = prompt.scene(tiny_onnx, cond, mask, directives[0], 1.0)
    expected = with_prompt(Conditioning(cond, mask), *tiny_onnx.encode_text("slow jazz piano"), "slow jazz piano", 1.5)
    np.testing.assert_array_equal(scene.conditioning, expected.conditioning)
    np.testing.assert_array_equal(scene.weight, expected.weight)
    assert scene.image[0] is cond and scene.prompt == "slow jazz piano" and scene.directive == directives[0]

    louder = prompt.change(tiny_onnx, scene, weight=4.0)  # the same image, the same words, weighed more
    np.testing.assert_array_equal(louder.image[0], cond)
    assert louder.prompt == "slow jazz piano" and np.all(louder.weight[:, cond.shape[1]:] == 4.0)
    cleared = prompt.change(tiny_onnx, louder, text=None)
    assert cleared.weight is None and cleared.conditioning is cond and prompt.weight == 4.0
    # the transition from the prompted scene glides the prompt's tokens out
    mid_cond, mid_mask, mid_weight = blend(louder.bound, cleared.bound, 0.5)
    assert mid_mask.shape == louder.mask.shape and np.all(mid_weight[:, cond.shape[1]:] == 2.5)
    with pytest.raises(Img2MusicError, match="tokens long"):
        prompt.change(tiny_onnx, cleared, text="drone " * 600)
    assert prompt.text is None and prompt.changes == 2  # a refused change changes nothing
    assert prompt.change(tiny_onnx, None, text="warm strings") is None and prompt.text == "warm strings"


def test_prompts_change_while_playing(tiny_bundle, tmp_path):
    pytest.importorskip("prometheus_client")
    from tests.runtime.test_live_http import _free_ports, _get, _post, _wait_ready

    metrics = tmp_path / "m.jsonl"
    port, osc_port = _free_ports(2)
    proc = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines",
                             str(tiny_bundle), "--no-audio", "--threads", "2", "--duration", "18",
                             "--scene-seconds", "1000", "--first-frame-wait", "30", "--metrics", str(metrics),
                             "--http", str(port), "--osc", str(osc_port), "--prompt", "slow jazz piano",
                             "--prompt-weight", "1.5", "-v",
                             # 3 s ahead through the changes; 18 s leave the last one room to be heard
                             "--buffer", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"

    def control() -> dict:
        return json.loads(_get(base + "/control")[1])

    def until(condition, what: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while not condition(c := control()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {c}"
            time.sleep(0.05)
        return c

    def in_metrics(prompt, timeout: float = 20.0) -> None:
        """Until a metrics row (one a second) shows ``prompt``: each prompt is seen there."""
        deadline = time.monotonic() + timeout
        while True:
            row = last_metrics(metrics)
            if row and row["prompt"] == prompt:
                return
            assert time.monotonic() < deadline and proc.poll() is None, f"no metrics row with prompt {prompt!r}"
            time.sleep(0.1)

    try:
        _wait_ready(base)
        start = control()
        assert (start["prompt"], start["prompt_weight"]) == ("slow jazz piano", 1.5)
        for bad, message in [({"prompt": ""}, "string of 1 to 2000"), ({"prompt": "a b " * 300}, "tokens long"),
                             ({"prompt_weight": 11}, "in [0.0, 10.0]"), ({"prompt": 5}, "must be a string"),
                             ({"prompt": "   "}, "empty")]:
            code, answer = _post(base + "/control", bad)
            assert code == 400 and message in answer["error"], (bad, answer)
        assert control()["changes"] == {}
        assert _post(base + "/control", {"prompt": "fast techno drums", "prompt_weight": 3})[0] == 202
        accepted = time.monotonic()
        until(lambda c: c["prompt"] == "fast techno drums" and c["prompt_weight"] == 3.0, "the new prompt")
        in_metrics("fast techno drums")

        from pythonosc.udp_client import SimpleUDPClient

        def spaced() -> None:  # prompt changes are taken once a second (SPACING): a sooner one is refused
            time.sleep(max(0.0, accepted + SPACING["prompt"] + 0.1 - time.monotonic()))

        osc = SimpleUDPClient("127.0.0.1", osc_port)
        spaced()
        osc.send_message("/img2music/prompt_clear", [])
        accepted = time.monotonic()
        until(lambda c: c["prompt"] is None, "the prompt cleared over OSC")
        in_metrics(None)
        spaced()
        osc.send_message("/img2music/prompt", "ambient drone")
        final = until(lambda c: c["prompt"] == "ambient drone", "the prompt set over OSC")
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert final["changes"] == {"prompt": 3, "prompt_weight": 1} and final["prompt_weight"] == 3.0
    assert "0 underflows" in out
    assert "prompt: 'fast techno drums' (weight 3)" in err and "prompt: cleared" in err
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    prompts = [line["prompt"] for line in lines]
    seen = [p for i, p in enumerate(prompts) if i == 0 or p != prompts[i - 1]]
    assert seen == ["slow jazz piano", "fast techno drums", None, "ambient drone"]
    last = lines[-1]
    assert last["underflows"] == 0 and (last["degrade_repeats"], last["degrade_silences"]) == (0, 0)
    # each change went through the scene-change path: marked, and heard (a latency measured)
    assert len(last["scene_latency_s"]) == 3 and last["scene_changes"] == 0
