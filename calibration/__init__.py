"""img2music calibration: representative data, int8 KV-cache scales, int8/int4 weight quantization, accuracy reports."""
