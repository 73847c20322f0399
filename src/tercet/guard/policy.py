"""The guard's policy: data (a TOML file, or a dict of the same shape), checked when loaded.

Every table is optional; what a file leaves out keeps the default below. An unknown table or
key, or a value of the wrong type, is a `PolicyError` naming the file, the key and the problem
(a typo must not silently turn a defence off).

    extends = "default" # optional: a shipped policy's name or a file's path; this file's
                       # tables are merged over it key by key (lists replaced whole)

    [trust]            # which sources are trusted when the source itself does not say
    user = true        # also: system, operator (true); tool, mcp, file, url (false)
    trusted_files = [] # globs of files the user wrote, e.g. "docs/*.md"

    [tools]
    read_only = []               # tool-name globs that only read (besides tools' own hints)
    side_effecting = []          # tool-name globs that change something (win over all else)
    default = "side_effecting"   # a tool nobody classed (fail safe), or "read_only"

    [data_flow]        # a side-effecting call carrying a value seen only in untrusted content
    action = "deny"    # deny | ask | off: a value of untrusted content a detector flagged as
                       # an injected instruction (and, by default, of any untrusted content)
    unflagged_action = "deny"  # deny | ask | allow: a value of untrusted content no detector
                       # flagged (default: `action`); "allow" trusts the detector's recall
    min_length = 4     # shorter values are never matched ...
    flagged_min_length = 2  # ... except in flagged content (an id such as '13')
    skip_tools = []    # tool-name globs the rule does not look at
    skip_arguments = [] # argument-name globs it does not look at
    identifiers_only = [] # argument-name globs whose whole value is not compared, only the
                       # identifiers in it (a bash command copied from a README may run)
    kinds = ["email", "iban", "url", "domain", "phone", "token"]  # the identifiers followed

    [allow.recipients] # named allow-lists: recipients, urls, domains, accounts, paths, or any
    arguments = ["recipient*", "to", "cc", "bcc"]  # argument-name globs (defaults by name)
    values = []        # value globs, case-insensitive; empty: the list is not enforced
    action = "deny"    # deny | ask, for a value outside `values`
    extract = ""       # "": the whole value; or check each email|iban|url|domain|phone|token in it

    [strict]           # once untrusted content is in the context, every side-effecting call...
    enabled = false
    action = "ask"     # ... gets this

    [detector]
    rules = true       # the shipped rules detector on untrusted content
    action = "log"     # log | redact | drop

    [spotlight]
    mode = "off"       # off | delimit | datamark | base64
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from tercet.guard.provenance import SOURCE_KINDS, Source, SourceKind
from tercet.guard.spotlight import SPOTLIGHT_MODES, SpotlightMode
from tercet.guard.values import VALUE_KINDS, ValueKind

Action = Literal["allow", "ask", "deny"]
ToolClass = Literal["read_only", "side_effecting"]
FlowAction = Literal["deny", "ask", "off"]
DetectorAction = Literal["log", "redact", "drop"]
POLICIES_DIR = Path(__file__).with_name("policies")
DEFAULT_TRUST: Mapping[SourceKind, bool] = {
    "user": True,
    "system": True,
    "operator": True,
    "tool": False,
    "mcp": False,
    "file": False,
    "url": False,
}
# The arguments an allow-list of a well-known name checks when its table does not say.
DEFAULT_ALLOW_ARGUMENTS: Mapping[str, tuple[str, ...]] = {
    "recipients": ("recipient*", "to", "cc", "bcc"),
    "urls": ("url", "urls", "*_url", "link", "links", "href"),
    "domains": ("url", "urls", "*_url", "link", "links", "href", "command"),
    "accounts": ("iban", "*_iban", "account", "*_account", "account_*"),
    "paths": ("path", "*_path", "file", "filename", "file_path"),
}
_T = TypeVar("_T")


class PolicyError(ValueError):
    """A policy that cannot be used: `where` (the file), `key` (dotted) and the `problem`."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.where = where
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Verdict:
    """The guard's answer for one tool call."""

    action: Action
    reason: str  # said to the model when denied; logged always
    rule: str  # tool_class, data_flow, allow_list:<name>, strict, guard_error or default


@dataclass(frozen=True)
class DataFlowRule:
    """Side-effecting calls whose argument values were seen in untrusted content only."""

    action: FlowAction = "deny"
    # Values of untrusted content no detector flagged: None follows `action`. A weaker
    # action here lets a task use data it read (a hotel's name, a colleague's address) while
    # a value inside an injected instruction is still refused.
    unflagged_action: Action | None = None
    min_length: int = 4
    flagged_min_length: int = 2

    @property
    def unflagged(self) -> Action:
        """The action on a value of untrusted content that no detector flagged."""
        if self.unflagged_action is not None:
            return self.unflagged_action
        return "allow" if self.action == "off" else self.action

    @property
    def tiered(self) -> bool:
        """Whether flagged content is treated apart (so it must be known even for history)."""
        return self.action != "off" and self.unflagged != self.action

    skip_tools: tuple[str, ...] = ()
    skip_arguments: tuple[str, ...] = ()
    identifiers_only: tuple[str, ...] = ()
    kinds: tuple[ValueKind, ...] = VALUE_KINDS


@dataclass(frozen=True)
class AllowList:
    """The values a side-effecting call may give the arguments `arguments` names (globs); a
    value outside `values` gets `action`. With `extract`, every identifier of that kind inside
    the argument is checked instead of the whole value."""

    name: str
    arguments: tuple[str, ...]
    values: tuple[str, ...] = ()
    action: Literal["ask", "deny"] = "deny"
    extract: ValueKind | None = None

    @property
    def enforced(self) -> bool:
        return bool(self.values)

    def covers(self, argument: str) -> bool:
        return any(fnmatchcase(argument, pattern) for pattern in self.arguments)

    def permits(self, value: str) -> bool:
        folded = value.casefold()
        return any(fnmatchcase(folded, pattern.casefold()) for pattern in self.values)


@dataclass(frozen=True)
class StrictRule:
    """Once untrusted content has entered the context, every side-effecting call gets `action`."""

    enabled: bool = False
    action: Literal["ask", "deny"] = "ask"


@dataclass(frozen=True)
class DetectorSettings:
    """The detectors on untrusted content, and what a detection does to the content."""

    rules: bool = True
    action: DetectorAction = "log"


def _default_allow_lists() -> tuple[AllowList, ...]:
    return (AllowList("recipients", DEFAULT_ALLOW_ARGUMENTS["recipients"]),)


@dataclass(frozen=True)
class Policy:
    """What the guard trusts and how it judges tool calls; build it with `load`, `from_dict`,
    `default` or `resolve`."""

    trust: Mapping[SourceKind, bool] = field(default_factory=lambda: dict(DEFAULT_TRUST))
    trusted_files: tuple[str, ...] = ()
    read_only_tools: tuple[str, ...] = ()
    side_effecting_tools: tuple[str, ...] = ()
    unclassed_tools: ToolClass = "side_effecting"
    data_flow: DataFlowRule = field(default_factory=DataFlowRule)
    allow_lists: tuple[AllowList, ...] = field(default_factory=_default_allow_lists)
    strict: StrictRule = field(default_factory=StrictRule)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    spotlight: SpotlightMode = "off"
    where: str = "<policy>"  # where it was read from, for messages

    @classmethod
    def load(cls, path: Path, override: Mapping[str, Any] | None = None) -> Policy:
        """The policy in the TOML file `path` (with the policy it `extends`, if it names one,
        and `override`'s tables merged over it as `extends` merges); `PolicyError` if it
        cannot be read or used."""
        data = _read_toml(Path(path), ())
        if override:
            data = _merged(data, override)
        return cls.from_dict(data, str(path) + (" (overridden)" if override else ""))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "<policy>") -> Policy:
        """The policy `data` describes (the TOML file's shape); `PolicyError` if it cannot."""
        return _Reader(where).policy(data)

    @classmethod
    def default(cls) -> Policy:
        """The policy shipped as policies/default.toml."""
        return cls.load(POLICIES_DIR / "default.toml")

    @classmethod
    def resolve(cls, name_or_path: str) -> Policy:
        """A shipped policy by name (a file in policies/, e.g. "default"), or a file's path."""
        return cls.load(_policy_file(name_or_path))

    def trusts(self, source: Source) -> bool:
        """Whether content from `source` is trusted: the source's own word, else a file the
        user wrote (`trusted_files`), else the policy's default for its kind."""
        if source.trusted is not None:
            return source.trusted
        if source.kind == "file" and any(_path_matches(source.name, g) for g in self.trusted_files):
            return True
        return self.trust[source.kind]

    def is_read_only(self, tool: str, hint: bool | None = None) -> bool:
        """Whether calls of `tool` only read: `side_effecting` globs first, then `read_only`
        globs, then the tool's own word (`hint`), then the default for unclassed tools."""
        if any(fnmatchcase(tool, pattern) for pattern in self.side_effecting_tools):
            return False
        if any(fnmatchcase(tool, pattern) for pattern in self.read_only_tools):
            return True
        if hint is not None:
            return hint
        return self.unclassed_tools == "read_only"


def _policy_file(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A shipped policy's file by name ("default"), else the path (relative to the file
    that names it, for `extends`)."""
    shipped = POLICIES_DIR / f"{name_or_path}.toml"
    if "/" not in name_or_path and not name_or_path.endswith(".toml") and shipped.is_file():
        return shipped
    path = Path(name_or_path).expanduser()
    return path if relative_to is None or path.is_absolute() else relative_to / path


def _read_toml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A policy file's tables, merged over those of the policy it `extends` (a shipped name or
    a path): a table key by key, any other value replaced whole."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(where, "", f"cannot read it: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(where, "", f"not valid TOML: {exc}") from None
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise PolicyError(where, "extends", "must be a shipped policy's name or a file's path")
    parent = _policy_file(base, path.parent).resolve()
    if parent in chain or parent == path.resolve():
        raise PolicyError(where, "extends", f"{base!r} extends this file again (a loop)")
    return _merged(_read_toml(parent, (*chain, path.resolve())), data)


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _path_matches(path: str, pattern: str) -> bool:
    """A glob over a path: anchored at the start when absolute, else matching any tail of it
    at a folder boundary (so "docs/*.md" covers /home/me/project/docs/a.md)."""
    if fnmatchcase(path, pattern):
        return True
    return not pattern.startswith("/") and fnmatchcase(path, f"*/{pattern}")


class _Reader:
    """Reads a policy's dict, every problem a `PolicyError` naming the key."""

    TABLES = ("trust", "tools", "data_flow", "allow", "strict", "detector", "spotlight")

    def __init__(self, where: str) -> None:
        self.where = where

    def policy(self, data: Mapping[str, Any]) -> Policy:
        if not isinstance(data, Mapping):
            raise PolicyError(self.where, "", "a policy is a table (a TOML document)")
        self._known(data, self.TABLES, "")
        trust = self._table(data, "trust")
        self._known(trust, (*SOURCE_KINDS, "trusted_files"), "trust")
        tools = self._table(data, "tools")
        self._known(tools, ("read_only", "side_effecting", "default"), "tools")
        flow = self._table(data, "data_flow")
        flow_keys = (
            "action",
            "unflagged_action",
            "min_length",
            "flagged_min_length",
            "skip_tools",
            "skip_arguments",
            "identifiers_only",
        )
        self._known(flow, (*flow_keys, "kinds"), "data_flow")
        kinds = self._globs(flow, "kinds", "data_flow", VALUE_KINDS)
        if unknown := [kind for kind in kinds if kind not in VALUE_KINDS]:
            known = ", ".join(VALUE_KINDS)
            raise PolicyError(
                self.where, "data_flow.kinds", f"unknown kind {unknown[0]!r}; known: {known}"
            )
        strict = self._table(data, "strict")
        self._known(strict, ("enabled", "action"), "strict")
        detector = self._table(data, "detector")
        self._known(detector, ("rules", "action"), "detector")
        spotlight = self._table(data, "spotlight")
        self._known(spotlight, ("mode",), "spotlight")
        min_length = self._get(flow, "min_length", "data_flow", int, 4)
        flagged_min_length = self._get(flow, "flagged_min_length", "data_flow", int, 2)
        for key, length in (("min_length", min_length), ("flagged_min_length", flagged_min_length)):
            if length < 1:
                raise PolicyError(self.where, f"data_flow.{key}", "must be at least 1")
        flow_action: FlowAction = self._choice(
            flow, "action", "data_flow", ("deny", "ask", "off"), "deny"
        )
        return Policy(
            trust={
                kind: self._get(trust, kind, "trust", bool, DEFAULT_TRUST[kind])
                for kind in SOURCE_KINDS
            },
            trusted_files=self._globs(trust, "trusted_files", "trust"),
            read_only_tools=self._globs(tools, "read_only", "tools"),
            side_effecting_tools=self._globs(tools, "side_effecting", "tools"),
            unclassed_tools=self._choice(
                tools, "default", "tools", ("side_effecting", "read_only"), "side_effecting"
            ),
            data_flow=DataFlowRule(
                action=flow_action,
                unflagged_action=self._choice(
                    flow, "unflagged_action", "data_flow", ("deny", "ask", "allow"), "deny"
                )
                if "unflagged_action" in flow
                else None,
                min_length=min_length,
                flagged_min_length=flagged_min_length,
                skip_tools=self._globs(flow, "skip_tools", "data_flow"),
                skip_arguments=self._globs(flow, "skip_arguments", "data_flow"),
                identifiers_only=self._globs(flow, "identifiers_only", "data_flow"),
                kinds=cast(tuple[ValueKind, ...], kinds),
            ),
            allow_lists=self._allow_lists(data),
            strict=StrictRule(
                enabled=self._get(strict, "enabled", "strict", bool, False),
                action=self._choice(strict, "action", "strict", ("ask", "deny"), "ask"),
            ),
            detector=DetectorSettings(
                rules=self._get(detector, "rules", "detector", bool, True),
                action=self._choice(
                    detector, "action", "detector", ("log", "redact", "drop"), "log"
                ),
            ),
            spotlight=self._choice(spotlight, "mode", "spotlight", SPOTLIGHT_MODES, "off"),
            where=self.where,
        )

    def _allow_lists(self, data: Mapping[str, Any]) -> tuple[AllowList, ...]:
        if "allow" not in data:
            return _default_allow_lists()
        lists: list[AllowList] = []
        for name, table in self._table(data, "allow").items():
            key = f"allow.{name}"
            if not isinstance(table, Mapping):
                raise PolicyError(self.where, key, "must be a table ([allow.NAME])")
            self._known(table, ("arguments", "values", "action", "extract"), key)
            arguments = self._globs(table, "arguments", key, DEFAULT_ALLOW_ARGUMENTS.get(name))
            if not arguments:
                raise PolicyError(
                    self.where,
                    f"{key}.arguments",
                    'required: the argument-name globs this list checks, e.g. ["to"]',
                )
            extract = self._choice(table, "extract", key, ("", *VALUE_KINDS), "")
            lists.append(
                AllowList(
                    name,
                    arguments,
                    self._globs(table, "values", key),
                    self._choice(table, "action", key, ("deny", "ask"), "deny"),
                    cast(ValueKind, extract) if extract else None,
                )
            )
        return tuple(lists)

    def _table(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        table = data.get(key, {})
        if not isinstance(table, Mapping):
            raise PolicyError(self.where, key, f"must be a table ([{key}]), not {_kind(table)}")
        return table

    def _known(self, table: Mapping[str, Any], keys: Sequence[str], path: str) -> None:
        for key in table:
            if key not in keys:
                where = f"{path}.{key}" if path else key
                raise PolicyError(self.where, where, f"unknown key; known: {', '.join(keys)}")

    def _get(
        self, table: Mapping[str, Any], key: str, path: str, kind: type[_T], default: _T
    ) -> _T:
        value = table.get(key, default)
        # bool is an int: a `true` where a number belongs is a mistake, not 1
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PolicyError(
                self.where, f"{path}.{key}", f"must be {_KIND_NAMES[kind]}, not {_kind(value)}"
            )
        return value

    def _choice(
        self,
        table: Mapping[str, Any],
        key: str,
        path: str,
        choices: Sequence[_T],
        default: _T,
    ) -> _T:
        value = table.get(key, default)
        if value not in choices:
            shown = ", ".join(repr(choice) for choice in choices)
            raise PolicyError(self.where, f"{path}.{key}", f"must be one of {shown}, not {value!r}")
        return cast(_T, value)

    def _globs(
        self,
        table: Mapping[str, Any],
        key: str,
        path: str,
        default: Sequence[str] | None = (),
    ) -> tuple[str, ...]:
        value = table.get(key, default)
        if value is None:
            return ()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise PolicyError(
                self.where, f"{path}.{key}", f"must be a list of strings, not {_kind(value)}"
            )
        return tuple(value)


_KIND_NAMES: Mapping[type, str] = {bool: "true or false", int: "an integer", str: "a string"}


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"
