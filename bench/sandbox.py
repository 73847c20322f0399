"""Sandbox overhead: a trivial execution and a container start, against a plain subprocess.

One run, side by side, for `/bin/true` and for `python3 -c "print(1)"`. Each round runs every
row once, in a shuffled order, so the load of a shared machine falls on all rows alike. The
rows build up from the floor to what a code execution pays, so the table shows where each
millisecond goes:

  subprocess (floor)          the command as a plain subprocess
  bwrap, namespaces only      bare bubblewrap with the sandbox's namespaces, the host's root
                              bound read-only (no mounts of ours)
  + the sandbox's mounts      our root: system directories, runtime, /proc, /dev, /tmp, workspace
  + user switch (argv)        the sandbox's whole command line as a plain subprocess, without
                              its rlimits (as root: the container's user, no capabilities)
  runner.run                  what the runner adds: rlimits, the watch, output capture
  execution in a container    ContainerManager.run: the container's bookkeeping and quota
  container start + execution a first code execution: create, run, delete

Prints p50 and p95 of each, each p50 as a ratio of the floor, and what each row adds over the
one above it. Target: a code execution (`python -c print(1)` in a container) at most 1.5x the
floor.

    .venv/bin/python bench/sandbox.py [--runs 50]
    .venv/bin/python bench/sandbox.py --quick   # 2 runs: the script works

Where the sandbox cannot run (no bubblewrap, or no namespaces allowed), it says so, the reason
the server's code execution answers `unavailable` with, and exits (0 with --quick).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tercet.sandbox import runner
from tercet.sandbox.containers import ContainerManager
from tercet.sandbox.runtime import default_runtime

PRINT_ONE = ["-c", "print(1)"]
TARGET = 1.5  # a code execution against the floor


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="the smallest run: the script works")
    args = parser.parse_args()
    if args.quick:
        args.runs = 2
    reason = runner.unavailable_reason()  # what the server's code execution consults
    if reason is not None:
        message = f"unavailable here: {reason}"
        if args.quick:
            print(message)
            return
        sys.exit(message)
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
        rows = layers(manager, outside, command)
        results = interleaved(rows, runs)
    floor50 = statistics.median(results["subprocess (floor)"])
    print(f"{runs} runs of {' '.join(command)}, interleaved")
    header = f"  {'':30}{'p50 ms':>9}{'p95 ms':>9}{'p50/floor':>11}{'adds ms':>9}"
    print(header)
    previous: float | None = None
    for label, values in results.items():
        p50, p95 = statistics.median(values), percentile(values, 0.95)
        added = f"{(p50 - previous) * 1000:>+9.2f}" if previous is not None else f"{'':>9}"
        print(f"  {label:30}{p50 * 1000:>9.2f}{p95 * 1000:>9.2f}{p50 / floor50:>11.2f}{added}")
        previous = p50
    ratio = statistics.median(results["execution in a container"]) / floor50
    print(f"  execution in a container: {ratio:.2f}x the floor (target <= {TARGET}x)")
    del container


def layers(
    manager: ContainerManager, outside: list[str], command: list[str]
) -> dict[str, Callable[[], object]]:
    """Each row of the table: one action, from the floor to a first code execution."""
    container = manager.create()
    workspace, uid, runtime = container.workspace, container.uid, manager.runtime
    limits = manager.execution
    as_root = os.geteuid() == 0
    namespaces = [runner.bubblewrap(), *runner.namespace_args(as_root)]
    mounts = [*namespaces, *runner.mount_args(workspace, runtime, limits)]
    whole = runner.sandbox_argv(command, workspace, limits, uid=uid, runtime=runtime)

    def plain(argv: list[str]) -> Callable[[], object]:
        return lambda: subprocess.run(argv, check=True, capture_output=True)

    def start_and_run() -> None:
        fresh = manager.create()
        manager.run(fresh, command)
        manager.delete(fresh.id)

    return {
        "subprocess (floor)": plain(outside),
        "bwrap, namespaces only": plain([*namespaces, "--ro-bind", "/", "/", "--", *outside]),
        "+ the sandbox's mounts": plain([*mounts, "--", *command]),
        "+ user switch (argv)": plain(whole),
        "runner.run": lambda: runner.run(command, workspace, limits, uid=uid, runtime=runtime),
        "execution in a container": lambda: manager.run(container, command),
        "container start + execution": start_and_run,
    }


def interleaved(rows: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """`runs` timings of each row, every round running each row once in a shuffled order."""
    for action in rows.values():
        action()  # warm caches once
    measured: dict[str, list[float]] = {label: [] for label in rows}
    order = list(rows)
    for _ in range(runs):
        random.shuffle(order)
        for label in order:
            started = time.perf_counter()
            rows[label]()
            measured[label].append(time.perf_counter() - started)
    return measured


if __name__ == "__main__":
    main()
