"""Which MCP server URLs the server may connect to on a request's behalf.

A request names the MCP servers to call, so without a policy any client could make the server
fetch any URL it can reach (SSRF). The default refuses everything but loopback; an operator
lists the servers users may reach as URL prefixes, or `"*"` for any.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


class McpUrlRefused(Exception):
    """The URL is not one the policy allows; the message names it (without query) and why."""


@dataclass(frozen=True)
class UrlPolicy:
    """The MCP server URLs allowed: listed prefixes, `"*"` for any, and loopback if enabled.

    A prefix such as `"https://mcp.example.com/"` allows that scheme, host and port and any path
    under it; it is compared by its parsed parts, so `https://mcp.example.com.evil.net/` or
    `https://mcp.example.com@evil.net/` never match it. Hostnames are not resolved: one that
    points at a private or loopback address is allowed only if a prefix lists it. `"*"` allows
    every http(s) URL, private networks included.
    """

    allowed: tuple[str, ...] = ()
    allow_loopback: bool = True

    def check(self, url: str) -> None:
        """Return if `url` may be connected to; raise `McpUrlRefused` saying why not."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            port = _port(parts)
        except ValueError:
            raise McpUrlRefused(f"MCP server URL {redact_url(url)!r} is not a valid URL") from None
        shown = redact_url(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise McpUrlRefused(
                f"MCP server URL {shown!r} refused: only http and https are allowed"
            )
        if not host:
            raise McpUrlRefused(f"MCP server URL {shown!r} refused: it has no host")
        if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
            # The HTTP client resolves them before sending, so `/public/../admin` would be
            # checked as under /public/ and fetched from /admin.
            raise McpUrlRefused(f"MCP server URL {shown!r} refused: '.' or '..' in its path")
        if parts.username is not None or parts.password is not None:
            raise McpUrlRefused(
                f"MCP server URL {shown!r} refused: credentials in the URL are not allowed "
                "(send the token as authorization_token)"
            )
        if "*" in self.allowed:
            return
        if self.allow_loopback and _is_loopback(host):
            return
        for prefix in self.allowed:
            if _matches(parts, port, prefix):
                return
        raise McpUrlRefused(
            f"MCP server URL {shown!r} refused: it is not on this server's list of allowed "
            "MCP servers"
        )


DEFAULT_POLICY = UrlPolicy()
"""Loopback only: what a server with no configured MCP servers allows."""


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment (which may carry secrets), for messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return SplitResult(parts.scheme, netloc, parts.path, "", "").geturl()
    except ValueError:
        return "<invalid URL>"


def _port(parts: SplitResult) -> int | None:
    return parts.port if parts.port is not None else _DEFAULT_PORTS.get(parts.scheme)


def _is_loopback(host: str) -> bool:
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _matches(parts: SplitResult, port: int | None, prefix: str) -> bool:
    try:
        allowed = urlsplit(prefix)
        allowed_port = _port(allowed)
    except ValueError:
        return False
    if (
        allowed.scheme != parts.scheme
        or not allowed.hostname
        or allowed.hostname != (parts.hostname or "").lower()
        or allowed_port != port
    ):
        return False
    base = allowed.path or "/"
    path = parts.path or "/"
    if base.endswith("/"):
        return path.startswith(base)
    # A prefix without a trailing slash matches itself and what lies below it, not siblings
    # that merely start with the same letters (/mcp allows /mcp and /mcp/x, not /mcpevil).
    return path == base or path.startswith(base + "/")
