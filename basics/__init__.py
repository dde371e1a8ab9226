"""img2music basics: what several packages share, lowest in the import graph.

Errors and the CLI wrapper, graph specs, model facts, presets, model loading, the
prompt bank, ONNX saving. Imports nothing of the other packages; torch and
transformers only inside the functions that need them.
"""
