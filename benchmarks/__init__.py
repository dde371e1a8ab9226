"""img2music benchmarks: per-stage latency, real-time factor, decoder steps, live and training costs."""
