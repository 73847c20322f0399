"""Values as the data-flow rule compares them: normalised text, and the identifiers found in it.

An injected instruction rarely gets copied whole into a tool call; what travels is an
identifier inside it: an e-mail address, an IBAN, a URL or its domain, a phone number, a
token. `identifiers` finds those in any text, in a canonical form (an IBAN without its spaces,
a phone number as digits), so "US13 3000 0000 1212" in an e-mail and "us1330000000 1212..."
in a call's argument compare equal.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

ValueKind = Literal["email", "iban", "url", "domain", "phone", "token"]
VALUE_KINDS: tuple[ValueKind, ...] = ("email", "iban", "url", "domain", "phone", "token")

_EMAIL = re.compile(r"[a-z0-9._%+-]+@(?:[a-z0-9-]+\.)+[a-z]{2,24}", re.I)
# Compact, or in the printed groups of four (the first may be a bank's letters; later groups
# must hold a digit, so a word after the number is not taken for a group).
_IBAN = re.compile(
    r"\b[a-z]{2}\d{2}(?:[a-z0-9]{11,30}|(?: [a-z0-9]{4})(?: (?=[a-z]*\d)[a-z0-9]{1,4}){2,7})\b",
    re.I,
)
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`]+", re.I)
_DOMAIN = re.compile(
    r"(?<![\w@.-])(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}(?![\w@-])", re.I
)
_PHONE = re.compile(r"(?<![\w.-])\+?\d[\d ().-]{6,18}\d(?![\w-])")
# A date is not a phone number, though its digits may be as many.
_DATE = re.compile(r"(?:\d{4}([-/.])\d{1,2}\1\d{1,2}|\d{1,2}([-/.])\d{1,2}\2\d{2,4})(?!\d)")
_TOKEN = re.compile(r"\b(?=[a-z0-9_-]*\d)(?=[a-z0-9_-]*[a-z])[a-z0-9][a-z0-9_-]{15,}\b", re.I)
# Names that look like domains but are files or code (`setup.py`, `os.path`): not hosts.
_NOT_TLDS = frozenset(
    [
        "py",
        "pyc",
        "pyi",
        "md",
        "txt",
        "rst",
        "json",
        "toml",
        "yaml",
        "yml",
        "cfg",
        "ini",
        "lock",
        "log",
        "csv",
        "tsv",
        "pdf",
        "png",
        "jpg",
        "jpeg",
        "gif",
        "svg",
        "webp",
        "html",
        "htm",
        "css",
        "js",
        "mjs",
        "ts",
        "tsx",
        "jsx",
        "sh",
        "bash",
        "zsh",
        "c",
        "h",
        "cc",
        "cpp",
        "hpp",
        "rs",
        "go",
        "java",
        "kt",
        "rb",
        "php",
        "pl",
        "sql",
        "xml",
        "zip",
        "gz",
        "tar",
        "whl",
        "egg",
        "bak",
        "tmp",
        "swp",
        "self",
        "path",
        "os",
        "sys",
        "cls",
    ]
)
_URL_TRAILER = ".,;:!?)]}>'\""


def normalise(text: str) -> str:
    """`text` as compared: Unicode compatibility forms folded (full-width letters, ligatures),
    case-folded, every run of whitespace one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def scalar_text(value: object) -> str | None:
    """A string or number as text (an integral float as an integer: 100.0 is "100"); None for
    anything else (booleans too: they carry no data worth following)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def scalars(value: Any, name: str = "") -> Iterator[tuple[str, str]]:
    """Every string and number inside `value` (dicts, lists and tuples walked), with the name
    of the nearest key above it ("" at the top)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from scalars(item, str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from scalars(item, name)
    elif (text := scalar_text(value)) is not None:
        yield name, text


def identifiers(text: str) -> list[tuple[ValueKind, str]]:
    """The identifiers in `text`, each in canonical form (lower case; an IBAN without spaces,
    a phone number as digits with its leading +, a domain without `www.`)."""
    found: list[tuple[ValueKind, str]] = []
    for match in _EMAIL.finditer(text):
        email = match.group().casefold()
        found += [("email", email), ("domain", _host(email.rpartition("@")[2]))]
    for match in _URL.finditer(text):
        url = match.group().rstrip(_URL_TRAILER).casefold()
        found.append(("url", url))
        host = urlsplit(url).hostname
        if host:
            found.append(("domain", _host(host)))
    for match in _DOMAIN.finditer(text):
        domain = match.group().casefold()
        if domain.rpartition(".")[2] not in _NOT_TLDS:
            found.append(("domain", _host(domain)))
    for match in _IBAN.finditer(text):
        found.append(("iban", match.group().replace(" ", "").casefold()))
    for match in _PHONE.finditer(text):
        if _DATE.match(match.group()):  # a date, maybe with the hour after it
            continue
        digits = re.sub(r"\D", "", match.group())
        if 8 <= len(digits) <= 15:
            found.append(("phone", ("+" if match.group().startswith("+") else "") + digits))
    for match in _TOKEN.finditer(text):
        found.append(("token", match.group().casefold()))
    return list(dict.fromkeys(found))


def shorten(value: str, keep: int = 4) -> str:
    """`value` cut for a log line or a reason (no secret is written whole): its first and
    last `keep` characters."""
    value = " ".join(value.split())
    if len(value) <= 2 * keep + 1:
        return value[: max(1, len(value) // 3)] + "…"
    return f"{value[:keep]}…{value[-keep:]}"


def _host(host: str) -> str:
    return host.removeprefix("www.")
