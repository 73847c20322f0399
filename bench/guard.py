"""The guard's model-free measurement on AgentDojo v1.2.2, in one run (issue 19).

Per channel (all three by default): `tool`, AgentDojo's tools called in process; `mcp`, the
same tools served by a real MCP server (stdio) and called through tercet's MCP client, the
injections in the results; `mcp-description`, the injection in a tool's description, read at
listing time (tercet.evals.injection_mcp). For each channel and suite: the scripted gullible agent on every user x injection pair, without the guard
and with it (the policy file, src/tercet/guard/policies/agentdojo.toml by default), and the
benign agent on every user task without an attack, without and with the guard. Prints per
suite and in total: prevention, benign calls wrongly denied, utility lost (each k/n with its
95% interval) and the guard's time per tool call against the tool's own. Method, definitions
and exclusions: docs/evals.md, "Prompt injection (AgentDojo)". Offline: the suites ship in the
`agentdojo` package (the `agentdojo` extra).

    .venv/bin/python bench/guard.py [--suite banking ...] [--policy P] [--strict] [--workers 2]
        [--runs runs.jsonl]   # every run's outcome and calls, one JSON line each
        [--channel tool|mcp|mcp-description ...] [--unobserved-listing]
    .venv/bin/python bench/guard.py --quick   # banking, its first 4 user tasks x 3 injections
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from tercet.evals.injection import (
    ATTACKS,
    POLICY,
    SUITES,
    RunOutcome,
    SuiteFigures,
    describe,
    measure,
    percentile,
    record,
)
from tercet.evals.injection_mcp import CHANNELS, Listing, agreement, measure_mcp

QUICK_USER_TASKS = 4
QUICK_INJECTION_TASKS = 3


def progress(done: int, total: int) -> None:
    print(f"\r{done}/{total} user tasks", end="\n" if done == total else "", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=SUITES, help="default: all four")
    parser.add_argument("--policy", type=Path, default=POLICY)
    parser.add_argument(
        "--strict", action="store_true", help="the policy with strict mode on (ask: refused here)"
    )
    parser.add_argument("--attack", choices=ATTACKS, default="important_instructions")
    parser.add_argument("--user-tasks", type=int, help="the first N user tasks of each suite")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--runs", type=Path, help="write every run's outcome here (JSON lines)")
    parser.add_argument("--quick", action="store_true", help="banking's first 4 x 3 tasks")
    parser.add_argument(
        "--channel", action="append", choices=CHANNELS, help="default: all three, in turn"
    )
    parser.add_argument(
        "--unobserved-listing",
        action="store_true",
        help="mcp-description: the guard does not observe the listing (as tercet's agent today)",
    )
    args = parser.parse_args()
    suites = tuple(args.suite or (("banking",) if args.quick else SUITES))
    user_tasks = QUICK_USER_TASKS if args.quick else args.user_tasks
    injection_tasks = QUICK_INJECTION_TASKS if args.quick else None

    # Each denial is logged by the guard; the figures below count and list them.
    logging.getLogger("tercet.guard").setLevel(logging.ERROR)
    runs: list[dict[str, object]] = []
    by_channel: dict[str, list[RunOutcome]] = {}
    for channel in args.channel or CHANNELS:
        started = time.perf_counter()
        outcomes: list[RunOutcome] = []
        listings: list[Listing] = []
        common = {
            "policy": args.policy,
            "strict": args.strict,
            "user_tasks": user_tasks,
            "injection_tasks": injection_tasks,
            "attack_name": args.attack,
            "workers": args.workers,
            "progress": progress if sys.stderr.isatty() else None,
            "runs": outcomes,
        }
        if channel == "tool":
            measured = measure(suites, **common)
        else:
            done = measure_mcp(
                channel,
                suites,
                observe_listing=not args.unobserved_listing,
                **common,
            )
            measured, listings = done.figures, done.listings
        runs += [{"channel": channel, **record(run)} for run in outcomes]
        by_channel[channel] = outcomes
        listing_note = (
            f", listing {'not ' if args.unobserved_listing else ''}observed by the guard"
            if channel == "mcp-description"
            else ""
        )
        print(
            f"== channel {channel}: AgentDojo v1.2.2, attack {args.attack}, policy {args.policy}"
            f"{' with strict mode on' if args.strict else ''}, "
            f"{'first ' + str(user_tasks) if user_tasks else 'all'} user tasks"
            f"{listing_note}; {time.perf_counter() - started:.0f} s"
        )
        report(channel, suites, measured, listings)
    if "tool" in by_channel and "mcp" in by_channel:
        same, compared, differing = agreement(by_channel["tool"], by_channel["mcp"])
        print(
            f"unguarded runs the mcp channel scores as the tool channel: {same}/{compared}"
            + (f"; differing: {', '.join(differing)}" if differing else "")
        )
    if args.runs:
        args.runs.write_text("".join(json.dumps(run) + "\n" for run in runs))
    return 0


def report(
    channel: str,
    suites: tuple[str, ...],
    measured: dict[str, SuiteFigures],
    listings: list[Listing],
) -> None:
    """One channel's figures, per suite and in total."""
    for name, figures in measured.items():
        if name == "total" and len(suites) == 1:
            continue
        print("\n".join(describe(figures)))
    if listings:
        poisoned = [item for item in listings if item.poisoned is not None]
        clean = [item for item in listings if item.poisoned is None]
        print(
            "  rules detector on the listing: poisoned listings flagged "
            f"{sum(item.detections > 0 for item in poisoned)}/{len(poisoned)}, clean listings "
            f"flagged {sum(item.detections > 0 for item in clean)}/{len(clean)} "
            f"({', '.join(f'{item.suite}: {item.detections}' for item in clean)} detections)"
        )
    for name, figures in measured.items():
        value = figures.prevention.value
        if value is not None and not (name == "total" and len(suites) == 1):
            print(f"prevention ratio {channel} {name}: {value:.4f} ({figures.prevention})")
    total = measured["total"]
    if total.guard_seconds and total.tool_seconds:
        guard_p50 = percentile(total.guard_seconds, 0.5)
        tool_p50 = percentile(total.tool_seconds, 0.5)
        print(
            f"guard time per call against the tool's own, {channel} (p50): "
            f"{guard_p50 / tool_p50:.3f}x ({guard_p50 * 1e3:.3f} ms / {tool_p50 * 1e3:.3f} ms)"
        )
    print()


if __name__ == "__main__":
    sys.exit(main())
