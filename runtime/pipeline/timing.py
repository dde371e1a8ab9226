"""Per-stage wall-clock timing for CLIs and benchmarks."""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    """Accumulates seconds per named stage, in first-use order."""

    def __init__(self) -> None:
        self.seconds: "OrderedDict[str, float]" = OrderedDict()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def merge(self, other: "StageTimer") -> None:
        for name, sec in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + sec

    def total(self) -> float:
        return sum(self.seconds.values())

    def table(self) -> str:
        """A small text table: stage, milliseconds, share of the total."""
        total = self.total() or 1.0
        width = max([len(n) for n in self.seconds] + [5])
        lines = [f"{'stage':<{width}}  {'ms':>10}  {'share':>6}"]
        for name, sec in self.seconds.items():
            lines.append(f"{name:<{width}}  {sec * 1e3:>10.1f}  {sec / total:>6.1%}")
        lines.append(f"{'total':<{width}}  {self.total() * 1e3:>10.1f}")
        return "\n".join(lines)
