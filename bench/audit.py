"""Audit and egress (issue 21), measured side by side in one run, a section each.

audit: the server's request throughput with the audit log on against off. Four servers in
this process, the same but for the log: off, `--audit` (digests), `--audit --audit-content`
(text too), and a second server without the log, a control: how far apart the bench puts two
servers alike is its noise. Their engine is scripted (a fixed reply, no model), so the
server's own work is all there is to slow down: the worst case for the log's share. Each round
sends `--requests` sequential Messages requests (keep-alive, non-streaming) to each server in a
shuffled order; medians of `--runs` rounds. The result lines: `request throughput with the
audit log vs without: <ratio>x` (the target: at least 0.95x), and with content logging.

egress: the egress proxy's throughput against a direct loopback copy of the same bytes. A
source on 127.0.0.1 sends (down) or takes (up) `--mib` MiB; one client script reads or writes
them, timed from its connect to the last byte (its interpreter's start not counted):

  direct                      the client straight to the source over TCP
  egress proxy                the client through a container's proxy on the host (its Unix
                              socket, CONNECT), every byte counted against a grant
  egress through the sandbox  the client in a container with the grant: the in-sandbox
                              forwarder, then the proxy (where bubblewrap runs)

Each round runs every row once, in a shuffled order; medians of `--runs` rounds. The result
lines: `egress proxy vs direct: <ratio>x` (and through the sandbox) for each direction.

    .venv/bin/python bench/audit.py [--runs 7] [--mib 256] [--section egress]
    .venv/bin/python bench/audit.py --quick   # 2 runs of 4 MiB: the script works
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from tercet.audit.verify import verify
from tercet.engine.base import Engine
from tercet.engine.bundled import bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.engine.scripted import ScriptedEngine
from tercet.sandbox import runner
from tercet.sandbox.containers import Container, ContainerManager
from tercet.sandbox.egress import SANDBOX_PORT, EgressGrant, EgressProxies
from tercet.sandbox.runtime import default_runtime
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer

MIB = 2**20
# The source: says its port, then per connection reads "down N" or "up N" and sends N bytes,
# or takes them and answers "ok".
SOURCE = r"""
import socket, threading
block = memoryview(b"s" * (1 << 20))
def serve(conn):
    with conn:
        line = b""
        while not line.endswith(b"\n"):
            line += conn.recv(1)
        mode, size = line.split()
        left = int(size)
        if mode == b"down":
            while left > 0:
                conn.sendall(block[: min(left, len(block))])
                left -= min(left, len(block))
        else:
            buffer = bytearray(1 << 20)
            while left > 0:
                got = conn.recv_into(buffer)
                if not got:
                    break
                left -= got
            conn.sendall(b"ok")
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
# The client: `client.py MODE BYTES PORT [unix:PATH | tcp:PORT]` (a proxy, else direct);
# prints the seconds from its connect to the last byte.
CLIENT = r"""
import socket, sys, time
mode, size, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
proxy = sys.argv[4] if len(sys.argv) > 4 else ""
started = time.perf_counter()
if proxy.startswith("unix:"):
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(proxy[5:])
elif proxy.startswith("tcp:"):
    conn = socket.create_connection(("127.0.0.1", int(proxy[4:])))
else:
    conn = socket.create_connection(("127.0.0.1", port))
if proxy:
    conn.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += conn.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
conn.sendall(f"{mode} {size}\n".encode())
buffer = bytearray(1 << 20)
if mode == "down":
    left = size
    while left > 0:
        got = conn.recv_into(buffer)
        assert got, f"{left} bytes short"
        left -= got
else:
    block = memoryview(b"c" * (1 << 20))
    left = size
    while left > 0:
        conn.sendall(block[: min(left, len(block))])
        left -= min(left, len(block))
    conn.shutdown(socket.SHUT_WR)
    assert conn.recv(2) == b"ok"
print(time.perf_counter() - started)
"""


def egress_section(args: argparse.Namespace) -> None:
    """The egress proxy's throughput against a direct loopback copy (see the module)."""
    size = args.mib * MIB
    source = subprocess.Popen(
        [sys.executable, "-c", SOURCE], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert source.stdout is not None
        port = int(source.stdout.readline())
        with tempfile.TemporaryDirectory() as scratch:
            grant = EgressGrant.from_dict(
                {
                    "allow": [f"127.0.0.1:{port}"],
                    "byte_budget": 2**62,
                    "window_s": 3600,
                    "expires_at": time.time() + 3600,
                }
            )
            script = Path(scratch) / "client.py"
            script.write_text(CLIENT)
            proxies = EgressProxies()
            manager = ContainerManager(Path(scratch) / "sandbox", runtime=default_runtime())
            try:
                socket_path = proxies.grant("bench", grant)
                rows: dict[str, Callable[[str], float]] = {
                    "direct": lambda mode: _client([str(script), mode, str(size), str(port)]),
                    "egress proxy": lambda mode: _client(
                        [str(script), mode, str(size), str(port), f"unix:{socket_path}"]
                    ),
                }
                reason = runner.unavailable_reason()
                if reason is None:
                    container = manager.create()
                    manager.grant_egress(container.id, grant)
                    (container.workspace / "client.py").write_text(CLIENT)
                    rows["egress through the sandbox"] = lambda mode: _in_sandbox(
                        manager, container, [mode, str(size), str(port), f"tcp:{SANDBOX_PORT}"]
                    )
                else:
                    print(f"(egress through the sandbox: unavailable here: {reason})")
                for mode in ("down", "up"):
                    _report(mode, size, _interleaved(rows, mode, args.runs))
            finally:
                manager.close()
                proxies.close()
    finally:
        source.kill()
        source.wait()


def _client(argv: list[str]) -> float:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    return float(done.stdout)


def _in_sandbox(manager: ContainerManager, container: Container, argv: list[str]) -> float:
    done = manager.run(container, ["python", "client.py", *argv])
    if done.return_code != 0:
        raise RuntimeError(f"the client failed in the sandbox: {done.stderr}")
    return float(done.stdout)


def _interleaved(
    rows: dict[str, Callable[[str], float]], mode: str, runs: int
) -> dict[str, list[float]]:
    """`runs` timings of each row, every round running each row once in a shuffled order."""
    for row in rows.values():
        row(mode)  # warm caches once
    measured: dict[str, list[float]] = {label: [] for label in rows}
    order = list(rows)
    for _ in range(runs):
        random.shuffle(order)
        for label in order:
            measured[label].append(rows[label](mode))
    return measured


def _report(mode: str, size: int, seconds: dict[str, list[float]]) -> None:
    rates = {label: size / statistics.median(values) for label, values in seconds.items()}
    runs = len(next(iter(seconds.values())))
    print(f"{size // MIB} MiB {mode}, median of {runs} runs, interleaved")
    for label, rate in rates.items():
        print(f"  {label:28}{rate / MIB:>10.0f} MiB/s")
    direct = rates["direct"]
    for label in rates:
        if label != "direct":
            print(f"  {label} vs direct ({mode}): {rates[label] / direct:.2f}x")


def audit_section(args: argparse.Namespace) -> None:
    """Request throughput with the audit log on against off (see the module)."""
    variants: dict[str, dict[str, bool]] = {
        "off": {},
        "audit": {"audit": True},
        "audit+content": {"audit": True, "audit_content": True},
        "off (control)": {},
    }
    print("scripted engine (no model: the worst case for the log's share)")
    rates = _audited_throughput(variants, ScriptedEngine, args.requests, args.runs)
    print(
        f"  request throughput with the audit log vs without: {rates['audit'] / rates['off']:.3f}x"
    )
    print(  # two servers alike: how far apart this bench puts them is its noise
        "  control, a second server without the log vs the first: "
        f"{rates['off (control)'] / rates['off']:.3f}x"
    )
    print(
        "  request throughput with the audit log and content vs without: "
        f"{rates['audit+content'] / rates['off']:.3f}x"
    )
    print("embedded model (SmolLM2-135M, max_tokens 8)")
    path = bundled_model_path()
    rates = _audited_throughput(
        {"off": {}, "audit": {"audit": True}},
        lambda: LlamaCppEngine(path, default_temperature=0.0),
        args.model_requests,
        1,
    )
    print(
        "  request throughput with the audit log vs without (embedded model): "
        f"{rates['audit'] / rates['off']:.3f}x"
    )


def _audited_throughput(
    variants: dict[str, dict[str, bool]],
    engine: Callable[[], Engine],
    requests: int,
    runs: int,
) -> dict[str, float]:
    """Requests per second (1 / median latency) of one server per variant, sending `requests`
    a round for `runs` rounds, request by request, the servers in a new shuffled order each
    time: a change in the machine's load falls on all of them alike. Each log is verified."""
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 8,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": "Say hello to the audit log, please."}],
    }
    headers = {"x-api-key": "bench-key-0123456789"}
    latencies: dict[str, list[float]] = {label: [] for label in variants}
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        clients: dict[str, httpx.Client] = {}
        for label, settings in variants.items():
            config = ServerConfig.model_validate(
                {"api_keys": [headers["x-api-key"]], "data_dir": Path(scratch) / label, **settings}
            )
            server = stack.enter_context(BackgroundServer(create_app(config, [engine()])))
            clients[label] = stack.enter_context(
                httpx.Client(base_url=server.base_url, headers=headers, timeout=120)
            )
        order = list(variants)
        for round_ in range(runs + 1):  # the first round warms up, uncounted
            for _ in range(requests):
                random.shuffle(order)
                for label in order:
                    started = time.perf_counter()
                    clients[label].post("/v1/messages", json=body).raise_for_status()
                    if round_:
                        latencies[label].append(time.perf_counter() - started)
        stack.close()  # the servers stop: each log is whole on disk
        total = requests * (runs + 1)
        for label, settings in variants.items():
            if settings.get("audit"):
                report = verify(Path(scratch) / label / "audit")
                written = report.records - report.segments  # each segment opens with a record
                assert report.ok and written == total, (report.summary(), written, total)
    rates = {label: 1 / statistics.median(values) for label, values in latencies.items()}
    print(f"  {requests * runs} requests to each server, one at a time, interleaved")
    for label, rate in rates.items():
        p95 = statistics.quantiles(latencies[label], n=20)[-1] * 1000
        print(f"  {label:16}{rate:>8.1f} requests/s (1 / median latency), p95 {p95:.2f} ms")
    print(f"  (each log verified: {total} request records, the chain intact)")
    return rates


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "audit": audit_section,
    "egress": egress_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--mib", type=int, default=256, help="MiB per egress transfer")
    parser.add_argument("--requests", type=int, default=200, help="requests per audit round")
    parser.add_argument(
        "--model-requests", type=int, default=40, help="requests to the embedded model servers"
    )
    parser.add_argument("--section", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--quick", action="store_true", help="the smallest run: the script works")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.mib, args.requests, args.model_requests = 2, 4, 20, 3
    for name in args.section or list(SECTIONS):
        print(f"== {name}")
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
