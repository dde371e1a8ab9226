"""img2music export: model sources and presets, torch -> ONNX -> TensorRT, engine bundles."""
