"""Checkpoints with unusual sizes: every limit comes from the checkpoint's own config, so an
odd but consistent checkpoint exports, validates and runs; one the runtime cannot run is
refused with one clear error naming the problem (no traceback)."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from img2music.basics.checkpoint_limits import clip_problems, musicgen_problems

ROOT = Path(__file__).resolve().parents[2]


def _odd_models(tiny_models, mg_edit, clip_edit=None, image_size=None):
    import torch
    from transformers import CLIPModel, MusicgenForConditionalGeneration

    from img2music.basics.clip_image_config import ClipImageConfig
    from img2music.basics.models import LoadedModels, _seed_codebooks

    mg_config, clip_config = copy.deepcopy(tiny_models.musicgen.config), copy.deepcopy(tiny_models.clip.config)
    mg_edit(mg_config)
    if clip_edit is not None:
        clip_edit(clip_config)
    torch.manual_seed(0)
    musicgen = MusicgenForConditionalGeneration(mg_config).eval()
    _seed_codebooks(musicgen.audio_encoder, 0)
    musicgen.generation_config = copy.deepcopy(tiny_models.musicgen.generation_config)
    musicgen.generation_config.pad_token_id = mg_config.decoder.pad_token_id
    musicgen.generation_config.decoder_start_token_id = mg_config.decoder.bos_token_id
    size = image_size or tiny_models.image_config.crop_height
    return LoadedModels(musicgen, CLIPModel(clip_config).eval(), tiny_models.t5_tokenizer,
                        tiny_models.clip_tokenizer, ClipImageConfig(shortest_edge=size, crop_height=size,
                                                                    crop_width=size), {"test": "odd"})


def _set(obj, **values):
    for name, value in values.items():
        setattr(obj, name, value)


def _odd_everything(c):
    """100 frames per second (hop 320 at 4.4 kbps), 3 codebooks of 1024 codes, 120 positions
    (about 1.2 s of context), a 48-wide T5."""
    _set(c.audio_encoder, upsampling_ratios=[8, 5, 4, 2], target_bandwidths=[4.4], codebook_size=1024)
    _set(c.decoder, max_position_embeddings=120, num_codebooks=3, vocab_size=1024, pad_token_id=1024,
         bos_token_id=1024)
    _set(c.text_encoder, d_model=48, d_kv=12)


def _odd_clip(c):
    """A 16-position text tower, 48 px images in 16 px patches, a 24-wide projection."""
    _set(c.text_config, max_position_embeddings=16, projection_dim=24)
    _set(c.vision_config, image_size=48, patch_size=16, projection_dim=24)
    c.projection_dim = 24


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_an_odd_but_consistent_checkpoint_exports_validates_and_runs(tiny_models, tmp_path, photo_files):
    from img2music.basics.models import save_models

    models = _odd_models(tiny_models, _odd_everything, _odd_clip, image_size=48)
    mg_dir, clip_dir = save_models(models, tmp_path / "ckpt")
    bundle = tmp_path / "bundle"
    build = _run(ROOT / "export" / "build_engines.py", "--musicgen", mg_dir, "--clip", clip_dir, "--out", bundle)
    assert build.returncode == 0, build.stderr[-2000:]
    assert "✗" not in build.stdout and build.stdout.count("✓") >= 10, build.stdout[-2000:]
    gen = _run(ROOT / "runtime" / "generate.py", "--engines", bundle, "--image", photo_files["astronaut"],
               "--seconds", "3", "--out", tmp_path / "wav")
    assert gen.returncode == 0, gen.stderr[-2000:]
    info = sf.info(str(tmp_path / "wav" / "astronaut.wav"))  # float32 WAV
    assert (info.samplerate, info.frames) == (32000, 3 * 32000)  # 300 frames of 320 samples: windows of 120
    live = _run(ROOT / "runtime" / "live.py", "--synthetic", "--engines", bundle, "--no-audio", "--duration", "3",
                "--threads", "2")
    assert live.returncode == 0 and "finished: 3.00 s of music" in live.stdout, live.stderr[-2000:]


REFUSED = {
    "head size 12": (lambda c: _set(c.decoder, hidden_size=48), "head size 12"),
    "24 kHz EnCodec": (lambda c: _set(c.audio_encoder, sampling_rate=24000), "not a whole number of frames"),
    "too few quantizers": (lambda c: _set(c.audio_encoder, upsampling_ratios=[8, 5, 4, 2]),
                           "4 codebooks per channel but EnCodec at 2.2 kbps decodes 2"),
    "three channels": (lambda c: _set(c.decoder, num_codebooks=12, audio_channels=3), "mono (1) or stereo (2)"),
    "stereo, odd codebooks": (lambda c: _set(c.decoder, num_codebooks=7, audio_channels=2),
                              "7 codebooks cannot be split in two"),
    "codes past the codebook": (lambda c: _set(c.decoder, vocab_size=4096, pad_token_id=4096),
                                "vocab_size 4096 exceeds EnCodec's codebook_size 2048"),
    "under a second of positions": (lambda c: _set(c.decoder, max_position_embeddings=40), "less than 1 s"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_the_runtime_cannot_run_is_named(tiny_models, case):
    edit, message = REFUSED[case]
    config = copy.deepcopy(tiny_models.musicgen.config)
    edit(config)
    problems = musicgen_problems(config)
    assert len(problems) == 1 and message in problems[0], problems
    assert musicgen_problems(tiny_models.musicgen.config) == []
    assert clip_problems(tiny_models.clip.config, (32, 32)) == []
    assert "crops 40x40 but its vision tower takes 32x32" in clip_problems(tiny_models.clip.config, (40, 40))[0]


def test_a_refused_checkpoint_is_one_error_line(tiny_models, tmp_path):
    from img2music.basics.models import save_models

    models = _odd_models(tiny_models, REFUSED["head size 12"][0])
    mg_dir, clip_dir = save_models(models, tmp_path / "ckpt")
    build = _run(ROOT / "export" / "build_engines.py", "--musicgen", mg_dir, "--clip", clip_dir,
                 "--out", tmp_path / "bundle")
    assert build.returncode == 2
    errors = [line for line in build.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "head size 12" in errors[0] and "Traceback" not in build.stderr, build.stderr
    assert not (tmp_path / "bundle").exists()  # refused before any export work
