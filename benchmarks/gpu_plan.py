"""The exact device calls that take the GPU check to a lent machine: what each carries, how
big it is, and the command each runs (``benchmarks/make_wheelhouse.sh`` made the wheelhouse).

    python benchmarks/gpu_plan.py --wheelhouse wheelhouse

The lent machine has no network and takes at most 64 MiB a call (the working tree plus what
``carry`` names), so the wheelhouse travels in parts, one part per call, back to back while the
machine stays warm (ignored paths already there are kept between calls); the last call installs
what its image lacks and runs the check within its budget. Nothing here calls the device.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli

MIB = 2**20
CALL_LIMIT_MIB = 64
MAX_CARRY = 8
"""Paths one call may carry."""


def tree_bytes(root: Path) -> int:
    """What travels with every call: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                           capture_output=True, check=True).stdout.decode().split("\0")
    return sum((root / n).stat().st_size for n in names if n and (root / n).is_file())


def calls(root: Path, wheelhouse: Path, budget_s: int, timeout_s: int) -> list[dict]:
    """Device calls: files packed in name order into calls under the limit with the tree."""
    files = sorted(p for p in wheelhouse.iterdir() if p.is_file())
    if not files:
        raise Img2MusicError(f"{wheelhouse} is empty: run benchmarks/make_wheelhouse.sh first")
    tree = tree_bytes(root)
    room = CALL_LIMIT_MIB * MIB - tree
    plan: list[dict] = []
    for f in files:
        size = f.stat().st_size
        if size > room:
            raise Img2MusicError(f"{f.name} ({size / MIB:.1f} MiB) does not fit one call beside the working tree "
                                 f"({tree / MIB:.1f} MiB): split it smaller")
        if not plan or plan[-1]["bytes"] + size > room or len(plan[-1]["carry"]) >= MAX_CARRY:
            plan.append({"carry": [], "bytes": 0})
        plan[-1]["carry"].append(str(f.relative_to(root)))
        plan[-1]["bytes"] += size
    rel = wheelhouse.relative_to(root)
    for call in plan[:-1]:
        call["command"] = f"ls -l {rel}"
        call["timeout_s"] = 60
    plan[-1]["command"] = (f"set -o pipefail; PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh --wheelhouse {rel} "
                           f"--out $OUT/gpu --budget-seconds {budget_s} 2>&1 | tee $OUT/gpu_check.log")
    plan[-1]["timeout_s"] = timeout_s
    for call in plan:
        call["travels_mib"] = round((call.pop("bytes") + tree) / MIB, 1)
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_plan.py", description="The device calls that run the GPU check.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--wheelhouse", default="wheelhouse", help="folder from benchmarks/make_wheelhouse.sh")
    p.add_argument("--budget-seconds", type=int, default=480, help="gpu_check.py's budget on the device")
    p.add_argument("--timeout", type=int, default=560, help="the last call's timeout_s (the check plus installing)")
    args = p.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    wheelhouse = Path(args.wheelhouse).resolve()
    if not wheelhouse.is_dir():
        raise Img2MusicError(f"no wheelhouse at {wheelhouse}: run benchmarks/make_wheelhouse.sh first")
    if root not in wheelhouse.parents:
        raise Img2MusicError(f"the wheelhouse must be inside the checkout ({root}) to be carried")
    for n, call in enumerate(calls(root, wheelhouse, args.budget_seconds, args.timeout), 1):
        print(f"call {n}: {call['travels_mib']} MiB (limit {CALL_LIMIT_MIB}), timeout_s {call['timeout_s']}")
        print(f"  carry:   {call['carry']}")
        print(f"  command: {call['command']}")
    print("then give_back (the machine stays warm ~30 s after a call; each idle second counts)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
