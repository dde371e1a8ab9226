"""Images and prompts to streamed audio on a bundle: the exported pipeline, no torch.

- ``onnx_pipeline``: :class:`OnnxPipeline` (CLIP, projector, T5, cross K/V, decoder, EnCodec).
- ``music_stream``: :class:`MusicStream` and its :class:`AudioChunk`, the one chain from code
  frames to exact streamed audio.
- ``encodec_stream``: exact streaming EnCodec (carried LSTM state, held-back lookahead).
- ``preprocess``: CLIP preprocessing in numpy + Pillow, image loading.
- ``text_encoder``: a text prompt to T5 tokens from the bundle alone.
- ``batch``: a manifest of images and/or prompts to WAVs, resumable, locally or on Ray.
- ``result``, ``timing``: what a generation returns, per-stage timing.

May import: img2music.basics, img2music.runtime.bundle, img2music.runtime.backends,
img2music.runtime.generation, img2music.runtime.audio.
"""
