"""Time ``braintseg demo`` against its 10-minute CPU budget and report the held-out Dice.

Usage:
    python scripts/bench_demo.py [--out DIR] [--gpu] [--set section.key=value ...]

Prints the wall time of each step, the total as a fraction of the 600 s budget, the CPU time
used (user + system, from ``os.times``) and the load average before and after: on a shared
machine a load above the core count means the wall time is inflated by other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from braintseg.demos.demo import run_demo

BUDGET_S = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder [default: temp]")
    parser.add_argument("--gpu", action="store_true", help="train the GPU (default) config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="braintseg-bench-demo-")) / "demo"
    load_before = os.getloadavg()
    cpu_before = os.times()
    start = time.perf_counter()
    result = run_demo(out, overwrite=True, overrides=args.overrides, gpu=args.gpu)
    wall = time.perf_counter() - start
    cpu_after = os.times()
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    report = {
        "cores": os.cpu_count(),
        "device": result.device,
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "steps_s": result.seconds,
        "wall_s": round(wall, 1),
        "budget_ratio": round(wall / BUDGET_S, 3),
        "cpu_s": round(cpu, 1),
        "dice": {k: round(v, 3) for k, v in result.dice.items()},
        "out": str(out),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
