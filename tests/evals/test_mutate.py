"""Mutation families on small sources: one edit each, at the node's span, deterministic."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from tercet.evals.mutate import (
    FAMILIES,
    Mutant,
    code_of,
    find_mutants,
    order,
    source_files,
    unified_diff,
)
from tercet.evals.task import EvalInputError

SOURCE = textwrap.dedent(
    '''\
    """A module."""

    LIMIT = 10  # module level: never mutated


    def clamp(value, low, high):
        """Keep value within [low, high]."""
        if value < low:
            return low
        if value > high:
            return high
        return value


    def total(items, scale=2):
        result = 0
        for item in items:
            result += item * scale
        return result - 1


    def label(n):
        if n % 2 == 0:
            kind = "even"
        else:
            kind = "odd"
        return kind.strip().upper()


    def between(a, b, c):
        return a < b < c and a is not None and b + c + a > 0
    '''
)


def mutated(family: str, source: str = SOURCE) -> list[str]:
    """The changed lines (after the edit) of every candidate of one family."""
    out = []
    for mutant in find_mutants(source, "pkg/mod.py", [family]):
        diff = mutant.diff(source)
        out.append(
            "\n".join(
                line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"
            )
        )
    return out


def test_op_change_changes_one_operator() -> None:
    changes = mutated("op_change")
    assert "-    if value < low:\n+    if value <= low:" in changes
    assert "-    if n % 2 == 0:\n+    if n // 2 == 0:" in changes
    assert "-    if n % 2 == 0:\n+    if n % 2 != 0:" in changes
    assert any("a is None" in change for change in changes)  # is not -> is
    assert any("a < b < c or a is not None" in change for change in changes)
    # the module-level constant and the docstring stay untouched
    assert not any("LIMIT" in change or "Keep" in change for change in changes)


def test_op_swap_swaps_operands_of_asymmetric_operators() -> None:
    changes = mutated("op_swap")
    assert "-    return result - 1\n+    return 1 - result" in changes
    assert "-    if value < low:\n+    if low < value:" in changes
    assert not any("scale * item" in change for change in changes)  # * is symmetric


def test_op_change_const_moves_a_number_by_one() -> None:
    changes = mutated("op_change_const")
    assert any(c.endswith("+    result = 1") for c in changes)
    assert any("2 == 0" in c and ("1 == 0" in c or "3 == 0" in c) for c in changes)
    assert not any("LIMIT" in c or "scale=" in c for c in changes)  # module level, defaults


def test_statement_families() -> None:
    assert mutated("remove_loop") == ["-    for item in items:\n-        result += item * scale"]
    assert "-    result = 0" in mutated("remove_assign")
    removed = mutated("remove_cond")
    assert "-    if value < low:\n-        return low" in removed
    # an if with an else is never removed whole; ctrl_invert_if swaps its bodies instead
    [inverted] = find_mutants(SOURCE, "pkg/mod.py", ["ctrl_invert_if"])
    assert inverted.apply(SOURCE).count(
        '    if n % 2 == 0:\n        kind = "odd"\n    else:\n        kind = "even"\n'
    )
    shuffled = [m.apply(SOURCE) for m in find_mutants(SOURCE, "pkg/mod.py", ["ctrl_shuffle"])]
    swapped = "    for item in items:\n        result += item * scale\n    result = 0\n"
    assert sum(swapped in text for text in shuffled) == 1
    assert not any('"""Keep' not in text for text in shuffled)  # docstrings stay first


def test_op_break_chains() -> None:
    changes = mutated("op_break_chains")
    assert "-    return kind.strip().upper()\n+    return kind.strip()" in changes
    assert any("return a < b and a is not None" in change for change in changes)
    assert any("b + a > 0" in change for change in changes)


def test_every_family_is_found_and_every_mutant_is_one_edit() -> None:
    mutants = find_mutants(SOURCE, "pkg/mod.py")
    assert {m.family for m in mutants} == set(FAMILIES)
    code = code_of(SOURCE)
    for mutant in mutants:
        assert mutant.changes_code(SOURCE, code), mutant.description
        assert SOURCE[mutant.start : mutant.end] != mutant.replacement
        assert mutant.file == "pkg/mod.py"
        assert mutant.function in {"clamp", "total", "label", "between"}
        assert mutant.line > 5


def test_only_function_bodies_are_mutated() -> None:
    source = "X = 1 + 2\nclass A:\n    y = [i for i in range(3)]\n    def f(self, k=1 + 1):\n        return k\n"
    assert find_mutants(source, "m.py") == []
    assert find_mutants("def broken(:\n", "m.py") == []


def test_columns_are_characters_not_bytes() -> None:
    source = 'def f(x):\n    return "héllo" if x > 1 else "wörld" + "ü" * 2\n'
    mutants = find_mutants(source, "m.py", ["op_change", "op_change_const"])
    assert mutants
    for mutant in mutants:
        assert mutant.changes_code(source), mutant.description
    greater = [m for m in mutants if m.replacement == ">="]
    assert greater[0].apply(source) == source.replace("x > 1", "x >= 1")


def test_sole_statement_becomes_pass() -> None:
    source = "def f(x):\n    for i in x:\n        y = i\n    return x\n"
    [mutant] = find_mutants(source, "m.py", ["remove_assign"])
    assert mutant.apply(source) == "def f(x):\n    for i in x:\n        pass\n    return x\n"


def test_order_is_deterministic_and_spread_over_families() -> None:
    mutants = find_mutants(SOURCE, "pkg/mod.py")
    first = order(mutants, seed=7)
    assert first == order(list(reversed(mutants)), seed=7)
    assert sorted(first, key=id) == sorted(mutants, key=id)
    assert len({m.family for m in first[: len(FAMILIES)]}) == len(FAMILIES)
    assert [m.start for m in order(mutants, seed=8)] != [m.start for m in first]


def test_unknown_family_is_an_input_error() -> None:
    with pytest.raises(EvalInputError, match="unknown mutation families: nope"):
        find_mutants(SOURCE, "m.py", ["nope"])


def git(cwd: Path, *args: str, stdin: str | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, input=stdin, text=True, check=True, capture_output=True)


@pytest.mark.parametrize("ending", ["\n", ""])
def test_diff_applies_with_git_and_the_fix_reverses_it(tmp_path: Path, ending: str) -> None:
    source = "def f(x):\n    y = x + 1\n    return y * 2" + ending
    target = tmp_path / "pkg" / "mod.py"
    target.parent.mkdir()
    target.write_text(source)
    git(tmp_path, "init", "-q")
    mutant: Mutant = find_mutants(source, "pkg/mod.py", ["op_change"])[0]
    git(tmp_path, "apply", "-", stdin=mutant.diff(source))
    assert target.read_text() == mutant.apply(source)
    git(tmp_path, "apply", "-", stdin=mutant.fix(source))
    assert target.read_text() == source
    git(tmp_path, "apply", "-R", "-", stdin=mutant.fix(source))  # how a buggy tree is made
    assert target.read_text() == mutant.apply(source)


def test_unified_diff_of_equal_texts_is_empty() -> None:
    assert unified_diff("a.py", "x\n", "x\n") == ""


def test_source_files_leave_tests_out(tmp_path: Path) -> None:
    for name in (
        "src/pkg/__init__.py",
        "src/pkg/core.py",
        "src/pkg/tests/test_core.py",
        "setup.py",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    found = source_files(tmp_path, ["src/pkg"], lambda path: "/tests/" in path)
    assert found == ["src/pkg/__init__.py", "src/pkg/core.py"]
