"""Every script in bench/ runs, so that a bench can no longer rot unnoticed.

The scripts are found by glob: a new bench is covered as soon as it exists. Each runs as
`bench/<name>.py --quick`, a subprocess from the repository root, and follows this convention:

- `--quick` takes the script's own code path (the real model, server, sandbox or files) with the
  smallest sizes that still take every measurement once;
- it exits 0 and prints at least one result line: a figure set against its baseline measured
  side by side in the same run, written as `<label>: <number>x ...`, or with `ratio` in the
  label, `<label> ratio ...: <number> ...`;
- a bench that cannot measure on this machine prints `unavailable here: <reason>` and exits 0,
  which passes (as a skip) only where the test's own check agrees (see UNAVAILABLE).
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tercet.sandbox.runner import unavailable_reason

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted((ROOT / "bench").glob("*.py"))
# A quick run takes seconds on a quiet machine; the limit is for a loaded one.
TIMEOUT_SECONDS = 540  # under pytest-timeout's 600: cache.py took 370 s at load 20
TIMES = re.compile(r":\s*(-?\d+(?:\.\d+)?)x\b")
RATIO = re.compile(r"ratio[^:\n]*:\s*(-?\d+(?:\.\d+)?)")
# The benches that may say they cannot run here, and what the server itself consults.
UNAVAILABLE: dict[str, Callable[[], str | None]] = {"sandbox.py": unavailable_reason}


def result_figures(output: str) -> list[float]:
    """The figures of the result lines in a bench's output (see the module's docstring)."""
    figures = []
    for line in output.splitlines():
        found = TIMES.search(line) or RATIO.search(line)
        if found:
            figures.append(float(found.group(1)))
    return figures


def run_quick(script: Path) -> subprocess.CompletedProcess[str]:
    """The bench with --quick; on a timeout its whole process group goes (servers it started)."""
    process = subprocess.Popen(
        [sys.executable, str(script), "--quick"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"{script.name} --quick ran past {TIMEOUT_SECONDS} s\n"
            f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
        )
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_the_bench_scripts_are_found() -> None:
    assert len(BENCHES) >= 7, BENCHES


@pytest.mark.parametrize("script", BENCHES, ids=lambda path: path.name)
def test_a_bench_runs_quick_and_prints_its_results(script: Path) -> None:
    check_bench(script)


def check_bench(script: Path) -> None:
    """Fails the test unless `script --quick` keeps the convention (the module's docstring)."""
    done = run_quick(script)
    if done.returncode == 2 and "unrecognized arguments: --quick" in done.stderr:
        pytest.fail(
            f"bench/{script.name} has no --quick mode; every bench needs one: the same code path "
            "with the smallest sizes (see tests/bench/test_bench_scripts.py)"
        )
    shown = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"bench/{script.name} --quick exited {done.returncode}\n{shown}"

    said = re.search(r"^unavailable here: (.*)$", done.stdout, re.MULTILINE)
    if said:
        check = UNAVAILABLE.get(script.name)
        reason = check() if check else None
        assert reason is not None, (
            f"bench/{script.name} says it cannot measure here ({said.group(1)}), but "
            + ("the server's own check says it can" if check else "it is not allowed to")
        )
        pytest.skip(f"bench/{script.name}: unavailable here: {reason}")

    figures = result_figures(done.stdout)
    assert figures, (
        f"bench/{script.name} printed no result line (`<label>: <number>x`, or `... ratio ...: "
        f"<number>`)\n{shown}"
    )
    assert all(math.isfinite(figure) for figure in figures), shown


def test_result_lines_are_told_from_other_lines() -> None:
    output = "\n".join(
        [
            "model x, 1 trials, up to 16 tokens",
            "TTFT overhead: +7.8 ms (target < 10 ms)",
            "  execution in a container: 1.71x the floor (target <= 1.5x)",
            "decode throughput ratio server/raw: 0.908 (target > 0.95)",
            "  p50/floor 12.0",
        ]
    )
    assert result_figures(output) == [1.71, 0.908]
    assert result_figures("speed-up: nanx\nratio: inf") == []


def test_a_bench_without_quick_or_results_fails_saying_why(tmp_path: Path) -> None:
    no_quick = tmp_path / "no_quick.py"
    no_quick.write_text("import argparse\nargparse.ArgumentParser().parse_args()\n")
    with pytest.raises(pytest.fail.Exception, match="has no --quick mode"):
        check_bench(no_quick)
    silent = tmp_path / "silent.py"
    silent.write_text("import sys\nassert sys.argv[1:] == ['--quick']\nprint('took 3.2 ms')\n")
    with pytest.raises(AssertionError, match="printed no result line"):
        check_bench(silent)
    claims = tmp_path / "claims.py"
    claims.write_text("print('unavailable here: no reason')\n")
    with pytest.raises(AssertionError, match="it is not allowed to"):
        check_bench(claims)
