"""The relevance and quality measures of ``benchmarks/evaluate_music.py``, on plain arrays.

No models here: every function takes embeddings or probabilities, so each is checked
against a hand computation (``tests/benchmarks/test_music_metrics.py``).

- :func:`frechet_distance`: FAD's Fréchet distance between two sets of embeddings (rows
  = samples), ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)``. fadtk and
  frechet-audio-distance compute the same formula but each downloads its own embedding
  models when imported for use; the formula itself is five lines of scipy, so it is
  written here and the embeddings come from transformers models the user points at.
- :func:`kl_divergence`: KL(reference || generated) over an audio classifier's labels,
  summed over labels, one value per pair, as audiocraft's ``kld`` metric computes it
  (softmax label distributions, 1e-6 floor).
- :func:`imsm`: MeLFusion's image-music similarity through a shared text space (see there).
- :func:`relevance_through_text`: CLAP relevance of music to an image via the text CLIP
  ranks closest to the image.
"""

from __future__ import annotations

import warnings

import numpy as np

KL_EPSILON = 1e-6


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(samples, dims) -> mean (dims,), covariance (dims, dims) (unbiased, as numpy's cov)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 embeddings as (samples, dims), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    from scipy import linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # fewer samples than dimensions make the product singular; its square root is still
        # defined (pytorch-fid and fadtk accept it the same way), scipy warns all the same
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():  # offset both, as pytorch-fid does
            offset = np.eye(len(mu1)) * 1e-6
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)  # sqrtm leaves tiny imaginary parts from round-off
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # round-off can take identical sets a hair below zero


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets (rows = samples)."""
    return frechet_from_stats(*gaussian_stats(x), *gaussian_stats(y))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def kl_divergence(reference_probs: np.ndarray, generated_probs: np.ndarray, eps: float = KL_EPSILON) -> np.ndarray:
    """(N, labels) label distributions -> (N,) KL(reference || generated) per pair."""
    p = np.asarray(reference_probs, dtype=np.float64)
    q = np.asarray(generated_probs, dtype=np.float64)
    return (p * (np.log(p + eps) - np.log(q + eps))).sum(axis=-1)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, d), (m, d) -> (n, m) cosine similarities."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return a @ b.T


def imsm_matrix(image_emb: np.ndarray, image_text_emb: np.ndarray, audio_emb: np.ndarray,
                audio_text_emb: np.ndarray, image_scale: float, audio_scale: float) -> np.ndarray:
    """IMSM for every (image, music) pair: (n_images, n_music).

    MeLFusion scores image-music fit through text, since no model embeds images and music
    together: CLIP says which of a set of texts the image is about, CLAP which of the same
    texts the music is about. Here each is a distribution over the ``m`` texts (softmax of
    the model's scaled cosine similarities, CLIP's / CLAP's own logit scales), and IMSM is
    their inner product: the probability that image and music pick the same text, in
    [0, 1]. ``image_text_emb`` / ``audio_text_emb``: the same texts through CLIP's and
    CLAP's text towers, (m, d_clip) and (m, d_clap)."""
    p_image = softmax(image_scale * cosine_matrix(image_emb, image_text_emb))  # (n, m)
    p_audio = softmax(audio_scale * cosine_matrix(audio_emb, audio_text_emb))  # (n', m)
    return p_image @ p_audio.T


def imsm(image_emb, image_text_emb, audio_emb, audio_text_emb, image_scale: float, audio_scale: float) -> np.ndarray:
    """(n,) IMSM of each image with the music made for it (row i with row i)."""
    return np.diag(imsm_matrix(image_emb, image_text_emb, audio_emb, audio_text_emb, image_scale, audio_scale))


def relevance_through_text(image_emb, image_text_emb, audio_emb, audio_text_emb) -> np.ndarray:
    """(n,) CLAP cosine between each music and the text CLIP ranks closest to its image."""
    nearest = cosine_matrix(image_emb, image_text_emb).argmax(axis=1)  # (n,)
    return np.einsum("nd,nd->n", _unit(audio_emb), _unit(np.asarray(audio_text_emb)[nearest]))


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, d), (n, d) -> (n,) cosine of row i with row i."""
    return np.einsum("nd,nd->n", _unit(a), _unit(b))


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
