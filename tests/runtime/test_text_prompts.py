"""Text prompts: alone (MusicGen text-to-music) and with an image, weighted (runtime.generation.conditioning).

The oracle is transformers: a prompt alone must give ``generate``'s greedy tokens with that
text; image + prompt the tokens of ``generate`` fed the joined sequence as ``encoder_outputs``
(and, for a weight other than 1, its cross-attention mask replaced by the weighted bias).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.conditioning import log_weights
from img2music.runtime.generation.sampling import SamplingConfig, with_null_branch

ROOT = Path(__file__).resolve().parents[2]
GREEDY = SamplingConfig(greedy=True, guidance_scale=3.0)
PROMPT = "slow jazz piano, warm, no drums"


@pytest.fixture(scope="module")
def image(photos):
    return np.asarray(photos["astronaut"])


def test_prompt_alone_equals_transformers_generate(tiny_onnx, tiny_pipeline):
    ours = tiny_onnx(None, 4.2, GREEDY, prompt=PROMPT)  # 210 frames: 213 decoder steps
    theirs = tiny_pipeline(None, 4.2, GREEDY, prompt=PROMPT)
    assert ours.codes.shape == theirs.codes.shape == (1, 4, 210)
    np.testing.assert_array_equal(ours.codes, theirs.codes)
    assert ours.directives is None


@pytest.mark.parametrize("weight", [1.0, 2.5, 0.0])
def test_image_and_prompt_equal_the_reference(tiny_onnx, tiny_pipeline, image, weight):
    ours = tiny_onnx([image], 4.0, GREEDY, prompt=PROMPT, prompt_weight=weight)
    theirs = tiny_pipeline([image], 4.0, GREEDY, prompt=PROMPT, prompt_weight=weight)
    np.testing.assert_array_equal(ours.codes, theirs.codes)
    assert ours.directives == theirs.directives


def first_step_scores(pipeline, conditioning) -> np.ndarray:
    """Guided first-step scores of the decoder under a conditioning (what sampling would see)."""
    g = pipeline.generator
    g.start(conditioning.conditioning, conditioning.mask, GREEDY, frames=50, weight=conditioning.weight)
    return g.score(np.full((1, 4), 2048), 3.0).copy()


def test_the_prompt_and_its_weight_change_what_the_decoder_sees(tiny_onnx, image):
    """The parity above is not vacuous: prompt and weight move the decoder's scores, and weight 0
    is the image alone (the prompt's tokens get e^-69 of their share)."""
    alone = tiny_onnx.condition([image])
    joined = tiny_onnx.condition([image], prompt=PROMPT)
    heavy = tiny_onnx.condition([image], prompt=PROMPT, prompt_weight=4.0)
    ignored = tiny_onnx.condition([image], prompt=PROMPT, prompt_weight=0.0)
    n = alone.mask.shape[1]
    assert joined.conditioning.shape[1] == n + tiny_onnx.encode_text(PROMPT)[1].shape[1]
    assert np.all(joined.weight == 1.0)
    assert np.all(heavy.weight[:, n:] == 4.0) and np.all(heavy.weight[:, :n] == 1.0)
    scores = {name: first_step_scores(tiny_onnx, c) for name, c in
              [("alone", alone), ("joined", joined), ("heavy", heavy), ("ignored", ignored)]}
    # tiny random weights: conditioning moves a first step's scores by ~1e-3 (float32 noise: ~1e-7)
    assert np.max(np.abs(scores["joined"] - scores["alone"])) > 2e-4
    assert np.max(np.abs(scores["heavy"] - scores["joined"])) > 2e-4
    assert np.max(np.abs(scores["ignored"] - scores["alone"])) < 1e-6


def test_cross_kv_bias_is_log_weight_where_attended(tiny_onnx):
    width = tiny_onnx.bundle.model.conditioning.text_dim
    cond = np.random.default_rng(0).standard_normal((1, 5, width)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0]])
    weight = np.array([[1.0, 2.0, 0.5, 0.0, 3.0]], dtype=np.float32)
    c2, m2 = with_null_branch(cond, mask)
    w2 = np.concatenate([weight, np.ones_like(weight)])
    session = tiny_onnx.sessions["cross_kv"]
    bias = session.run(["cross_attention_bias"], {"conditioning": c2, "conditioning_mask": m2,
                                                  "conditioning_log_weight": log_weights(w2)})[0]
    lowest = np.finfo(np.float32).min
    np.testing.assert_allclose(bias[0, 0, 0, :3], np.log([1.0, 2.0, 0.5]), atol=1e-6)
    assert -70 < bias[0, 0, 0, 3] < -68  # weight 0: floored at 1e-30, never -inf
    assert bias[0, 0, 0, 4] == lowest and np.all(bias[1] == lowest)  # masked stays masked, whatever its weight


def test_bundle_tokenizer_equals_transformers(tiny_onnx, tiny_models):
    prompts = ["slow jazz piano", "  Warm strings, NO drums!  ", "ambient — 60 bpm, café", "x", "drone " * 40]
    for prompt in prompts:
        expected = tiny_models.t5_tokenizer(prompt.strip())["input_ids"]
        assert tiny_onnx.text.token_ids(prompt).tolist() == expected
        assert expected[-1] == tiny_models.t5_tokenizer.eos_token_id


def test_bad_prompts_get_one_clear_error(tiny_onnx, image):
    with pytest.raises(Img2MusicError, match="empty"):
        tiny_onnx.encode_text("   ")
    with pytest.raises(Img2MusicError, match=r"tokens long; .* at most 512"):
        tiny_onnx.encode_text("slow jazz piano " * 200)
    for weight in (-0.5, 10.5, float("nan"), True):
        with pytest.raises(Img2MusicError, match="prompt weight"):
            tiny_onnx.condition([image], prompt=PROMPT, prompt_weight=weight)
    with pytest.raises(Img2MusicError, match="nothing to weigh against"):
        tiny_onnx.condition(None, prompt=PROMPT, prompt_weight=2.0)
    with pytest.raises(Img2MusicError, match="give images, a prompt or both"):
        tiny_onnx.condition(None)


def test_prompt_counts_in_the_manifest_and_a_repeated_prompt_is_not_encoded_twice(tiny_bundle, tiny_onnx):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["text"] == {"tokenizer_file": "tokenizer.json", "max_tokens": 512, "vocab_size": 400}
    assert "tokenizer.json" in manifest["files"] and "t5_encoder.onnx" in manifest["files"]
    calls = []
    session = tiny_onnx.text.session
    tiny_onnx.text.session = type("Counting", (), {"run": lambda self, *a: calls.append(1) or session.run(*a)})()
    try:
        first = tiny_onnx.encode_text("a prompt seen once")
        again = tiny_onnx.encode_text("  a prompt seen once ")
    finally:
        tiny_onnx.text.session = session
    assert len(calls) == 1 and again[0] is first[0]


def run_without_torch(tmp_path, *args):
    """generate.py in a subprocess where importing torch or transformers fails."""
    blockers = tmp_path / "blockers"
    for name in ("torch", "transformers"):
        (blockers / name).mkdir(parents=True, exist_ok=True)
        (blockers / name / "__init__.py").write_text(f"raise ModuleNotFoundError('blocked', name='{name}')\n")
    env = dict(os.environ, PYTHONPATH=f"{blockers}{os.pathsep}{ROOT}", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(ROOT / "runtime" / "generate.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def test_generate_cli_with_prompts_through_the_bundle_without_torch(tiny_bundle, photo_files, tmp_path):
    out = tmp_path / "out"
    both = run_without_torch(tmp_path, "--engines", tiny_bundle, "--image", photo_files["astronaut"], "--prompt",
                             PROMPT, "--prompt-weight", "1.5", "--seconds", "2", "--out", out, "--no-progress")
    assert both.returncode == 0, both.stderr
    assert "+ prompt 'slow jazz piano, warm, no drums' (weight 1.5)" in both.stdout
    alone = run_without_torch(tmp_path, "--engines", tiny_bundle, "--prompt", PROMPT, "--seconds", "2", "--out", out,
                              "--no-progress")
    assert alone.returncode == 0, alone.stderr
    assert "t5" in alone.stdout  # the per-stage table has the text encoder's row
    for name in ("astronaut.wav", "prompt.wav"):
        audio, rate = sf.read(out / name)
        assert rate == 32000 and len(audio) == 64000 and np.sqrt(np.mean(audio ** 2)) > 1e-4
    blocked = run_without_torch(tmp_path, "--preset", "tiny", "--prompt", PROMPT, "--out", out)
    assert blocked.returncode != 0 and "torch is not installed" in blocked.stderr
    assert "Traceback" not in blocked.stderr, blocked.stderr


def test_generate_cli_with_prompts_through_the_reference(tmp_path, photo_files):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "generate.py"), "--preset", "tiny", "--image",
                           photo_files["astronaut"], "--prompt", PROMPT, "--seconds", "1", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(sf.read(out / "astronaut.wav")[0]) == 32000


@pytest.mark.parametrize("args, message", [
    (["--prompt", "   "], "the prompt is empty"),
    (["--prompt", PROMPT, "--prompt-weight", "12"], "must be between 0 and 10"),
    (["--prompt", PROMPT, "--prompt-weight", "2"], "nothing to weigh against"),
    (["--prompt-weight", "2", "--image", "x.png"], "--prompt-weight needs --prompt"),
    ([], "give --image (one or more), --prompt, or both"),
])
def test_generate_cli_bad_prompt_input(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "generate.py"), "--preset", "tiny", *args,
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_bundle_without_text_refuses_a_prompt(tmp_path, photo_files):
    bundle = tmp_path / "no-text"
    built = subprocess.run([sys.executable, str(ROOT / "export" / "build_engines.py"), "--preset", "tiny", "--no-text",
                            "--out", str(bundle)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert built.returncode == 0, built.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "t5_encoder" not in manifest["graphs"] and manifest.get("text") is None
    assert not (bundle / "tokenizer.json").exists()
    proc = run_without_torch(tmp_path, "--engines", bundle, "--image", photo_files["astronaut"], "--prompt", PROMPT,
                             "--out", tmp_path / "o")
    assert proc.returncode != 0 and "has no text encoder" in proc.stderr and "Traceback" not in proc.stderr
    plain = run_without_torch(tmp_path, "--engines", bundle, "--image", photo_files["astronaut"], "--seconds", "1",
                              "--out", tmp_path / "o", "--no-progress")
    assert plain.returncode == 0, plain.stderr
