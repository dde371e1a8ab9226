"""img2music benchmarks: per-stage latency, real-time factor, baselines (not built yet)."""
