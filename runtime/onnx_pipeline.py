"""The exported pipeline on ONNX Runtime + numpy: images -> WAV-ready audio, no torch.

Stages: preprocessing (numpy + Pillow) -> clip_vision -> projector -> cross_kv
(once per conditioning) -> decoder_step loop (runtime.generator) -> encodec_decode.
Everything comes from a verified bundle (runtime.bundle).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np

from runtime.bundle import GRAPHS, Bundle, check_decoder_config, check_session, load_bundle
from runtime.decoder_session import DecoderSession, DecoderShape
from runtime.delay_pattern import check_frames, frames_for_seconds
from runtime.encodec_stream import EncodecStreamDecoder, onnx_stream_functions
from runtime.generator import MusicGenerator
from runtime.onnx_session import create_session
from runtime.preprocess import ClipImageConfig, ImageLike, preprocess_images
from runtime.result import GenerationResult
from runtime.sampling import SamplingConfig
from runtime.timing import StageTimer

log = logging.getLogger(__name__)


class OnnxPipeline:
    """Sessions for every stage of a bundle, loaded once and reused across calls."""

    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None,
                 spinning: bool = True) -> None:
        self.bundle = bundle
        sessions = {}
        for name in GRAPHS:
            session = create_session(bundle.graph_path(name), threads=threads, providers=providers, spinning=spinning)
            check_session(session, name, bundle.graph(name))
            sessions[name] = session
        self.sessions = sessions
        check_decoder_config(bundle, sessions["decoder_step"])
        d = bundle.decoder
        self.decoder = DecoderSession(
            sessions["decoder_step"], sessions["cross_kv"],
            DecoderShape(d["num_layers"], d["num_heads"], d["head_dim"], d["num_codebooks"], d["vocab_size"],
                         d["max_length"]),
            kv_scales=bundle.kv_scales(),
        )
        self.generator = MusicGenerator(self.decoder, pad_id=d["pad_token_id"])
        image = dict(bundle.manifest["clip"]["image"])
        image["image_mean"], image["image_std"] = tuple(image["image_mean"]), tuple(image["image_std"])
        self.image_config = ClipImageConfig(**image)
        self.directives = bundle.conditioning.get("directives")

    @classmethod
    def load(cls, root: str | os.PathLike, threads: int | None = None, verify_hashes: bool = True,
             providers: list[str] | None = None, spinning: bool = True) -> "OnnxPipeline":
        """``providers``: onnxruntime execution providers (default CPU). The KV cache lives in
        host memory, so other providers run but copy it per step: the GPU path proper is
        the TensorRT backend. ``spinning=False`` when other threads need the cores (live)."""
        return cls(load_bundle(root, verify_hashes=verify_hashes), threads=threads, providers=providers,
                   spinning=spinning)

    @property
    def sample_rate(self) -> int:
        return int(self.bundle.audio["sample_rate"])

    @property
    def frame_rate(self) -> int:
        return int(self.bundle.audio["frame_rate"])

    @property
    def num_codebooks(self) -> int:
        return int(self.bundle.decoder["num_codebooks"])

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) -> (B, D_clip)."""
        return self.sessions["clip_vision"].run(None, {"pixel_values": pixel_values})[0]

    def project(self, image_embeds: np.ndarray):
        """(B, D_clip) -> conditioning (B, N, D_t5), mask (B, N), directive texts or None."""
        outs = self.sessions["projector"].run(None, {"image_embeds": image_embeds.astype(np.float32)})
        directives = None
        if len(outs) > 2 and self.directives:
            directives = [self.directives[int(i)] for i in outs[2]]
        return outs[0], outs[1], directives

    def decode_audio(self, codes: np.ndarray) -> np.ndarray:
        """(B, K, F) -> (B, F * hop) float32."""
        check_frames(codes.shape[-1], self.frame_rate)
        return self.sessions["encodec_decode"].run(None, {"audio_codes": codes.astype(np.int64)})[0][:, 0]

    def stream_decoder(self, batch: int) -> EncodecStreamDecoder:
        """A fresh exact streaming EnCodec decoder for ``batch`` streams."""
        s = self.bundle.manifest["encodec_stream"]
        front, back = onnx_stream_functions(self.sessions["encodec_stream_front"], self.sessions["encodec_stream_back"])
        return EncodecStreamDecoder(front, back, (s["lstm_layers"], batch, s["lstm_channels"]),
                                    int(self.bundle.audio["hop_length"]))

    def __call__(
        self,
        images: Sequence[ImageLike],
        seconds: float,
        sampling: SamplingConfig | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> GenerationResult:
        sampling = sampling or SamplingConfig()
        timer = StageTimer()
        frames = frames_for_seconds(seconds, self.frame_rate)
        with timer.stage("preprocess"):
            pixels = preprocess_images(images, self.image_config)
        with timer.stage("clip"):
            image_embeds = self.embed_images(pixels)
        with timer.stage("projector"):
            cond, mask, directives = self.project(image_embeds)
        with timer.stage("cross_kv"):
            self.generator.set_conditioning(cond, mask, sampling.uses_guidance)
        with timer.stage("decoder"):
            codes = self.generator.generate(frames, sampling, on_step)
        with timer.stage("encodec"):
            audio = self.decode_audio(codes)
        return GenerationResult(audio, self.sample_rate, codes, directives, timer)
