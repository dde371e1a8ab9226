"""The PyTorch reference pipeline: images -> CLIP -> projector -> MusicGen -> EnCodec -> audio.

This is the oracle every exported engine is checked against, so it runs
transformers' own ``MusicgenForConditionalGeneration.generate`` (delay pattern,
classifier-free guidance, temperature / top-k / top-p sampling) and its EnCodec
decoder. torch is allowed here and only here in ``runtime/``.

The projector's output replaces the T5 encoder's: ``generate`` is called exactly as
for a text prompt, with the text encoder swapped for one that returns the
conditioning (:class:`_FixedEncoder`). transformers then builds the null branch for
guidance (zero states, zero mask) just as it does for text, so the reference is the
text path with only the encoder's output changed.

Text prompts (``runtime.generation.conditioning``): a prompt alone goes through ``generate`` as
plain MusicGen text-to-music (its own tokenizer and T5); image + prompt joins the
projector's tokens and the prompt's T5 encoding as the fixed encoder output, and a
prompt weight other than 1 replaces the decoder's cross-attention mask by the weighted
bias the exported cross_kv builds (:func:`_weighted_cross_attention`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.conditioning import check_inputs
from img2music.runtime.generation.delay_pattern import check_frames, frames_for_seconds
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.pipeline.preprocess import ImageLike, preprocess_images
from img2music.runtime.pipeline.result import GenerationResult
from img2music.runtime.pipeline.timing import StageTimer


class ReferencePipeline:
    """Runs the whole image-to-music path in PyTorch eager."""

    def __init__(self, models, projector=None) -> None:
        import torch

        self.torch = torch
        self.models = models
        if projector is None:
            from img2music.basics.prompt_bank import PromptBankProjector, build_prompt_bank

            projector = PromptBankProjector(build_prompt_bank(models))
        self.projector = projector

    @property
    def frame_rate(self) -> int:
        return self.models.frame_rate

    @property
    def num_codebooks(self) -> int:
        return self.models.num_codebooks

    @property
    def max_frames(self) -> int:
        """Longest output of one ``generate`` call: the decoder's trained positions."""
        span = self.models.decoder_config().delay_span
        return int(self.models.musicgen.config.decoder.max_position_embeddings) - span

    def embed_images(self, pixel_values: np.ndarray):
        """(B, 3, H, W) CLIP pixels -> (B, D_clip) image embeddings."""
        with self.torch.inference_mode():
            out = self.models.clip.get_image_features(pixel_values=self.torch.from_numpy(pixel_values))
        return getattr(out, "pooler_output", out)

    def encode_text(self, prompt: str):
        """Prompt -> T5 hidden states (1, T, D_t5) and mask (1, T), as transformers' MusicGen encodes it."""
        from img2music.runtime.pipeline.text_encoder import check_prompt

        ids = self.models.t5_tokenizer([check_prompt(prompt)], return_tensors="pt")
        with self.torch.inference_mode():
            hidden = self.models.musicgen.text_encoder(**ids).last_hidden_state
        return hidden * ids["attention_mask"][..., None], ids["attention_mask"]

    def condition(self, images: Sequence[ImageLike] | None, timer: StageTimer, prompt: str | None = None,
                  prompt_weight: float = 1.0):
        """Images and/or a prompt -> ``runtime.generation.conditioning.Conditioning`` (torch tensors inside)."""
        from img2music.runtime.generation.conditioning import Conditioning, check_prompt_weight

        torch = self.torch
        if images is None:
            raise Img2MusicError("give images (a prompt alone goes through generate_text)")
        with timer.stage("preprocess"):
            pixels = preprocess_images(images, self.models.image_config)
        with timer.stage("clip"):
            image_embeds = self.embed_images(pixels)
        with timer.stage("projector"):
            cond = self.projector(image_embeds)
        if prompt is None:
            return Conditioning(cond.conditioning, cond.mask, cond.directives)
        weight = check_prompt_weight(prompt_weight)
        with timer.stage("t5"):
            hidden, text_mask = self.encode_text(prompt)
        b = cond.conditioning.shape[0]
        mask = torch.cat([cond.mask, text_mask.repeat(b, 1)], dim=1)  # (B, N + T)
        weights = torch.cat([torch.ones(cond.mask.shape), torch.full((b, text_mask.shape[1]), weight)], dim=1)
        return Conditioning(torch.cat([cond.conditioning.float(), hidden.repeat(b, 1, 1)], dim=1), mask,
                            cond.directives, None if weight == 1.0 else weights, prompt)

    def generate_codes(
        self,
        conditioning,
        mask,
        frames: int,
        sampling: SamplingConfig,
        on_step: Callable[[], None] | None = None,
        prompt=None,
        weight=None,
        text: str | None = None,
    ):
        """Conditioning (B, N, D_t5) + mask (B, N) -> (B, K, frames) codes via ``generate``.

        ``prompt``: (B, K, P) audio codes to continue (transformers' audio-prompt path);
        the result then holds the P prompt frames followed by ``frames`` new ones. ``weight``:
        (B, N) cross-attention weights per token (None: plain transformers). ``text``: a prompt
        alone (conditioning and mask None): transformers' own tokenizer and T5 encode it."""
        torch = self.torch
        if frames > self.max_frames:
            raise Img2MusicError(
                f"one pass generates at most {self.max_frames} frames "
                f"({self.max_frames / self.models.frame_rate:.1f} s); asked for {frames}"
            )
        mg = self.models.musicgen
        span = self.models.decoder_config().delay_span  # K, or K / 2 for stereo
        check_frames(frames, self.models.frame_rate)
        p = 0 if prompt is None else prompt.shape[2]
        kwargs = dict(
            max_length=p + frames + span,  # start token + frames + (S-1) delay steps
            do_sample=not sampling.greedy,
            guidance_scale=sampling.guidance_scale if sampling.uses_guidance else None,
            num_return_sequences=1,
            decoder_start_token_id=mg.generation_config.decoder_start_token_id,
            pad_token_id=mg.generation_config.pad_token_id,
            bos_token_id=mg.generation_config.bos_token_id,
            return_dict_in_generate=True,
        )
        if prompt is not None:
            kwargs["decoder_input_ids"] = torch.as_tensor(prompt).reshape(-1, p)  # (B*K, P)
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k)
            if 0.0 < sampling.top_p < 1.0:
                kwargs["top_p"] = sampling.top_p
        capture = _CodeCapture()
        # One decoder forward per step; generate() does not forward `streamer` in this
        # transformers version, so progress comes from a hook on the decoder.
        hook = None
        if on_step is not None:

            def count_step(*_) -> None:  # a forward hook must return None to keep the output
                on_step()

            hook = mg.decoder.register_forward_hook(count_step)
        torch.manual_seed(sampling.seed)
        if text is None:
            inputs = {"input_ids": torch.zeros(mask.shape, dtype=torch.long),  # never read: the encoder is fixed
                      "attention_mask": torch.as_tensor(mask)}
        else:
            inputs = dict(self.models.t5_tokenizer([text], return_tensors="pt"))
        with self._swapped(conditioning, capture), _weighted_cross_attention(weight), torch.inference_mode():
            try:
                mg.generate(**inputs, **kwargs)
            finally:
                if hook is not None:
                    hook.remove()
        return capture.codes()  # (B, K, F)

    def decode_audio(self, codes) -> np.ndarray:
        """(B, K, F) codes -> (B, F * hop) float32 audio, as ``generate`` decodes them; stereo:
        (B, F * hop, 2), each channel's codebooks (even = left) decoded on their own."""
        channels = self.models.audio_channels
        codec = self.models.musicgen.audio_encoder
        with self.torch.inference_mode():
            audio = [codec.decode(codes[None, :, c::channels], [None] * codes.shape[0]).audio_values[:, 0]
                     for c in range(channels)]  # each (B, samples)
        if channels == 1:
            return audio[0].float().numpy()
        return self.torch.stack(audio, dim=-1).float().numpy()  # (B, samples, C)

    @contextmanager
    def _swapped(self, conditioning, capture: "_CodeCapture") -> Iterator[None]:
        """Text encoder -> fixed conditioning (unless None: a text prompt); audio decoder -> code
        capture (decoded separately)."""
        mg = self.models.musicgen
        text_encoder, audio_encoder = mg.text_encoder, mg.audio_encoder
        if conditioning is not None:
            mg.text_encoder = _FixedEncoder(conditioning, text_encoder.config)
        mg.audio_encoder = capture
        try:
            yield
        finally:
            mg.text_encoder, mg.audio_encoder = text_encoder, audio_encoder

    def __call__(
        self,
        images: Sequence[ImageLike] | None,
        seconds: float,
        sampling: SamplingConfig | None = None,
        on_step: Callable[[], None] | None = None,
        prompt: str | None = None,
        prompt_weight: float = 1.0,
    ) -> GenerationResult:
        sampling = sampling or SamplingConfig()
        timer = StageTimer()
        frames = frames_for_seconds(seconds, self.models.frame_rate)
        check_inputs(images is not None, prompt, prompt_weight)
        if images is None:
            from img2music.runtime.pipeline.text_encoder import check_prompt

            with timer.stage("decoder"):
                codes = self.generate_codes(None, None, frames, sampling, on_step, text=check_prompt(prompt))
            directives = None
        else:
            cond = self.condition(images, timer, prompt, prompt_weight)
            with timer.stage("decoder"):
                codes = self.generate_codes(cond.conditioning, cond.mask, frames, sampling, on_step, weight=cond.weight)
            directives = cond.directives
        with timer.stage("encodec"):
            audio = self.decode_audio(codes)
        return GenerationResult(audio, self.models.sample_rate, codes.numpy(), directives, timer)


@contextmanager
def _weighted_cross_attention(weight) -> Iterator[None]:
    """While generating, MusicGen's cross-attention mask becomes the weighted bias cross_kv.onnx
    builds: log(weight) where the mask is 1, the dtype's min where it is 0 (None: unchanged)."""
    if weight is None:
        yield
        return
    import torch
    from transformers.models.musicgen import modeling_musicgen

    original = modeling_musicgen.create_bidirectional_mask
    weight = torch.as_tensor(weight, dtype=torch.float32)  # (B, N)

    def weighted(config, inputs_embeds, attention_mask, encoder_hidden_states=None, **kwargs):
        rows = attention_mask.shape[0]  # B, or 2B with the guidance null branch (fully masked)
        w = torch.cat([weight, torch.ones_like(weight)])[:rows] if rows != weight.shape[0] else weight
        bias = torch.where(attention_mask.bool(), torch.log(w.clamp_min(1e-30)),
                           torch.finfo(inputs_embeds.dtype).min)
        return bias[:, None, None, :].to(inputs_embeds.dtype)  # (B2, 1, 1, N)

    modeling_musicgen.create_bidirectional_mask = weighted
    try:
        yield
    finally:
        modeling_musicgen.create_bidirectional_mask = original


def _torch_module_base():
    from torch import nn

    return nn.Module


class _FixedEncoder(_torch_module_base()):
    """Stands in for MusicGen's T5 encoder and returns a given conditioning."""

    main_input_name = "input_ids"

    def __init__(self, hidden_states, config) -> None:
        super().__init__()
        self.hidden_states = hidden_states  # (B, N, D_t5)
        self.config = config

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=self.hidden_states)

    def get_output_embeddings(self):
        return None


class _CodeCapture(_torch_module_base()):
    """Stands in for EnCodec inside ``generate``: keeps the codes, decodes nothing. A stereo
    ``generate`` decodes twice (left codebooks, then right): :meth:`codes` interleaves them back."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def codes(self):
        """(B, K, F) every codebook, in the decoder's order."""
        import torch

        if len(self.calls) == 1:
            return self.calls[0][0]
        left, right = (c[0] for c in self.calls)  # (B, K/2, F) each
        return torch.stack([left, right], dim=2).flatten(1, 2)  # (B, K, F): L0 R0 L1 R1 ...

    def decode(self, audio_codes, audio_scales=None, **kwargs):
        from transformers.models.encodec.modeling_encodec import EncodecDecoderOutput

        self.calls.append(audio_codes.clone())  # (1, B, K or K/2, F)
        return EncodecDecoderOutput(audio_values=audio_codes.new_zeros((audio_codes.shape[1], 1, 0)).float())
