"""Detectors of instructions hidden in untrusted content (prompt injection).

A detector is anything with `name` and `detect(text) -> Sequence[Detection]` (the `Detector`
protocol); a classifier (a fine-tuned model, a hosted service) plugs in the same way. One that
must wait on I/O may also offer `adetect`, which the agent's loop awaits instead. Shipped:
`RulesDetector` (patterns in rules.toml) and `JudgeDetector` (a model asked, judge.py).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from threading import Lock
from typing import Any, Protocol, runtime_checkable

RULES_FILE = Path(__file__).with_name("rules.toml")


@dataclass(frozen=True)
class Detection:
    """A stretch of text a detector took for an injected instruction: `text[start:end]`."""

    detector: str  # "rules", "judge", a classifier's name
    rule: str  # which of the detector's rules (the judge: "judge")
    start: int
    end: int
    text: str
    what: str = ""  # why, in words


class Detector(Protocol):
    """Finds injected instructions in a text."""

    name: str

    def detect(self, text: str) -> Sequence[Detection]:
        """The detections in `text`, in order; none for ordinary text."""
        ...


@runtime_checkable
class AsyncDetector(Protocol):
    """A detector that waits on I/O (a model): `adetect` is awaited where there is a loop."""

    async def adetect(self, text: str) -> Sequence[Detection]: ...


@dataclass(frozen=True)
class Rule:
    """One pattern of the rules detector."""

    name: str
    pattern: re.Pattern[str]
    what: str = ""
    listings: bool = True  # also read in tool listings (names, descriptions, schemas)


class RulesDetector:
    """Patterns of injected instructions ("ignore previous instructions", <INFORMATION>,
    "important message from the user", role markers, imperative requests to send, transfer,
    delete ...), read from a TOML file of `[[rule]]` tables (name, pattern, what)."""

    name = "rules"

    def __init__(self, path: Path = RULES_FILE, *, listings: bool = False) -> None:
        """With `listings`, only the rules that also read tool listings (`listings = true`,
        the default: the framing of an injection, not an imperative request)."""
        self.rules = tuple(rule for rule in _rules_of(path) if rule.listings or not listings)

    def detect(self, text: str) -> Sequence[Detection]:
        return list(_detect(self.rules, text))


# The server's guard reads a request's whole history again on every request: the same texts,
# so their detections are kept, by the text's digest (a text may be long; a detection holds
# only its own stretch).
_DETECTED: OrderedDict[tuple[tuple[Rule, ...], bytes], tuple[Detection, ...]] = OrderedDict()
_DETECTED_MAX = 1024
_DETECTED_LOCK = Lock()


def _detect(rules: tuple[Rule, ...], text: str) -> tuple[Detection, ...]:
    key = (rules, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())
    with _DETECTED_LOCK:
        if (cached := _DETECTED.get(key)) is not None:
            _DETECTED.move_to_end(key)
            return cached
    found = _detected(rules, text)
    with _DETECTED_LOCK:
        _DETECTED[key] = found
        if len(_DETECTED) > _DETECTED_MAX:
            _DETECTED.popitem(last=False)
    return found


def _detected(rules: tuple[Rule, ...], text: str) -> tuple[Detection, ...]:
    found: list[Detection] = []
    # Underscores glue words into one (`External_Ignore`), hiding them from `\b`; read as
    # spaces (the same length, so every span stays the original text's).
    spaced = text.replace("_", " ")
    for rule in rules:
        for match in rule.pattern.finditer(spaced):
            hit = "hit" if "hit" in rule.pattern.groupindex else 0
            start, end = match.span(hit)
            if end > start:
                found.append(
                    Detection(RulesDetector.name, rule.name, start, end, text[start:end], rule.what)
                )
    return tuple(sorted(found, key=lambda d: (d.start, d.end)))


def load_rules(path: Path) -> list[Rule]:
    """The rules of a rules file; ValueError naming the file and the rule that is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the detector's rules: {exc}") from None
    return list(_parsed_rules(str(path), text))


@lru_cache(maxsize=16)
def _rules_of(path: Path) -> tuple[Rule, ...]:
    """A rules file read and compiled once (a server makes a guard per request)."""
    return tuple(load_rules(path))


def _parsed_rules(path: str, text: str) -> tuple[Rule, ...]:
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: cannot read the detector's rules: {exc}") from None
    rules: list[Rule] = []
    for index, entry in enumerate(data.get("rule", [])):
        name = entry.get("name") if isinstance(entry, dict) else None
        pattern = entry.get("pattern") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(pattern, str):
            raise ValueError(f"{path}: rule {index + 1} needs a `name` and a `pattern` (strings)")
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"{path}: rule {name!r}: bad pattern: {exc}") from None
        listings = entry.get("listings", True)
        if not isinstance(listings, bool):
            raise ValueError(f"{path}: rule {name!r}: `listings` must be true or false")
        rules.append(Rule(name, compiled, str(entry.get("what", "")), listings))
    return tuple(rules)
