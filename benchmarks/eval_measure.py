"""Measuring the systems' music (``benchmarks/evaluate_music.py``): embeddings, then the metrics.

Per system, over the manifest's items (``benchmarks.music_metrics`` has the formulas):

- ``imsm``: image-music similarity through the text set (CLIP x CLAP), mean over items.
- ``clap_image``: CLAP cosine between the music and the text CLIP ranks closest to its image.
- ``clap_text``: CLAP cosine between the music and the item's own text (items with text).
- ``fad_<model>``: Fréchet distance between the system's embeddings and the reference
  audio's (CLAP: one embedding per 10 s window; EnCodec: one per frame).
- ``kl``: KL(reference || generated) of the classifier's label distributions, mean over
  items with reference audio.
- ``cosine`` / ``mae``: the thesis' latent measures (``eval_systems.latent_scores``), where
  the system has an image conditioning and the item a text.

Audio embeddings are cached beside each WAV (``ID.<what>-<model>.npy``, remade when older
than the WAV), so a rerun with another metric set only computes what is new.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from img2music.benchmarks import music_metrics as mm
from img2music.benchmarks.eval_systems import Item
from img2music.runtime.audio.files import read_mono

log = logging.getLogger(__name__)


@dataclass
class Meters:
    """The measuring models; ``classifier`` None skips KL, ``fad`` maps FAD names to embedders."""

    clip: object
    clap: object
    classifier: object | None
    fad: dict


def _tag(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def cached(wav: Path, key: str, what: str, model: str, compute: Callable[[], np.ndarray],
           root: Path | None = None) -> np.ndarray:
    """An embedding of ``wav`` from its cache file ``ROOT/KEY.WHAT-MODEL.npy`` (ROOT: beside
    the WAV), or computed and stored."""
    folder = root or wav.parent
    path = folder / f"{key}.{what}-{_tag(model)}.npy"
    if path.is_file() and path.stat().st_mtime_ns >= wav.stat().st_mtime_ns:
        return np.load(path)
    value = np.asarray(compute())
    folder.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part.npy")
    np.save(part, value)
    part.replace(path)
    return value


class AudioFeatures:
    """Every audio-side quantity of one set of WAVs (a system's, or the reference audio)."""

    def __init__(self, meters: Meters, wavs: dict[str, Path], cache_root: Path | None = None) -> None:
        self.meters, self.wavs, self.cache_root = meters, wavs, cache_root

    def _get(self, item_id: str, what: str, model: str, fn) -> np.ndarray:
        wav = self.wavs[item_id]

        def compute():
            audio, rate = read_mono(wav)
            return fn(audio, rate)

        return cached(wav, item_id, what, model, compute, self.cache_root)

    def clap_windows(self, item_id: str) -> np.ndarray:
        return self._get(item_id, "clap", self.meters.clap.name, self.meters.clap.window_embeddings)

    def clap(self, item_id: str) -> np.ndarray:
        e = self.clap_windows(item_id)
        return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).mean(axis=0)

    def fad_samples(self, item_id: str, fad_name: str) -> np.ndarray:
        if fad_name == "clap":
            return self.clap_windows(item_id)
        embedder = self.meters.fad[fad_name]
        return self._get(item_id, fad_name, embedder.name, embedder.frame_embeddings)

    def probs(self, item_id: str) -> np.ndarray:
        c = self.meters.classifier
        return self._get(item_id, "labels", c.name, c.probs)


def measure_system(meters: Meters, items: Sequence[Item], wavs: dict[str, Path], infos: dict[str, dict],
                   image_emb: np.ndarray, text_set: dict, reference: AudioFeatures | None,
                   progress: Callable = lambda it, **kw: it, desc: str = "") -> tuple[dict, dict]:
    """One system's metrics: (means, per-item values). ``image_emb``: CLIP rows in item order;
    ``text_set``: {"clip": (m, d), "clap": (m, d')} embeddings of the IMSM text set."""
    feats = AudioFeatures(meters, wavs)
    audio_emb = np.stack([feats.clap(item.id) for item in progress(items, desc=f"measure {desc}", unit="piece")])
    per_item: dict[str, list] = {
        "imsm": mm.imsm(image_emb, text_set["clip"], audio_emb, text_set["clap"], meters.clip.scale,
                        meters.clap.scale).tolist(),
        "clap_image": mm.relevance_through_text(image_emb, text_set["clip"], audio_emb, text_set["clap"]).tolist(),
    }
    with_text = [i for i, item in enumerate(items) if item.text]
    if with_text:
        text_emb = meters.clap.texts([items[i].text for i in with_text])
        scores = mm.paired_cosine(audio_emb[with_text], text_emb)
        per_item["clap_text"] = _spread(len(items), with_text, scores)
    with_audio = [i for i, item in enumerate(items) if item.audio]
    if reference is not None and with_audio:
        if len(with_audio) >= 2:
            for name in meters.fad:
                ours = np.concatenate([feats.fad_samples(item.id, name) for item in items])
                theirs = np.concatenate([reference.fad_samples(items[i].id, name) for i in with_audio])
                per_item[f"fad_{name}"] = mm.frechet_distance(ours, theirs)  # one value for the set
        else:
            log.warning("FAD needs reference audio for at least 2 items; %d have it", len(with_audio))
        if meters.classifier is not None:
            p_ref = np.stack([reference.probs(items[i].id) for i in with_audio])
            p_gen = np.stack([feats.probs(items[i].id) for i in with_audio])
            per_item["kl"] = _spread(len(items), with_audio, mm.kl_divergence(p_ref, p_gen))
    for key in ("cosine", "mae"):
        values = [infos[item.id].get(key) for item in items]
        if any(v is not None for v in values):
            per_item[key] = values
    means = {key: (value if isinstance(value, float) else _mean(value)) for key, value in per_item.items()}
    return means, {k: v for k, v in per_item.items() if not isinstance(v, float)}


def _spread(n: int, where: list[int], values) -> list:
    out: list = [None] * n
    for i, v in zip(where, values):
        out[i] = float(v)
    return out


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
