"""Phase II and evaluation on the tiny Phase I dataset: the projector learns, resumes
exactly, each loss switch changes what is computed, and the result exports and plays."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from img2music.basics.errors import Img2MusicError
from img2music.training.evaluate import load_checkpoint, run_ablations
from img2music.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]


def _train(data, out, **kw):
    values = dict(batch_size=16, epochs=3, hidden_dim=64, seed=0) | kw
    trainer = Trainer(TrainConfig(data=str(data), out=str(out), **values), report=lambda s: None)
    return trainer


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mlp"
    trainer = _train(tiny_dataset, out, epochs=25, patience=25, lr=3e-3)
    trainer.fit()
    return trainer, out


def test_training_loss_falls_and_validation_improves(trained):
    trainer, out = trained
    history = trainer.history
    untrained = history[0]["val"]["cosine"]
    best = max(h["val"]["cosine"] for h in history[1:])
    assert best > untrained + 0.2, (untrained, best)
    first, last = history[1]["train"], history[-1]["train"]
    assert last["latent_l1"] + last["latent_cos"] < 0.7 * (first["latent_l1"] + first["latent_cos"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, 26))
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    straight = _train(tiny_dataset, tmp_path / "straight", epochs=4)
    straight.fit()
    cut = _train(tiny_dataset, tmp_path / "cut", epochs=2)
    cut.fit()
    resumed = _train(tiny_dataset, tmp_path / "cut", epochs=4)
    resumed.resume()
    assert resumed.epoch == 2
    resumed.fit()
    assert resumed.epoch == 4
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)
    log = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]


@pytest.mark.parametrize("switches, expected", [
    (dict(latent=True, fm=False, ce=False, mel=False, adv=False), {"latent_l1", "latent_cos", "total"}),
    (dict(latent=True, fm=True, ce=False, mel=False, adv=False), {"latent_l1", "latent_cos", "fm", "total"}),
    (dict(latent=True, fm=False, ce=True, mel=False, adv=False), {"latent_l1", "latent_cos", "ce", "total"}),
    (dict(latent=False, fm=False, ce=True, mel=True, adv=False), {"latent_l1", "latent_cos", "ce", "mel", "total"}),
    (dict(latent=True, fm=False, ce=False, mel=False, adv=True),
     {"latent_l1", "latent_cos", "adv", "disc", "total"}),
])
def test_each_loss_switch_changes_the_terms(tiny_dataset, tmp_path, switches, expected):
    trainer = _train(tiny_dataset, tmp_path / "run", epochs=1, **switches)
    trainer.fit()
    assert set(trainer.history[-1]["train"]) == expected


def test_latent_off_does_not_train_on_it(tiny_dataset, tmp_path):
    """With the latent term off and only CE on, the total is the weighted CE alone."""
    trainer = _train(tiny_dataset, tmp_path / "run", epochs=1, latent=False, fm=False, ce=True, adv=False)
    trainer.fit()
    t = trainer.history[-1]["train"]
    assert t["total"] == pytest.approx(0.5 * t["ce"], rel=1e-5)


def test_transformer_projector_with_n_tokens(tiny_dataset, tmp_path):
    trainer = _train(tiny_dataset, tmp_path / "vit", projector="transformer", num_tokens=4, hidden_dim=32,
                     epochs=2, fm=True, ce=True)
    trainer.fit()
    model, state = load_checkpoint(str(tmp_path / "vit" / "best.pt"))
    out = model(torch.zeros(2, 16))
    assert out.conditioning.shape == (2, 4, 32) and state["projector"]["kind"] == "transformer"


def test_ablation_runner_writes_a_table(tiny_dataset, tmp_path):
    configs = []
    for name, extra in (("latent", {"fm": False, "ce": False, "adv": False}), ("all", {})):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"name": name, "hidden_dim": 32, "batch_size": 16, **extra}))
        configs.append(str(path))
    rows = run_ablations(str(tiny_dataset), configs, str(tmp_path / "runs"), epochs=2, split="test",
                         report=lambda s: None)
    assert [r["name"] for r in rows] == ["untrained", "latent", "all"]
    assert rows[1]["losses"] == "latent" and rows[2]["losses"] == "latent+fm+ce+adv"
    assert all(-1 <= r["cosine"] <= 1 and r["mae"] >= 0 for r in rows)


def test_trained_projector_exports_and_generates(trained, tmp_path, photo_files):
    _, run = trained
    bundle = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "export/build_engines.py", "--preset", "tiny", "--projector",
                        str(run / "best.pt"), "--out", str(bundle)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "✓ projector.conditioning:" in r.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["conditioning"]["projector"] == "mlp"
    assert manifest["conditioning"]["trained"]["dataset"]["captioner"] == "tiny"
    r = subprocess.run([sys.executable, "runtime/generate.py", "--engines", str(bundle), "--image",
                        photo_files["coffee"], "--seconds", "1", "--out", str(tmp_path / "wav"), "--no-progress"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "wav" / "coffee.wav").is_file()


def test_projector_for_other_models_is_refused(trained, tmp_path):
    from img2music.export.bundle_build import load_trained_projector

    _, run = trained
    with pytest.raises(Img2MusicError, match="trained for other models"):
        load_trained_projector(str(run / "best.pt"), clip_dim=512, text_dim=768)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Img2MusicError, match="not a train.py checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))
