"""Seeded mutation fuzzing of every route: bad requests get the Anthropic error envelope.

Valid requests (tools, thinking, images, documents, tool results, cache_control, MCP servers,
containers, metadata...) are mutated from a fixed seed, so every run sends the same requests:
fields dropped, wrong JSON types at every path, unknown enum values, deep nesting, long
strings, lone surrogates and invalid UTF-8, broken bodies and headers, bad query parameters
and path ids. Each response must be a non-5xx answer; a 4xx must be the envelope
`{"type":"error","error":{"type","message"},"request_id"}` with the error type of its status,
and no response or log line may carry a traceback. A failure prints the exact request; its
case name (`group#index`) finds it again, as the cases are rebuilt from the seed.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL
from tests.mcp.servers import McpServerInfo, running_mcp_server
from tests.server.test_files import tiny_pdf

pytestmark = pytest.mark.timeout(300)

SEED = 20250806
KEY = "fuzz-key-7c1d"
MAX_BODY = 512 * 1024  # small limits, so 413 is cheap to reach
MAX_FILE = 32 * 1024
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
MCP_BETA = "mcp-client-2025-11-20"

# The error type each status must carry (Anthropic's table; 405 is one of the "other 4XX").
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
TRACEBACK_MARKERS = (b"Traceback (most recent call last)", b'File "/', b'.py", line ')

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


# --- requests and how they are checked -------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request. `expect`: the statuses it may get, where the fuzz knows (None: any non-5xx)."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str | bytes] = field(default_factory=lambda: dict(HEADERS))
    expect: frozenset[int] | None = None

    def describe(self, limit: int = 3000) -> str:
        body = self.body or b""
        shown = repr(body[:limit]) + (f" ... ({len(body)} bytes)" if len(body) > limit else "")
        return (
            f"[{self.name}] {self.method} {self.path}\n  headers: {self.headers!r}\n  body: {shown}"
        )


def problems(case: Case, response: httpx.Response) -> list[str]:
    """What is wrong with `response` as an answer to `case` (empty when nothing is)."""
    found = []
    status, content = response.status_code, response.content
    if any(marker in content for marker in TRACEBACK_MARKERS):
        found.append("a traceback in the body")
    if case.expect is not None and status not in case.expect:
        found.append(f"status {status}, expected one of {sorted(case.expect)}")
    if status >= 500 and status != 529:
        found.append(f"server error {status}")
    if not response.headers.get("request-id", "").startswith("req_"):
        found.append("no request-id header")
    if status >= 400 and case.method != "HEAD":
        found += envelope_problems(response)
    if status < 300 and b"event: error" in content and b'"overloaded_error"' not in content:
        found.append("an error event in the stream")
    return found


def envelope_problems(response: httpx.Response) -> list[str]:
    try:
        body = response.json()
    except ValueError:
        return [f"not JSON: {response.content[:300]!r}"]
    if not isinstance(body, dict) or set(body) != {"type", "error", "request_id"}:
        return [f"not the error envelope: {body!r:.300}"]
    error = body["error"]
    found = []
    if body["type"] != "error" or not isinstance(error, dict) or set(error) != {"type", "message"}:
        return [f"not the error envelope: {body!r:.300}"]
    expected = ERROR_TYPES.get(response.status_code)
    if error["type"] != expected:
        found.append(f"error type {error['type']!r} for status {response.status_code}")
    if not isinstance(error["message"], str) or not error["message"].strip():
        found.append("an empty error message")
    if body["request_id"] != response.headers.get("request-id"):
        found.append("request_id differs from the request-id header")
    return found


# --- JSON bodies with what json.dumps cannot write -------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text placed as is: NaN, invalid UTF-8, nesting deeper than json.dumps recurses."""

    text: bytes


def render(document: Any, extra: bytes = b"") -> bytes:
    """`document` as JSON bytes, `Raw` values and keys (`@@rawN@@`) spliced in; `extra`
    (such as `"model":5`) is added as the last member of a top-level object."""
    raws: list[bytes] = []

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {(swap(k) if isinstance(k, Raw) else k): swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(document)).encode()
    for index, raw in enumerate(raws):
        text = text.replace(b'"@@raw%d@@"' % index, raw, 1)
    if extra and text.endswith(b"}"):
        text = text[:-1] + (b"," if text != b"{}" else b"") + extra + b"}"
    return text


DEEP_LIST = Raw(b"[" * 5000 + b"]" * 5000)
DEEP_OBJECT = Raw(b'{"a":' * 3000 + b"1" + b"}" * 3000)
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    3.5,
    -7.25,
    10**30,
    -(10**30),
    2**63,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    " ",
    "x",
    "bogus_enum_value",
    "\ud800",
    "a\udfffb\ud800",
    "\u0000",
    "é漢🎉" * 3,
    "a" * 100_000,
    [],
    [None],
    [[]],
    ["x"] * 500,
    {},
    {"type": "bogus"},
    {"": None},
    DEEP_LIST,
    DEEP_OBJECT,
    Raw(b"[" * 900 + b"]" * 900),
    Raw(b"[" * 190 + b"]" * 190),  # as deep as the parser takes
    Raw(b'{"a":' * 190 + b"{}" + b"}" * 190),
    Raw(b"1e999"),
    Raw(b"-0"),
    Raw(b"123456789012345678901234567890.5e-400"),
    Raw(b'"\xff\xfe"'),
    Raw(b'"\xed\xa0\x80"'),
    Raw(b'"\\udc00\\ud800"'),
    Raw(b'"\\u12"'),
    Raw(b"NaN"),
    Raw(b"-Infinity"),
]

JsonPath = tuple[str | int, ...]
DROP = object()


def paths(value: Any, prefix: JsonPath = ()) -> Iterator[JsonPath]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def mutated(document: Any, path: JsonPath, new: Any) -> Any:
    """A copy of `document` with the value at `path` replaced by `new` (or dropped: `DROP`)."""
    if not path:
        return new
    copied = copy.deepcopy(document)
    parent = copied
    for part in path[:-1]:
        parent = parent[part]
    if new is DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copied


def label(path: JsonPath) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def shown(value: Any) -> str:
    text = repr(value.text if isinstance(value, Raw) else value)
    return text if len(text) < 40 else text[:30] + f"...({len(text)})"


def json_mutations(
    rng: random.Random,
    group: str,
    bases: dict[str, tuple[dict[str, Any], dict[str, str]]],
    path: str,
    per_path: int,
    stacked: int,
) -> list[Case]:
    """For each base: every path dropped and given `per_path` wrong values; then `stacked`
    bodies with 2-4 mutations at once, and unknown or duplicate keys."""
    cases: list[Case] = []

    def add(base: str, what: str, body: bytes, extra_headers: dict[str, str]) -> None:
        cases.append(
            Case(
                f"{group}#{len(cases)} {base}: {what}",
                "POST",
                path,
                body,
                {**HEADERS, **extra_headers},
            )
        )

    for base, (document, extra_headers) in bases.items():
        add(base, "as is", render(document), extra_headers)
        for where in list(paths(document))[1:]:
            add(base, f"drop {label(where)}", render(mutated(document, where, DROP)), extra_headers)
            for value in rng.sample(VALUES, per_path):
                body = render(mutated(document, where, value))
                add(base, f"{label(where)} = {shown(value)}", body, extra_headers)
        for _ in range(stacked):
            current, steps = document, []
            for _ in range(rng.randint(2, 4)):
                where = rng.choice(list(paths(current)))
                value = DROP if where and rng.random() < 0.3 else rng.choice(VALUES)
                current = mutated(current, where, value)
                steps.append(f"{label(where)} = {'<dropped>' if value is DROP else shown(value)}")
            add(base, "; ".join(steps), render(current), extra_headers)
        for key in rng.sample(sorted(document), min(4, len(document))):
            value = rng.choice(VALUES)
            duplicate = json.dumps(key).encode() + b":" + render(value)
            add(
                base,
                f"duplicate {key} = {shown(value)}",
                render(document, duplicate),
                extra_headers,
            )
        add(base, "unknown key", render({**document, "surprise": {"x": [1, 2]}}), extra_headers)
        add(base, "key with a lone surrogate", render(document, b'"\\ud800":1'), extra_headers)
        add(base, "invalid UTF-8 key", render(document, b'"\xc3\x28":1'), extra_headers)
    return cases


def body_mutations(group: str, path: str, valid: bytes, rng: random.Random) -> list[Case]:
    """Bodies that are not a JSON object at all, and byte-level damage to a valid one."""
    whole: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("null", b"null"),
        ("list", b"[]"),
        ("number", b"42"),
        ("string", b'"hello"'),
        ("true", b"true"),
        ("open brace", b"{"),
        ("trailing comma", b'{"model": "x",}'),
        ("single quotes", b"{'model': 'x'}"),
        ("NaN alone", b"NaN"),
        ("form", b"model=x&max_tokens=5"),
        ("xml", b"<messages><message>hi</message></messages>"),
        ("BOM + valid", b"\xef\xbb\xbf" + valid),
        ("UTF-16", valid.decode().encode("utf-16")),
        ("UTF-32", valid.decode().encode("utf-32")),
        ("latin-1 garbage", b'{"model": "\xe9\xff"}'),
        ("NUL bytes", b"\x00" * 64),
        ("gzip magic", b"\x1f\x8b\x08\x00" + bytes(range(64))),
        ("two objects", valid + valid),
        ("valid then junk", valid + b" junk"),
        ("deep list", DEEP_LIST.text),
        ("deep object", DEEP_OBJECT.text),
        ("very deep", b"[" * 200_000),
        ("over the size limit", b'{"model": "' + b"a" * (MAX_BODY + 10) + b'"}'),
        ("whitespace", b" \n\t " * 100),
        ("lone surrogate escape", b'"\\ud800"'),
    ]
    cases = [
        Case(
            f"{group}#body {what}",
            "POST",
            path,
            body,
            expect=frozenset({413}) if what == "over the size limit" else frozenset({400}),
        )
        for what, body in whole
    ]
    for index in range(60):
        data = bytearray(valid)
        kind = rng.choice(["truncate", "flip", "insert", "delete"])
        at = rng.randrange(len(data))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            data[at] = rng.randrange(256)
        elif kind == "insert":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del data[at : at + rng.randint(1, 16)]
        cases.append(Case(f"{group}#bytes{index} {kind} at {at}", "POST", path, bytes(data)))
    return cases


def header_mutations(group: str, method: str, path: str, body: bytes | None) -> list[Case]:
    """Broken headers on a valid request; auth failures are exactly 401."""
    without = {k: v for k, v in HEADERS.items() if k != "x-api-key"}
    unauthorized = frozenset({401})
    variants: list[tuple[str, dict[str, str | bytes], frozenset[int] | None]] = [
        ("no key", without, unauthorized),
        ("empty key", {**without, "x-api-key": ""}, unauthorized),
        ("wrong key", {**without, "x-api-key": "nope"}, unauthorized),
        ("latin-1 key", {**without, "x-api-key": b"\xff\xfe\xe9"}, unauthorized),
        ("long key", {**without, "x-api-key": "k" * 8000}, unauthorized),
        ("bearer, no token", {**without, "authorization": "Bearer"}, unauthorized),
        ("bearer garbage", {**without, "authorization": b"Bearer \xff"}, unauthorized),
        ("basic auth", {**without, "authorization": "Basic Zm9vOmJhcg=="}, unauthorized),
        ("bearer key", {**without, "authorization": f"Bearer {KEY}"}, None),
        ("key and wrong bearer", {**HEADERS, "authorization": "Bearer nope"}, None),
        ("no version", {k: v for k, v in HEADERS.items() if k != "anthropic-version"}, None),
        ("garbage version", {**HEADERS, "anthropic-version": "garbage"}, None),
        ("latin-1 version", {**HEADERS, "anthropic-version": b"\xe9\xff"}, None),
        ("empty beta", {**HEADERS, "anthropic-beta": ""}, None),
        ("commas beta", {**HEADERS, "anthropic-beta": ",,, ,"}, None),
        ("garbage beta", {**HEADERS, "anthropic-beta": "garbage-2099-01-01,\tx"}, None),
        ("latin-1 beta", {**HEADERS, "anthropic-beta": b"\xff\xfe"}, None),
        ("long beta", {**HEADERS, "anthropic-beta": ",".join(["b"] * 3000)}, None),
        (
            "known betas",
            {
                **HEADERS,
                "anthropic-beta": f"files-api-2025-04-14,{MCP_BETA},"
                "interleaved-thinking-2025-05-14,mcp-client-2025-04-04",
            },
            None,
        ),
        ("no content type", {k: v for k, v in HEADERS.items() if k != "content-type"}, None),
        ("text content type", {**HEADERS, "content-type": "text/plain"}, None),
        (
            "form content type",
            {**HEADERS, "content-type": "application/x-www-form-urlencoded"},
            None,
        ),
        (
            "multipart content type",
            {**HEADERS, "content-type": "multipart/form-data; boundary=x"},
            None,
        ),
        ("utf-16 charset", {**HEADERS, "content-type": "application/json; charset=utf-16"}, None),
        ("latin-1 content type", {**HEADERS, "content-type": b"application/\xff"}, None),
        ("gzip encoding", {**HEADERS, "content-encoding": "gzip"}, None),
        ("accept sse", {**HEADERS, "accept": "text/event-stream"}, None),
        ("retry count garbage", {**HEADERS, "x-stainless-retry-count": "-1e9"}, None),
    ]
    return [
        Case(f"{group}#header {what}", method, path, body, headers, expect)
        for what, headers, expect in variants
    ]


# --- the requests ------------------------------------------------------------------------------


USER = [{"role": "user", "content": "Hello there"}]


def message_bases(fuzz: Fuzz) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Valid `POST /v1/messages` bodies (and extra headers), one per feature area. The
    `caller-*` models call a tool, so code execution and MCP calls run too."""
    file_id = fuzz.file_id
    plain = {"model": CLAUDE_MODEL, "max_tokens": 32, "messages": USER}
    rich = {
        "model": CLAUDE_MODEL,
        "max_tokens": 64,
        "system": [
            {
                "type": "text",
                "text": "Be brief.",
                "cache_control": {"type": "ephemeral", "ttl": "5m"},
            }
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.png"},
                    },
                    {
                        "type": "document",
                        "title": "t",
                        "context": "c",
                        "citations": {"enabled": True},
                        "source": {"type": "text", "media_type": "text/plain", "data": "doc"},
                    },
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [{"type": "text", "text": "x"}]},
                    },
                    {"type": "document", "source": {"type": "file", "file_id": file_id}},
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": base64.b64encode(tiny_pdf("fuzz")).decode(),
                        },
                    },
                    {
                        "type": "search_result",
                        "source": "https://example.com",
                        "title": "r",
                        "content": [{"type": "text", "text": "found"}],
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Calling."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "is_error": False,
                        "cache_control": {"type": "ephemeral"},
                        "content": [
                            {"type": "text", "text": "12 C"},
                            {"type": "image", "source": {"type": "file", "file_id": file_id}},
                        ],
                    },
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather.",
                "strict": True,
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
                "cache_control": {"type": "ephemeral"},
                "input_examples": [{"city": "Rome"}],
            },
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "user-1"},
        "stop_sequences": ["STOP", "\n\nHuman:"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "service_tier": "auto",
        "cache_control": {"type": "ephemeral"},
    }
    server_tools = {
        "model": "caller-code",
        "max_tokens": 48,
        "stream": True,
        "container": fuzz.container_id,
        "tools": [
            {"type": "bash_20250124", "name": "bash"},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
            {"type": "memory_20250818", "name": "memory"},
            {"type": "code_execution_20250825", "name": "code_execution"},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        ],
        "tool_choice": {"type": "tool", "name": "bash"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "container_upload", "file_id": file_id},
                    {"type": "text", "text": "Run it"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "server_tool_use",
                        "id": "srvtoolu_1",
                        "name": "bash_code_execution",
                        "input": {"command": "ls"},
                    },
                    {
                        "type": "bash_code_execution_tool_result",
                        "tool_use_id": "srvtoolu_1",
                        "content": {
                            "type": "bash_code_execution_result",
                            "stdout": "a",
                            "stderr": "",
                            "return_code": 0,
                            "content": [],
                        },
                    },
                    {"type": "text", "text": "Done"},
                ],
            },
            {"role": "user", "content": "Again"},
        ],
    }
    thinking = {
        "model": CLAUDE_MODEL,
        "max_tokens": 2048,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024, "display": "summarized"},
        "messages": [
            *USER,
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "", "signature": fuzz.signature},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Hi"},
                ],
            },
            {"role": "user", "content": "More"},
        ],
    }
    adaptive = {
        "model": CLAUDE_MODEL,
        "max_tokens": 64,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": {}}},
        "system": "You are a system.",
        "messages": [
            *USER,
            {"role": "system", "content": "A system turn mid-conversation."},
            {"role": "assistant", "content": "The answer is"},
        ],
    }
    mcp = {
        "model": "caller-mcp",
        "max_tokens": 32,
        "mcp_servers": [
            {"type": "url", "url": fuzz.mcp_url, "name": "tools", "authorization_token": "tok-fuzz"}
        ],
        "tools": [
            {
                "type": "mcp_toolset",
                "mcp_server_name": "tools",
                "default_config": {"enabled": True, "defer_loading": False},
                "configs": {"echo": {"enabled": True}, "die": {"enabled": False}},
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "messages": [
            *USER,
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "mcp_tool_use",
                        "id": "mcptoolu_1",
                        "name": "echo",
                        "server_name": "tools",
                        "input": {"text": "x"},
                    },
                    {
                        "type": "mcp_tool_result",
                        "tool_use_id": "mcptoolu_1",
                        "is_error": False,
                        "content": [{"type": "text", "text": "x"}],
                    },
                ],
            },
            {"role": "user", "content": "Thanks"},
        ],
    }
    return {
        "plain": (plain, {}),
        "rich": (rich, {}),
        "server_tools": (server_tools, {}),
        "thinking": (thinking, {"anthropic-beta": "interleaved-thinking-2025-05-14"}),
        "adaptive": (adaptive, {}),
        "mcp": (mcp, {"anthropic-beta": MCP_BETA}),
    }


def count_bases(
    bases: dict[str, tuple[dict[str, Any], dict[str, str]]],
) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """The same prompts as count_tokens bodies (which have no max_tokens or sampling)."""
    dropped = {
        "max_tokens",
        "stream",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "service_tier",
        "container",
    }
    return {
        name: ({k: v for k, v in body.items() if k not in dropped}, headers)
        for name, (body, headers) in bases.items()
        if name != "server_tools"  # the same schema paths as `rich`
    }


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"fuzzb0undary") -> bytes:
    out = b""
    for headers, data in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def file_part(
    name: bytes = b"file", filename: bytes = b'"a.txt"', mime: bytes = b"text/plain"
) -> bytes:
    """The headers of a multipart part."""
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename:
        disposition += b"; filename=" + filename
    return disposition + (b"\r\nContent-Type: " + mime if mime else b"")


def upload_cases(rng: random.Random) -> list[Case]:
    boundary = "multipart/form-data; boundary=fuzzb0undary"
    headers = {**HEADERS, "content-type": boundary}
    good = multipart([(file_part(), b"hello fuzz")])
    bad = frozenset({400})
    variants: list[tuple[str, bytes, str | bytes, frozenset[int] | None]] = [
        ("valid", good, boundary, frozenset({200})),
        ("empty body", b"", boundary, bad),
        ("no parts", b"--fuzzb0undary--\r\n", boundary, bad),
        ("json body", b'{"file": "x"}', "application/json", bad),
        ("no content type", good, "", bad),
        ("no boundary", good, "multipart/form-data", bad),
        ("empty boundary", good, "multipart/form-data; boundary=", bad),
        ("wrong boundary", good, "multipart/form-data; boundary=other", bad),
        (
            "long boundary",
            multipart([(file_part(), b"x")], b"b" * 300),
            "multipart/form-data; boundary=" + "b" * 300,
            bad,
        ),
        ("quoted boundary", good, 'multipart/form-data; boundary="fuzzb0undary"', None),
        ("latin-1 boundary", good, b"multipart/form-data; boundary=\xff\xfe", bad),
        (
            "boundary with spaces",
            multipart([(file_part(), b"x")], b"a b"),
            'multipart/form-data; boundary="a b"',
            None,
        ),
        ("mixed", good, "multipart/mixed; boundary=fuzzb0undary", bad),
        ("wrong part name", multipart([(file_part(name=b"upload"), b"x")]), boundary, bad),
        ("no filename", multipart([(file_part(filename=b""), b"x")]), boundary, bad),
        ("empty filename", multipart([(file_part(filename=b'""'), b"x")]), boundary, bad),
        ("empty file", multipart([(file_part(), b"")]), boundary, bad),
        (
            "long filename",
            multipart([(file_part(filename=b'"' + b"n" * 600 + b'"'), b"x")]),
            boundary,
            bad,
        ),
        (
            "latin-1 filename",
            multipart([(file_part(filename=b'"\xff\xfe.txt"'), b"x")]),
            boundary,
            None,
        ),
        (
            "RFC 2231 filename",
            multipart([(file_part(filename=b"x; filename*=UTF-8''%ff%fe"), b"x")]),
            boundary,
            None,
        ),
        ("NUL filename", multipart([(file_part(filename=b'"a\x00b"'), b"x")]), boundary, None),
        (
            "path filename",
            multipart([(file_part(filename=b'"../../etc/passwd"'), b"x")]),
            boundary,
            None,
        ),
        ("long mime", multipart([(file_part(mime=b"text/" + b"x" * 300), b"x")]), boundary, bad),
        ("latin-1 mime", multipart([(file_part(mime=b"text/\xff"), b"x")]), boundary, None),
        ("no mime", multipart([(file_part(mime=b""), b"x")]), boundary, None),
        (
            "over the size limit",
            multipart([(file_part(), b"x" * (MAX_FILE + 1))]),
            boundary,
            frozenset({413}),
        ),
        ("two files", multipart([(file_part(), b"one"), (file_part(), b"two")]), boundary, None),
        (
            "other parts first",
            multipart(
                [(b'Content-Disposition: form-data; name="purpose"', b"x"), (file_part(), b"x")]
            ),
            boundary,
            None,
        ),
        ("no disposition", multipart([(b"Content-Type: text/plain", b"x")]), boundary, bad),
        (
            "header garbage",
            multipart([(b"\xff\xfe: \x00\r\n" + file_part(), b"x")]),
            boundary,
            None,
        ),
        ("truncated", good[: len(good) // 2], boundary, bad),
        ("no final boundary", good[:-20], boundary, bad),
        ("preamble junk", b"junk\r\n" + good, boundary, None),
        ("epilogue junk", good + b"junk", boundary, None),
        ("LF only", good.replace(b"\r\n", b"\n"), boundary, bad),
        (
            "many parts",
            multipart(
                [(b'Content-Disposition: form-data; name="p"', b"x")] * 500 + [(file_part(), b"x")]
            ),
            boundary,
            None,
        ),
        (
            "huge header",
            multipart([(file_part() + b"\r\nX-Pad: " + b"p" * 20000, b"x")]),
            boundary,
            None,
        ),
    ]
    cases = [
        Case(f"upload#{what}", "POST", "/v1/files", body, {**headers, "content-type": kind}, expect)
        for what, body, kind, expect in variants
    ]
    for index in range(120):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(max(1, len(data)))
            kind = rng.choice(["flip", "insert", "delete", "truncate"])
            if kind == "flip" and data:
                data[at] = rng.randrange(256)
            elif kind == "insert":
                data[at:at] = rng.choice(
                    [b"\r\n", b"--", b'"', b";", b"\x00", b"\xff", b"=", b"--fuzzb0undary\r\n"]
                )
            elif kind == "delete":
                del data[at : at + rng.randint(1, 10)]
            else:
                del data[at:]
        cases.append(Case(f"upload#bytes{index}", "POST", "/v1/files", bytes(data), headers))
    return cases


QUERY_VALUES = [
    "-1",
    "0",
    "1",
    "1000",
    "1001",
    "abc",
    "1.5",
    "",
    "%00",
    "%ff%fe",
    "1e3",
    str(10**30),
    "-" + str(10**30),
    "%ED%A0%80",
    "a" * 2000,
    "file_nope",
    "0x10",
    "%20",
    "true",
    "null",
    "[]",
]


def list_queries(rng: random.Random, names: list[str], count: int) -> list[str]:
    queries = [f"{name}={value}" for name in names for value in QUERY_VALUES]
    for _ in range(count):
        chosen = rng.sample(names, rng.randint(2, len(names)))
        queries.append("&".join(f"{n}={rng.choice(QUERY_VALUES)}" for n in chosen))
    return queries


PATH_IDS = [
    "file_nope",
    "%00",
    "%ff",
    "%ff%fe",
    "%ED%A0%80",
    "%F0%9F%98%80",
    ".",
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "%25",
    "%zz",
    "a" * 3000,
    "%20",
    "%0d%0aX-Injected:%201",
    quote("'; DROP TABLE files;--"),
    "file_" + "é" * 10,
    "null",
    "-1",
    "msgbatch_01",
    "%22%7B%7D%22",
    "file_nope?limit=abc",
    "file_nope%3Fx",
]


# --- the fuzz ----------------------------------------------------------------------------------


@dataclass
class Fuzz:
    base_url: str
    client: httpx.Client
    file_id: str
    signature: str
    mcp_url: str
    container_id: str
    output_file_id: str | None  # a downloadable file (a code execution output)
    errors: list[logging.LogRecord]

    def run(self, cases: list[Case]) -> None:
        failures, summary = [], []
        statuses: Counter[int] = Counter()
        for case in cases:
            try:
                response = self.send(case)
            except httpx.HTTPError as exc:
                failures.append(f"{case.describe()}\n  -> {type(exc).__name__}: {exc}")
                summary.append(f"{case.name[:120]}: {type(exc).__name__}")
                continue
            statuses[response.status_code] += 1
            found = problems(case, response)
            if found:
                failures.append(
                    f"{case.describe()}\n  sent: {response.request.method} {response.request.url}"
                    f"\n  -> {response.status_code} {response.content[:500]!r}"
                    f"\n  problems: {'; '.join(found)}"
                )
                summary.append(f"{case.name[:120]}: {'; '.join(found)}")
        print(f"{len(cases)} requests, by status: {dict(sorted(statuses.items()))}")
        logged = [f"{r.name}: {r.getMessage()}" for r in self.errors]
        self.errors.clear()
        report = "\n".join(summary[:100]) + "\n\n" + "\n\n".join(failures[:10])
        assert not failures, f"{len(failures)} of {len(cases)} requests failed:\n{report}"
        assert not logged, "errors were logged:\n" + "\n".join(logged[:10])
        assert_alive(self.client)

    def send(self, case: Case) -> httpx.Response:
        """The response to `case`. A connection the server closed after an earlier failure
        is tried once more, so one bug is reported once."""
        for attempt in (1, 2):
            try:
                return self.client.request(
                    case.method, case.path, content=case.body, headers=case.headers
                )
            except httpx.TransportError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def assert_alive(client: httpx.Client) -> None:
    body = {"model": CLAUDE_MODEL, "max_tokens": 8, "messages": USER}
    response = client.post("/v1/messages", json=body, headers=HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"]


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


RUN_BASH = ScriptedCall("bash_code_execution", {"command": "echo out > outputs/out.txt"})
CALL_ECHO = ScriptedCall("echo", {"text": "hi"})
CODE_RUN = {
    "model": "caller-code",
    "max_tokens": 32,
    "messages": USER,
    "tools": [{"type": "code_execution_20250825", "name": "code_execution"}],
}


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpServerInfo]:
    with running_mcp_server("streamable-http", token="tok-fuzz") as info:
        yield info


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, mcp_server: McpServerInfo) -> Iterator[Fuzz]:
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        api_keys=[KEY],
        max_body_bytes=MAX_BODY,
        max_file_bytes=MAX_FILE,
        mcp_connect_timeout_s=5,
    )
    engines = [
        ScriptedEngine(["Fuzzed reply."], context_window=100_000),
        ScriptedEngine([RUN_BASH, "Ran it."], model_id="caller-code", context_window=100_000),
        ScriptedEngine([CALL_ECHO, "Echoed."], model_id="caller-mcp", context_window=100_000),
    ]
    with BackgroundServer(create_app(config, engines)) as running:
        records: list[logging.LogRecord] = []
        handler = _Collect(records)
        loggers = [logging.getLogger(name) for name in ("tercet", "uvicorn")]
        for logger in loggers:
            logger.addHandler(handler)
        try:
            with httpx.Client(base_url=running.base_url, timeout=30) as client:
                files = {"file": ("note.txt", b"a note to read", "text/plain")}
                stored = client.post("/v1/files", files=files, headers={"x-api-key": KEY})
                thinking = {
                    "model": CLAUDE_MODEL,
                    "max_tokens": 2048,
                    "messages": USER,
                    "thinking": {"type": "enabled", "budget_tokens": 1024},
                }
                signed = client.post("/v1/messages", json=thinking, headers=HEADERS)
                ran = client.post("/v1/messages", json=CODE_RUN, headers=HEADERS).json()
                result = ran["content"][1]["content"]  # no sandbox here: an error, no output
                outputs = [o["file_id"] for o in result.get("content", [])]
                yield Fuzz(
                    running.base_url,
                    client,
                    stored.json()["id"],
                    signed.json()["content"][0]["signature"],
                    mcp_server.url,
                    ran["container"]["id"] if ran["container"] else "container_none",
                    outputs[0] if outputs else None,
                    records,
                )
        finally:
            for logger in loggers:
                logger.removeHandler(handler)


def rng_for(group: str) -> random.Random:
    return random.Random(f"{SEED}:{group}")  # one stream per group: groups change alone


def test_every_base_request_is_valid(fuzz: Fuzz) -> None:
    """The mutations start from requests the server accepts (else they test little)."""
    bases = message_bases(fuzz)
    for name, (body, headers) in bases.items():
        response = fuzz.client.post(
            "/v1/messages", content=render(body), headers={**HEADERS, **headers}
        )
        assert response.status_code == 200, (name, response.text)
        assert b"event: error" not in response.content, name
        if name == "server_tools":  # the model's call ran (in the sandbox, or failed there)
            assert b'"bash_code_execution_tool_result"' in response.content
        if name == "mcp":
            assert b'"mcp_tool_result"' in response.content
    for name, (body, headers) in count_bases(bases).items():
        response = fuzz.client.post(
            "/v1/messages/count_tokens", content=render(body), headers={**HEADERS, **headers}
        )
        assert response.status_code == 200, (name, response.text)


def test_messages(fuzz: Fuzz) -> None:
    rng = rng_for("messages")
    bases = message_bases(fuzz)
    cases = json_mutations(rng, "messages", bases, "/v1/messages", per_path=5, stacked=80)
    valid = render(bases["plain"][0])
    cases += body_mutations("messages", "/v1/messages", valid, rng)
    cases += body_mutations("messages?beta", "/v1/messages?beta=true", valid, rng)[:10]
    cases += header_mutations("messages", "POST", "/v1/messages", valid)
    fuzz.run(cases)


def test_count_tokens(fuzz: Fuzz) -> None:
    rng = rng_for("count_tokens")
    path = "/v1/messages/count_tokens"
    bases = count_bases(message_bases(fuzz))
    cases = json_mutations(rng, "count_tokens", bases, path, per_path=3, stacked=40)
    valid = render(bases["plain"][0])
    cases += body_mutations("count_tokens", path, valid, rng)
    cases += header_mutations("count_tokens", "POST", path, valid)
    fuzz.run(cases)


def test_files_upload(fuzz: Fuzz) -> None:
    cases = upload_cases(rng_for("upload"))
    good = multipart([(file_part(), b"hello")])
    headers = header_mutations("upload", "POST", "/v1/files", good)
    for case in headers:  # keep the multipart content type unless the case is about it
        if case.headers.get("content-type") == "application/json":
            case.headers["content-type"] = "multipart/form-data; boundary=fuzzb0undary"
    fuzz.run(cases + headers)


def test_files_list_and_ids(fuzz: Fuzz) -> None:
    rng = rng_for("files")
    names = ["limit", "before_id", "after_id", "page", "ids[]", "ids"]
    cases = [
        Case(f"files-list#{i} {query}", "GET", f"/v1/files?{query}", None)
        for i, query in enumerate(list_queries(rng, names, 80))
    ]
    cases += [
        Case(
            "files-list#101 ids",
            "GET",
            "/v1/files?" + "&".join(["ids[]=x"] * 101),
            None,
            expect=frozenset({400}),
        ),
        Case("files-list#cursor not base64", "GET", "/v1/files?page=page_%%%%", None),
        Case(
            "files-list#cursor not UTF-8",
            "GET",
            "/v1/files?page=page_" + base64.urlsafe_b64encode(b"\xff\xfe").decode(),
            None,
        ),
        Case("files-list#cursor NUL", "GET", "/v1/files?page=page_AAAA", None),
        Case(
            "files-list#real id",
            "GET",
            f"/v1/files?after_id={fuzz.file_id}&limit=1",
            None,
            expect=frozenset({200}),
        ),
    ]
    for file_id in [*PATH_IDS, fuzz.file_id]:
        known = file_id == fuzz.file_id
        cases += [
            Case(
                f"files-id#{file_id[:40]} meta",
                "GET",
                f"/v1/files/{file_id}",
                None,
                expect=frozenset({200}) if known else None,
            ),
            Case(
                f"files-id#{file_id[:40]} content",
                "GET",
                f"/v1/files/{file_id}/content",
                None,
                expect=frozenset({400}) if known else None,
            ),  # uploads are not downloadable
        ]
        if not known:
            cases.append(
                Case(f"files-id#{file_id[:40]} delete", "DELETE", f"/v1/files/{file_id}", None)
            )
    if fuzz.output_file_id is not None:  # a code execution output: downloadable
        output = f"/v1/files/{fuzz.output_file_id}"
        cases += [
            Case("files-output#meta", "GET", output, None, expect=frozenset({200})),
            Case("files-output#content", "GET", f"{output}/content", None, expect=frozenset({200})),
            Case("files-output#content?x", "GET", f"{output}/content?limit=abc", None),
        ]
        cases += header_mutations("files-output", "GET", f"{output}/content", None)
    cases += header_mutations("files-list", "GET", "/v1/files", None)
    cases += header_mutations("files-meta", "GET", f"/v1/files/{fuzz.file_id}", None)
    # Delete one file twice: the second is a 404.
    victim = fuzz.client.post(
        "/v1/files", files={"file": ("v.txt", b"v", "text/plain")}, headers={"x-api-key": KEY}
    ).json()["id"]
    cases += [
        Case("files-delete#first", "DELETE", f"/v1/files/{victim}", None, expect=frozenset({200})),
        Case("files-delete#again", "DELETE", f"/v1/files/{victim}", None, expect=frozenset({404})),
        Case(
            "files-delete#content after",
            "GET",
            f"/v1/files/{victim}/content",
            None,
            expect=frozenset({404}),
        ),
    ]
    fuzz.run(cases)


def test_models(fuzz: Fuzz) -> None:
    rng = rng_for("models")
    cases = [
        Case(f"models-list#{i} {query}", "GET", f"/v1/models?{query}", None)
        for i, query in enumerate(list_queries(rng, ["limit", "before_id", "after_id"], 60))
    ]
    for model_id in [
        *PATH_IDS,
        "scripted",
        CLAUDE_MODEL,
        "claude-%ED%A0%80",
        "claude-" + "x" * 3000,
        "gpt-4o",
        "anthropic.claude-v2",
    ]:
        cases.append(Case(f"models-id#{model_id[:40]}", "GET", f"/v1/models/{model_id}", None))
    cases += header_mutations("models", "GET", "/v1/models", None)
    fuzz.run(cases)


ROUTES = {
    "/v1/messages": {"POST"},
    "/v1/messages/count_tokens": {"POST"},
    "/v1/models": {"GET"},
    "/v1/models/scripted": {"GET"},
    "/v1/files": {"GET", "POST"},
    "/v1/files/file_nope": {"GET", "DELETE"},
    "/v1/files/file_nope/content": {"GET"},
    "/stats": {"GET"},
    "/": {"GET", "HEAD"},
}
UNKNOWN = [
    "/v1",
    "/v1/",
    "/v2/messages",
    "/v1/complete",
    "/v1/messages/batches",
    "/v1/messages/batches/msgbatch_01",
    "/v1/messages/batches/msgbatch_01/results",
    "/v1/messages/batches/msgbatch_01/cancel",
    "/v1/containers",
    "/v1/skills",
    "/v1/files/a/b/c",
    "/v1/models/a/b",
    "/v1/organizations/usage",
    "/v1/messages/x",
    "/v1/chat/completions",
    "/%ff",
    "/v1/%00",
    "/" + "x" * 4000,
]


def test_routes_and_methods(fuzz: Fuzz) -> None:
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    cases = []
    for path, allowed in ROUTES.items():
        for method in methods:
            if method not in allowed and not (method == "HEAD" and "GET" in allowed):
                cases.append(
                    Case(f"routes#{method} {path}", method, path, b"{}", expect=frozenset({405}))
                )
    for path in UNKNOWN:
        for method in methods:
            cases.append(
                Case(
                    f"routes#{method} {path[:40]}",
                    method,
                    path,
                    b"{}",
                    expect=frozenset({404, 405}),
                )
            )
    cases += [
        Case("routes#stats", "GET", "/stats", None, expect=frozenset({200})),
        Case(
            "routes#stats without key",
            "GET",
            "/stats",
            None,
            {"anthropic-version": "2023-06-01"},
            expect=frozenset({401}),
        ),
        Case("routes#root", "GET", "/", None, expect=frozenset({200})),
        Case("routes#trailing slash", "POST", "/v1/messages/", render({})),
        Case("routes#double slash", "POST", "//v1//messages", render({})),
        Case(
            "routes#odd query",
            "POST",
            "/v1/messages?beta=%ff&&=&beta",
            render({}),
            expect=frozenset({400}),
        ),
    ]
    fuzz.run(cases)


def test_the_server_is_still_up(fuzz: Fuzz) -> None:
    assert_alive(fuzz.client)
    streamed = fuzz.client.post(
        "/v1/messages",
        json={"model": CLAUDE_MODEL, "max_tokens": 8, "stream": True, "messages": USER},
        headers=HEADERS,
    )
    assert streamed.status_code == 200 and b"event: message_stop" in streamed.content


# --- what the fuzz found, one by one -----------------------------------------------------------


def with_thinking_text(fuzz: Fuzz, text: str) -> dict[str, Any]:
    body, _ = message_bases(fuzz)["thinking"]
    return mutated(body, ("messages", 1, "content", 0, "thinking"), text)


@pytest.mark.parametrize(
    "what",
    [
        "nesting past the parser's recursion",
        "a lone surrogate in a thinking block",
        "a lone surrogate in a file id",
        "NaN",
    ],
)
def test_json_the_server_cannot_use_is_a_400(fuzz: Fuzz, what: str) -> None:
    """Each was a 500: `json` raised RecursionError; a surrogate reached `.encode()` (signing
    the thinking text) or SQLite (the file id); Anthropic answers all of them with a 400."""
    plain = {"model": CLAUDE_MODEL, "max_tokens": 8, "messages": USER}
    source = {"type": "file", "file_id": "file_\ud800"}
    document = [{"type": "document", "source": source}, {"type": "text", "text": "Read."}]
    body = {
        "nesting past the parser's recursion": render(mutated(plain, ("metadata",), DEEP_LIST)),
        "a lone surrogate in a thinking block": render(with_thinking_text(fuzz, "\udc00\ud800")),
        "a lone surrogate in a file id": render(
            mutated(plain, ("messages",), [{"role": "user", "content": document}])
        ),
        "NaN": render(mutated(plain, ("temperature",), float("nan"))),
    }[what]
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        case = Case(what, "POST", path, body, expect=frozenset({400}))
        response = fuzz.send(case)
        assert problems(case, response) == [], response.text
        assert "The request body is not valid JSON" in response.json()["error"]["message"]


def test_a_boundary_longer_than_the_parser_takes_is_a_400(fuzz: Fuzz) -> None:
    boundary = b"b" * 300  # python-multipart refuses more than 256 when the parser is made
    case = Case(
        "long boundary",
        "POST",
        "/v1/files",
        multipart([(file_part(), b"x")], boundary),
        {**HEADERS, "content-type": "multipart/form-data; boundary=" + boundary.decode()},
        expect=frozenset({400}),
    )
    response = fuzz.send(case)
    assert problems(case, response) == [], response.text
    assert "Boundary length 300 exceeds" in response.json()["error"]["message"]


@pytest.mark.parametrize("container", [{"id": ["x"]}, {"id": {"a": 1}}, {"id": 5}])
def test_a_container_id_that_is_no_string_names_no_container(
    fuzz: Fuzz, container: dict[str, Any]
) -> None:
    """`{"id": ["x"]}` was a 500 (the container manager hashed the list)."""
    response = fuzz.client.post(
        "/v1/messages", json={**CODE_RUN, "container": container}, headers=HEADERS
    )
    assert response.status_code == 200, response.text
    result = response.json()["content"][1]
    assert result["content"]["error_code"] == "unavailable"


def test_a_500_is_the_envelope_with_the_request_id(fuzz: Fuzz, tmp_path: Path) -> None:
    """The handler for unexpected errors runs outside the middleware that adds `request-id`;
    it adds the header itself. (And the fuzz's log check sees such errors.)"""
    app = create_app(ServerConfig(data_dir=tmp_path, api_keys=[]), [ScriptedEngine()])

    async def crash() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/crash", crash)
    with BackgroundServer(app) as running:
        response = httpx.get(f"{running.base_url}/crash", timeout=30)
    assert response.status_code == 500
    assert response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": "Internal server error"},
        "request_id": response.headers["request-id"],
    }
    assert any("unhandled error" in r.getMessage() for r in fuzz.errors)
    fuzz.errors.clear()


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/files"])
def test_a_client_that_leaves_mid_body_is_no_server_error(
    fuzz: Fuzz, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Starlette raises ClientDisconnect from the body stream; it was logged as an unhandled
    error (a traceback, and a 500 sent to nobody)."""
    caplog.set_level(logging.INFO, logger="tercet.server")
    host, port = fuzz.base_url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {KEY}\r\n"
        "content-type: multipart/form-data; boundary=fuzzb0undary\r\n"
        "content-length: 20000\r\n\r\n--fuzzb0undary\r\n"  # under every size limit
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode())
    deadline = time.monotonic() + 10
    while not any("client went away" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the server did not notice the client leave"
        time.sleep(0.01)
    assert not fuzz.errors, [r.getMessage() for r in fuzz.errors]
    assert_alive(fuzz.client)
