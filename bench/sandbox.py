"""Sandbox overhead: a trivial execution and a container start, against a plain subprocess.

One run, side by side, for `/bin/true` and for `python3 -c "print(1)"`: the command as a plain
subprocess (the floor), in an existing container (`ContainerManager.run`), and a container
start plus the command (as a first code execution pays). Prints p50 and p95 of each, and each
as a ratio of the floor. Target: under 3x the floor.

    .venv/bin/python bench/sandbox.py [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tercet.sandbox.containers import ContainerManager
from tercet.sandbox.runtime import default_runtime

PRINT_ONE = ["-c", "print(1)"]


def timings(action: Callable[[], object], runs: int) -> list[float]:
    action()  # warm caches once
    measured = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        measured.append(time.perf_counter() - started)
    return measured


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    # The cheapest command, and the cheapest code execution (what the tool runs), with the
    # same interpreter inside and outside (the sandbox finds its runtime first on PATH).
    measure(["/bin/true"], ["/bin/true"], args.runs)
    runtime = default_runtime()
    python = str(runtime / "bin" / "python") if runtime else "/usr/bin/python3"
    measure([python, *PRINT_ONE], ["python" if runtime else python, *PRINT_ONE], args.runs)


def measure(outside: list[str], command: list[str], runs: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        manager = ContainerManager(Path(scratch) / "sandbox", runtime=default_runtime())
        container = manager.create()

        def start_and_run() -> None:
            fresh = manager.create()
            manager.run(fresh, command)
            manager.delete(fresh.id)

        results = {
            "subprocess (floor)": timings(
                lambda: subprocess.run(outside, check=True, capture_output=True), runs
            ),
            "execution in a container": timings(lambda: manager.run(container, command), runs),
            "container start + execution": timings(start_and_run, runs),
        }
    floor50 = statistics.median(results["subprocess (floor)"])
    floor95 = percentile(results["subprocess (floor)"], 0.95)
    print(f"{runs} runs of {' '.join(command)}")
    print(f"  {'':30}{'p50 ms':>9}{'p95 ms':>9}{'p50/floor':>11}{'p95/floor':>11}")
    for label, values in results.items():
        p50, p95 = statistics.median(values), percentile(values, 0.95)
        print(
            f"  {label:30}{p50 * 1000:>9.2f}{p95 * 1000:>9.2f}"
            f"{p50 / floor50:>11.2f}{p95 / floor95:>11.2f}"
        )
    print("  target: under 3x the floor")


if __name__ == "__main__":
    main()
