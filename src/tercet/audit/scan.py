"""Offline detection over the audit log (`tercet audit scan`): detectors run over the logged
records after the fact, in batches, and a report of the flagged keys, conversations and requests.

The rules are data (scan_rules.toml): API keys and private keys in logged outputs, injected
instructions in logged content (the guard's `RulesDetector`), classifier flags already in the
log, bursts of refusals or of guard denials from one key, egress refused or cut, operators'
actions refused (self-approval, replay, expiry). An optional
in-process constitutional classifier (`tercet.guard.classifiers.Classifier`) judges the logged
prompts and answers again. The content rules read only what the operator chose to log: without
content logging the log holds digests, and the report says how many records had content.

The log is streamed: a batch of records at a time, and per key only the last few events a burst
rule needs. A finding never holds a secret, only a redacted form of it.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from tercet.audit.log import segments
from tercet.audit.read import RecordFilter, records
from tercet.guard.classifiers import Classifier, ClassifierError, Exchange
from tercet.guard.detect import Detection, RulesDetector

SCAN_RULES_FILE = Path(__file__).with_name("scan_rules.toml")
SEGMENT_GLOB = "audit-*.jsonl"
BATCH_SIZE = 1000
SEVERITIES = ("low", "medium", "high")

Severity = Literal["low", "medium", "high"]
Record = Mapping[str, Any]

# How many seqs and request ids a finding keeps (a burst may run long; `count` has them all),
# and how many recent requests are remembered to name the conversation of a tool call logged
# after its request.
MAX_LISTED = 100
RECENT_REQUESTS = 50_000
SNIPPET_CHARS = 80

# Every rule, in the order reports list them.
RULES = (
    "secret_in_output",
    "injection",
    "classifier_flag",
    "refusal_burst",
    "guard_denial_burst",
    "egress_blocked",
    "offline_classifier",
    "operator_refused",
)


class ScanError(ValueError):
    """Bad input to a scan: a rules file, a log directory, a record that is not JSON. The
    message names the file (and key or line) and what is wrong."""


# --- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretPattern:
    """One shape of secret: an API key, a private key."""

    name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class SecretRule:
    severity: Severity
    fields: tuple[str, ...]
    patterns: tuple[SecretPattern, ...]
    enabled: bool = True


@dataclass(frozen=True)
class InjectionRule:
    severity: Severity
    fields: Mapping[str, Literal["all", "framing"]]
    enabled: bool = True
    low_rules: tuple[str, ...] = ()  # the detector's rules that alone make a finding low


@dataclass(frozen=True)
class BurstRule:
    """`count` events from one actor within `minutes`."""

    severity: Severity
    count: int
    minutes: float
    values: tuple[str, ...]  # guard actions; for refusals, the stop reasons
    decisions: tuple[str, ...] = ()  # refusals only: the classifier decisions that count
    enabled: bool = True


@dataclass(frozen=True)
class OutcomeRule:
    severity: Severity
    values: tuple[str, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class ScanRules:
    """What the scan looks for (scan_rules.toml, or a file of the same shape)."""

    secret_in_output: SecretRule
    injection: InjectionRule
    classifier_flag: OutcomeRule
    refusal_burst: BurstRule
    guard_denial_burst: BurstRule
    egress_blocked: OutcomeRule
    offline_classifier: OutcomeRule
    operator_refused: OutcomeRule
    source: str = "<memory>"

    @classmethod
    def load(cls, path: Path | None = None) -> ScanRules:
        """The shipped rules, with what `path` sets over them; ScanError names file and key."""
        shipped = _read_toml(SCAN_RULES_FILE)
        if path is None:
            return cls.from_dict(shipped, str(SCAN_RULES_FILE))
        overrides = _read_toml(path)
        return cls.from_dict({**shipped, **overrides}, str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<memory>") -> ScanRules:
        known = set(RULES)
        for key in data:
            if key not in known:
                raise ScanError(f"{source}: {key}: not a rule (known: {', '.join(sorted(known))})")
        read = _TableReader(source, data)
        secrets = read.table("secret_in_output")
        patterns: list[SecretPattern] = []
        for index, entry in enumerate(secrets.get("pattern", [])):
            where = f"secret_in_output.pattern[{index + 1}]"
            if not isinstance(entry, dict):
                raise ScanError(f"{source}: {where}: must be a table with name and pattern")
            name, pattern = entry.get("name"), entry.get("pattern")
            if not isinstance(name, str) or not isinstance(pattern, str):
                raise ScanError(f"{source}: {where}: needs a `name` and a `pattern` (strings)")
            try:
                patterns.append(SecretPattern(name, re.compile(pattern)))
            except re.error as exc:
                raise ScanError(f"{source}: {where} ({name}): bad pattern: {exc}") from None
        injection_fields = read.get("injection", "fields", dict, {})
        for name, mode in injection_fields.items():
            if mode not in ("all", "framing"):
                raise ScanError(f"{source}: injection.fields.{name}: must be 'all' or 'framing'")
        return cls(
            SecretRule(
                read.severity("secret_in_output"),
                read.strings("secret_in_output", "fields"),
                tuple(patterns),
                read.enabled("secret_in_output"),
            ),
            InjectionRule(
                read.severity("injection"),
                dict(injection_fields),
                read.enabled("injection"),
                read.strings("injection", "low_rules"),
            ),
            OutcomeRule(read.severity("classifier_flag"), (), read.enabled("classifier_flag")),
            BurstRule(
                read.severity("refusal_burst"),
                read.count("refusal_burst"),
                read.minutes("refusal_burst"),
                read.strings("refusal_burst", "stop_reasons"),
                read.strings("refusal_burst", "decisions"),
                read.enabled("refusal_burst"),
            ),
            BurstRule(
                read.severity("guard_denial_burst"),
                read.count("guard_denial_burst"),
                read.minutes("guard_denial_burst"),
                read.strings("guard_denial_burst", "actions"),
                (),
                read.enabled("guard_denial_burst"),
            ),
            OutcomeRule(
                read.severity("egress_blocked"),
                read.strings("egress_blocked", "outcomes"),
                read.enabled("egress_blocked"),
            ),
            OutcomeRule(
                read.severity("offline_classifier"), (), read.enabled("offline_classifier")
            ),
            OutcomeRule(
                read.severity("operator_refused"),
                read.strings("operator_refused", "outcomes"),
                read.enabled("operator_refused"),
            ),
            source,
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScanError(f"{path}: cannot read the scan rules: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScanError(f"{path}: not valid TOML: {exc}") from None


class _TableReader:
    """Typed reads of the rules' tables; every problem a ScanError naming file and key."""

    def __init__(self, source: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.data = data

    def table(self, rule: str) -> Mapping[str, Any]:
        value = self.data.get(rule, {})
        if not isinstance(value, dict):
            raise ScanError(f"{self.source}: {rule}: must be a table")
        return value

    def get(self, rule: str, key: str, kind: type, default: Any) -> Any:
        value = self.table(rule).get(key, default)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ScanError(f"{self.source}: {rule}.{key}: must be a {kind.__name__}")
        return value

    def severity(self, rule: str) -> Severity:
        value = self.get(rule, "severity", str, "medium")
        if value not in SEVERITIES:
            raise ScanError(f"{self.source}: {rule}.severity: must be low, medium or high")
        return value  # type: ignore[no-any-return]

    def enabled(self, rule: str) -> bool:
        return bool(self.get(rule, "enabled", bool, True))

    def strings(self, rule: str, key: str) -> tuple[str, ...]:
        values = self.get(rule, key, list, [])
        if not all(isinstance(v, str) for v in values):
            raise ScanError(f"{self.source}: {rule}.{key}: must be a list of strings")
        return tuple(values)

    def count(self, rule: str) -> int:
        value = self.get(rule, "count", int, 5)
        if value < 1:
            raise ScanError(f"{self.source}: {rule}.count: must be at least 1")
        return int(value)

    def minutes(self, rule: str) -> float:
        value = self.table(rule).get("minutes", 10)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ScanError(f"{self.source}: {rule}.minutes: must be a positive number")
        return float(value)


# --- findings --------------------------------------------------------------------------------


@dataclass
class Finding:
    """One incident: which rule, how bad, whose (the key id), where (request, conversation,
    the records' seqs) and why, in a few words that never hold a secret."""

    rule: str
    severity: Severity
    actor: str | None
    seqs: list[int]
    reason: str
    ts: str
    request_id: str | None = None
    conversation: str | None = None
    detail: str | None = None  # the secret's kind, the detector's rules, a category, ...
    request_ids: list[str] = field(default_factory=list)  # a burst's requests
    last_ts: str | None = None  # a burst's last event
    count: int = 1  # a burst's events

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "severity": self.severity,
            "actor": self.actor,
            "request_id": self.request_id,
            "conversation": self.conversation,
            "seqs": self.seqs,
            "ts": self.ts,
            "reason": self.reason,
        }
        if self.detail is not None:
            out["detail"] = self.detail
        if self.request_ids:
            out["request_ids"] = self.request_ids
        if self.last_ts is not None:
            out["last_ts"] = self.last_ts
            out["count"] = self.count
        return out


def redact(secret: str) -> str:
    """A secret as a report may show it: its well-known prefix, an ellipsis, the last four
    characters and the length ("sk-ant-api03-…Qw8A (108 chars)")."""
    if secret.startswith("-----BEGIN"):
        return secret.split("-----")[1].strip() + " block"
    head = re.match(r"(?:[A-Za-z][A-Za-z0-9]{0,7}[-_]){1,3}", secret)
    prefix = head.group(0) if head else secret[:4]
    prefix = prefix[: min(len(prefix), len(secret) // 3)]
    return f"{prefix}…{secret[-4:]} ({len(secret)} chars)"


# --- the scanner -----------------------------------------------------------------------------


@dataclass
class _Event:
    time: datetime
    seq: int
    request_id: str | None


class _BurstWatch:
    """One burst rule over a stream: per actor the last `count` events, and the finding of the
    burst now running, extended while the last `count` events still fit in the window."""

    def __init__(self, name: str, rule: BurstRule, what: str) -> None:
        self.name = name
        self.rule = rule
        self.what = what
        self.window = timedelta(minutes=rule.minutes)
        self.events: dict[str | None, deque[_Event]] = {}
        self.running: dict[str | None, Finding] = {}
        self.actors: set[str | None] = set()

    def seen(self, actor: str | None) -> None:
        self.actors.add(actor)

    def event(self, actor: str | None, ts: str, seq: int, request_id: str | None) -> Finding | None:
        """Feed one event; the finding when this event starts a burst."""
        events = self.events.setdefault(actor, deque(maxlen=self.rule.count))
        running = self.running.get(actor)
        if request_id is not None and any(e.request_id == request_id for e in events):
            if running is not None and len(running.seqs) < MAX_LISTED:
                running.seqs.append(seq)  # another record of a request already counted
            return None
        time = _parse_ts(ts)
        if time is None:
            return None
        events.append(_Event(time, seq, request_id))
        full = len(events) == self.rule.count and events[-1].time - events[0].time <= self.window
        if not full:
            self.running.pop(actor, None)
            return None
        if running is not None:
            if len(running.seqs) < MAX_LISTED:
                running.seqs.append(seq)
            if request_id is not None and len(running.request_ids) < MAX_LISTED:
                running.request_ids.append(request_id)
            running.count += 1
            running.last_ts = ts
            running.reason = self._reason(running)
            return None
        finding = Finding(
            self.name,
            self.rule.severity,
            actor,
            [e.seq for e in events],
            "",
            events[0].time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            request_ids=[e.request_id for e in events if e.request_id is not None],
            last_ts=ts,
            count=len(events),
        )
        finding.reason = self._reason(finding)
        self.running[actor] = finding
        return finding

    def _reason(self, finding: Finding) -> str:
        first, last = _parse_ts(finding.ts), _parse_ts(finding.last_ts or finding.ts)
        minutes = (last - first).total_seconds() / 60 if first and last else 0.0
        return (
            f"{finding.count} {self.what} in {minutes:.1f} min "
            f"(threshold: {self.rule.count} within {self.rule.minutes:g} min)"
        )


@dataclass
class ScanReport:
    """What a scan read and found."""

    directory: str
    rules_file: str
    since: str | None
    batch_size: int
    records: int = 0
    batches: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    kinds: Counter[str] = field(default_factory=Counter)
    content_records: int = 0
    checked: Counter[str] = field(default_factory=Counter)  # per rule: what it judged
    findings: list[Finding] = field(default_factory=list)
    classifier: dict[str, Any] | None = None

    def keys(self) -> list[dict[str, Any]]:
        """The flagged actors (key ids, operators), worst first, with their counts per rule."""
        return _grouped(self.findings, lambda f: [f.actor] if f.actor else [], "actor")

    def conversations(self) -> list[dict[str, Any]]:
        """The flagged conversations (history hashes), worst first."""
        return _grouped(
            self.findings, lambda f: [f.conversation] if f.conversation else [], "conversation"
        )

    def requests(self) -> list[dict[str, Any]]:
        """The flagged requests (a burst's requests are listed in its finding, not here)."""
        return _grouped(
            self.findings, lambda f: [f.request_id] if f.request_id else [], "request_id"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "directory": self.directory,
            "rules": self.rules_file,
            "since": self.since,
            "scanned": {
                "records": self.records,
                "batches": self.batches,
                "batch_size": self.batch_size,
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
                "kinds": dict(sorted(self.kinds.items())),
                "content_records": self.content_records,
                "checked": dict(sorted(self.checked.items())),
            },
            "classifier": self.classifier,
            "counts": {
                "findings": len(self.findings),
                "by_rule": dict(sorted(Counter(f.rule for f in self.findings).items())),
                "by_severity": {
                    s: sum(f.severity == s for f in self.findings) for s in reversed(SEVERITIES)
                },
            },
            "keys": self.keys(),
            "conversations": self.conversations(),
            "requests": self.requests(),
            "findings": [f.to_dict() for f in self.findings],
        }

    def summary(self) -> str:
        """A few lines for a person: what was read, what was found, the worst keys."""
        by_severity: Counter[str] = Counter(f.severity for f in self.findings)
        lines = [
            f"scanned {self.records} records in {self.batches} "
            + ("batch" if self.batches == 1 else "batches")
            + (f" (seq {self.first_seq}–{self.last_seq})" if self.first_seq is not None else "")
            + f"; {self.content_records} with logged content"
            + ("" if self.content_records else " (content logging off: content rules idle)"),
            f"{len(self.findings)} findings"
            + (
                ": " + ", ".join(f"{by_severity[s]} {s}" for s in reversed(SEVERITIES))
                if self.findings
                else ""
            ),
        ]
        if self.classifier is not None:
            c = self.classifier
            lines.append(
                f"classifier {c['name']}: {c['checked']} checked, {c['flagged']} flagged, "
                f"{c['errors']} errors"
            )
        keys = self.keys()
        lines.append(
            f"flagged keys: {len(keys)}; conversations: {len(self.conversations())}; "
            f"requests: {len(self.requests())}"
        )
        for key in keys[:10]:
            rules = ", ".join(f"{rule} {n}" for rule, n in key["rules"].items())
            lines.append(f"  {key['actor']} [{key['severity']}]: {rules}")
        if len(keys) > 10:
            lines.append(f"  ... {len(keys) - 10} more in the report")
        return "\n".join(lines)


def _grouped(findings: Sequence[Finding], ids: Any, name: str) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for finding in findings:
        for value in ids(finding):
            group = groups.setdefault(
                value,
                {name: value, "severity": "low", "findings": 0, "rules": Counter(), "seqs": []},
            )
            group["findings"] += 1
            group["rules"][finding.rule] += 1
            if SEVERITIES.index(finding.severity) > SEVERITIES.index(group["severity"]):
                group["severity"] = finding.severity
            if len(group["seqs"]) < MAX_LISTED:
                group["seqs"].extend(finding.seqs[: MAX_LISTED - len(group["seqs"])])
            for other in ("actor", "conversation"):
                value_of = getattr(finding, other)
                if other != name and value_of is not None:
                    group.setdefault(other + "s", [])
                    if value_of not in group[other + "s"]:
                        group[other + "s"].append(value_of)
    ranked = sorted(
        groups.values(),
        key=lambda g: (-SEVERITIES.index(g["severity"]), -g["findings"], str(g[name])),
    )
    for group in ranked:
        group["rules"] = dict(sorted(group["rules"].items()))
    return ranked


class Scanner:
    """The detectors over a stream of records, fed a batch at a time; `report` when done."""

    def __init__(
        self,
        rules: ScanRules,
        *,
        classifier: Classifier | None = None,
        classifier_name: str = "classifier",
        concurrency: int = 8,
        report: ScanReport | None = None,
    ) -> None:
        self.rules = rules
        self.classifier = classifier
        self.concurrency = concurrency
        self.report = report or ScanReport("<memory>", rules.source, None, BATCH_SIZE)
        if classifier is not None:
            self.report.classifier = {
                "name": classifier_name,
                "checked": 0,
                "flagged": 0,
                "errors": 0,
            }
        self._detectors = {
            "all": RulesDetector(),
            "framing": RulesDetector(listings=True),
        }
        self._refusals = _BurstWatch("refusal_burst", rules.refusal_burst, "refusals")
        self._denials = _BurstWatch("guard_denial_burst", rules.guard_denial_burst, "denials")
        # Findings that name a request but not yet its conversation (a tool call is logged
        # before its request ends), and the requests seen lately (for those logged after).
        self._unnamed: dict[str, list[Finding]] = {}
        self._recent: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()

    async def feed(self, batch: Sequence[Record]) -> list[Finding]:
        """Run the detectors over one batch of records (in log order); the new findings."""
        found: list[Finding] = []
        exchanges: list[tuple[Record, Exchange]] = []
        for record in batch:
            found.extend(self._record(record))
            if self.classifier is not None and self.rules.offline_classifier.enabled:
                exchanges.extend((record, e) for e in _exchanges(record))
        if exchanges:
            found.extend(await self._classify(exchanges))
        for finding in found:
            self._name(finding)
        self.report.findings.extend(found)
        self.report.batches += 1
        return found

    def _record(self, record: Record) -> Iterator[Finding]:
        report = self.report
        report.records += 1
        seq = record.get("seq")
        if isinstance(seq, int):
            report.first_seq = seq if report.first_seq is None else report.first_seq
            report.last_seq = seq
        kind = str(record.get("kind"))
        report.kinds[kind] += 1
        if any(isinstance(record.get(k), str) for k in _CONTENT_FIELDS):
            report.content_records += 1
        if kind == "request":
            self._remember(record)
        yield from self._secrets(record)
        yield from self._injections(record)
        if kind in ("request", "classifier"):
            yield from self._refusal(record)
        if kind == "classifier":
            yield from self._classifier_flag(record)
        elif kind == "guard":
            yield from self._denial(record)
        elif kind == "egress":
            yield from self._egress(record)
        elif kind == "operator":
            yield from self._operator(record)

    def _secrets(self, record: Record) -> Iterator[Finding]:
        rule = self.rules.secret_in_output
        if not rule.enabled:
            return
        texts = [(f, t) for f in rule.fields if isinstance(t := record.get(f), str)]
        if not texts:
            return
        self.report.checked["secret_in_output"] += 1
        kinds: list[str] = []
        shown: list[str] = []
        for name, text in texts:
            for kind, secret in _secrets_in(rule, text):
                if kind not in kinds:
                    kinds.append(kind)
                if len(shown) < 3:
                    shown.append(f"{kind} {redact(secret)} in {name}")
        if kinds:
            finding = self._finding("secret_in_output", rule.severity, record, "; ".join(shown))
            finding.detail = ",".join(kinds)
            yield finding

    def _injections(self, record: Record) -> Iterator[Finding]:
        rule = self.rules.injection
        if not rule.enabled:
            return
        texts = [(f, t, m) for f, m in rule.fields.items() if isinstance(t := record.get(f), str)]
        if not texts:
            return
        self.report.checked["injection"] += 1
        names: list[str] = []
        shown: tuple[str, Detection] | None = None  # the first that is not low, else the first
        for name, text, mode in texts:
            for detection in self._detectors[mode].detect(text):
                if detection.rule not in names:
                    names.append(detection.rule)
                if shown is None or (
                    shown[1].rule in rule.low_rules and detection.rule not in rule.low_rules
                ):
                    shown = name, detection
        if shown is not None:
            field_name, detection = shown
            snippet = _redact_secrets(self.rules.secret_in_output, detection.text)
            if len(snippet) > SNIPPET_CHARS:
                snippet = snippet[:SNIPPET_CHARS] + "…"
            where = field_name + (f" of {record['tool']}" if record.get("tool") else "")
            reason = f"{where}: {detection.rule}: {snippet!r}"
            low = all(name in rule.low_rules for name in names)
            finding = self._finding("injection", "low" if low else rule.severity, record, reason)
            finding.detail = ",".join(names)
            yield finding

    def _classifier_flag(self, record: Record) -> Iterator[Finding]:
        self.report.checked["classifier_flag"] += 1
        rule = self.rules.classifier_flag
        if rule.enabled and record.get("decision") == "flag":
            category = record.get("category")
            finding = self._finding(
                "classifier_flag",
                rule.severity,
                record,
                f"the {record.get('stage', '?')} classifier flagged it"
                + (f" as {category}" if category else "")
                + (f" (mode {record['mode']})" if record.get("mode") else ""),
            )
            finding.detail = str(category) if category else None
            yield finding

    def _refusal(self, record: Record) -> Iterator[Finding]:
        rule = self.rules.refusal_burst
        actor = _actor(record)
        if not rule.enabled:
            return
        if record.get("kind") == "request":
            self._refusals.seen(actor)
            counts = record.get("stop_reason") in rule.values
        else:
            counts = record.get("decision") in rule.decisions
        if counts:
            found = self._refusals.event(
                actor, str(record.get("ts")), _seq(record), _request_id(record)
            )
            if found is not None:
                yield found

    def _denial(self, record: Record) -> Iterator[Finding]:
        rule = self.rules.guard_denial_burst
        actor = _actor(record)
        if not rule.enabled:
            return
        self._denials.seen(actor)
        if record.get("action") in rule.values:
            found = self._denials.event(
                actor, str(record.get("ts")), _seq(record), _request_id(record)
            )
            if found is not None:
                yield found

    def _egress(self, record: Record) -> Iterator[Finding]:
        rule = self.rules.egress_blocked
        if not rule.enabled:
            return
        self.report.checked["egress_blocked"] += 1
        outcome = record.get("outcome")
        if outcome in rule.values:
            up, down = record.get("bytes_up", 0), record.get("bytes_down", 0)
            finding = self._finding(
                "egress_blocked",
                rule.severity,
                record,
                f"container {record.get('container')}: connection to "
                f"{record.get('destination')} {outcome} ({up} bytes up, {down} down)",
            )
            finding.detail = f"{outcome}:{record.get('container')}"
            yield finding

    def _operator(self, record: Record) -> Iterator[Finding]:
        rule = self.rules.operator_refused
        if not rule.enabled:
            return
        self.report.checked["operator_refused"] += 1
        outcome = record.get("outcome")
        if outcome in rule.values:
            approval = record.get("approval_id")
            finding = self._finding(
                "operator_refused",
                rule.severity,
                record,
                f"{record.get('action')} on {record.get('target')} {outcome}"
                + (f" (approval {approval})" if approval else "")
                + (f": {record['reason']}" if record.get("reason") else ""),
            )
            finding.detail = _str(record.get("reason"))
            yield finding

    async def _classify(self, exchanges: list[tuple[Record, Exchange]]) -> list[Finding]:
        assert self.classifier is not None and self.report.classifier is not None
        classifier, stats = self.classifier, self.report.classifier
        rule = self.rules.offline_classifier
        limit = asyncio.Semaphore(self.concurrency)

        async def one(record: Record, exchange: Exchange) -> Finding | None:
            async with limit:
                try:
                    decision = await classifier.classify(exchange)
                except ClassifierError:
                    stats["errors"] += 1
                    return None
                except Exception:  # an operator's classifier: any failure is counted, not fatal
                    stats["errors"] += 1
                    return None
            stats["checked"] += 1
            if not decision.flagged:
                return None
            stats["flagged"] += 1
            finding = self._finding(
                "offline_classifier",
                rule.severity,
                record,
                f"the {exchange.stage} classifier flags the logged "
                + ("prompt" if exchange.stage == "input" else "answer")
                + (f" as {decision.category}" if decision.category else ""),
            )
            finding.detail = f"{exchange.stage}:{decision.category or ''}"
            return finding

        self.report.checked["offline_classifier"] += len(exchanges)
        results = await asyncio.gather(*(one(r, e) for r, e in exchanges))
        return [f for f in results if f is not None]

    def _finding(self, rule: str, severity: Severity, record: Record, reason: str) -> Finding:
        return Finding(
            rule,
            severity,
            _actor(record),
            [_seq(record)],
            reason,
            str(record.get("ts")),
            request_id=_request_id(record),
            conversation=_str(record.get("conversation")),
        )

    def _remember(self, record: Record) -> None:
        request_id = _request_id(record)
        if request_id is None:
            return
        actor, conversation = _actor(record), _str(record.get("conversation"))
        for finding in self._unnamed.pop(request_id, []):
            finding.conversation = finding.conversation or conversation
            finding.actor = finding.actor or actor
        self._recent[request_id] = (actor, conversation)
        if len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)

    def _name(self, finding: Finding) -> None:
        """Give a finding its request's conversation and actor, now or when the request ends."""
        if finding.request_id is None or (finding.conversation and finding.actor):
            return
        known = self._recent.get(finding.request_id)
        if known is not None:
            finding.actor = finding.actor or known[0]
            finding.conversation = finding.conversation or known[1]
        else:
            self._unnamed.setdefault(finding.request_id, []).append(finding)

    def finish(self) -> ScanReport:
        """The report, with the per-key rules' counts of keys judged."""
        if self.rules.refusal_burst.enabled:
            self.report.checked["refusal_burst"] = len(self._refusals.actors)
        if self.rules.guard_denial_burst.enabled:
            self.report.checked["guard_denial_burst"] = len(self._denials.actors)
        return self.report


_CONTENT_FIELDS = ("prompt", "answer", "tool_input", "tool_output")


def _exchanges(record: Record) -> list[Exchange]:
    """What the classifiers judge in a request record with logged content."""
    if record.get("kind") != "request" or not isinstance(prompt := record.get("prompt"), str):
        return []
    found = [Exchange("input", prompt)]
    if isinstance(answer := record.get("answer"), str) and answer:
        found.append(Exchange("output", prompt, answer=answer))
    return found


def _secrets_in(rule: SecretRule, text: str) -> list[tuple[str, str]]:
    """The secrets in a text, each once: (pattern's name, the secret), overlaps dropped."""
    spans: list[tuple[int, int, str]] = []
    for pattern in rule.patterns:
        for match in pattern.pattern.finditer(text):
            start, end = match.span()
            if end > start and not any(s < end and start < e for s, e, _ in spans):
                spans.append((start, end, pattern.name))
    return [(name, text[start:end]) for start, end, name in sorted(spans)]


def _redact_secrets(rule: SecretRule, text: str) -> str:
    for _, secret in _secrets_in(rule, text):
        text = text.replace(secret, redact(secret))
    return text


def _parse_ts(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _actor(record: Record) -> str | None:
    return _str(record.get("actor"))


def _request_id(record: Record) -> str | None:
    return _str(record.get("request_id"))


def _seq(record: Record) -> int:
    seq = record.get("seq")
    return seq if isinstance(seq, int) else -1


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- reading the log ---------------------------------------------------------------------------


def parse_since(value: str) -> datetime:
    """An ISO 8601 time (a date alone is its midnight, UTC unless it says otherwise)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ScanError(
            f"--since {value!r}: not an ISO 8601 time (2026-12-07 or 2026-12-07T05:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_records(directory: Path, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The log's records in order, segment after segment, from `since` on (the log's own reader:
    a line that is not a record is skipped, as `tercet audit verify` reports it); ScanError for
    a directory that holds no log."""
    if not directory.is_dir():
        raise ScanError(f"{directory}: not a directory (give the audit log's, --dir DIR)")
    if not segments(directory):
        raise ScanError(f"{directory}: no audit segments ({SEGMENT_GLOB}) there")
    for record in records(directory, RecordFilter(since=since)):
        yield record.to_dict()


def batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Records in lists of `size` (the last one shorter)."""
    batch: list[dict[str, Any]] = []
    for record in items:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def scan_log(
    directory: Path,
    rules: ScanRules | None = None,
    *,
    since: datetime | None = None,
    classifier: Classifier | None = None,
    classifier_name: str = "classifier",
    batch_size: int = BATCH_SIZE,
) -> ScanReport:
    """Scan the audit log in `directory`, a batch at a time; the report."""
    rules = rules or ScanRules.load()
    report = ScanReport(
        str(directory), rules.source, since.isoformat() if since else None, batch_size
    )
    scanner = Scanner(rules, classifier=classifier, classifier_name=classifier_name, report=report)
    for batch in batches(read_records(directory, since), batch_size):
        await scanner.feed(batch)
    return scanner.finish()
