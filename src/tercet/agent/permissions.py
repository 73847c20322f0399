"""Permissions: whether a tool call runs, is put to the user first, or is refused.

Rules are written as Claude Code writes them: `"Bash"`, `"Bash(git diff)"`,
`"Bash(npm run test:*)"`, `"Read(src/**)"`, `"Edit"`, `"Write(docs/*.md)"`, `"Memory"`, or a
tool's own name (`"mcp__github"` covers every tool of that MCP server). Claude Code's names map
to ours: Bash is `bash`; Read is the text editor's `view`, Write its `create`, Edit its
`str_replace` and `insert` (and, as in Claude Code, `create` too); Memory is `memory`.

Patterns:
- Bash: `cmd:*` matches `cmd` and `cmd <anything>`; `*` elsewhere is a wildcard; otherwise the
  command must be exactly the pattern. A compound command (`a && b | c`) is judged command by
  command: a deny or ask rule matching any of them applies; an allow rule applies only when
  every command is matched by an allow rule or only reads, none redirects output to a file,
  and the line holds nothing this module cannot analyse (`$(...)`, backticks, newlines).
- Read/Edit/Write: gitignore-style paths. `src/**` and `./src/**` are relative to the working
  directory, as is `/src/**` (as in Claude Code: relative to the project); `//etc/**` is
  absolute, `~/...` is in the home directory; a pattern without a slash (`*.env`) matches
  the file's name at any depth. A pattern without wildcards also covers what is under it.
- Memory: a glob over the `/memories/...` path.
- `*` alone matches any call of the tool; other tools take no other pattern.

Precedence, first that applies wins:
1. a deny rule matches: deny;
2. mode `plan` and the call is not read-only: deny;
3. mode `bypassPermissions`: allow;
4. an ask rule matches: ask;
5. an allow rule matches: allow;
6. mode `acceptEdits` and the call is a text editor write inside the working directory, or a
   memory write: allow;
7. the call is read-only (`AgentTool.is_read_only`): allow;
8. otherwise: ask.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tercet.agent.tools import bash, editor, memory
from tercet.agent.tools.base import AgentTool, ToolInputError, resolve_path
from tercet.agent.tools.bash_syntax import reads_only, split_commands

PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions"]
Action = Literal["allow", "ask", "deny"]
PERMISSION_MODES: tuple[PermissionMode, ...] = (
    "default",
    "acceptEdits",
    "plan",
    "bypassPermissions",
)

# Claude Code's file tool names -> the text editor commands they cover.
EDITOR_COMMANDS: dict[str, frozenset[str]] = {
    "Read": frozenset({"view"}),
    "Write": frozenset({"create"}),
    "Edit": frozenset({"str_replace", "insert", "create"}),
    editor.NAME: frozenset(editor.COMMANDS),
}
BASH_NAMES = ("Bash", bash.NAME)
_RULE = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?:\((.*)\))?\s*", re.DOTALL)


@dataclass(frozen=True)
class PermissionRule:
    """One rule: `action` for calls of `tool` (a Claude Code or tercet name) whose input
    matches `pattern` (None: every call)."""

    action: Action
    tool: str
    pattern: str | None = None

    @classmethod
    def parse(cls, action: Action, text: str) -> PermissionRule:
        """A rule from Claude Code's notation, e.g. `Bash(npm run test:*)` or `Edit`."""
        match = _RULE.fullmatch(text)
        if match is None:
            raise ValueError(
                f"cannot read the permission rule {text!r}: write `Tool` or `Tool(pattern)`, "
                "e.g. `Bash(npm run test:*)` or `Read(src/**)`"
            )
        pattern = (match.group(2) or "").strip()
        return cls(action, match.group(1), pattern or None)

    def __str__(self) -> str:
        return self.tool if self.pattern is None else f"{self.tool}({self.pattern})"


@dataclass(frozen=True)
class Decision:
    """What to do with a tool call, and why (shown to the user, or to the model on a deny)."""

    action: Action
    reason: str


@dataclass
class Permissions:
    """Rules and a mode; `decide` applies them to a call (precedence in the module docstring).

    Relative path patterns and "inside the working directory" refer to `cwd`.
    """

    rules: Sequence[PermissionRule] = ()
    mode: PermissionMode = "default"
    cwd: Path = field(default_factory=Path.cwd)
    home: Path = field(default_factory=Path.home)

    @classmethod
    def from_lists(
        cls,
        *,
        allow: Iterable[str] = (),
        ask: Iterable[str] = (),
        deny: Iterable[str] = (),
        mode: PermissionMode = "default",
        cwd: Path | None = None,
    ) -> Permissions:
        """Permissions from Claude Code style lists, as in its settings' `permissions`."""
        rules = [
            *(PermissionRule.parse("allow", text) for text in allow),
            *(PermissionRule.parse("ask", text) for text in ask),
            *(PermissionRule.parse("deny", text) for text in deny),
        ]
        return cls(rules, mode, cwd or Path.cwd())

    def decide(self, tool: AgentTool, input: dict[str, Any]) -> Decision:
        """Allow, ask or deny this call of `tool`."""
        for rule in self._rules("deny"):
            if self.matches(rule, tool, input):
                return Decision("deny", f"denied by the permission rule {rule}")
        read_only = tool.is_read_only(input)
        if self.mode == "plan" and not read_only:
            return Decision("deny", "plan mode allows only read-only tools; present the plan first")
        if self.mode == "bypassPermissions":
            return Decision("allow", "bypassPermissions mode allows every call not denied")
        for rule in self._rules("ask"):
            if self.matches(rule, tool, input):
                return Decision("ask", f"the permission rule {rule} asks first")
        allowing = self._allowing_rule(tool, input)
        if allowing is not None:
            return Decision("allow", f"allowed by the permission rule {allowing}")
        if self.mode == "acceptEdits" and self._accepted_edit(tool, input):
            return Decision("allow", "acceptEdits mode allows file edits in the working directory")
        if read_only:
            return Decision("allow", "read-only")
        return Decision("ask", f"no rule allows {tool.describe(input)}")

    def matches(self, rule: PermissionRule, tool: AgentTool, input: dict[str, Any]) -> bool:
        """Whether `rule` applies to this call, as a deny or ask rule would (any part of a
        compound command, any path of a rename). Allow rules are applied by `decide`, more
        strictly."""
        name = tool.name
        if rule.tool in BASH_NAMES:
            return name == bash.NAME and _bash_matches(rule, input)
        if rule.tool in EDITOR_COMMANDS:
            if name != editor.NAME or input.get("command") not in EDITOR_COMMANDS[rule.tool]:
                return False
            return rule.pattern in (None, "*") or self._path_matches(rule.pattern, input)
        if rule.tool in ("Memory", memory.NAME):
            if name != memory.NAME:
                return False
            paths = memory.memory_paths(input)
            if rule.pattern in (None, "*"):
                return True
            hits = [_glob(rule.pattern).fullmatch(path) is not None for path in paths]
            return bool(paths) and (all(hits) if rule.action == "allow" else any(hits))
        named = name == rule.tool or name.startswith(rule.tool + "__")
        return named and rule.pattern in (None, "*")

    def _allowing_rule(self, tool: AgentTool, input: dict[str, Any]) -> PermissionRule | None:
        """The allow rule that allows this call, if any. A bash command line is allowed when
        each of its commands is allowed by some rule or only reads (and none writes a file by
        redirection), so that `Bash(npm test:*)` does not allow `npm test && rm -rf ~`."""
        rules = self._rules("allow")
        if tool.name != bash.NAME:
            return next((rule for rule in rules if self.matches(rule, tool, input)), None)
        rules = [rule for rule in rules if rule.tool in BASH_NAMES]
        whole = next((rule for rule in rules if rule.pattern in (None, "*")), None)
        command = input.get("command")
        if whole is not None or input.get("restart") or not isinstance(command, str):
            return whole
        commands = split_commands(command)
        if not commands or any(c.writes_by_redirect for c in commands):
            return None
        used: PermissionRule | None = None
        for part in commands:
            rule = next(
                (r for r in rules if r.pattern and _command_matches(r.pattern, part.text)), None
            )
            if rule is None and not reads_only(part):
                return None
            used = used or rule
        return used

    def _rules(self, action: Action) -> list[PermissionRule]:
        return [rule for rule in self.rules if rule.action == action]

    def _path_matches(self, pattern: str, input: dict[str, Any]) -> bool:
        try:
            path = resolve_path(self.cwd, input.get("path"))
        except ToolInputError:
            return False
        return _glob(self._absolute_pattern(pattern)).fullmatch(str(path)) is not None

    def _absolute_pattern(self, pattern: str) -> str:
        if pattern.startswith("//"):
            return pattern[1:]
        if pattern.startswith("~/"):
            return f"{self.home}/{pattern[2:]}"
        anchored = pattern.startswith(("/", "./"))
        pattern = pattern.removeprefix("./").lstrip("/")
        if not anchored and "/" not in pattern.rstrip("/"):
            pattern = f"**/{pattern}"  # gitignore: a bare name matches at any depth
        return f"{str(self.cwd).rstrip('/')}/{pattern}"

    def _accepted_edit(self, tool: AgentTool, input: dict[str, Any]) -> bool:
        if tool.name == memory.NAME:
            return True
        if tool.name != editor.NAME:
            return False
        target = editor.edited_path(input, self.cwd)
        if target is None:
            return False
        real, base = os.path.realpath(target), os.path.realpath(self.cwd)
        return real == base or real.startswith(base.rstrip("/") + "/")


def _bash_matches(rule: PermissionRule, input: dict[str, Any]) -> bool:
    """Whether a deny or ask rule matches the command line or any command in it."""
    if rule.pattern in (None, "*"):
        return True
    command = input.get("command")
    if input.get("restart") or not isinstance(command, str):
        return False
    commands = split_commands(command)
    parts = (
        [c.text for c in commands]
        if commands is not None
        else re.split(r"[;&|\n()`]+|\$\(|<\(|>\(", command)
    )
    return any(_command_matches(rule.pattern, part) for part in [command, *parts])


def _command_matches(pattern: str, command: str) -> bool:
    command = " ".join(command.split())
    pattern = " ".join(pattern.split())
    if pattern.endswith(":*"):
        prefix = pattern[:-2].rstrip()
        return command == prefix or command.startswith(prefix + " ")
    if "*" in pattern:
        regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
        return re.fullmatch(regex, command, re.DOTALL) is not None
    return command == pattern


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A relative gitignore-style pattern (a bare name matches at any depth) as a regular
    expression over a relative "/"-separated path."""
    pattern = pattern.removeprefix("./").lstrip("/")
    if "/" not in pattern.rstrip("/"):
        pattern = f"**/{pattern}"
    return _glob(pattern)


def _glob(pattern: str) -> re.Pattern[str]:
    """A gitignore-style glob as a regular expression over a whole path: `**` crosses
    directories, `*` and `?` do not; a pattern without wildcards covers what is under it."""
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            regex += ".*"
            index += 2
        elif pattern[index] == "*":
            regex += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            regex += "[^/]"
            index += 1
        else:
            regex += re.escape(pattern[index])
            index += 1
    if not any(ch in pattern for ch in "*?"):
        regex = regex.rstrip("/") + "(?:/.*)?"
    return re.compile(regex, re.DOTALL)
