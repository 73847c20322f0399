"""Procedural bugs: SWE-smith's mutation families, as one-edit changes to a package's source.

A mutant is one edit of the file's text at the span of the node it changes, so its diff shows the
changed operator, constant or lines and nothing else (`ast.unparse` would reformat the file).
Candidates are found with `ast` inside function bodies only (module-level code runs at import:
mutating it mostly breaks the import, which teaches nothing). The order in which a builder tries
them is fixed by a seed and spread over the families. Test files are never mutated: callers pass
only source files (`source_files`).
"""

from __future__ import annotations

import ast
import bisect
import difflib
import itertools
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tercet.evals.task import EvalInputError

FAMILIES: tuple[str, ...] = (
    "op_change",  # an operator changed: + to -, < to <=, and to or, in to not in
    "op_swap",  # the operands of a binary operator or comparison swapped
    "op_change_const",  # a numeric constant off by one
    "ctrl_invert_if",  # an if's body and else body swapped
    "remove_cond",  # an if statement (without else) removed
    "remove_assign",  # an assignment removed
    "remove_loop",  # a for or while loop removed
    "op_break_chains",  # one link of a chain dropped: a + b + c, a < b < c, x.f().g(), a and b and c
    "ctrl_shuffle",  # two adjacent statements swapped
)

_BINARY: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.MatMult: "@",
}
_COMPARE: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}
# What each operator becomes under op_change (SWE-smith's pairs: the likeliest slips).
_CHANGED: dict[str, str] = {
    "+": "-",
    "-": "+",
    "*": "/",
    "/": "*",
    "//": "/",
    "%": "//",
    "**": "*",
    "<<": ">>",
    ">>": "<<",
    "|": "&",
    "&": "|",
    "^": "|",
    "==": "!=",
    "!=": "==",
    "<": "<=",
    "<=": "<",
    ">": ">=",
    ">=": ">",
    "is": "is not",
    "is not": "is",
    "in": "not in",
    "not in": "in",
    "and": "or",
    "or": "and",
}
# Swapping these operands changes nothing (or nothing a test can see), so op_swap skips them.
_SYMMETRIC = {"*", "|", "&", "^", "==", "!=", "is", "is not"}


@dataclass(frozen=True)
class Mutant:
    """One injected bug: replace `source[start:end]` with `replacement` in `file`.

    `description` is for the build's log only: it names the change, so it must never reach a
    problem statement.
    """

    file: str  # path relative to the package root, with forward slashes
    family: str
    line: int  # 1-based line of the edit
    function: str  # qualified name of the function it sits in
    description: str
    start: int  # character offsets into the file's text
    end: int
    replacement: str

    def apply(self, source: str) -> str:
        """The file's text with the bug put in."""
        return source[: self.start] + self.replacement + source[self.end :]

    def diff(self, source: str) -> str:
        """The bug-introducing unified diff (clean -> buggy), as `git apply` reads it."""
        return unified_diff(self.file, source, self.apply(source))

    def fix(self, source: str) -> str:
        """The gold patch: the reverse diff (buggy -> clean)."""
        return unified_diff(self.file, self.apply(source), source)

    def changes_code(self, source: str, code: str | None = None) -> bool:
        """Whether the mutated text parses and differs from `source` as code, not only in
        layout; `code` is `code_of(source)` when the caller has it already."""
        before = code if code is not None else code_of(source)
        after = code_of(self.apply(source))
        return before is not None and after is not None and before != after


def code_of(source: str) -> str | None:
    """The code in a text, layout and comments left out (`ast.dump`); None if it does not parse."""
    try:
        return ast.dump(ast.parse(source))
    except (SyntaxError, ValueError):
        return None


def unified_diff(path: str, before: str, after: str, context: int = 3) -> str:
    """A git-style unified diff of one file; "" when the texts are equal."""
    lines = difflib.unified_diff(_lines(before), _lines(after), f"a/{path}", f"b/{path}", n=context)
    out: list[str] = []
    for line in lines:
        if line.endswith("\n"):
            out.append(line)
        else:  # the file's last line has no newline: say so, as git does
            out.append(line + "\n\\ No newline at end of file\n")
    if not out:
        return ""
    return f"diff --git a/{path} b/{path}\n" + "".join(out)


def source_files(root: Path, packages: Sequence[str], is_test: Callable[[str], bool]) -> list[str]:
    """The Python files under `root`'s import packages (paths relative to `root`), tests left out."""
    found: list[str] = []
    for package in packages:
        base = root / package
        paths = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in paths:
            relative = path.relative_to(root).as_posix()
            if path.suffix == ".py" and not is_test(relative):
                found.append(relative)
    return sorted(set(found))


def find_mutants(source: str, file: str, families: Iterable[str] = FAMILIES) -> list[Mutant]:
    """Every candidate mutant of one file's text, in source order (none if it does not parse).

    A candidate may still turn out not to change the code (see `Mutant.changes_code`): that check
    parses the file again, so a builder makes it only for the mutants it tries.
    """
    wanted = set(families)
    unknown = wanted - set(FAMILIES)
    if unknown:
        raise EvalInputError(
            f"unknown mutation families: {', '.join(sorted(unknown))} (known: {', '.join(FAMILIES)})"
        )
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    finder = _Finder(_Text(source), file, wanted)
    finder.visit(tree)
    return sorted(finder.found, key=lambda m: (m.start, m.end, m.family))


def order(mutants: Iterable[Mutant], seed: int) -> list[Mutant]:
    """The mutants in the order a builder tries them: shuffled by `seed` within each family, then
    taken from the families in turn, so any prefix is spread over the families."""
    by_family: dict[str, list[Mutant]] = {}
    for mutant in mutants:
        by_family.setdefault(mutant.family, []).append(mutant)
    queues: list[Iterator[Mutant]] = []
    for family in FAMILIES:
        group = sorted(by_family.get(family, []), key=lambda m: (m.file, m.start, m.end))
        random.Random(f"{seed}:{family}").shuffle(group)
        queues.append(iter(group))
    ordered: list[Mutant] = []
    while queues:
        still: list[Iterator[Mutant]] = []
        for queue in queues:
            item = next(queue, None)
            if item is not None:
                ordered.append(item)
                still.append(queue)
        queues = still
    return ordered


def _lines(text: str) -> list[str]:
    # Split on "\n" only, as git does (str.splitlines also splits on form feeds and others).
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


class _Text:
    """A source text with the offsets `ast` gives (UTF-8 byte columns) turned into indices."""

    def __init__(self, source: str) -> None:
        self.source = source
        # ast counts lines as the tokenizer does: ends are \r\n, \r or \n.
        self.lines = [m.group() for m in re.finditer(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", source)]
        self.starts: list[int] = []
        offset = 0
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line)

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8", "replace"))

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def text(self, node: ast.AST) -> str:
        return self.source[self.start(node) : self.end(node)]

    def line_span(self, first: int, last: int) -> tuple[int, int]:
        """Offsets of whole lines first..last (1-based), ends included."""
        end = self.starts[last - 1] + len(self.lines[last - 1])
        return self.starts[first - 1], end

    def owns_lines(self, node: ast.stmt) -> bool:
        """Whether the statement stands on lines of its own (nothing before it, only a comment
        after it), so removing or moving its lines moves nothing else."""
        first = self.lines[node.lineno - 1]
        before = first.encode("utf-8")[: node.col_offset]
        if before.strip():
            return False
        assert node.end_lineno is not None and node.end_col_offset is not None
        last = self.lines[node.end_lineno - 1].encode("utf-8")[node.end_col_offset :]
        rest = last.decode("utf-8", "replace").strip()
        return not rest or rest.startswith("#")

    def indent(self, node: ast.stmt) -> str:
        line = self.lines[node.lineno - 1]
        return line[: len(line) - len(line.lstrip())]

    def newline(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[len(line.rstrip("\r\n")) :] or "\n"


def _operator_span(text: _Text, start: int, end: int, symbol: str) -> tuple[int, int] | None:
    """Where the operator `symbol` sits in source[start:end], the gap between two operands
    (which holds only the operator, brackets, blanks, comments and line continuations)."""
    gap = re.sub(r"#[^\r\n]*", lambda m: " " * len(m.group()), text.source[start:end])
    words = [m for m in re.finditer(r"[^\s()\[\]\\]+", gap)]
    if not words or " ".join(m.group() for m in words) != symbol:
        return None
    return start + words[0].start(), start + words[-1].end()


class _Finder(ast.NodeVisitor):
    def __init__(self, text: _Text, file: str, families: set[str]) -> None:
        self.text = text
        self.file = file
        self.families = families
        self.found: list[Mutant] = []
        self.scope: list[str] = []  # enclosing class and function names
        self.functions = 0  # how many functions enclose the current node
        self.in_fstring = 0

    # -- scopes -------------------------------------------------------------------------------

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        for statement in node.body:
            self.visit(statement)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.functions += 1
        self._block(node.body)
        for statement in node.body:
            self.visit(statement)
        self.functions -= 1
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        # Positions inside f-strings are unreliable before Python 3.12: leave them alone.
        self.in_fstring += 1
        self.generic_visit(node)
        self.in_fstring -= 1

    def generic_visit(self, node: ast.AST) -> None:
        if self.functions and not self.in_fstring:
            for field in ("body", "orelse", "finalbody"):
                block = getattr(node, field, None)
                if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                    self._block(block)
        super().generic_visit(node)

    # -- expressions --------------------------------------------------------------------------

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if self._active():
            self._binop(node)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if self._active():
            self._compare(node)
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        if self._active():
            self._boolop(node)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if self._active() and "op_change_const" in self.families:
            self._constant(node)

    def visit_Call(self, node: ast.Call) -> None:
        if self._active() and "op_break_chains" in self.families:
            inner = node.func.value if isinstance(node.func, ast.Attribute) else None
            if isinstance(inner, ast.Call) and isinstance(node.func, ast.Attribute):
                start, end = self.text.end(inner), self.text.end(node)
                self._add(
                    "op_break_chains",
                    start,
                    end,
                    "",
                    f"dropped .{node.func.attr}(...) from a call chain",
                )
        self.generic_visit(node)

    def _active(self) -> bool:
        return bool(self.functions) and not self.in_fstring

    def _binop(self, node: ast.BinOp) -> None:
        symbol = _BINARY[type(node.op)]
        span = _operator_span(
            self.text, self.text.end(node.left), self.text.start(node.right), symbol
        )
        if span is None:
            return
        texts = (node.left, node.right)
        stringy = any(
            isinstance(side, ast.JoinedStr)
            or (isinstance(side, ast.Constant) and isinstance(side.value, str | bytes))
            for side in texts
        )
        if "op_change" in self.families and symbol in _CHANGED and not stringy:
            self._add("op_change", *span, _CHANGED[symbol], f"{symbol!r} -> {_CHANGED[symbol]!r}")
        if "op_swap" in self.families and symbol not in _SYMMETRIC:
            self._swap(node, span, symbol)
        if "op_break_chains" in self.families and isinstance(node.left, ast.BinOp):
            # a OP1 b OP2 c -> a OP2 c: drop the middle operand with its operator
            start, end = self.text.end(node.left.left), self.text.end(node.left.right)
            self._add("op_break_chains", start, end, "", f"dropped an operand of {symbol!r}")

    def _compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for index, op in enumerate(node.ops):
            symbol = _COMPARE[type(op)]
            left, right = operands[index], operands[index + 1]
            span = _operator_span(self.text, self.text.end(left), self.text.start(right), symbol)
            if span is None:
                continue
            if "op_change" in self.families:
                self._add(
                    "op_change",
                    *span,
                    _CHANGED[symbol],
                    f"{symbol!r} -> {_CHANGED[symbol]!r}",
                )
            if "op_swap" in self.families and len(node.ops) == 1 and symbol not in _SYMMETRIC:
                self._swap(node, span, symbol)
        if "op_break_chains" in self.families and len(node.ops) > 1:
            start, end = self.text.end(node.comparators[0]), self.text.end(node)
            self._add("op_break_chains", start, end, "", "cut a chained comparison short")

    def _boolop(self, node: ast.BoolOp) -> None:
        symbol = "and" if isinstance(node.op, ast.And) else "or"
        for left, right in itertools.pairwise(node.values):
            span = _operator_span(self.text, self.text.end(left), self.text.start(right), symbol)
            if span is not None and "op_change" in self.families:
                self._add(
                    "op_change",
                    *span,
                    _CHANGED[symbol],
                    f"{symbol!r} -> {_CHANGED[symbol]!r}",
                )
        if "op_break_chains" in self.families and len(node.values) > 2:
            # a and b and c -> a and c
            start, end = self.text.end(node.values[0]), self.text.end(node.values[1])
            self._add("op_break_chains", start, end, "", f"dropped an operand of {symbol!r}")

    def _swap(self, node: ast.expr, span: tuple[int, int], symbol: str) -> None:
        if node.lineno != node.end_lineno:
            return  # keep swaps to one line: brackets and comments across lines get in the way
        start, end = self.text.start(node), self.text.end(node)
        left = self.text.source[start : span[0]]
        right = self.text.source[span[1] : end]
        if left.strip() == right.strip() or not left.strip() or not right.strip():
            return
        gap_before = left[len(left.rstrip()) :]
        gap_after = right[: len(right) - len(right.lstrip())]
        replacement = (
            right.strip()
            + gap_before
            + self.text.source[span[0] : span[1]]
            + gap_after
            + left.strip()
        )
        self._add("op_swap", start, end, replacement, f"swapped the operands of {symbol!r}")

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        original = self.text.text(node)
        # Deterministic direction: up or down by the parity of the position, never a no-op.
        new = value + 1 if (node.lineno + node.col_offset) % 2 == 0 or value == 0 else value - 1
        if isinstance(value, int) and original.lower().startswith("0x"):
            replacement = hex(int(new))
        else:
            replacement = repr(new)
        self._add(
            "op_change_const",
            self.text.start(node),
            self.text.end(node),
            replacement,
            f"{original} -> {replacement}",
        )

    # -- statements ---------------------------------------------------------------------------

    def _block(self, block: list[ast.stmt]) -> None:
        """Statement-level candidates in one block: removals, swaps, inverted ifs."""
        if not self.functions:
            return
        body = [s for s in block if not _is_docstring(s)]
        for statement in body:
            if not self.text.owns_lines(statement):
                continue
            if isinstance(statement, ast.If):
                self._if(statement, sole=len(block) == 1)
            elif isinstance(statement, ast.Assign | ast.AugAssign) or (
                isinstance(statement, ast.AnnAssign) and statement.value is not None
            ):
                self._remove("remove_assign", statement, len(block) == 1, "removed an assignment")
            elif isinstance(statement, ast.For | ast.AsyncFor | ast.While):
                self._remove("remove_loop", statement, len(block) == 1, "removed a loop")
        if "ctrl_shuffle" in self.families:
            for first, second in itertools.pairwise(body):
                self._shuffle(first, second)

    def _if(self, node: ast.If, sole: bool) -> None:
        if _is_elif(self.text, node):
            return
        if not node.orelse:
            self._remove("remove_cond", node, sole, "removed an if statement")
            return
        if "ctrl_invert_if" not in self.families or _is_elif(self.text, node.orelse[0]):
            return
        body_first, body_last = node.body[0].lineno, _end_line(node.body[-1])
        else_first, else_last = node.orelse[0].lineno, _end_line(node.orelse[-1])
        if body_first == node.lineno or else_first != body_last + 2:
            return  # bodies on the header's line, or comments around the else: leave it
        if not re.fullmatch(r"\s*else\s*:\s*(#.*)?", self.text.lines[body_last].rstrip("\r\n")):
            return
        start, body_end = self.text.line_span(body_first, body_last)
        else_start, end = self.text.line_span(else_first, else_last)
        body = self.text.source[start:body_end]
        orelse = self.text.source[else_start:end]
        if not orelse.endswith(("\n", "\r")):
            return
        else_line = self.text.source[body_end:else_start]
        self._add(
            "ctrl_invert_if",
            start,
            end,
            orelse + else_line + body,
            "swapped an if's body and else body",
        )

    def _remove(self, family: str, node: ast.stmt, sole: bool, what: str) -> None:
        if family not in self.families:
            return
        start, end = self.text.line_span(node.lineno, _end_line(node))
        # A block cannot be empty: the only statement of a block becomes `pass`.
        replacement = (
            self.text.indent(node) + "pass" + self.text.newline(node.lineno) if sole else ""
        )
        if not self.text.source[start:end].endswith(("\n", "\r")):
            return  # the file's last line: removing it would leave the previous line's ending
        self._add(family, start, end, replacement, what)

    def _shuffle(self, first: ast.stmt, second: ast.stmt) -> None:
        if not (self.text.owns_lines(first) and self.text.owns_lines(second)):
            return
        if isinstance(first, ast.Global | ast.Nonlocal) or isinstance(
            second, ast.Global | ast.Nonlocal
        ):
            return
        a_start, a_end = self.text.line_span(first.lineno, _end_line(first))
        b_start, b_end = self.text.line_span(second.lineno, _end_line(second))
        a = self.text.source[a_start:a_end]
        b = self.text.source[b_start:b_end]
        if a.strip() == b.strip() or not b.endswith(("\n", "\r")):
            return
        between = self.text.source[a_end:b_start]
        self._add(
            "ctrl_shuffle",
            a_start,
            b_end,
            b + between + a,
            "swapped two adjacent statements",
        )

    def _add(self, family: str, start: int, end: int, replacement: str, what: str) -> None:
        if family not in self.families or self.text.source[start:end] == replacement:
            return
        line = bisect.bisect_right(self.text.starts, start)
        function = ".".join(self.scope)
        self.found.append(
            Mutant(
                file=self.file,
                family=family,
                line=line,
                function=function,
                description=f"{family}: {what} at {self.file}:{line} in {function}",
                start=start,
                end=end,
                replacement=replacement,
            )
        )


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _is_elif(text: _Text, node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and text.source.startswith("elif", text.start(node))


def _end_line(node: ast.stmt) -> int:
    assert node.end_lineno is not None
    return node.end_lineno
