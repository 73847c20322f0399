"""Just enough bash syntax to judge a command: its simple commands, their redirections, and
whether the whole only reads.

The judgement is conservative: whatever this module does not understand (newlines, command or
process substitution, subshells, unbalanced quotes) counts as "might write", and a permission
rule's pattern never allows it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# Control operators between simple commands (`|&` and `&` included: a pipe or background job
# runs every command just the same).
OPERATORS = frozenset({";", "&&", "||", "|", "|&", "&", ";;"})
_UNANALYSED = ("\n", "`", "$(", "<(", ">(")


@dataclass(frozen=True)
class Redirect:
    """One redirection: its operator (`>`, `>>`, `2>&1` reads `>&` then `1`) and its target."""

    operator: str
    target: str

    @property
    def writes(self) -> bool:
        """Whether this redirection can write a file (`>/dev/null` and `2>&1` cannot)."""
        if ">" not in self.operator:
            return False
        if self.operator in (">&", "<&") and (self.target.isdigit() or self.target == "-"):
            return False
        return self.target != "/dev/null"


@dataclass(frozen=True)
class SimpleCommand:
    """One command of a list or pipeline: its words (quotes removed) and redirections."""

    words: tuple[str, ...]
    redirects: tuple[Redirect, ...] = field(default=())

    @property
    def text(self) -> str:
        """The command's words, quoted as a shell would read them, without redirections."""
        return shlex.join(self.words)

    @property
    def writes_by_redirect(self) -> bool:
        return any(r.writes for r in self.redirects)


def split_commands(command: str) -> list[SimpleCommand] | None:
    """The simple commands in `command`, or None when it holds syntax this module does not
    analyse. (Quoted operators such as `'&&'` read as operators: the result can only be more
    cautious.)"""
    if any(marker in command for marker in _UNANALYSED):
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes
        return None
    commands: list[SimpleCommand] = []
    words: list[str] = []
    redirects: list[Redirect] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in OPERATORS:
            if words:
                commands.append(SimpleCommand(tuple(words), tuple(redirects)))
            words, redirects = [], []
        elif token in ("(", ")") or (token and set(token) <= set("();|&")):
            return None  # subshells, and operators this module does not know
        elif "<" in token or ">" in token:
            if index + 1 >= len(tokens):
                return None
            if words and words[-1].isdigit():  # `2>` is one operator: drop the fd number
                words.pop()
            redirects.append(Redirect(token, tokens[index + 1]))
            index += 1
        else:
            words.append(token)
        index += 1
    if words:
        commands.append(SimpleCommand(tuple(words), tuple(redirects)))
    return commands


# Commands that only read (and print), given the options refused below.
_READ_ONLY_COMMANDS = frozenset(
    {
        "ls", "cat", "head", "tail", "wc", "grep", "egrep", "fgrep", "rg", "pwd", "echo",
        "printf", "which", "type", "file", "stat", "du", "df", "diff", "cmp", "cut", "tr",
        "nl", "basename", "dirname", "realpath", "readlink", "date", "whoami", "id", "uname",
        "hostname", "true", "false", "test", "[", "tree", "sort", "find", "git", "jq",
        "md5sum", "sha1sum", "sha256sum", "sha512sum", "od", "hexdump", "column", "cd",
    }
)  # fmt: skip
# Options that make an otherwise read-only command write files or run other programs.
_WRITING_OPTIONS: dict[str, tuple[str, ...]] = {
    "find": (
        "-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf",
        "-fls",
    ),
    "sort": ("-o", "--output", "--compress-program"),
    "rg": ("--pre",),
    "tree": ("-o",),
    "date": ("-s", "--set"),
    "file": ("-C", "--compile"),
}  # fmt: skip
_GIT_READ_ONLY = frozenset(
    {"status", "diff", "log", "show", "blame", "ls-files", "rev-parse", "grep", "describe",
     "shortlog", "branch", "remote", "tag"}
)  # fmt: skip
# `git branch`, `remote` and `tag` only list with no arguments or with these.
_GIT_LISTING = frozenset({"-a", "-v", "-vv", "-r", "-l", "--list", "--all", "--show-current"})
_GIT_WRITING_OPTIONS = ("--output", "--ext-diff", "-O", "--open-files-in-pager")


def is_read_only_command(command: str) -> bool:
    """Whether `command` surely only reads: every simple command on the allow-list above, no
    redirection to a file, no variable assignments, nothing this module cannot analyse."""
    commands = split_commands(command)
    if not commands:
        return False
    return all(reads_only(c) for c in commands)


def reads_only(command: SimpleCommand) -> bool:
    """Whether one simple command surely only reads (see `is_read_only_command`)."""
    if command.writes_by_redirect:
        return False
    name, *args = command.words
    if "=" in name or name not in _READ_ONLY_COMMANDS:
        return False  # `PAGER=... git log` could run anything
    if name == "hostname":
        return not args
    refused = _WRITING_OPTIONS.get(name, ())
    if any(_has_option(arg, refused) for arg in args):
        return False
    return _git_reads_only(args) if name == "git" else True


def _git_reads_only(args: list[str]) -> bool:
    while args and args[0] == "--no-pager":
        args = args[1:]
    if not args or args[0] not in _GIT_READ_ONLY:
        return False  # options before the subcommand (-c, -C) could change anything
    subcommand, *rest = args
    if any(_has_option(arg, _GIT_WRITING_OPTIONS) for arg in rest):
        return False
    if subcommand in ("branch", "remote", "tag"):
        return all(arg in _GIT_LISTING for arg in rest)
    return True


def _has_option(arg: str, options: tuple[str, ...]) -> bool:
    flag = arg.split("=", 1)[0]
    for option in options:
        if arg == option:
            return True
        # getopt_long and git accept any unambiguous abbreviation (`--compress-prog=sh`), so
        # every prefix of a refused long option is refused too.
        long_prefix = flag.startswith("--") and len(flag) > 2 and option.startswith(flag)
        if long_prefix and option.startswith("--"):
            return True
        short = len(option) == 2 and arg.startswith("-") and not arg.startswith("--")
        if short and option[1] in arg[1:]:
            return True  # in a cluster (`-no file`) or with its value (`-ofile`)
    return False
