"""Where a bundle runs: execution providers, ONNX Runtime sessions, the decoder session.

- ``providers``: ``--provider cpu|cuda|tensorrt``, what each runs and refuses, and
  :func:`open_sessions` (every graph of a bundle, checked against its manifest).
- ``ort_session``: one ``InferenceSession`` with our options, one clear error when it won't load.
- ``ort_decoder``: the decoder step over an in-place static KV cache (CPU or CUDA device).
- ``gpu_facts``: which GPU and TensorRT this machine has (ctypes, no torch).

May import: img2music.basics, img2music.runtime.bundle, img2music.runtime.generation.
"""
