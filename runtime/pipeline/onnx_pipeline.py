"""The exported pipeline on ONNX Runtime + numpy: images -> audio, streamed, no torch.

Stages: preprocessing (numpy + Pillow) -> clip_vision -> projector [+ t5_encoder for a
text prompt, ``runtime.generation.conditioning``] -> cross_kv (once
per conditioning) -> decoder steps (``runtime.generation.core``, the one core) -> exact
streaming EnCodec (``runtime.pipeline.encodec_stream``). Everything comes from a verified
bundle (``runtime.bundle.loading``); the sessions from ``runtime.backends.providers``.

Usage::

    pipeline = OnnxPipeline.load("engines/small")
    stream = pipeline.stream([Image.open("photo.jpg")], seconds=10)
    for chunk in stream:            # an AudioChunk per second of music, as it is made
        play(chunk.audio[0])
    result = pipeline([image], 10)  # or everything at once (GenerationResult)
    stream = pipeline.stream([image], 10, prompt="slow, warm, no drums", prompt_weight=1.5)
    stream = pipeline.stream(None, 10, prompt="slow jazz piano")  # text alone
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property, partial
from typing import Sequence

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.backends.ort_session import default_threads
from img2music.runtime.backends.providers import SessionOptions, open_session, open_sessions
from img2music.runtime.bundle.loading import Bundle, load_bundle, verify_files
from img2music.runtime.bundle.manifest import ENCODEC_FRONT_INT8, TEXT_GRAPH
from img2music.runtime.generation.conditioning import Conditioning, check_inputs, text_only, with_prompt
from img2music.runtime.generation.core import CodeGenerator, Windowing
from img2music.runtime.generation.delay_pattern import check_frames, frames_for_seconds
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.pipeline.encodec_choice import FLOAT32_FRONT, choose_front, known_front
from img2music.runtime.pipeline.encodec_stream import ChannelStreamDecoder, EncodecStreamDecoder, onnx_stream_functions
from img2music.runtime.pipeline.host_cache import HostCache, for_bundle
from img2music.runtime.pipeline.music_stream import MusicStream
from img2music.runtime.pipeline.preprocess import ImageLike, preprocess_images
from img2music.runtime.pipeline.result import GenerationResult
from img2music.runtime.pipeline.text_encoder import TextEncoder
from img2music.runtime.pipeline.timing import StageTimer

FILE_CHUNK_SECONDS = 5
"""Chunks of music going to files: the streamed EnCodec decode costs what a full decode does from
~5 s chunks on (measured on small-random, 2 threads: 1.36x at 1 s, 1.16x at 2 s, 1.00x at 5 s)."""


class OnnxPipeline:
    """Sessions for every stage of a bundle, loaded once and reused across calls.

    One decoder cache per pipeline: starting a stream ends the previous one."""

    def __init__(self, bundle: Bundle, options: SessionOptions = SessionOptions()) -> None:
        self.bundle, self.options = bundle, options
        self._open()
        self.generator = CodeGenerator(self.decoder)
        model = bundle.model
        self.image_config = model.clip.image
        self.directives = model.conditioning.directives

    def _open(self) -> None:
        o = self.options
        has_int8 = ENCODEC_FRONT_INT8 in self.bundle.manifest.graphs and o.provider == "cpu"
        known = known_front(o.encodec, self.host_cache if o.encodec == "auto" else None, o.encodec_chunk, has_int8)
        skip = tuple(g for g in (FLOAT32_FRONT, ENCODEC_FRONT_INT8) if known is not None and g != known)
        sessions = open_sessions(self.bundle, self.options, skip=skip + (TEXT_GRAPH,))  # T5: on first use
        self.sessions = sessions.graphs
        self.decoder = sessions.decoder
        self.encodec_front, self.encodec_choice = choose_front(
            self.sessions, self.bundle.model, o.encodec, has_int8, self.host_cache if o.encodec == "auto" else None,
            o.encodec_chunk)
        """The streaming EnCodec front in use, and what decided it (``runtime.pipeline.encodec_choice``)."""
        text = self.bundle.model.text
        self.text = None if text is None else TextEncoder(partial(open_session, self.bundle, TEXT_GRAPH, o),
                                                          self.bundle.root / text.tokenizer_file, text)

    def set_spinning(self, spinning: bool) -> None:
        """Re-create the sessions with ORT's worker threads busy-waiting between runs or not
        (call it between pieces: the generator's next ``start`` uses the new sessions)."""
        if spinning != self.options.spinning:
            self.options = replace(self.options, spinning=spinning)
            self._open()
            self.generator.decoder = self.decoder  # the same generator: what wraps or watches it stays

    @classmethod
    def load(cls, root: str | os.PathLike, threads: int | None = None, verify_hashes: bool = True,
             provider: str = "cpu", spinning: bool = True, cuda_graph: bool = True, encodec: str = "float32",
             encodec_chunk: int = 25) -> "OnnxPipeline":
        """``provider``: cpu, cuda or tensorrt (``runtime.backends.providers`` says what each runs and
        refuses). ``spinning=False`` when other threads compute at the same time;
        ``cuda_graph=False`` runs a GPU decoder step without graph replay; ``encodec``: float32,
        int8 or auto (``runtime.pipeline.encodec_choice``), auto measuring at ``encodec_chunk`` frames."""
        options = SessionOptions(provider=provider, threads=threads, spinning=spinning, cuda_graph=cuda_graph,
                                 encodec=encodec, encodec_chunk=encodec_chunk)
        bundle = load_bundle(root, verify_hashes=False)  # sizes now; hashes beside the sessions' creation
        if not verify_hashes:
            return cls(bundle, options)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-bundle") as pool:
            verified = pool.submit(verify_files, bundle.root, bundle.manifest)
            pipeline = cls(bundle, options)
            verified.result()  # a corrupt file is refused here, before anything plays
        return pipeline

    @cached_property
    def host_cache(self) -> HostCache:
        """What this host measured on this bundle with these threads (``runtime.pipeline.host_cache``)."""
        return for_bundle(self.bundle, self.options.threads or default_threads(), self.options.provider)

    @property
    def sample_rate(self) -> int:
        return self.bundle.model.audio.sample_rate

    @property
    def frame_rate(self) -> int:
        return self.bundle.model.audio.frame_rate

    @property
    def channels(self) -> int:
        """Audio channels: 1, or 2 for a stereo bundle."""
        return self.bundle.model.audio.channels

    @property
    def num_codebooks(self) -> int:
        return self.bundle.model.decoder.num_codebooks

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

    def encode_text(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """Prompt -> T5 hidden states (1, T, D_t5) + mask (1, T); one clear error without a text path."""
        if self.text is None:
            raise Img2MusicError(f"the bundle {self.bundle.root} has no text encoder (built with --no-text or "
                                 "before prompts existed): rebuild it with export/build_engines.py to use a prompt")
        return self.text.encode(prompt)

    def condition(self, images: Sequence[ImageLike] | None, timer: StageTimer | None = None,
                  prompt: str | None = None, prompt_weight: float = 1.0) -> Conditioning:
        """Images (preprocess, CLIP, projector) and/or a prompt (T5) -> conditioning
        (``runtime.generation.conditioning``: how the two combine)."""
        timer = timer or StageTimer()
        check_inputs(images is not None, prompt, prompt_weight)
        text = None
        if prompt is not None:
            with timer.stage("t5"):
                text = self.encode_text(prompt)
        if images is None:
            return text_only(*text, prompt=prompt)
        with timer.stage("preprocess"):
            pixels = preprocess_images(images, self.image_config)
        with timer.stage("clip"):
            image_embeds = self.embed_images(pixels)
        with timer.stage("projector"):
            image = Conditioning(*self.project(image_embeds))
        return image if text is None else with_prompt(image, *text, prompt=prompt, weight=prompt_weight)

    def stream_decoder(self, batch: int):
        """A fresh exact streaming EnCodec decoder for ``batch`` streams: (B, K, T) codes in,
        (B, samples) audio out, or (B, samples, 2) for a stereo bundle (each channel decoded apart)."""
        s, channels = self.bundle.model.encodec_stream, self.channels
        front, back = onnx_stream_functions(self.sessions[self.encodec_front], self.sessions["encodec_stream_back"])
        decoder = EncodecStreamDecoder(front, back, (s.lstm_layers, batch * channels, s.lstm_channels),
                                       self.bundle.model.audio.hop_length)
        return decoder if channels == 1 else ChannelStreamDecoder(decoder, channels)

    def decode_audio(self, codes: np.ndarray) -> np.ndarray:
        """(B, K, F) whole-piece codes -> (B, F * hop) float32 (stereo: (B, F * hop, 2)), through
        the streaming decoder."""
        check_frames(codes.shape[-1], self.frame_rate)
        decoder = self.stream_decoder(codes.shape[0])
        return np.concatenate([decoder.push(codes), decoder.flush()], axis=1)

    def stream(self, images: Sequence[ImageLike] | None = None, seconds: float | None = None,
               sampling: SamplingConfig | None = None, *, conditioning: Conditioning | None = None,
               chunk_frames: int = 50, window: Windowing | None = None,
               timer: StageTimer | None = None, prompt: str | None = None,
               prompt_weight: float = 1.0) -> MusicStream:
        """Music for ``images`` and/or a text ``prompt`` (or a given ``conditioning``) as a
        :class:`MusicStream`: ``seconds`` long, or endless with None. ``window`` sets how generation goes past
        MusicGen's trained 30 s (default: 30 s windows, the last 12 s primes the next);
        ``timer`` collects the stages' seconds (the stream's ``timer``)."""
        sampling = sampling or SamplingConfig()
        timer = timer if timer is not None else StageTimer()
        frames = None if seconds is None else frames_for_seconds(seconds, self.frame_rate)
        if conditioning is None:
            conditioning = self.condition(images, timer, prompt, prompt_weight)
        with timer.stage("cross_kv"):
            self.generator.start(conditioning.conditioning, conditioning.mask, sampling, frames=frames, window=window,
                                 weight=conditioning.weight)
        return MusicStream(self.generator, self.stream_decoder(conditioning.conditioning.shape[0]), sampling,
                           self.sample_rate, self.channels,
                           chunk_frames=chunk_frames, directives=conditioning.directives, timer=timer)

    def stream_to_files(self, recorders: Sequence, images: Sequence[ImageLike] | None, seconds: float,
                        sampling: SamplingConfig, *, window_seconds: float | None = None,
                        keep_seconds: float | None = None, timer: StageTimer | None = None, prompt: str | None = None,
                        prompt_weight: float = 1.0, on_chunk=None) -> MusicStream:
        """A piece streamed into ``recorders`` (one ``WavRecorder`` per row, made by the caller so
        that it can close them on Ctrl-C) as it is made; returns the finished stream (its
        directives, its timer). ``on_chunk(chunk)`` after each chunk (progress bars)."""
        window = Windowing.from_seconds(window_seconds, keep_seconds, self.frame_rate,
                                        self.bundle.model.decoder.max_frames)
        stream = self.stream(images, seconds, sampling, chunk_frames=FILE_CHUNK_SECONDS * self.frame_rate,
                             window=window, timer=timer, prompt=prompt, prompt_weight=prompt_weight)
        for chunk in stream:
            with stream.timer.stage("write wav"):
                for recorder, audio in zip(recorders, chunk.audio):
                    recorder.write(audio)
            if on_chunk is not None:
                on_chunk(chunk)
        return stream

    def __call__(self, images: Sequence[ImageLike] | None, seconds: float, sampling: SamplingConfig | None = None,
                 prompt: str | None = None, prompt_weight: float = 1.0) -> GenerationResult:
        """A whole piece at once: the stream's chunks joined."""
        stream = self.stream(images, seconds, sampling, prompt=prompt, prompt_weight=prompt_weight)
        chunks = list(stream)
        audio = np.concatenate([c.audio for c in chunks], axis=1)  # (B, F * hop)
        codes = np.concatenate([c.codes for c in chunks], axis=2)  # (B, K, F)
        return GenerationResult(audio, self.sample_rate, codes, stream.directives, stream.timer)
