"""img2music runtime: inference on exported engines (onnxruntime/tensorrt + numpy).

Modules here must not import torch at module level; the PyTorch reference pipeline
(``runtime.reference``) is the one exception and imports it itself.
"""
