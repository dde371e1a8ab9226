"""img2music calibration: representative data, INT8/FP16 quantization, accuracy reports (not built yet)."""
