"""`tercet audit scan` measured (issue 21): recall on seeded incidents, false flags on clean
traffic, and what scanning costs against reading the log alone.

Synthetic, in-house traffic ("synthetic, audit-incidents-v1"; tercet.evals.audit_incidents):
many keys' ordinary requests, tool calls, guard and classifier decisions and egress, written
with the real AuditLog (content logging on), and seeded incidents of each rule's kind, including
variants the rules were not written for. Prints recall per rule and overall, false flags per
rule, each k/n with its Wilson 95% interval, then the scan's time against a plain read of the
same log (every line parsed as JSON), with the rules alone and with a (toy) classifier.

    .venv/bin/python bench/audit_scan.py [--requests 20000] [--keys 200] [--seed 0]
    .venv/bin/python bench/audit_scan.py --quick   # 1000 requests from 20 keys
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tercet.audit.log import segments
from tercet.audit.scan import scan_log
from tercet.evals.audit_incidents import (
    KeywordClassifier,
    clean_traffic,
    measure,
    seeded_incidents,
    write_log,
)


def read_alone(directory: Path) -> int:
    """Every line of every segment parsed: the floor a scan cannot go under."""
    count = 0
    for segment in segments(directory):
        with segment.path.open(encoding="utf-8") as lines:
            for line in lines:
                json.loads(line)
                count += 1
    return count


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3, help="timings: the best of N")
    parser.add_argument("--quick", action="store_true", help="1000 requests from 20 keys, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.keys, args.runs = 1000, 20, 1

    result = asyncio.run(measure(seed=args.seed, requests=args.requests, keys=args.keys))
    for line in result.lines():
        print(line)

    steps = clean_traffic(args.seed, requests=args.requests, keys=args.keys)
    steps += [s for i in seeded_incidents(args.seed) for s in i.steps]
    with tempfile.TemporaryDirectory(prefix="tercet-audit-bench-") as tmp:
        directory = Path(tmp)
        write_log(directory, steps)
        records = read_alone(directory)
        size = sum(s.path.stat().st_size for s in segments(directory))
        read_s = best_of(args.runs, lambda: read_alone(directory))
        scan_s = best_of(args.runs, lambda: asyncio.run(scan_log(directory)))
        classify_s = best_of(
            args.runs,
            lambda: asyncio.run(scan_log(directory, classifier=KeywordClassifier())),
        )
    print(
        f"log: {records} records, {size / 1e6:.1f} MB; read alone {read_s * 1e3:.0f} ms "
        f"({records / read_s:,.0f} records/s)"
    )
    print(f"scan: {scan_s * 1e3:.0f} ms ({records / scan_s:,.0f} records/s)")
    print(f"scan with the toy classifier: {classify_s * 1e3:.0f} ms")
    print(f"scan time ratio (scan / read alone): {scan_s / read_s:.2f}")
    print(f"scan time ratio with a classifier (scan / read alone): {classify_s / read_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
