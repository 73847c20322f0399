"""The guard: what entered the model's context, from where, and whether a tool call may run.

    guard = Guard(Policy.load(Path("guard.toml")))
    guard.observe(task, Source("user"))                         # trusted
    shown = guard.observe(result, Source("tool", "read_inbox"))  # untrusted: recorded, checked,
                                                                 # maybe spotlighted or redacted
    verdict = guard.check_call("send_money", {"recipient": "US13..."}, read_only=False)

`check_call` applies the policy's rules to a side-effecting call, the strictest answer
winning (deny, then ask): the allow-lists, the data flow (an argument value, or an identifier
inside it, seen in untrusted content and never in trusted content) and strict mode. A read-only
call is allowed. Nothing inside the guard may let a call through by failing: an error in
`check_call` is a deny (rule "guard_error"); an error while observing withholds the content
and makes every later side-effecting call a deny. Decisions other than allow, and every
detection, are logged to "tercet.guard", values shortened.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, cast

from tercet.guard.detect import AsyncDetector, Detection, Detector, RulesDetector
from tercet.guard.policy import Action, Policy, Verdict
from tercet.guard.provenance import Source
from tercet.guard.spotlight import Spotlight
from tercet.guard.values import ValueKind, identifiers, normalise, scalar_text, scalars, shorten

log = logging.getLogger("tercet.guard")
REDACTED = "[redacted by the guard: it looked like an instruction to you]"
_SEVERITY: Mapping[Action, int] = {"allow": 0, "ask": 1, "deny": 2}
# How far around a detection a value counts as part of the injected instruction (characters;
# an instruction's sentence and its neighbours: AgentDojo's goals run to about 250).
FLAGGED_CONTEXT = 200


@dataclass
class _Seen:
    """Content of one trust class: its normalised texts and the identifiers found in them,
    each with the first source it came from."""

    texts: list[tuple[str, Source]] = field(default_factory=list)
    identifiers: dict[str, Source] = field(default_factory=dict)

    def add(self, text: str, source: Source) -> None:
        if folded := normalise(text):
            self.texts.append((folded, source))
        for _, value in identifiers(text):
            self.identifiers.setdefault(value, source)

    def find(self, value: str) -> Source | None:
        """Where `value` (normalised or canonical) was seen: as an identifier, or as a whole
        word sequence of a text (not inside a longer word)."""
        if (source := self.identifiers.get(value)) is not None:
            return source
        pattern = re.compile(rf"(?<!\w){re.escape(value)}(?!\w)")
        return next((source for text, source in self.texts if pattern.search(text)), None)


@dataclass(frozen=True)
class _Flow:
    """An argument value seen in untrusted content only."""

    argument: str
    value: str
    kind: ValueKind | None
    source: Source
    flagged: bool  # inside a text a detector flagged


class Guard:
    """Applies `policy` to what the model reads and to the calls it makes. `detector` runs
    on untrusted content besides the rules detector (which the policy may turn off); `boundary`
    is the spotlight's code. One guard follows one conversation; `reset` starts the next."""

    def __init__(
        self, policy: Policy, *, detector: Detector | None = None, boundary: str | None = None
    ) -> None:
        self.policy = policy
        self.detectors: list[Detector] = [RulesDetector()] if policy.detector.rules else []
        # A tool listing is read without the rules for imperative requests: a description
        # says what its tool does in the imperative ("Delete a file").
        self.listing_detectors: list[Detector] = (
            [RulesDetector(listings=True)] if policy.detector.rules else []
        )
        if detector is not None:
            self.detectors.append(detector)
            self.listing_detectors.append(detector)
        # The spotlight's code (random unless given: a server keeps one per API key so the
        # marked prompt stays cacheable).
        self.spotlight = Spotlight(policy.spotlight, boundary)
        self.reset()

    def reset(self) -> None:
        """A new conversation: forget what was observed."""
        self._trusted = _Seen()
        self._untrusted = _Seen()
        self._flagged = _Seen()  # untrusted texts a detector flagged as injected instructions
        self._broken: str | None = None  # why observing failed: later calls are denied
        self._tainted = False  # untrusted content has entered the context

    @property
    def untrusted_seen(self) -> bool:
        """Whether untrusted content has entered the context (strict mode's trigger)."""
        return self._tainted

    def system_instruction(self) -> str:
        """The text to add to the system prompt so the model understands the spotlighting
        ("" when it is off)."""
        return self.spotlight.system_instruction()

    def observe(self, content: Any, source: Source) -> Any:
        """Record content entering the model's context (a str, or a structured value: every
        string and number inside it is recorded); returns what the model should be shown
        (the same, or spotlighted / redacted / dropped per the policy when untrusted)."""
        return self._observe(content, source, self.detectors)

    def observe_listing(self, definitions: Any, source: Source) -> Any:
        """`observe` for a tool listing (an MCP server's names, descriptions and schemas):
        followed as content from `source`, read by the detectors without the rules for
        imperative requests, which every description is."""
        return self._observe(definitions, source, self.listing_detectors)

    def _observe(self, content: Any, source: Source, detectors: Sequence[Detector]) -> Any:
        if self._record(content, source):
            return content
        try:
            texts = _texts(content)
            found = _detected(texts, detectors)
        except Exception as exc:
            return self._withheld(source, exc)
        self._flag(texts, found, source)
        return self._shown(content, source, found)

    def record(self, content: Any, source: Source) -> None:
        """Record content the model has already been shown (a saved conversation, resumed):
        followed as `observe` follows it, without marking. Detectors run only where the
        policy treats flagged content apart (else nothing reads their answer)."""
        if self._record(content, source) or not self.policy.data_flow.tiered:
            return
        try:  # already shown, so not withheld: a failure makes later calls deny instead
            texts = _texts(content)
            self._flag(texts, _detected(texts, self.detectors), source)
        except Exception as exc:
            log.exception("guard error while checking content from %s", source)
            self._broken = f"{type(exc).__name__} while checking content from {source}"

    async def aobserve(self, content: Any, source: Source) -> Any:
        """`observe`, awaiting the detectors that wait on I/O (`adetect`, a judge model)."""
        if self._record(content, source):
            return content
        found: list[list[Detection]] = []
        try:
            texts = _texts(content)
            for text in texts:
                found.append([])
                for detector in self.detectors:
                    if isinstance(detector, AsyncDetector):
                        found[-1] += await detector.adetect(text)
                    else:
                        found[-1] += detector.detect(text)
        except Exception as exc:
            return self._withheld(source, exc)
        self._flag(texts, found, source)
        return self._shown(content, source, found)

    def check_call(
        self, tool: str, arguments: Mapping[str, Any], *, read_only: bool | None = None
    ) -> Verdict:
        """Before a tool call runs. Never raises: an error inside is a deny (rule
        "guard_error"), logged."""
        try:
            verdict = self._check(tool, arguments, read_only)
        except Exception as exc:
            log.exception("guard error while checking a call of %s", tool)
            verdict = Verdict(
                "deny",
                f"the guard failed while checking this call ({type(exc).__name__}), so it was "
                "not run",
                "guard_error",
            )
        if verdict.action != "allow":
            log.warning("guard %s %s (%s): %s", verdict.action, tool, verdict.rule, verdict.reason)
        return verdict

    def _check(self, tool: str, arguments: Mapping[str, Any], hint: bool | None) -> Verdict:
        if self.policy.is_read_only(tool, hint):
            return Verdict("allow", f"{tool} only reads", "tool_class")
        if self._broken is not None:
            return Verdict(
                "deny",
                f"the guard could not check content read earlier ({self._broken}), so no call "
                "that changes anything may run",
                "guard_error",
            )
        verdicts = [
            *self._allow_lists(arguments),
            *self._data_flow(tool, arguments),
            *self._strict(),
        ]
        if not verdicts:
            return Verdict(
                "allow", f"no rule of the policy objects to this call of {tool}", "default"
            )
        return max(verdicts, key=lambda v: _SEVERITY[v.action])  # the first of the strictest

    def _allow_lists(self, arguments: Mapping[str, Any]) -> Iterator[Verdict]:
        for allow in self.policy.allow_lists:
            if not allow.enforced:
                continue
            for name, value in scalars(arguments):
                if not allow.covers(name):
                    continue
                checked = (
                    [found for kind, found in identifiers(value) if kind == allow.extract]
                    if allow.extract
                    else [value]
                )
                for item in checked:
                    if not allow.permits(item):
                        yield Verdict(
                            allow.action,
                            f"the argument {name!r} holds {shorten(item)!r}, which is not on "
                            f"the policy's {allow.name} allow-list",
                            f"allow_list:{allow.name}",
                        )
                        break

    def _data_flow(self, tool: str, arguments: Mapping[str, Any]) -> Iterator[Verdict]:
        rule = self.policy.data_flow
        if rule.action == "off" or any(fnmatchcase(tool, p) for p in rule.skip_tools):
            return
        flows = [
            flow
            for name, value in scalars(arguments)
            if not any(fnmatchcase(name, p) for p in rule.skip_arguments)
            for flow in self._flows(name, value)
        ]
        # The weaker action on unflagged values holds only while no detector has flagged
        # anything: once an injection is in the context, what it asks for may use values
        # it did not spell out (the most expensive hotel, read from a listing).
        unflagged = rule.action if self._flagged.texts else rule.unflagged
        for flagged, action in ((True, rule.action), (False, unflagged)):
            found = [flow for flow in flows if flow.flagged == flagged]
            if not found or action == "allow":
                continue
            first = found[0]
            what = first.kind or "value"
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            origin = (
                f"an instruction hidden in untrusted content ({first.source})"
                if flagged
                else f"untrusted content ({first.source}) and not from the user"
            )
            yield Verdict(
                cast(Action, action),
                f"the argument {first.argument!r} carries the {what} {shorten(first.value)!r}{more}, "
                f"which came from {origin}",
                "data_flow",
            )

    def _flows(self, name: str, value: str) -> Iterator[_Flow]:
        """The candidates of one argument value (the whole, normalised, unless the argument
        is `identifiers_only`; and each identifier of a followed kind in it) that untrusted
        content holds and trusted content does not; flagged where a text a detector flagged
        holds it (from `flagged_min_length` characters, so a short id inside an injected
        instruction counts too)."""
        rule = self.policy.data_flow
        # `kinds` keeps ordinary flows (a commit hash read and passed back) out of the rule;
        # inside an injected instruction every kind counts (an SSH key is a token).
        candidates: list[tuple[ValueKind | None, str]] = [
            (kind, found)
            for kind, found in identifiers(value)
            if kind in rule.kinds or self._flagged.identifiers.get(found) is not None
        ]
        if not any(fnmatchcase(name, pattern) for pattern in rule.identifiers_only):
            candidates.append((None, normalise(value)))
        kinds: dict[str, ValueKind | None] = {}  # each value once, as its first kind
        for kind, candidate in candidates:
            kinds.setdefault(candidate, kind)
        for candidate, kind in kinds.items():
            # A short value (an id such as '13') is followed only inside an injected
            # instruction, and there even if trusted text holds it: at that length, a
            # coincidence (a date, a count) is likely.
            short = len(candidate) < rule.min_length
            if len(candidate) < rule.flagged_min_length:
                continue
            if not short and self._trusted.find(candidate) is not None:
                continue
            if (source := self._flagged.find(candidate)) is not None:
                yield _Flow(name, candidate, kind, source, flagged=True)
            elif not short and (source := self._untrusted.find(candidate)) is not None:
                yield _Flow(name, candidate, kind, source, flagged=False)

    def _strict(self) -> Iterator[Verdict]:
        strict = self.policy.strict
        if strict.enabled and self.untrusted_seen:
            yield Verdict(
                strict.action,
                "strict mode: untrusted content is in the context, so every call that changes "
                "something needs approval",
                "strict",
            )

    def _record(self, content: Any, source: Source) -> bool:
        """Add `content`'s strings and numbers to what was seen; whether its source is
        trusted. Should that fail, the content counts as untrusted and every later
        side-effecting call is denied (the data-flow rule can no longer be sure)."""
        try:
            trusted = self.policy.trusts(source)
            self._tainted |= not trusted
            seen = self._trusted if trusted else self._untrusted
            for text in _recorded(content):
                seen.add(text, source)
            return trusted
        except Exception as exc:
            log.exception("guard error while recording content from %s", source)
            self._broken = f"{type(exc).__name__} on content from {source}"
            self._tainted = True
            return False

    def _flag(
        self, texts: Sequence[str], found: Sequence[Sequence[Detection]], source: Source
    ) -> None:
        """Remember the stretches of text around what a detector found: values in them are
        followed with the data-flow rule's `action` (and from a shorter length, and of every
        kind). Around, not the whole text: a tool's result may be one long text (a listing
        of files as YAML) whose other entries' ids are no part of the injection; a longer
        value farther away is still denied, as every untrusted value is once anything was
        flagged."""
        for text, detections in zip(texts, found, strict=True):
            for start, end in _around(text, detections):
                self._flagged.add(text[start:end], source)

    def _withheld(self, source: Source, exc: Exception) -> str:
        log.error("guard error while checking content from %s: %r; it is withheld", source, exc)
        return (
            f"[content from {source} withheld: the guard could not check it ({type(exc).__name__})]"
        )

    def _shown(self, content: Any, source: Source, found: list[list[Detection]]) -> Any:
        """Untrusted content as the model sees it (`found`: the detections in each of its
        texts): detections logged and acted on, then every text spotlighted."""
        detections = [d for per_text in found for d in per_text]
        for d in detections:
            log.warning(
                "guard detection in content from %s: %s/%s at %d-%d: %r",
                source, d.detector, d.rule, d.start, d.end, shorten(d.text, 12),
            )  # fmt: skip
        action = self.policy.detector.action
        if detections and action == "drop":
            rules = ", ".join(dict.fromkeys(d.rule for d in detections))
            return (
                f"[content from {source} withheld by the guard: it looked like a prompt "
                f"injection ({rules})]"
            )
        pending = iter(found)

        def shown(text: str) -> str:
            spans = next(pending, [])
            if action == "redact":
                text = _redacted(text, spans)
            return self.spotlight.mark(text, source)

        try:
            return _map_texts(content, shown)
        except Exception as exc:
            return self._withheld(source, exc)


def _detected(texts: Sequence[str], detectors: Sequence[Detector]) -> list[list[Detection]]:
    """Each text's detections, by every detector (synchronously)."""
    return [[d for detector in detectors for d in detector.detect(text)] for text in texts]


def _around(text: str, detections: Sequence[Detection]) -> list[tuple[int, int]]:
    """The stretches of `text` within FLAGGED_CONTEXT characters of a detection, widened to
    whole words and merged where they meet."""
    spans: list[tuple[int, int]] = []
    for d in sorted(detections, key=lambda d: d.start):
        start = max(0, d.start - FLAGGED_CONTEXT)
        end = min(len(text), d.end + FLAGGED_CONTEXT)
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        while end < len(text) and not text[end].isspace():
            end += 1
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def _recorded(content: Any) -> Iterator[str]:
    """Every string and number in `content` as text; of a content block, what the model
    reads (a text block's text; not an image's or a document's encoded data)."""
    if _is_block(content):
        if content["type"] == "text":
            yield content["text"]
    elif isinstance(content, Mapping):
        for value in content.values():
            yield from _recorded(value)
    elif isinstance(content, list | tuple):
        for item in content:
            yield from _recorded(item)
    elif (text := scalar_text(content)) is not None:
        yield text


def _is_block(content: Any) -> bool:
    """Whether `content` is a Messages API content block (a text, an image, a document),
    not data that happens to have a `type` key."""
    if not isinstance(content, Mapping):
        return False
    kind = content.get("type")
    if kind == "text":
        return isinstance(content.get("text"), str)
    return kind in ("image", "document") and "source" in content


def _texts(content: Any) -> list[str]:
    """The texts the model reads in `content`: a str, or each text inside a structure (of a
    content block, only its `text`), in the order `_map_texts` visits them."""
    texts: list[str] = []

    def collect(text: str) -> str:
        texts.append(text)
        return text

    _map_texts(content, collect)
    return texts


def _map_texts(content: Any, change: Callable[[str], str]) -> Any:
    """`content` with `change` applied to each text the model reads; the rest unchanged."""
    if isinstance(content, str):
        return change(content)
    if _is_block(content):  # only a text block's text is read as text
        if content["type"] == "text":
            return {**content, "text": change(content["text"])}
        return content
    if isinstance(content, Mapping):
        return {key: _map_texts(value, change) for key, value in content.items()}
    if isinstance(content, list | tuple):
        return type(content)(_map_texts(item, change) for item in content)
    return content


def _redacted(text: str, detections: Sequence[Detection]) -> str:
    """`text` with each detection's span replaced by a notice (overlaps merged)."""
    spans: list[list[int]] = []
    for d in sorted(detections, key=lambda d: d.start):
        if spans and d.start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], d.end)
        else:
            spans.append([d.start, d.end])
    for start, end in reversed(spans):
        text = text[:start] + REDACTED + text[end:]
    return text
