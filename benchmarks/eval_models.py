"""The models the music evaluation measures with, each from a hub id or a local directory.

- CLIP (image <-> text; IMSM's image side, CLAP relevance's text choice): ``CLIPModel``.
- CLAP (music <-> text; IMSM's music side, CLAP scores, FAD embeddings): ``ClapModel``;
  music is cut into 10 s windows (the length CLAP was trained on, no random crop), each
  window embedded, the windows' unit vectors averaged.
- An audio classifier for KL: any ``AutoModelForAudioClassification`` (default AST
  fine-tuned on AudioSet; PaSST and PANNs have no transformers port and are left out);
  label distributions averaged over the classifier's own window length.
- EnCodec's encoder for FAD embeddings (one 128-d latent per frame, as fadtk's EnCodec model).

``tiny`` builds each architecture at toy size with random weights (tests: no hub); its
numbers mean nothing. Everything here needs torch + transformers (the ``eval`` extra).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from img2music.basics.models import from_pretrained

log = logging.getLogger(__name__)

TINY = "tiny"
DEFAULT_CLAP = "laion/clap-htsat-unfused"
DEFAULT_CLASSIFIER = "MIT/ast-finetuned-audioset-10-10-0.4593"
DEFAULT_ENCODEC = "facebook/encodec_32khz"
CLAP_WINDOW_SECONDS = 10.0


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(S,) float audio at ``rate`` -> ``target`` Hz (the runtime's soxr resampler, whole file)."""
    from img2music.runtime.audio.resampler import Resampler

    return Resampler(rate, target)(audio, last=True)


def windows(audio: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive pieces of at most ``size`` samples; a last piece under a quarter window is
    dropped when there are others (it would be mostly padding)."""
    pieces = [audio[i: i + size] for i in range(0, max(len(audio), 1), size)]
    if len(pieces) > 1 and len(pieces[-1]) < size // 4:
        pieces.pop()
    return pieces


BATCH = 32
"""Images / texts per forward: a MeLBench-size manifest (11k items) must not go in as one batch."""


def _features(out) -> Any:
    return getattr(out, "pooler_output", out)  # transformers 5 returns an output object


def _in_batches(fn, values: Sequence) -> np.ndarray:
    """``fn`` over ``values`` BATCH at a time, rows concatenated."""
    return np.concatenate([fn(values[i: i + BATCH]) for i in range(0, len(values), BATCH)])


def _text_embeddings(model, tokenizer, device: str, texts: Sequence[str]) -> np.ndarray:
    """Texts -> (n, d) through a CLIP or CLAP text tower (both have ``get_text_features``)."""
    import torch

    def embed(batch: Sequence[str]) -> np.ndarray:
        ids = tokenizer(list(batch), padding=True, truncation=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            return _features(model.get_text_features(**ids)).float().cpu().numpy()

    return _in_batches(embed, list(texts))


@dataclass
class ClipScorer:
    """CLIP's image and text towers; embeddings as float32 numpy rows."""

    model: Any
    tokenizer: Any
    image_config: Any
    name: str
    device: str = "cpu"

    @property
    def scale(self) -> float:
        """CLIP's logit scale (exp of the learned temperature)."""
        return float(self.model.logit_scale.detach().exp())

    def images(self, paths: Sequence[str]) -> np.ndarray:
        """Image files -> (n, d), read and embedded a batch at a time."""
        return _in_batches(self._images, list(paths))

    def _images(self, paths: Sequence[str]) -> np.ndarray:
        import torch

        from img2music.runtime.pipeline.preprocess import load_image, preprocess_images

        pixels = preprocess_images([load_image(p) for p in paths], self.image_config)
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=torch.from_numpy(pixels).to(self.device))
            return _features(out).float().cpu().numpy()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return _text_embeddings(self.model, self.tokenizer, self.device, texts)


@dataclass
class ClapScorer:
    """CLAP's audio and text towers."""

    model: Any
    feature_extractor: Any
    tokenizer: Any
    name: str
    device: str = "cpu"

    @property
    def rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def scale(self) -> float:
        """CLAP's audio-to-text logit scale."""
        return float(self.model.logit_scale_a.detach().exp())

    def window_embeddings(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """(S,) audio -> (windows, d): one embedding per 10 s window (FAD's samples)."""
        import torch

        x = resample(audio, rate, self.rate)
        pieces = windows(x, int(CLAP_WINDOW_SECONDS * self.rate))
        # rand_trunc never crops here (windows are <= 10 s) and keeps the single-channel input an
        # unfused checkpoint takes; shorter windows are repeat-padded, as CLAP was trained
        f = self.feature_extractor(pieces, sampling_rate=self.rate, truncation="rand_trunc", padding="repeatpad",
                                   return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return _features(self.model.get_audio_features(**f)).float().cpu().numpy()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return _text_embeddings(self.model, self.tokenizer, self.device, texts)


@dataclass
class AudioClassifier:
    """An audio-classification model's softmax label distribution (KL's inputs)."""

    model: Any
    feature_extractor: Any
    name: str
    window_seconds: float
    device: str = "cpu"

    @property
    def rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def labels(self) -> list[str]:
        id2label = self.model.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    def probs(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """(S,) audio -> (labels,): softmax over labels, averaged over the classifier's windows."""
        import torch

        x = resample(audio, rate, self.rate)
        pieces = windows(x, int(self.window_seconds * self.rate))
        f = self.feature_extractor(pieces, sampling_rate=self.rate, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**f).logits.float()  # (windows, labels)
        return torch.softmax(logits, dim=-1).mean(dim=0).cpu().numpy()


@dataclass
class EncodecEmbedder:
    """EnCodec's encoder latents, one row per frame (FAD's samples)."""

    model: Any
    name: str
    device: str = "cpu"

    @property
    def rate(self) -> int:
        return int(self.model.config.sampling_rate)

    def frame_embeddings(self, audio: np.ndarray, rate: int) -> np.ndarray:
        import torch

        x = torch.from_numpy(resample(audio, rate, self.rate))[None, None].to(self.device)  # (1, 1, S)
        with torch.inference_mode():
            latents = self.model.encoder(x)  # (1, D, frames)
        return latents[0].T.float().cpu().numpy()  # (frames, D)


def load_clip_scorer(name: str, device: str = "cpu") -> ClipScorer:
    if name == TINY:
        from img2music.basics.models import build_preset

        models = build_preset("tiny")
        return ClipScorer(models.clip, models.clip_tokenizer, models.image_config, TINY, device)
    from img2music.basics.models import load_clip

    model, tokenizer, image_config = load_clip(name, kind="CLIP (--clip)")
    return ClipScorer(model.to(device), tokenizer, image_config, name, device)


def load_clap_scorer(name: str, device: str = "cpu") -> ClapScorer:
    if name == TINY:
        return _tiny_clap(device)
    from transformers import ClapModel, ClapProcessor

    model = from_pretrained("CLAP (--clap)", name, ClapModel.from_pretrained).eval().to(device)
    processor = from_pretrained("CLAP processor (--clap)", name, ClapProcessor.from_pretrained)
    return ClapScorer(model, processor.feature_extractor, processor.tokenizer, name, device)


def load_classifier(name: str, device: str = "cpu") -> AudioClassifier:
    if name == TINY:
        return _tiny_classifier(device)
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    model = from_pretrained("audio classifier (--classifier)", name,
                            AutoModelForAudioClassification.from_pretrained).eval().to(device)
    with _quiet_mel_filters():
        fe = from_pretrained("audio classifier feature extractor (--classifier)", name,
                             AutoFeatureExtractor.from_pretrained)
    return AudioClassifier(model, fe, name, _classifier_window(fe), device)


def load_encodec_embedder(name: str, device: str = "cpu") -> EncodecEmbedder:
    if name == TINY:
        from img2music.basics.models import build_preset

        return EncodecEmbedder(build_preset("tiny").musicgen.audio_encoder, TINY, device)
    from transformers import EncodecModel

    return EncodecEmbedder(from_pretrained("EnCodec (--encodec)", name, EncodecModel.from_pretrained).eval().to(device),
                           name, device)


@contextmanager
def _quiet_mel_filters() -> Iterator[None]:
    """AST's own extractor (128 mel bins over a 400-point FFT) leaves some mel filters empty by
    design and transformers warns about it on every construction: not the user's problem."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        yield


def _classifier_window(fe) -> float:
    """Seconds one classifier input covers: AST pads / cuts to ``max_length`` 10 ms frames."""
    frames = getattr(fe, "max_length", None)
    return frames * 0.01 if frames else 10.0


def _tiny_clap(device: str) -> ClapScorer:
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from img2music.basics.prompt_bank import load_directives
    from img2music.basics.tiny_tokenizers import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(load_directives())
    # HTSAT needs its 256-wide spectrogram image (64 mel bins x 4 time folds) at any size
    audio = dict(spec_size=256, num_mel_bins=64, patch_size=4, window_size=8, depths=[1, 1],
                 num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32, enable_fusion=False,
                 projection_dim=16)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=96, projection_dim=16,
                pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).eval().to(device)
    fe = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, max_length_s=10)
    return ClapScorer(model, fe, tokenizer, TINY, device)


def _tiny_classifier(device: str) -> AudioClassifier:
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    labels = ["music", "piano", "drums", "strings", "voice", "synth", "guitar", "silence"]
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=128, max_length=1024, num_labels=len(labels),
                       id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)})
    torch.manual_seed(0)
    model = ASTForAudioClassification(config).eval().to(device)
    with _quiet_mel_filters():
        fe = ASTFeatureExtractor()
    return AudioClassifier(model, fe, TINY, _classifier_window(fe), device)
