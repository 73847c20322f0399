"""The guard's model-free measurement on the coding agent's files channel (issue 19): an
in-house suite, tercet-files-v1 (not AgentDojo), run through tercet's real agent loop.

Injections in a repository's README, a code comment and test output; scripted benign and
gullible agents (tercet.evals.injection_files). Prints per channel (readme, comment,
test-output) and in total: attacker goals reached without the guard, prevention, task calls
wrongly refused and utility lost (each k/n with its 95% interval), the calls that got through
and those refused (the guard's asks are refused: nobody answers a scripted run; they are
counted apart). Needs the sandbox (bubblewrap): the goals' commands reach for the network.

    .venv/bin/python bench/guard_files.py [--policy default|P.toml] [--strict]
        [--channel readme|comment|test-output ...] [--repo textkit ...] [--goal exfil-curl ...]
        [--runs runs.jsonl]   # every run's outcome and calls, one JSON line each
    .venv/bin/python bench/guard_files.py --quick   # textkit, two goals (one stopped, one not)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from tercet.evals.injection_files import CHANNELS, describe_files, measure_files
from tercet.guard import Policy

QUICK_REPOS = ["textkit"]
QUICK_GOALS = ["exfil-curl", "ssh-key"]


def progress(done: int, total: int) -> None:
    print(f"\r{done}/{total} cases", end="\n" if done == total else "", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default", help="a shipped policy's name or a file")
    parser.add_argument("--strict", action="store_true", help="strict mode on (ask: refused here)")
    parser.add_argument("--channel", action="append", choices=CHANNELS, help="default: all")
    parser.add_argument("--repo", action="append", help="default: every repository")
    parser.add_argument("--goal", action="append", help="default: every goal")
    parser.add_argument("--runs", type=Path, help="write every run's outcome here (JSON lines)")
    parser.add_argument("--quick", action="store_true", help="textkit; exfil-curl, ssh-key")
    args = parser.parse_args()
    if args.quick:
        args.repo = args.repo or QUICK_REPOS
        args.goal = args.goal or QUICK_GOALS
    # Each denial is logged by the guard; the figures below count and list them.
    logging.getLogger("tercet.guard").setLevel(logging.ERROR)
    measured = measure_files(
        Policy.resolve(args.policy),
        strict=args.strict,
        repos=args.repo,
        goals=args.goal,
        channels=args.channel or CHANNELS,
        progress=progress if sys.stderr.isatty() else None,
    )
    print("\n".join(describe_files(measured)))
    for name, figures in measured.channels.items():
        if (value := figures.prevention.value) is not None:
            print(f"prevention ratio files {name}: {value:.4f} ({figures.prevention})")
    if args.runs:
        args.runs.write_text("".join(json.dumps(asdict(run)) + "\n" for run in measured.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
