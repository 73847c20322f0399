"""Egress for containers: grants parsed, the proxy's rules on the host, and containers reaching
(or not) loopback destinations through it. Only loopback destinations are used; tests wait on
events (the proxy's, a server's), never on sleeps."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tercet.sandbox.config import ContainerLimits, ExecutionLimits
from tercet.sandbox.containers import Container, ContainerManager
from tercet.sandbox.egress import (
    SANDBOX_PORT,
    SANDBOX_SOCKET,
    Destination,
    EgressEvent,
    EgressGrant,
    EgressGrantError,
    EgressProxies,
)
from tercet.sandbox.runner import ExecResult, unavailable_reason
from tercet.sandbox.runtime import default_runtime

needs_sandbox = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"
)
LIMITS = ExecutionLimits(wall_seconds=20, cpu_seconds=10, processes=32, output_bytes=8192)
WAIT_SECONDS = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Events:
    """The proxy's events, as they come (on its thread)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.items: list[EgressEvent] = []

    def __call__(self, event: EgressEvent) -> None:
        with self._changed:
            self.items.append(event)
            self._changed.notify_all()

    def wait(self, count: int) -> list[EgressEvent]:
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.items) >= count, WAIT_SECONDS)
            assert arrived, f"{len(self.items)} events of {count}: {self.items}"
            return list(self.items)


class Site:
    """An HTTP server on 127.0.0.1: GET /N answers N bytes; POST answers the body's length."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests.append(f"GET {self.path}")
                size = int(self.path.strip("/") or 0)
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for start in range(0, size, 65536):
                        self.wfile.write(b"d" * min(65536, size - start))
                except OSError:
                    pass  # cut

            def do_POST(self) -> None:
                site.requests.append(f"POST {self.path}")
                try:
                    size = len(self.rfile.read(int(self.headers["Content-Length"])))
                except OSError:
                    return  # cut
                body = str(size).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    served = Site()
    yield served
    served.close()


@pytest.fixture
def other_site() -> Iterator[Site]:
    served = Site()
    yield served
    served.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> Events:
    return Events()


def grant(clock: Clock, *allow: str, budget: int = 10**7, window: float = 60) -> EgressGrant:
    return EgressGrant.from_dict(
        {
            "allow": list(allow),
            "byte_budget": budget,
            "window_s": window,
            "expires_at": clock.now + 600,
        }
    )


# --- grants ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("API.example.com:443", "api.example.com:443"),
        ("*.example.com:*", "*.example.com:*"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("10.0.0.0/8:443", "10.0.0.0/8:443"),
        ("[::1]:80", "[::1]:80"),
        ("[fd00::/8]:*", "[fd00::/8]:*"),
    ],
)
def test_destinations_parse(text: str, shown: str) -> None:
    assert str(Destination.parse(text)) == shown


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("example.com", "give a port"),
        ("::1:80", "in brackets"),
        ("[::1]80", r"as \[address\]:port"),
        ("10.0.0.1/8:443", "host bits"),
        ("300.1.1.1:80", "not an IP address"),
        ("*:443", "first label"),
        ("a.*.example.com:443", "first label"),
        ("bad host!:80", "not a host name"),
        ("example.com:0", "1 to 65535"),
        ("example.com:70000", "1 to 65535"),
        ("example.com:http", "1 to 65535"),
    ],
)
def test_a_bad_destination_is_named_with_its_problem(text: str, problem: str) -> None:
    with pytest.raises(EgressGrantError, match=problem):
        Destination.parse(text)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"allow": []}, "at least one"),
        ({"allow": "example.com:443"}, "a list"),
        ({"allow": ["ok.example.com:443", "nope"]}, r"allow\[1\]"),
        ({"byte_budget": 0}, "at least 1 byte"),
        ({"byte_budget": True}, "whole number"),
        ({"byte_budget": 1.5}, "whole number"),
        ({"window_s": -1}, "positive"),
        ({"window_s": "60"}, "number of seconds"),
        ({"expires_at": float("inf")}, "finite"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_a_bad_grant_is_refused_with_the_field_named(
    change: dict[str, object], problem: str
) -> None:
    data: dict[str, object] = {
        "allow": ["example.com:443"],
        "byte_budget": 1000,
        "window_s": 60,
        "expires_at": 2_000_000_000,
    }
    with pytest.raises(EgressGrantError, match=problem):
        EgressGrant.from_dict({**data, **change})
    with pytest.raises(EgressGrantError, match="missing field"):
        EgressGrant.from_dict({k: v for k, v in data.items() if k != "window_s"})


def test_a_grant_round_trips_through_its_dict(clock: Clock) -> None:
    made = grant(clock, "*.example.com:443", "[::1]:*", budget=5)
    assert EgressGrant.from_dict(made.to_dict()) == made


def test_a_listed_name_reaches_public_addresses_only_and_ip_entries_their_own() -> None:
    listed = EgressGrant.from_dict(
        {
            "allow": ["*.example.com:443", "127.0.0.1:8080", "10.1.0.0/16:*"],
            "byte_budget": 1,
            "window_s": 1,
            "expires_at": 2_000_000_000,
        }
    )
    ip = ipaddress.ip_address
    assert listed.names("api.example.com", 443) and listed.names("a.b.example.com", 443)
    assert not listed.names("example.com", 443)  # the domain itself is not under it
    assert not listed.names("api.example.com", 80)
    assert not listed.names("evil-example.com", 443)
    assert listed.reaches(ip("93.184.216.34"), 443, named=True)
    # DNS rebinding: a listed name pointed at loopback, a private network or link-local
    for inside in ("127.0.0.1", "10.2.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1"):
        assert not listed.reaches(ip(inside), 443, named=True), inside
    assert not listed.reaches(ip("93.184.216.34"), 443, named=False)  # an unlisted literal
    assert listed.reaches(ip("127.0.0.1"), 8080, named=False)
    assert listed.reaches(ip("::ffff:127.0.0.1"), 8080, named=False)
    assert not listed.reaches(ip("127.0.0.1"), 8081, named=False)
    assert listed.reaches(ip("10.1.200.3"), 22, named=True)


# --- the proxy, on the host -----------------------------------------------------------------


@pytest.fixture
def proxies(clock: Clock, events: Events) -> Iterator[EgressProxies]:
    served = EgressProxies(events, clock)
    yield served
    served.close()


def open_proxy(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(WAIT_SECONDS)
    client.connect(str(path))
    return client


def read_head(client: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def read_all(client: socket.socket) -> bytes:
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def connect(path: Path, destination: str) -> tuple[socket.socket, bytes]:
    client = open_proxy(path)
    client.sendall(f"CONNECT {destination} HTTP/1.1\r\nHost: {destination}\r\n\r\n".encode())
    return client, read_head(client)


def test_the_proxy_tunnels_to_an_allowed_destination_and_counts_both_ways(
    proxies: EgressProxies, clock: Clock, events: Events, site: Site
) -> None:
    path = proxies.grant("c1", grant(clock, f"127.0.0.1:{site.port}"))
    client, head = connect(path, f"127.0.0.1:{site.port}")
    assert head.startswith(b"HTTP/1.1 200 "), head
    request = b"GET /1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    client.sendall(request)
    response = read_all(client)
    client.close()
    assert response.endswith(b"d" * 1000)
    (event,) = events.wait(1)
    assert event["container"] == "c1"
    assert (event["destination"], event["address"]) == (f"127.0.0.1:{site.port}", "127.0.0.1")
    assert (event["outcome"], event["bytes_up"], event["bytes_down"]) == (
        "allowed",
        len(request),
        len(response),
    )
    assert isinstance(event["seconds"], float) and event["seconds"] >= 0


def test_a_server_that_speaks_first_is_heard_and_half_closes_pass(
    proxies: EgressProxies, clock: Clock, events: Events
) -> None:
    """Regression: bytes an upstream sent before the relay was joined were dropped where
    asyncio (3.11.2) reads despite a pause in connection_made."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def greet_then_echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"220 hello\r\n")  # before any byte of the client's
            heard = b""
            while chunk := conn.recv(4096):  # to the client's EOF, passed on
                heard += chunk
            conn.sendall(heard.upper())

    greeter = threading.Thread(target=greet_then_echo, daemon=True)
    greeter.start()
    try:
        path = proxies.grant("c1", grant(clock, f"127.0.0.1:{port}"))
        client, head = connect(path, f"127.0.0.1:{port}")
        assert head.startswith(b"HTTP/1.1 200 ")
        client.sendall(b"quit")
        client.shutdown(socket.SHUT_WR)
        assert head.partition(b"\r\n\r\n")[2] + read_all(client) == b"220 hello\r\nQUIT"
        client.close()
        greeter.join(WAIT_SECONDS)
    finally:
        server.close()
    (event,) = events.wait(1)
    assert (event["outcome"], event["bytes_up"], event["bytes_down"]) == ("allowed", 4, 15)


def test_a_listed_name_that_resolves_to_loopback_needs_an_ip_entry(
    proxies: EgressProxies, clock: Clock, events: Events, site: Site
) -> None:
    path = proxies.grant("c1", grant(clock, f"localhost:{site.port}"))
    client, head = connect(path, f"localhost:{site.port}")
    client.close()
    assert head.startswith(b"HTTP/1.1 403 ") and b"resolves to" in head, head
    assert events.wait(1)[0]["outcome"] == "refused"
    path = proxies.grant("c1", grant(clock, f"localhost:{site.port}", f"127.0.0.1:{site.port}"))
    client, head = connect(path, f"localhost:{site.port}")
    client.close()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert events.wait(2)[1]["address"] == "127.0.0.1"
    assert site.requests == []


def test_every_connection_ends_in_one_event_whatever_it_sends(
    proxies: EgressProxies, clock: Clock, events: Events, site: Site
) -> None:
    path = proxies.grant("c1", grant(clock, f"127.0.0.1:{site.port}"))
    answers = []
    for request in (
        b"hello\r\n\r\n",
        b"GET /index.html HTTP/1.1\r\n\r\n",  # not a proxy request
        b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n",  # https needs CONNECT
        b"CONNECT [::1:80 HTTP/1.1\r\n\r\n",
        b"CONNECT unlisted.example.com:443 HTTP/1.1\r\n\r\n",  # never resolved
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n",
        b"X" * 20_000,  # a head too long
    ):
        client = open_proxy(path)
        client.sendall(request)
        answers.append(read_all(client).split(b"\r\n")[0])
        client.close()
    client = open_proxy(path)  # says nothing and leaves
    client.close()
    statuses = [answer.split(b" ")[1] for answer in answers]
    assert statuses == [b"400", b"400", b"400", b"400", b"403", b"403", b"400"], answers
    seen = events.wait(8)
    assert [e["outcome"] for e in seen] == ["refused"] * 8
    assert all(e["reason"] for e in seen)
    assert site.requests == []


def test_a_live_connection_is_cut_when_its_grant_is_revoked_or_expires(
    proxies: EgressProxies, clock: Clock, events: Events, site: Site
) -> None:
    path = proxies.grant("c1", grant(clock, f"127.0.0.1:{site.port}"))
    client, head = connect(path, f"127.0.0.1:{site.port}")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert proxies.revoke("c1")
    assert read_all(client) == b""  # closed by the proxy
    client.close()
    assert (events.wait(1)[0]["outcome"], events.items[0]["reason"]) == (
        "cut",
        "the grant was revoked",
    )
    assert not proxies.revoke("c1") and proxies.socket("c1") is None

    path = proxies.grant("c1", grant(clock, f"127.0.0.1:{site.port}"))
    client, head = connect(path, f"127.0.0.1:{site.port}")
    assert head.startswith(b"HTTP/1.1 200 ")
    clock.now += 601  # past expires_at: the next byte cuts it, a new connection is refused
    client.sendall(b"GET /10 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_all(client) == b""
    client.close()
    late, head = connect(path, f"127.0.0.1:{site.port}")
    late.close()
    assert head.startswith(b"HTTP/1.1 403 ") and b"expired" in head, head
    cut, refused = events.wait(3)[1:]
    assert (cut["outcome"], cut["bytes_up"], refused["outcome"]) == ("cut", 0, "refused")
    assert site.requests == []
    assert proxies.socket("c1") is None  # and the manager gives commands no proxy
    with pytest.raises(EgressGrantError, match="already expired"):
        proxies.grant("c1", _expired(clock))


def _expired(clock: Clock) -> EgressGrant:
    made = grant(clock, "127.0.0.1:80")
    return EgressGrant(made.allow, made.byte_budget, made.window_s, clock.now - 1)


# --- containers -----------------------------------------------------------------------------


@pytest.fixture
def manager(tmp_path: Path, clock: Clock, events: Events) -> Iterator[ContainerManager]:
    made = ContainerManager(
        tmp_path / "sandbox",
        ContainerLimits(idle_seconds=3600),
        LIMITS,
        runtime=default_runtime(),
        clock=clock,
        on_egress_event=events,
    )
    yield made
    made.close()


# Prints "ok BYTES" or "failed BYTES ERROR": the bytes that arrived either way.
FETCH = """
import sys, urllib.request
got = 0
try:
    data = sys.argv[2].encode() * int(sys.argv[3]) if len(sys.argv) > 2 else None
    with urllib.request.urlopen(sys.argv[1], data=data, timeout=10) as answer:
        while chunk := answer.read(65536):
            got += len(chunk)
        if got < int(answer.headers["Content-Length"]):  # read(n) says nothing of a short body
            raise EOFError("short")
    print("ok", got)
except Exception as exc:
    print("failed", got, type(exc).__name__, getattr(exc, "code", ""))
"""
# The same through a CONNECT tunnel (http.client's set_tunnel), without TLS.
TUNNEL = f"""
import http.client, sys
proxy = http.client.HTTPConnection("127.0.0.1", {SANDBOX_PORT}, timeout=10)
proxy.set_tunnel(sys.argv[1], int(sys.argv[2]))
try:
    proxy.request("GET", sys.argv[3])
    print("ok", len(proxy.getresponse().read()))
except Exception as exc:
    print("failed", exc)
"""


def python(manager: ContainerManager, container: Container, *argv: str) -> ExecResult:
    result = manager.run(container, ["python", "-c", *argv])
    assert result.return_code == 0, result.stderr
    return result


@needs_sandbox
def test_a_container_with_a_grant_reaches_an_allowed_destination(
    manager: ContainerManager, clock: Clock, events: Events, site: Site
) -> None:
    container = manager.create()
    manager.grant_egress(container.id, grant(clock, f"127.0.0.1:{site.port}"))
    assert manager.egress_grant(container.id) == grant(clock, f"127.0.0.1:{site.port}")
    fetched = python(manager, container, FETCH, f"http://127.0.0.1:{site.port}/5000")
    assert fetched.stdout == "ok 5000\n", fetched.stderr
    tunneled = python(manager, container, TUNNEL, "127.0.0.1", str(site.port), "/7000")
    assert tunneled.stdout == "ok 7000\n", tunneled.stderr
    plain, tunnel = events.wait(2)
    for event in (plain, tunnel):
        assert (event["container"], event["outcome"]) == (container.id, "allowed")
        assert event["destination"] == f"127.0.0.1:{site.port}"
    assert isinstance(plain["bytes_down"], int) and plain["bytes_down"] > 5000
    assert isinstance(tunnel["bytes_down"], int) and tunnel["bytes_down"] > 7000
    assert site.requests == ["GET /5000", "GET /7000"]


@needs_sandbox
def test_a_container_is_cut_after_its_byte_budget_until_the_window_rolls(
    manager: ContainerManager, clock: Clock, events: Events, site: Site
) -> None:
    container = manager.create()
    budget = 100_000
    manager.grant_egress(container.id, grant(clock, f"127.0.0.1:{site.port}", budget=budget))
    download = python(manager, container, FETCH, f"http://127.0.0.1:{site.port}/1000000")
    status, got, *_ = download.stdout.split()
    assert status == "failed" and 0 < int(got) < budget, download.stdout
    (cut,) = events.wait(1)
    assert cut["outcome"] == "cut" and cut["reason"] == "the byte budget is spent"
    assert isinstance(cut["bytes_up"], int) and isinstance(cut["bytes_down"], int)
    assert cut["bytes_up"] + cut["bytes_down"] == budget  # to the byte, never past it

    again = python(manager, container, FETCH, f"http://127.0.0.1:{site.port}/10")
    assert again.stdout.split()[::3] == ["failed", "403"], again.stdout
    refused = events.wait(2)[1]
    assert refused["outcome"] == "refused" and "budget is spent" in str(refused["reason"])

    clock.now += 60  # the window rolls: an upload this time, cut on the way up
    upload = python(manager, container, FETCH, f"http://127.0.0.1:{site.port}/up", "u", "300000")
    assert upload.stdout.startswith("failed 0 "), upload.stdout
    cut = events.wait(3)[2]
    assert (cut["outcome"], cut["bytes_up"], cut["bytes_down"]) == ("cut", budget, 0)
    assert site.requests == ["GET /1000000", "POST /up"]


@needs_sandbox
def test_a_container_without_a_grant_reaches_nothing(
    manager: ContainerManager, clock: Clock, events: Events, site: Site
) -> None:
    granted, other = manager.create(), manager.create()
    manager.grant_egress(granted.id, grant(clock, f"127.0.0.1:{site.port}"))
    probe = f"""
import os, socket
print(sorted(k for k in os.environ if k.lower().endswith("_proxy")), os.path.exists("{SANDBOX_SOCKET}"))
for port in ({SANDBOX_PORT}, {site.port}):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5)
        print("reached", port)
    except OSError as exc:
        print("unreachable", port, type(exc).__name__)
"""
    result = python(manager, other, probe)
    assert result.stdout.splitlines() == [
        "[] False",
        f"unreachable {SANDBOX_PORT} ConnectionRefusedError",
        f"unreachable {site.port} ConnectionRefusedError",  # the sandbox's own loopback
    ]
    fetched = python(manager, other, FETCH, f"http://127.0.0.1:{site.port}/10")
    assert fetched.stdout.startswith("failed 0 URLError"), fetched.stdout
    assert manager.egress_grant(other.id) is None
    assert events.items == [] and site.requests == []


@needs_sandbox
def test_an_unlisted_destination_is_refused(
    manager: ContainerManager,
    clock: Clock,
    events: Events,
    site: Site,
    other_site: Site,
) -> None:
    container = manager.create()
    manager.grant_egress(container.id, grant(clock, f"127.0.0.1:{site.port}"))
    plain = python(manager, container, FETCH, f"http://127.0.0.1:{other_site.port}/10")
    assert plain.stdout.split()[::3] == ["failed", "403"], plain.stdout
    tunneled = python(manager, container, TUNNEL, "127.0.0.1", str(other_site.port), "/10")
    assert "403" in tunneled.stdout, tunneled.stdout
    by_name = python(manager, container, FETCH, f"http://localhost:{site.port}/10")
    assert by_name.stdout.split()[::3] == ["failed", "403"], by_name.stdout
    seen = events.wait(3)
    assert [(e["destination"], e["outcome"]) for e in seen] == [
        (f"127.0.0.1:{other_site.port}", "refused"),
        (f"127.0.0.1:{other_site.port}", "refused"),
        (f"localhost:{site.port}", "refused"),
    ]
    assert other_site.requests == [] and site.requests == []


@needs_sandbox
def test_an_expired_grant_stops_working(
    manager: ContainerManager, clock: Clock, events: Events, site: Site
) -> None:
    container = manager.create()
    manager.grant_egress(container.id, grant(clock, f"127.0.0.1:{site.port}"))
    assert python(manager, container, FETCH, f"http://127.0.0.1:{site.port}/10").stdout == (
        "ok 10\n"
    )
    clock.now += 601
    late = python(manager, container, FETCH, f"http://127.0.0.1:{site.port}/10")
    assert late.stdout.startswith("failed 0 URLError"), late.stdout  # no proxy at all now
    assert manager.egress_grant(container.id) is None
    assert [e["outcome"] for e in events.wait(1)] == ["allowed"]
    assert site.requests == ["GET /10"]
