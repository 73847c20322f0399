"""Egress for code-execution containers: an allow-listed, byte-budgeted HTTP proxy.

A sandbox has no network (its own loopback only), and keeps none with a grant. A container
with an `EgressGrant` gets an `EgressProxy` on the host, listening on a Unix socket of its own
that the runner binds into the sandbox (at `SANDBOX_SOCKET`): the one thing outside the sandbox
its commands can reach. A Unix socket rather than a network device because it needs nothing but
a bind mount (no veth, no slirp, no privileged helper), reaches one process on the host and no
address, and is reachable by that container alone (its file is mounted in no other sandbox).

Programs speak a standard proxy protocol to `PROXY_URL` (set as `HTTPS_PROXY`, `HTTP_PROXY` and
`ALL_PROXY`): HTTP CONNECT, and plain HTTP for `http://` URLs. That address is a forwarder on
the sandbox's own loopback, this very file run as a script in the sandbox (so it imports the
standard library only): it binds the port, starts the command, relays each TCP connection to
the Unix socket, and exits with the command. It is plumbing, not a boundary: a command may kill
it or talk to the socket itself; every check is made on the host, by the proxy.

The proxy, per connection: reads the request, checks the destination against the allow-list
(names resolved on the host, and the address connected to checked, so a listed name cannot be
pointed at a private address; see `EgressGrant.reaches`), connects, then relays and counts every
byte both ways against the grant's budget, shared by all its connections. The byte that would
pass the budget is not sent: the connections are cut (both sides closed) and new ones refused
until the window rolls. An expired or revoked grant cuts its connections too. Each connection
ends in one event (`on_event`): destination, outcome (allowed, refused, cut, failed), bytes up
and down, seconds.

The proxies of a `ContainerManager` run on one asyncio loop on a thread of their own
(`EgressProxies`, started at the first grant), so that the runner, which blocks a thread per
command, the CLI, which has no loop, and the server's loop never wait on one another.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SANDBOX_SOCKET = "/run/tercet/egress.sock"  # where the proxy's socket appears in the sandbox
SANDBOX_FORWARDER = "/run/tercet/egress.py"  # and this file, run there as the forwarder
SANDBOX_PORT = 3128  # the forwarder's port, on the sandbox's own loopback
PROXY_URL = f"http://127.0.0.1:{SANDBOX_PORT}"
# Lower case too: curl reads only `http_proxy` for http:// URLs.
PROXY_ENV = {
    name: PROXY_URL
    for base in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
    for name in (base, base.lower())
}
HEAD_BYTES = 16 * 1024  # a request's line and headers
HEAD_SECONDS = 10.0  # to send them
RESOLVE_SECONDS = 10.0
CONNECT_SECONDS = 10.0
MAX_CONNECTIONS = 64  # open at once through one container's proxy
WRITE_BUFFER_BYTES = 256 * 1024  # per side, before the other side's reading pauses
STOP_SECONDS = 5.0  # for a proxy to close (a caller waiting on the loop thread)

Outcome = Literal["allowed", "refused", "cut", "failed"]
EgressEvent = dict[str, object]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class EgressGrantError(ValueError):
    """A grant that cannot be used; the message names the field and what is wrong."""


# --- the grant ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """One allow-list entry, `host:port`: an exact name (`api.example.com`), any name under a
    domain (`*.example.com`, not the domain itself), an IP address or a CIDR network (IPv6 in
    brackets: `[::1]:443`, `[fd00::/8]:*`); the port a number or `*` (any)."""

    name: str | None  # lower case; "*.example.com" for a domain's names
    network: IPNetwork | None  # an address is a network of one
    port: int | None  # None: any

    @classmethod
    def parse(cls, text: str) -> Destination:
        if not isinstance(text, str):
            raise EgressGrantError(f"{text!r}: a destination is a string, host:port")
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or not rest.startswith(":"):
                raise EgressGrantError(f"{text!r}: write an IPv6 destination as [address]:port")
            port_text = rest[1:]
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise EgressGrantError(f"{text!r}: give a port (host:port, or host:* for any)")
            if ":" in host:
                raise EgressGrantError(f"{text!r}: write an IPv6 address in brackets: [::1]:443")
        port = _parse_port(text, port_text)
        network = _parse_network(text, host)
        if network is not None:
            return cls(None, network, port)
        return cls(_parse_name(text, host), None, port)

    def admits_name(self, name: str, port: int) -> bool:
        """Whether `name` (lower case, no trailing dot) and `port` fit this entry's name."""
        if self.name is None or not self._admits_port(port):
            return False
        if self.name.startswith("*."):
            return name.endswith(self.name[1:])
        return name == self.name

    def admits_address(self, address: IPAddress, port: int) -> bool:
        return (
            self.network is not None
            and self._admits_port(port)
            and address.version == self.network.version
            and address in self.network
        )

    def _admits_port(self, port: int) -> bool:
        return self.port is None or self.port == port

    def __str__(self) -> str:
        port = "*" if self.port is None else str(self.port)
        if self.network is None:
            return f"{self.name}:{port}"
        host = (
            str(self.network.network_address)
            if self.network.prefixlen == self.network.max_prefixlen
            else str(self.network)
        )
        return f"[{host}]:{port}" if self.network.version == 6 else f"{host}:{port}"


def _parse_port(text: str, port_text: str) -> int | None:
    if port_text == "*":
        return None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise EgressGrantError(f"{text!r}: the port is a number from 1 to 65535, or *")
    return int(port_text)


def _parse_network(text: str, host: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(host, strict=True)
    except ValueError as exc:
        if "/" in host or _looks_numeric(host):
            raise EgressGrantError(f"{text!r}: not an IP address or CIDR network: {exc}") from exc
        return None


def _looks_numeric(host: str) -> bool:
    return bool(host) and all(part.isdigit() for part in host.split("."))


def _parse_name(text: str, host: str) -> str:
    name = host.lower().rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    if not bare or len(bare) > 253 or not all(_LABEL.fullmatch(p) for p in bare.split(".")):
        problem = (
            "`*` only as the whole first label (*.example.com)"
            if "*" in bare
            else "not a host name, IP address or CIDR network"
        )
        raise EgressGrantError(f"{text!r}: {problem}")
    return name


@dataclass(frozen=True)
class EgressGrant:
    """What a container may reach, and how much: the allow-list, a budget of bytes per window
    of `window_s` seconds (up and down together, every connection of the container drawing on
    it), and when the grant ends (`expires_at`, seconds since the epoch)."""

    allow: tuple[Destination, ...]
    byte_budget: int
    window_s: float
    expires_at: float

    def __post_init__(self) -> None:
        if not self.allow:
            raise EgressGrantError("allow: list at least one destination (host:port)")
        if any(not isinstance(d, Destination) for d in self.allow):
            raise EgressGrantError("allow: Destination objects (EgressGrant.from_dict parses text)")
        if isinstance(self.byte_budget, bool) or not isinstance(self.byte_budget, int):
            raise EgressGrantError("byte_budget: a whole number of bytes")
        if self.byte_budget < 1:
            raise EgressGrantError("byte_budget: at least 1 byte")
        for field, value in (("window_s", self.window_s), ("expires_at", self.expires_at)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EgressGrantError(f"{field}: a number of seconds")
            if not math.isfinite(value) or value <= 0:
                raise EgressGrantError(f"{field}: a positive, finite number of seconds")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> EgressGrant:
        """A grant from JSON-like data: `{"allow": ["host:port", ...], "byte_budget": int,
        "window_s": number, "expires_at": number}`; an unknown or missing key is an error."""
        if not isinstance(data, Mapping):
            raise EgressGrantError("a grant is an object: allow, byte_budget, window_s, expires_at")
        fields = ("allow", "byte_budget", "window_s", "expires_at")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise EgressGrantError(f"unknown field(s): {', '.join(map(str, unknown))}")
        missing = [f for f in fields if f not in data]
        if missing:
            raise EgressGrantError(f"missing field(s): {', '.join(missing)}")
        allow = data["allow"]
        if isinstance(allow, str) or not isinstance(allow, Sequence):
            raise EgressGrantError("allow: a list of destinations (host:port)")
        parsed = []
        for index, item in enumerate(allow):
            try:
                parsed.append(Destination.parse(item))
            except EgressGrantError as exc:
                raise EgressGrantError(f"allow[{index}]: {exc}") from None
        return cls(
            tuple(parsed),
            data["byte_budget"],  # type: ignore[arg-type]  # checked in __post_init__
            data["window_s"],  # type: ignore[arg-type]
            data["expires_at"],  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "allow": [str(d) for d in self.allow],
            "byte_budget": self.byte_budget,
            "window_s": self.window_s,
            "expires_at": self.expires_at,
        }

    def names(self, name: str, port: int) -> bool:
        """Whether an entry admits the host name `name` (which may then be resolved)."""
        return any(d.admits_name(name, port) for d in self.allow)

    def reaches(self, address: IPAddress, port: int, *, named: bool) -> bool:
        """Whether the proxy may connect to `address`: one an IP or CIDR entry admits, or,
        for a name an entry admits (`named`), a public address. A listed name resolving to a
        loopback, private or link-local address (DNS rebinding, a cloud's metadata service) is
        refused unless an IP entry lists that address too."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(d.admits_address(address, port) for d in self.allow):
            return True
        return named and address.is_global


class _Budget:
    """A grant's bytes in its current window: windows of `window_s` from the grant's start."""

    def __init__(self, grant: EgressGrant, start: float) -> None:
        self._grant = grant
        self._start = start
        self._window = 0
        self.used = 0

    def take(self, wanted: int, now: float) -> int:
        """How many of `wanted` bytes may pass now (counted as passed)."""
        self._roll(now)
        granted = max(min(wanted, self._grant.byte_budget - self.used), 0)
        self.used += granted
        return granted

    def spent(self, now: float) -> bool:
        self._roll(now)
        return self.used >= self._grant.byte_budget

    def rolls_at(self) -> float:
        return self._start + (self._window + 1) * self._grant.window_s

    def _roll(self, now: float) -> None:
        window = max(math.floor((now - self._start) / self._grant.window_s), 0)
        if window != self._window:
            self._window, self.used = window, 0


# --- relaying -------------------------------------------------------------------------------


class _End(asyncio.Protocol):
    """One socket of a relay; everything it sees is handed to the relay."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.pending = bytearray()  # received before the relay was joined

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        self.relay.made(self)

    def data_received(self, data: bytes) -> None:
        self.relay.received(self, data)

    def eof_received(self) -> bool:
        return self.relay.eof(self)

    def pause_writing(self) -> None:  # our buffer is full: stop reading what fills it
        self.relay.other(self).pause()

    def resume_writing(self) -> None:
        self.relay.other(self).resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # what is buffered is sent first


class _Relay:
    """Two sockets joined, the client's and the upstream's: what one receives is written to
    the other (`passing` may hold some back), with flow control and half-closes passed on.
    Until `join`, what arrives is kept (a server may speak first) and its end paused."""

    def __init__(self) -> None:
        self.client = _End(self)
        self.upstream = _End(self)
        self.joined = False  # upstream connected: bytes flow
        self._eofs: list[_End] = []

    def other(self, end: _End) -> _End:
        return self.upstream if end is self.client else self.client

    def made(self, end: _End) -> None:
        if not self.joined:
            # Not enough alone: the asyncio of some 3.11 releases (3.11.2's) starts reading
            # after a pause made here, hence `pending`.
            end.pause()

    def join(self) -> None:
        """Both ends are there: what waited passes, then bytes flow."""
        self.joined = True
        for end in (self.client, self.upstream):
            if end.pending:
                waiting, end.pending = bytes(end.pending), bytearray()
                self.received(end, waiting)
        for end in list(self._eofs):
            self._pass_eof(end)
        self.client.resume()
        self.upstream.resume()

    def received(self, end: _End, data: bytes) -> None:
        if self.joined:
            self.other(end).write(self.passing(end is self.client, data))
        else:
            end.pending += data
            end.pause()

    def passing(self, up: bool, data: bytes) -> bytes:
        return data

    def eof(self, end: _End) -> bool:
        if end not in self._eofs:
            self._eofs.append(end)
            if self.joined:
                self._pass_eof(end)
        return True  # the other direction may still run

    def _pass_eof(self, end: _End) -> None:
        other = self.other(end)
        if len(self._eofs) == 2:
            self.close()
        elif other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()

    def lost(self, end: _End) -> None:
        self.other(end).close()
        if self.client.lost and (self.upstream.lost or self.upstream.transport is None):
            self.ended()

    def close(self) -> None:
        self.client.close()
        self.upstream.close()

    def ended(self) -> None:
        """Both sockets are closed."""


# --- the proxy (host side) ------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    host: str  # lower case; an IPv6 address without brackets
    port: int
    tunnel: bool  # CONNECT; else plain HTTP, `head` to send upstream
    head: bytes = b""


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, outcome: Outcome = "refused") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.outcome: Outcome = outcome


_STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class _ProxyConnection(_Relay):
    """One connection through a container's proxy, from its request to its event."""

    def __init__(self, proxy: EgressProxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.started = time.monotonic()
        self.destination = ""
        self.address = ""
        self.outcome: Outcome = "allowed"
        self.reason = ""
        self.bytes_up = 0
        self.bytes_down = 0
        self._head = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._settled = False  # an outcome other than allowed is final

    def made(self, end: _End) -> None:
        if end is not self.client:
            super().made(end)
            return
        self.proxy.live.add(self)  # its request is read at once
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HEAD_SECONDS, self._refuse_late)

    def received(self, end: _End, data: bytes) -> None:
        if self.joined or end is not self.client:
            super().received(end, data)
            return
        if self._task is not None:  # paused meanwhile; a last read may still come
            self.client.pending += data
            return
        self._head += data
        end_of_head = self._head.find(b"\r\n\r\n")
        if end_of_head < 0:
            if len(self._head) > HEAD_BYTES:
                self.refuse(_Refusal(400, f"request head over {HEAD_BYTES} bytes"))
            return
        self.client.pause()
        head, rest = bytes(self._head[: end_of_head + 4]), bytes(self._head[end_of_head + 4 :])
        self._head.clear()
        self._task = asyncio.get_running_loop().create_task(self._open(head, rest))

    def passing(self, up: bool, data: bytes) -> bytes:
        now = self.proxy.clock()
        if self.proxy.grant.expires_at <= now:
            self.proxy.cut_all("the grant expired")
            return b""
        fits = self.proxy.budget.take(len(data), now)
        if up:
            self.bytes_up += fits
        else:
            self.bytes_down += fits
        if fits < len(data):
            # What fits is written before the cut closes the sockets (close() sends it).
            self.other(self.client if up else self.upstream).write(data[:fits])
            self.proxy.cut_all("the byte budget is spent")
            return b""
        return data

    def eof(self, end: _End) -> bool:
        if not self.joined and end is self.client and self._task is None:
            self.refuse(_Refusal(400, "closed before a whole request"))
            return True
        return super().eof(end)

    def refuse(self, refusal: _Refusal) -> None:
        """Answer the client with the refusal and close."""
        self.settle(refusal.outcome, refusal.reason)
        body = (refusal.reason + "\n").encode()
        status = f"{refusal.status} {_STATUS_TEXT.get(refusal.status, 'Error')}"
        self.client.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        self.close()

    def cut(self, reason: str) -> None:
        if self.joined:
            self.settle("cut", reason)
            self.close()
        else:
            self.refuse(_Refusal(403, reason))

    def settle(self, outcome: Outcome, reason: str) -> None:
        if not self._settled:
            self._settled = True
            self.outcome, self.reason = outcome, reason

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().close()

    def lost(self, end: _End) -> None:
        if end is self.client and self._task is not None and not self._task.done():
            self._task.cancel()
            self.settle("failed", "the client left before the destination answered")
        super().lost(end)

    def ended(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self in self.proxy.live:
            if not self._settled and not self.joined:
                self.settle("refused", "closed before a whole request")
            self.proxy.ended(self)

    def _refuse_late(self) -> None:
        if not self.joined and self._task is None:
            self.refuse(_Refusal(400, f"no whole request within {HEAD_SECONDS:g} s"))

    async def _open(self, head: bytes, rest: bytes) -> None:
        try:
            request = _parse_request(head)
            self.destination = _destination(request.host, request.port)
            self.proxy.admit()
            addresses = await self._addresses(request)
            await self._connect(addresses, request.port)
        except _Refusal as refusal:
            self.refuse(refusal)
            return
        except asyncio.CancelledError:  # the client left (see `lost`)
            self.close()
            return
        if self._timer is not None:
            self._timer.cancel()
        if request.tunnel:
            self.client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.client.pending[:0] = request.head + rest  # before what came after the head
        self.join()

    async def _addresses(self, request: _Request) -> list[IPAddress]:
        """The addresses the grant lets this request reach, in the resolver's order."""
        grant = self.proxy.grant
        try:
            literal: IPAddress | None = ipaddress.ip_address(request.host)
        except ValueError:
            literal = None
        if literal is not None:
            if grant.reaches(literal, request.port, named=False):
                return [literal]
            raise _Refusal(403, f"{self.destination} is not on the allow-list")
        if not grant.names(request.host, request.port):
            # Not resolved: a lookup of an unlisted name would itself carry data out.
            raise _Refusal(403, f"{self.destination} is not on the allow-list")
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(
                loop.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM),
                RESOLVE_SECONDS,
            )
        except (OSError, TimeoutError) as exc:
            raise _Refusal(502, f"cannot resolve {request.host}: {exc}", "failed") from exc
        resolved: list[IPAddress] = []
        for *_, sockaddr in found:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if address not in resolved:
                resolved.append(address)
        allowed = [a for a in resolved if grant.reaches(a, request.port, named=True)]
        if not allowed:
            listed = ", ".join(map(str, resolved))
            raise _Refusal(
                403,
                f"{request.host} resolves to {listed}: a listed name reaches public addresses "
                "only, others need an IP entry of their own",
            )
        return allowed

    async def _connect(self, addresses: list[IPAddress], port: int) -> None:
        loop = asyncio.get_running_loop()
        failures = []
        for address in addresses:
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: self.upstream, str(address), port),
                    CONNECT_SECONDS,
                )
            except (OSError, TimeoutError) as exc:
                failures.append(f"{address}: {exc or 'timed out'}")
                continue
            self.address = str(address)
            return
        raise _Refusal(502, f"cannot connect to {'; '.join(failures)}", "failed")


def _parse_request(head: bytes) -> _Request:
    """A proxy request: `CONNECT host:port`, or a plain HTTP request with an absolute
    `http://` URL (then the head to send upstream: origin-form, proxy headers dropped, the
    connection closed after one response, so that a second request cannot follow it there)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise _Refusal(400, "an unreadable request") from exc
    line, _, headers = text.partition("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refusal(400, "not an HTTP/1.x proxy request")
    method, target, version = parts
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return _Request(host, port, tunnel=True)
    if not target.lower().startswith("http://"):
        raise _Refusal(400, "a proxy takes CONNECT host:port, or an absolute http:// URL")
    authority, slash, path = target[len("http://") :].partition("/")
    authority = authority.rpartition("@")[2]  # credentials in a URL are not ours to check
    host, port = _split_authority(authority, 80)
    kept = [
        h
        for h in headers.split("\r\n")
        if h
        and h.split(":", 1)[0].strip().lower()
        not in ("proxy-connection", "proxy-authorization", "connection", "keep-alive")
    ]
    upstream = [f"{method} {slash or '/'}{path} {version}", *kept, "Connection: close", "", ""]
    return _Request(host, port, tunnel=False, head="\r\n".join(upstream).encode("latin-1"))


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _Refusal(400, f"a bad destination: {authority}")
        port_text = rest[1:]
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
    elif ":" in authority:
        raise _Refusal(400, f"write an IPv6 destination in brackets: {authority}")
    else:
        host, port_text = authority, ""
    if not port_text and default_port is not None:
        port = default_port
    elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise _Refusal(400, f"a bad port in {authority!r}")
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or len(host) > 253 or not all(_LABEL.fullmatch(p) for p in host.split(".")):
            raise _Refusal(400, f"a bad host name: {host!r}") from None
    return host, port


def _destination(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EgressProxy:
    """One container's egress: an HTTP proxy on the Unix socket `socket_path`, enforcing
    `grant`. Runs on the loop that calls `start`; `on_event` is called there, once for each
    connection at its end, with `container`, `destination`, `address` (connected to),
    `outcome` (allowed, refused, cut, failed), `reason`, `bytes_up`, `bytes_down`, `seconds`."""

    def __init__(
        self,
        container: str,
        grant: EgressGrant,
        socket_path: Path,
        *,
        on_event: Callable[[EgressEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
        uid: int | None = None,
    ) -> None:
        self.container = container
        self.grant = grant
        self.socket_path = socket_path
        self.clock = clock
        self.budget = _Budget(grant, clock())
        self.live: set[_ProxyConnection] = set()
        self._on_event = on_event
        self._uid = uid  # the sandbox's user, as root: the socket's owner
        self._server: asyncio.Server | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._all_ended: asyncio.Event | None = None  # set by `close` while it waits

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await loop.create_unix_server(
            lambda: _ProxyConnection(self).client, str(self.socket_path)
        )
        os.chmod(self.socket_path, 0o600)  # connect() needs write permission: the user only
        if self._uid is not None:
            os.chown(self.socket_path, self._uid, self._uid)
        # Connections with nothing to send are cut at expiry too (others see it at once).
        delay = max(self.grant.expires_at - self.clock(), 0)
        self._expiry = loop.call_later(delay, self.cut_all, "the grant expired")

    async def close(self, reason: str = "the grant was revoked") -> None:
        """Stop listening, cut every connection, and wait for their events."""
        if self._expiry is not None:
            self._expiry.cancel()
        if self._server is not None:
            self._server.close()
        self.cut_all(reason)
        if self.live:
            self._all_ended = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_ended.wait(), STOP_SECONDS)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def admit(self) -> None:
        """Refuse a new connection when the grant cannot carry it."""
        now = self.clock()
        if self.grant.expires_at <= now:
            raise _Refusal(403, "the container's egress grant has expired")
        if self.budget.spent(now):
            rolls = max(self.budget.rolls_at() - now, 0)
            raise _Refusal(403, f"the byte budget is spent; the window rolls in {rolls:.0f} s")
        if len(self.live) > MAX_CONNECTIONS:
            raise _Refusal(503, f"over {MAX_CONNECTIONS} connections at once")

    def cut_all(self, reason: str) -> None:
        for connection in list(self.live):
            connection.cut(reason)

    def ended(self, connection: _ProxyConnection) -> None:
        """`connection`'s sockets are closed: its event."""
        self.live.discard(connection)
        if not self.live and self._all_ended is not None:
            self._all_ended.set()
        event: EgressEvent = {
            "container": self.container,
            "destination": connection.destination,
            "address": connection.address,
            "outcome": connection.outcome,
            "reason": connection.reason,
            "bytes_up": connection.bytes_up,
            "bytes_down": connection.bytes_down,
            "seconds": round(time.monotonic() - connection.started, 6),
        }
        log.info("egress %s", event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # the caller's bug must not stop the proxy
                log.exception("egress: on_event failed for %s", event)


class EgressProxies:
    """The egress proxies of a set of containers (one `ContainerManager`), served by one
    asyncio loop on a daemon thread of its own, started at the first grant; every method may
    be called from any thread. Sockets live in a private temporary directory (a Unix socket's
    path is at most 107 bytes, so not under the containers' root)."""

    def __init__(
        self,
        on_event: Callable[[EgressEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.on_event = on_event
        self._clock = clock
        self._lock = threading.Lock()
        self._proxies: dict[str, EgressProxy] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._directory: Path | None = None

    def grant(self, container: str, grant: EgressGrant, uid: int | None = None) -> Path:
        """Start `container`'s proxy for `grant` (replacing, and cutting, any it has); its
        socket's path on the host. `uid`: the sandbox's user, who must be able to connect."""
        if grant.expires_at <= self._clock():
            raise EgressGrantError("expires_at: the grant has already expired")
        self.revoke(container, "the grant was replaced")
        loop, directory = self._started()
        proxy = EgressProxy(
            container,
            grant,
            directory / f"{secrets.token_hex(8)}.sock",
            on_event=self.on_event,
            clock=self._clock,
            uid=uid,
        )
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(STOP_SECONDS)
        with self._lock:
            self._proxies[container] = proxy
        return proxy.socket_path

    def socket(self, container: str) -> Path | None:
        """The socket of `container`'s live grant, or None (an expired grant is revoked)."""
        with self._lock:
            proxy = self._proxies.get(container)
        if proxy is None:
            return None
        if proxy.grant.expires_at <= self._clock():
            self.revoke(container, "the grant expired")
            return None
        return proxy.socket_path

    def grant_of(self, container: str) -> EgressGrant | None:
        with self._lock:
            proxy = self._proxies.get(container)
        return None if proxy is None else proxy.grant

    def revoke(
        self, container: str, reason: str = "the grant was revoked", wait: bool = True
    ) -> bool:
        """Close `container`'s proxy, cutting its connections; whether it had one. With
        `wait`, returns once they are closed and their events given."""
        with self._lock:
            proxy = self._proxies.pop(container, None)
            loop = self._loop
        if proxy is None or loop is None:
            return False
        future = asyncio.run_coroutine_threadsafe(proxy.close(reason), loop)
        if wait:
            future.result(STOP_SECONDS * 2)
        return True

    def close(self) -> None:
        """Revoke every grant and stop the thread."""
        with self._lock:
            containers = list(self._proxies)
        for container in containers:
            self.revoke(container, "the server is stopping")
        with self._lock:
            loop, thread, directory = self._loop, self._thread, self._directory
            self._loop = self._thread = self._directory = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_SECONDS)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _started(self) -> tuple[asyncio.AbstractEventLoop, Path]:
        with self._lock:
            if self._loop is None or self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="tercet-egress-"))
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="tercet-egress", daemon=True
                )
                self._thread.start()
            return self._loop, self._directory


# --- the forwarder (in the sandbox) ---------------------------------------------------------


class _Forward(_Relay):
    """A TCP connection on the sandbox's loopback, relayed to the proxy's Unix socket."""

    def __init__(self, proxy_socket: str) -> None:
        super().__init__()
        self._proxy_socket = proxy_socket

    def made(self, end: _End) -> None:
        super().made(end)
        if end is self.client:
            asyncio.get_running_loop().create_task(self._join())

    async def _join(self) -> None:
        try:
            await asyncio.get_running_loop().create_unix_connection(
                lambda: self.upstream, self._proxy_socket
            )
        except OSError:
            self.close()
            return
        if self.client.lost:  # it left meanwhile
            self.close()
            return
        self.join()


async def _serve_and_run(listener: socket.socket, command: Sequence[str]) -> int:
    """Relay connections until `command`, started here, ends; its exit status."""
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    process: subprocess.Popen[bytes] | None = None

    def reap() -> None:
        if process is not None and process.poll() is not None:
            ended.set()

    loop.add_signal_handler(signal.SIGCHLD, reap)  # before the child exists: no exit is missed
    await loop.create_server(lambda: _Forward(SANDBOX_SOCKET).client, sock=listener)
    try:
        process = subprocess.Popen(list(command))
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    reap()
    await ended.wait()
    code = process.returncode
    return code if code >= 0 else 128 - code  # as bubblewrap reports a signal


def _forward_main(argv: Sequence[str]) -> int:
    """`egress.py forward -- COMMAND...`: the forwarder, then the command (see the module)."""
    if len(argv) < 3 or list(argv[:2]) != ["forward", "--"]:
        print("usage: egress.py forward -- COMMAND...", file=sys.stderr)
        return 2
    # Bound before the command starts, so that its first connection finds the port open.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", SANDBOX_PORT))
    listener.listen(128)
    return asyncio.run(_serve_and_run(listener, argv[2:]))


if __name__ == "__main__":
    sys.exit(_forward_main(sys.argv[1:]))
