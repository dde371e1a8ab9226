"""Phase II losses and how they map to the thesis' objective.

The thesis trains the projector with

    L = λ_latent L_latent + λ_mel L_mel + λ_adv L_adv + λ_FM L_FM
        (defaults 1.0, 0.5, 0.2, 0.1)

- ``L_latent`` -> :func:`latent_terms`: masked L1 (MAE) between predicted and target
  conditioning, plus (1 - cosine) per token (logged apart as ``latent_l1`` and
  ``latent_cos``).
- ``L_FM`` -> ``fm``: feature matching on MusicGen's decoder, teacher-forced on the
  item's audio codes: L1 between the decoder's hidden states (every layer) under the
  predicted conditioning and under the target conditioning (no gradient to the target).
- ``L_mel`` -> the audio-fidelity pair, both weighted by λ_mel: ``ce``, the
  teacher-forced cross-entropy of the paired codes under the predicted conditioning,
  and, with ``--mel``, ``mel``: L1 between log-mel spectrograms of EnCodec's decode of
  *soft* codes (softmax over the logits times each codebook's embeddings, summed over
  the residual codebooks: a differentiable path) and of the true codes.
- ``L_adv`` -> ``adv``: a small hinge-loss discriminator on (masked-mean pooled)
  conditioning, target = real, prediction = fake.

Items without audio (``audio_mask`` all zero) only feed the latent and adversarial terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def align_targets(hidden: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 targets (B, L, D) + mask (B, L) -> N tokens: padded when the directive has at
    most N tokens, otherwise its valid tokens average-pooled into N (N=1: the mean)."""
    b, _, d = hidden.shape
    out = hidden.new_zeros(b, n, d)
    out_mask = torch.zeros(b, n, dtype=torch.long)
    for i in range(b):
        valid = hidden[i, : int(mask[i].sum())]  # (l, D)
        if len(valid) <= n:
            out[i, : len(valid)] = valid
            out_mask[i, : len(valid)] = 1
        else:
            out[i] = F.adaptive_avg_pool1d(valid.T[None], n)[0].T
            out_mask[i] = 1
    return out, out_mask


def latent_terms(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    m = mask.to(pred.dtype)[..., None]  # (B, N, 1)
    count = m.sum().clamp(min=1)
    l1 = ((pred - target).abs() * m).sum() / (count * pred.shape[-1])
    cos = F.cosine_similarity(pred, target, dim=-1, eps=1e-6)  # (B, N)
    return {"latent_l1": l1, "latent_cos": ((1 - cos) * mask).sum() / count}


def pooled(cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(cond.dtype)[..., None]
    return (cond * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)


class ConditioningDiscriminator(nn.Module):
    """Real (target) vs projected conditioning, on the pooled vector."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(pooled(cond, mask))[:, 0]


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator's scores (B,) on targets (real) and projections (fake)."""
    return torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()


def delayed_sequence(codes: torch.Tensor, frame_mask: torch.Tensor, pad: int):
    """(B, K, F) codes -> decoder inputs (B*K, F+K-1), labels (B*K, F+K-1) and a label mask,
    in MusicGen's delay pattern (codebook k shifted by k, a start token in front)."""
    b, k, f = codes.shape
    seq = codes.new_full((b, k, f + k), pad)
    valid = torch.zeros(b, k, f + k, dtype=torch.bool, device=codes.device)
    for i in range(k):
        seq[:, i, 1 + i : 1 + i + f] = codes[:, i]
        valid[:, i, 1 + i : 1 + i + f] = frame_mask.bool()
    return seq[:, :, :-1].reshape(b * k, -1), seq[:, :, 1:].reshape(b * k, -1), valid[:, :, 1:].reshape(b * k, -1)


class MusicgenTerms:
    """Decoder- and codec-side terms (fm, ce, mel) on a frozen MusicGen."""

    def __init__(self, musicgen, mel: bool = False) -> None:
        self.mg = musicgen.eval()
        for p in self.mg.parameters():
            p.requires_grad_(False)
        self.k = int(musicgen.decoder.num_codebooks)
        self.pad = int(musicgen.generation_config.pad_token_id)
        self.codebook = int(musicgen.config.audio_encoder.codebook_size)
        self.mel = mel
        if mel:
            from transformers.audio_utils import mel_filter_bank

            sr = int(musicgen.config.audio_encoder.sampling_rate)
            self.n_fft = 1024
            bank = mel_filter_bank(num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=64, min_frequency=0.0,
                                   max_frequency=sr / 2, sampling_rate=sr, norm="slaney", mel_scale="slaney")
            self.mel_bank = torch.from_numpy(bank).float()  # (n_fft/2+1, 64)

    def _decode(self, cond, mask, inputs, hidden_states: bool):
        b = cond.shape[0]
        out = self.mg.decoder(input_ids=inputs, encoder_hidden_states=self.mg.enc_to_dec_proj(cond),
                              encoder_attention_mask=mask, output_hidden_states=hidden_states)
        return out, b

    def __call__(self, pred, pred_mask, target, target_mask, codes, frame_mask, terms: set[str]):
        """Requested ``terms`` among {'fm', 'ce', 'mel'} for the rows that have audio."""
        rows = frame_mask.sum(1) > 0
        if not rows.any() or not terms & {"fm", "ce", "mel"}:
            return {}
        pred, pred_mask, target, target_mask = pred[rows], pred_mask[rows], target[rows], target_mask[rows]
        codes, frame_mask = codes[rows], frame_mask[rows]
        inputs, labels, valid = delayed_sequence(codes, frame_mask, self.pad)
        out, b = self._decode(pred, pred_mask, inputs, hidden_states="fm" in terms)
        result = {}
        if "fm" in terms:
            with torch.no_grad():
                ref, _ = self._decode(target, target_mask, inputs, hidden_states=True)
            hs = list(zip(out.hidden_states[1:], ref.hidden_states[1:]))  # every layer, not the embeddings
            result["fm"] = sum(F.l1_loss(h, r) for h, r in hs) / len(hs)
        logits = out.logits.float()  # (B*K, S, V)
        if "ce" in terms:
            result["ce"] = F.cross_entropy(logits[valid], labels[valid])
        if "mel" in terms and self.mel:
            result["mel"] = self._mel_term(logits.reshape(b, self.k, -1, logits.shape[-1]), codes)
        return result

    def _mel_term(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        f = codes.shape[2]
        q = self.mg.audio_encoder.quantizer
        soft = 0
        hard = 0
        for i in range(self.k):
            probs = logits[:, i, i : i + f, : self.codebook].softmax(-1)  # (B, F, V): position i+f predicts frame f
            embed = q.layers[i].codebook.embed  # (V, D)
            soft = soft + probs @ embed
            hard = hard + F.embedding(codes[:, i], embed)
        audio = self.mg.audio_encoder.decoder(soft.transpose(1, 2))[:, 0]  # (B, T)
        with torch.no_grad():
            ref = self.mg.audio_encoder.decoder(hard.transpose(1, 2))[:, 0]
        return F.l1_loss(self._log_mel(audio), self._log_mel(ref))

    def _log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, hop_length=self.n_fft // 4,
                          window=torch.hann_window(self.n_fft, device=audio.device), return_complex=True)
        power = spec.abs() ** 2  # (B, n_fft/2+1, T)
        return torch.log(torch.einsum("bft,fm->bmt", power, self.mel_bank.to(audio.device)) + 1e-5)
