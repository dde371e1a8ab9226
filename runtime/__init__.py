"""img2music runtime: inference on exported engine bundles (onnxruntime + numpy, no torch).

Modules here must not import torch at module level; the PyTorch reference pipeline
(``runtime.reference``, the oracle the bundles are checked against) is the one
exception and imports it itself. GPU backends plug in at ``runtime.backends``.
"""
