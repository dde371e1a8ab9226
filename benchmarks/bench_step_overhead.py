"""The generation core's per-step cost outside the graph: guidance, sampling, the delay pattern
and bookkeeping, timed with a decoder that returns its logits at once (musicgen-small shapes:
4 codebooks of 2048, guidance batch 2, top-k 250).

    python benchmarks/bench_step_overhead.py --steps 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Sequence

import numpy as np

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import run_cli
from img2music.basics.model_config import DecoderConfig
from img2music.benchmarks.machine import python_loop_seconds
from img2music.runtime.generation.core import CodeGenerator, Windowing
from img2music.runtime.generation.decoder_session import DecoderSession
from img2music.runtime.generation.sampling import SamplingConfig


class InstantDecoder(DecoderSession):
    """Logits ready at once: what is left of a step is the core's own work."""

    def __init__(self, config: DecoderConfig) -> None:
        self.config = config
        self.logits = np.random.default_rng(0).standard_normal((2, config.num_codebooks, config.vocab_size)
                                                               ).astype(np.float32)

    def set_conditioning(self, conditioning, mask, reset=True, weight=None) -> None:
        self.batch = conditioning.shape[0]
        if reset:
            self.reset()

    def step(self, input_ids):
        self.position += 1
        return self.logits

    def prefill(self, tokens):
        self.position = tokens.shape[2]
        return self.logits

    def cache_rows(self, layer, kind, rows):
        raise NotImplementedError


def measure(steps: int) -> dict:
    config = DecoderConfig(num_codebooks=4, vocab_size=2048, pad_token_id=2048, decoder_start_token_id=2048,
                           hidden_size=1024, num_layers=24, num_heads=16, head_dim=64, max_length=2048)
    generator = CodeGenerator(InstantDecoder(config))
    cond, mask = np.zeros((1, 8, 768), np.float32), np.ones((1, 8), np.int64)
    sampling = SamplingConfig(seed=0)
    generator.start(cond, mask, sampling, window=Windowing(1500, 250))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        generator.step(sampling)
        times.append(time.perf_counter() - start)
    return {"steps": steps, "median_ms": round(statistics.median(times) * 1000, 3),
            "p90_ms": round(sorted(times)[int(0.9 * steps)] * 1000, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_step_overhead.py", description="Per-step cost outside the graph.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="steps timed")
    args = p.parse_args(argv)
    loop = python_loop_seconds()
    r = measure(args.steps)
    print(f"per step outside the graph: median {r['median_ms']} ms, p90 {r['p90_ms']} ms over {r['steps']} steps; "
          f"pure-Python loop (10^7 additions) {loop:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
