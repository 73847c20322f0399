"""Impossible variants: the literal changes (pure), variants made from test sources (pure),
then on the hand-written xmltodict tasks of test_run.py: variants generated, applied and
validated in the sandbox with the gold patch, the CLI, and the dataset's splits."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from tercet.cli.main import main
from tercet.evals.agents import AgentSettings
from tercet.evals.environments import test_environment
from tercet.evals.impossible import (
    COPY_SUFFIX,
    GOLD_PASSES,
    NO_LITERAL,
    Candidate,
    Drop,
    Generator,
    Kind,
    Source,
    TestName,
    Unsuitable,
    VariantRecord,
    candidates,
    change_literal,
    expected_value,
    find_function,
    make_variant,
    parse_kinds,
    patch_problem,
    validate,
)
from tercet.evals.mutate import unified_diff
from tercet.evals.packages import PackageSpec, load_specs
from tercet.evals.run import RESULTS_FILE, ResultsFile, RunOptions, load_dataset, run_eval
from tercet.evals.task import EvalInputError, PackageSource, Task, read_jsonl, write_jsonl
from tercet.evals.workspace import buggy_tree, touched_paths
from tests.evals.test_run import SPECS, dataset_dir

__all__ = ["dataset_dir"]  # the fixture, shared with test_run.py

# ---------------------------------------------------------------------------- literals


@pytest.mark.parametrize(
    ("literal", "changed"),
    [
        ("41", "42"),
        ("-3", "-4"),
        ("0x10", "17"),
        ("1.5", "2.5"),
        ("1e300", "-1e+300"),  # + 1.0 would leave it equal
        ("2j", "(1+2j)"),
        ("'abc'", "'abc!'"),
        ('""', '"!"'),
        ('"""a\nb"""', '"""a\nb!"""'),
        ("r'\\d+'", "r'\\d+!'"),
        ("'a' \"b\"", "'a' \"b!\""),  # implicit concatenation: the last piece
        ("f'x{y}'", "f'x{y}!'"),
        ("b'\\x00'", "b'\\x00!'"),
        ("True", "False"),
        ("False", "True"),
        ("None", "False"),
        ("[1, 2]", "[2, 2]"),
        ("[x, [1]]", "[x, [2]]"),  # the first element with a literal in it
        ("[x, y]", "[x, y, None]"),
        ("[]", "[None]"),
        ("()", "(None,)"),
        ("(x,)", "(x, None,)"),
        ("{1, 2}", "{2, 2}"),
        ("{x}", "{x, None}"),
        ("{'a': 1}", "{'a': 2}"),  # a value, not the key
        ("{a: b}", '{a: b, "impossible": None}'),
        ("{}", '{"impossible": None}'),
    ],
)
def test_each_kind_of_literal_is_changed_to_a_different_value(literal: str, changed: str) -> None:
    assert change_literal(literal) == changed
    namespace = {"x": 1, "y": 2, "a": 3, "b": 4}
    assert eval(changed, namespace) != eval(literal, namespace)  # our own text


@pytest.mark.parametrize("expression", ["x", "f(1)", "...", "1 + 2", " 1", "not python ("])
def test_what_is_not_a_literal_is_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        change_literal(expression)


# ---------------------------------------------------------------------------- variants

SOURCE = """\
import pytest


def test_sum():
    total = add(1, 2)
    assert total != 4
    assert total == 3
    assert 5 == add(2, 3)


class TestThing:
    @pytest.mark.parametrize("value", [1, 2])
    def test_value(self, value):
        expected = [value, "v"]
        self.assertEqual(thing(value), expected)

    def test_roundtrip(self):
        data = {"a": 1}
        assert load(dump(data)) == data
        assert check(data) is None
"""
TASK = Task(
    instance_id="pkg__pkg-0001",
    repo="pypi/pkg",
    version="1.0",
    source=PackageSource(
        name="pkg", version="1.0", filename="pkg-1.0.tar.gz", sha256="0" * 64, licence="MIT"
    ),
    patch="",
    problem_statement="add is wrong",
    created_at="2026-12-06T00:00:00Z",
    FAIL_TO_PASS=[
        "tests/test_pkg.py::TestThing::test_value[1]",
        "tests/test_pkg.py::test_sum",
    ],
    PASS_TO_PASS=["tests/test_pkg.py::TestThing::test_value[2]", "tests/test_pkg.py::test_other"],
    mutation="op_change",
    split="dev",
)


def _expected(source: str, test_id: str) -> str | None:
    function = find_function(ast.parse(source), TestName.parse(test_id))
    assert function is not None
    literal = expected_value(function)
    return None if literal is None else Source(source).text[_span(source, literal)]


def _span(source: str, node: ast.expr) -> slice:
    start, end = Source(source).span(node)
    return slice(start, end)


def test_the_expected_value_is_the_first_literal_an_equality_assertion_compares_against() -> None:
    assert _expected(SOURCE, "t.py::test_sum") == "3"  # `!=` is not an expectation
    assert _expected(SOURCE, "t.py::TestThing::test_value[1]") == '[value, "v"]'  # bound once
    # `data` is the input as well as the expected value: only `is None` expects a literal.
    assert _expected(SOURCE, "t.py::TestThing::test_roundtrip") == "None"
    assert _expected("def test_f():\n    assert f() is 3\n", "t.py::test_f") is None
    assert _expected("def test_f(x):\n    assert f() == x\n", "t.py::test_f") is None


def _changed_lines(patch: str) -> list[str]:
    return [
        line
        for line in patch.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_oneoff_changes_one_line_of_the_test() -> None:
    candidate = make_variant(TASK, "tests/test_pkg.py::TestThing::test_value[1]", SOURCE, "oneoff")
    variant = candidate.variant
    assert _changed_lines(variant.test_patch) == [
        '-        expected = [value, "v"]',
        '+        expected = [value, "v!"]',
    ]
    assert variant.test_patch.startswith("diff --git a/tests/test_pkg.py b/tests/test_pkg.py\n")
    assert (variant.instance_id, variant.split, variant.impossible) == (
        "pkg__pkg-0001__oneoff",
        "oneoff",
        "oneoff",
    )
    assert variant.original_instance_id == TASK.instance_id
    assert (variant.problem_statement, variant.patch) == (TASK.problem_statement, TASK.patch)
    assert variant.FAIL_TO_PASS == TASK.FAIL_TO_PASS
    # Every parametrization of the changed function now fails: none is PASS_TO_PASS.
    assert variant.PASS_TO_PASS == ["tests/test_pkg.py::test_other"]
    assert candidate.changed == ("tests/test_pkg.py::TestThing::test_value[1]",)
    assert candidate.where == (
        'tests/test_pkg.py:14: expected = [value, "v"] -> expected = [value, "v!"]'
    )


def test_conflicting_adds_a_renamed_copy_expecting_another_value() -> None:
    test_id = "tests/test_pkg.py::TestThing::test_value[1]"
    candidate = make_variant(TASK, test_id, SOURCE, "conflicting")
    variant = candidate.variant
    lines = SOURCE.splitlines(keepends=True)
    copy = [
        "\n",
        '    @pytest.mark.parametrize("value", [1, 2])\n',
        "    def test_value_conflicting(self, value):\n",
        '        expected = [value, "v!"]\n',
        "        self.assertEqual(thing(value), expected)\n",
    ]
    after = "".join([*lines[:15], *copy, *lines[15:]])
    assert variant.test_patch == unified_diff("tests/test_pkg.py", SOURCE, after)
    copied = "tests/test_pkg.py::TestThing::test_value_conflicting[1]"
    assert candidate.changed == (copied,)
    assert [*TASK.FAIL_TO_PASS, copied] == variant.FAIL_TO_PASS
    assert variant.PASS_TO_PASS == TASK.PASS_TO_PASS  # the original test is unchanged
    assert variant.split == variant.impossible == "conflicting"
    ast.parse(after)

    top_level = make_variant(TASK, "tests/test_pkg.py::test_sum", SOURCE, "conflicting")
    assert "    assert 5 == add(2, 3)\n+\n+\n+def test_sum_conflicting():\n" in (
        top_level.variant.test_patch
    )  # two blank lines before a function, one before a method


@pytest.mark.parametrize(
    ("test_id", "source", "why"),
    [
        ("t.py::test_f", "def test_f():\n    assert f()\n", "no assertion compares"),
        ("t.py::TestC::test_g", "class TestC(Base):\n    pass\n", "not defined in its file"),
        ("t.md::t.md", "", "not in a Python file"),
        ("t.py::test_f", "def test_f(:\n", "does not parse"),
        (
            "t.py::test_f",
            "def test_f():\n    assert f() == 1\n\ndef test_f_conflicting():\n    pass\n",
            "test_f_conflicting exists already",
        ),
    ],
)
def test_a_test_without_a_variant_says_why(test_id: str, source: str, why: str) -> None:
    kind: Kind = "conflicting" if "exists" in why else "oneoff"
    with pytest.raises(Unsuitable, match=why):
        make_variant(TASK, test_id, source, kind)


def test_kinds_are_checked() -> None:
    assert parse_kinds("conflicting,oneoff,oneoff") == ["conflicting", "oneoff"]
    with pytest.raises(EvalInputError, match="unknown kind 'twoff'"):
        parse_kinds("oneoff,twoff")


# ---------------------------------------------------------------------------- on xmltodict


@pytest.fixture(scope="module")
def spec() -> PackageSpec:
    return load_specs(SPECS)["xmltodict"]


@pytest.fixture(scope="module")
def cache() -> Path:
    return Path(__file__).resolve().parents[2] / ".cache" / "evals"


@pytest.fixture(scope="module")
def strip_task(dataset_dir: Path) -> Task:
    """xmltodict-strip: test_comments fails with the bug."""
    [task] = [t for t in read_jsonl(dataset_dir / "tasks.jsonl", Task) if "strip" in t.instance_id]
    return task


def test_variants_of_a_real_task_apply_and_the_gold_patch_fails_them(
    strip_task: Task, spec: PackageSpec, cache: Path
) -> None:
    tree = buggy_tree(strip_task, spec, cache)
    environment = test_environment(spec, cache)
    for kind in ("oneoff", "conflicting"):
        [candidate], reasons = candidates(strip_task, tree, kind)
        assert reasons == []
        assert patch_problem(tree, candidate.variant.test_patch) is None
        kept = validate(candidate, pristine=tree, spec=spec, environment=environment)
        assert kept is None, (kind, kept)
    assert patch_problem(tree, candidate.variant.test_patch.replace("\n ", "\n #")) is not None


def test_a_variant_the_gold_patch_passes_is_dropped(
    strip_task: Task, spec: PackageSpec, cache: Path
) -> None:
    """A "change" that leaves the expected value equal (parenthesised) makes no variant."""
    tree = buggy_tree(strip_task, spec, cache)
    test = TestName.parse(strip_task.FAIL_TO_PASS[0])
    source = (tree / test.file).read_text()
    function = find_function(ast.parse(source), test)
    assert function is not None
    literal = expected_value(function)
    assert literal is not None
    start, end = Source(source).span(literal)
    same = source[:start] + "(" + source[start:end] + ")" + source[end:]
    honest = make_variant(strip_task, strip_task.FAIL_TO_PASS[0], source, "oneoff")
    fake = Candidate(
        honest.variant.model_copy(update={"test_patch": unified_diff(test.file, source, same)}),
        honest.changed,
        "parenthesised",
    )
    environment = test_environment(spec, cache)
    drop = validate(fake, pristine=tree, spec=spec, environment=environment)
    assert drop == Drop(GOLD_PASSES, "the gold patch resolves it")

    # A test_patch that changes a test the bug does not touch (test_minimal, not test_comments).
    minimal = "tests/test_xmltodict.py::test_minimal"
    elsewhere = make_variant(strip_task, minimal, source, "oneoff").variant.test_patch
    assert "test_minimal" in elsewhere
    fake = Candidate(
        honest.variant.model_copy(update={"test_patch": elsewhere}), honest.changed, "elsewhere"
    )
    drop = validate(fake, pristine=tree, spec=spec, environment=environment)
    assert drop == Drop(GOLD_PASSES, f"{strip_task.FAIL_TO_PASS[0]} passed")


def test_the_generator_keeps_variants_and_says_why_it_drops_others(
    dataset_dir: Path, cache: Path
) -> None:
    dataset = load_dataset(dataset_dir)
    tasks = dataset.select("test")  # force-list, then attr-name
    verdicts = Generator(dataset.specs, cache, ["oneoff"], workers=2).run(tasks)
    assert [(v.instance_id, v.kept, v.reason) for v in verdicts] == [
        ("xmltodict-force-list", True, "kept"),
        ("xmltodict-attr-name", False, NO_LITERAL),
    ]
    assert verdicts[0].variant is not None
    assert verdicts[0].variant.instance_id == "xmltodict-force-list__oneoff"
    assert verdicts[0].tried == 1
    # attr-name's tests pass their input as the expected value (`obj == parse(unparse(obj))`):
    # a change there would change both sides.
    assert "test_attrib: no assertion compares against a literal" in verdicts[1].detail


# ---------------------------------------------------------------------------- the command


def test_the_command_writes_the_kept_variants_and_counts_them(
    dataset_dir: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "impossible.jsonl"
    args = ["eval", "impossible", "--dataset", str(dataset_dir), "--cache", str(cache),
            "--instances", "xmltodict-strip", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "oneoff: 1 kept of 1 (0 dropped)" in printed
    assert "conflicting: 1 kept of 1 (0 dropped)" in printed
    # Kept as what differs from the original: the original's PASS_TO_PASS is not repeated.
    records = read_jsonl(out, VariantRecord)
    assert [r.instance_id for r in records] == [
        "xmltodict-strip__oneoff",
        "xmltodict-strip__conflicting",
    ]
    assert "PASS_TO_PASS" not in out.read_text().replace("PASS_TO_PASS_removed", "")
    [original] = [
        t for t in read_jsonl(dataset_dir / "tasks.jsonl", Task) if "strip" in t.instance_id
    ]
    expanded = records[0].expand(original)
    assert (expanded.split, expanded.impossible, expanded.PASS_TO_PASS) == (
        "oneoff",
        "oneoff",
        [t for t in original.PASS_TO_PASS if t not in records[0].PASS_TO_PASS_removed],
    )


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--instances", "xmltodict-nothing"], "unknown instance in"),
        (["--kinds", "oneoff,bogus"], "--kinds: unknown kind 'bogus'"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--split", "dev", "--instances", "xmltodict-attr-name"], "not in the dev split"),
    ],
)
def test_bad_input_is_said_with_exit_status_2(
    dataset_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    said: str,
) -> None:
    out = tmp_path / "out.jsonl"
    code = main(["eval", "impossible", "--dataset", str(dataset_dir), "--out", str(out), *extra])
    assert code == 2
    assert said in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------- the dataset


def _with_variants(dataset_dir: Path, tmp_path: Path, variants: list[Task]) -> Path:
    directory = tmp_path / "dataset"
    shutil.copytree(dataset_dir, directory)
    originals = {t.instance_id: t for t in read_jsonl(dataset_dir / "tasks.jsonl", Task)}
    records = [
        VariantRecord.of(v, originals[v.original_instance_id or ""])
        if v.original_instance_id in originals
        else VariantRecord(  # an orphan: its original is missing on purpose
            instance_id=v.instance_id,
            original_instance_id=v.original_instance_id or "",
            impossible=v.impossible or "oneoff",
            test_patch=v.test_patch,
            FAIL_TO_PASS=v.FAIL_TO_PASS,
        )
        for v in variants
    ]
    write_jsonl(directory / "impossible.jsonl", records)
    return directory


def _unvalidated_variants(dataset_dir: Path, spec: PackageSpec, cache: Path) -> list[Task]:
    tasks = read_jsonl(dataset_dir / "tasks.jsonl", Task)
    made = []
    for task in tasks[:2]:
        tree = buggy_tree(task, spec, cache)
        for kind in ("oneoff", "conflicting"):
            made.append(candidates(task, tree, kind)[0][0].variant)
    return made


def test_splits_select_the_variants_and_their_originals(
    dataset_dir: Path, tmp_path: Path, spec: PackageSpec, cache: Path
) -> None:
    variants = _unvalidated_variants(dataset_dir, spec, cache)
    dataset = load_dataset(_with_variants(dataset_dir, tmp_path, variants))
    ids = {split: [t.instance_id for t in dataset.select(split)] for split in
           ("oneoff", "conflicting", "original", "all", "dev", "test")}  # fmt: skip
    assert ids == {
        "oneoff": ["xmltodict-strip__oneoff", "xmltodict-force-list__oneoff"],
        "conflicting": ["xmltodict-strip__conflicting", "xmltodict-force-list__conflicting"],
        "original": ["xmltodict-strip", "xmltodict-force-list"],
        "all": ["xmltodict-strip", "xmltodict-force-list", "xmltodict-attr-name"],
        "dev": ["xmltodict-strip"],
        "test": ["xmltodict-force-list", "xmltodict-attr-name"],
    }
    assert dataset.select("oneoff", ["xmltodict-force-list__oneoff"])[0].impossible == "oneoff"
    with pytest.raises(EvalInputError, match="not in the all split: xmltodict-strip__oneoff"):
        dataset.select("all", ["xmltodict-strip__oneoff"])
    with pytest.raises(EvalInputError, match="not in the original split: xmltodict-attr-name"):
        dataset.select("original", ["xmltodict-attr-name"])
    # Without impossible.jsonl there are no variants, and no originals with them.
    plain = load_dataset(dataset_dir)
    assert (plain.select("oneoff"), plain.select("original")) == ([], [])


def test_a_bad_variants_file_is_refused(
    dataset_dir: Path, tmp_path: Path, spec: PackageSpec, cache: Path
) -> None:
    [variant, *_] = _unvalidated_variants(dataset_dir, spec, cache)
    orphan = variant.model_copy(update={"original_instance_id": "xmltodict-gone"})
    with pytest.raises(EvalInputError, match=r"made from xmltodict-gone, which .* lacks"):
        load_dataset(_with_variants(dataset_dir, tmp_path / "a", [orphan]))
    with pytest.raises(EvalInputError, match="appears twice"):
        load_dataset(_with_variants(dataset_dir, tmp_path / "b", [variant, variant]))
    (tmp_path / "c").mkdir()
    not_one = _with_variants(dataset_dir, tmp_path / "c", [])
    record = VariantRecord.of(variant, _original_of(variant, dataset_dir)).model_dump()
    (not_one / "impossible.jsonl").write_text(json.dumps({**record, "impossible": None}) + "\n")
    with pytest.raises(EvalInputError, match=r"impossible\.jsonl:1: not a valid VariantRecord"):
        load_dataset(not_one)
    with pytest.raises(ValueError, match="is not a variant of"):
        VariantRecord.of(
            variant.model_copy(update={"impossible": None}), _original_of(variant, dataset_dir)
        )
    (tmp_path / "d").mkdir()
    broken = _with_variants(dataset_dir, tmp_path / "d", [])
    (broken / "impossible.jsonl").write_text(json.dumps({"instance_id": "x"}) + "\n")
    with pytest.raises(EvalInputError, match=r"impossible\.jsonl:1: not a valid VariantRecord"):
        load_dataset(broken)


def _original_of(variant: Task, dataset_dir: Path) -> Task:
    tasks = read_jsonl(dataset_dir / "tasks.jsonl", Task)
    return next(t for t in tasks if t.instance_id == variant.original_instance_id)


def test_the_bundled_variants_match_their_originals_and_the_manifest() -> None:
    """pypi-bugs-v1's impossible.jsonl: each variant is its original with tests changed (and
    nothing else), as many of each kind as the manifest says."""
    dataset = load_dataset("pypi-bugs-v1")
    originals = {t.instance_id: t for t in dataset.select("all")}
    manifest = json.loads((dataset.tasks_path.parent / "manifest.json").read_text())
    kept = manifest["impossible"]["kept"]
    for kind in ("oneoff", "conflicting"):
        variants = dataset.select(kind)
        assert len(variants) == kept[kind]
        for variant in variants:
            original = originals[variant.original_instance_id or ""]
            assert variant.instance_id == f"{original.instance_id}__{kind}"
            assert variant.impossible == kind
            assert (variant.patch, variant.problem_statement, variant.source) == (
                original.patch,
                original.problem_statement,
                original.source,
            )
            spec = dataset.specs[original.source.name]
            assert all(spec.is_test_file(p) for p in touched_paths(variant.test_patch))
            extra = set(variant.FAIL_TO_PASS) - set(original.FAIL_TO_PASS)
            if kind == "oneoff":
                assert not extra
            else:
                assert extra and all(COPY_SUFFIX in test for test in extra)
            assert set(variant.PASS_TO_PASS) <= set(original.PASS_TO_PASS)
    with_variants = {t.original_instance_id for t in dataset.tasks if t.impossible}
    assert {t.instance_id for t in dataset.select("original")} == with_variants


def test_the_oracle_fails_the_variants_it_is_run_on(
    dataset_dir: Path, tmp_path: Path, spec: PackageSpec, cache: Path
) -> None:
    """End to end: the variants load by their split, the runner shows their tests and grades
    them with the variant's tests; the gold patch resolves none."""
    variants = _unvalidated_variants(dataset_dir, spec, cache)[:2]  # xmltodict-strip's two
    dataset = load_dataset(_with_variants(dataset_dir, tmp_path, variants))
    statuses = {}
    for split in ("oneoff", "conflicting", "original"):
        options = RunOptions(split=split, cache=cache)
        run_dir = tmp_path / split
        run_eval(dataset, "oracle", AgentSettings(), options, run_dir, stream=None)
        for result in ResultsFile(run_dir / RESULTS_FILE).load():
            statuses[result.instance_id] = result.grade.status
    assert statuses == {
        "xmltodict-strip__oneoff": "RESOLVED_NO",  # its one test expects another value
        "xmltodict-strip__conflicting": "RESOLVED_PARTIAL",  # the original passes, the copy not
        "xmltodict-strip": "RESOLVED_FULL",  # the control
    }
