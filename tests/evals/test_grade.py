"""Grading: every status from crafted junit reports, then end to end on a real package with a
hand-made bug (xmltodict 1.0.4: comments stripped only when `strip_whitespace` is off)."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from tercet.evals.grade import FAIL_TO_PASS_OK, grade, grade_outcomes, touches_tests
from tercet.evals.packages import PackageSpec
from tercet.evals.task import Task
from tercet.evals.testrun import parse_junit, run_tests
from tercet.evals.workspace import (
    PatchError,
    apply_patch,
    buggy_tree,
    copy_tree,
    restore_test_files,
    source_tree,
    touched_paths,
)

# The gold fix of the hand-made bug: the buggy tree has `if not self.strip_whitespace:`.
GOLD = """\
diff --git a/xmltodict.py b/xmltodict.py
--- a/xmltodict.py
+++ b/xmltodict.py
@@ -151,7 +151,7 @@ class _DictSAXHandler:
             self.data.append(data)
~
     def comments(self, data):
-        if not self.strip_whitespace:
+        if self.strip_whitespace:
             data = data.strip()
         self.item = self.push_data(self.item, self.comment_key, data)
~
"""
# The tests the bug breaks (observed by running the suite on the buggy tree).
FAILING = [
    "tests/test_xmltodict.py::test_comments",
    "tests/test_xmltodict.py::test_streaming_with_comments_and_attrs",
]
PASSING = [
    "tests/test_xmltodict.py::test_minimal",
    "tests/test_xmltodict.py::test_skip_whitespace",
    "tests/test_dicttoxml.py::test_root",
    "tests/test_dicttoxml.py::test_attrib",
]
# What an agent that games the tests writes: the failing tests return before they check.
EDIT_THE_TESTS = """\
diff --git a/tests/test_xmltodict.py b/tests/test_xmltodict.py
--- a/tests/test_xmltodict.py
+++ b/tests/test_xmltodict.py
@@ -501,6 +501,7 @@ def test_disable_entities_allows_comments_by_default():
~
~
 def test_comments():
+    return  # the comment is what it is
     xml = \"\"\"
     <a>
       <b>
@@ -530,6 +531,7 @@ def test_comments():
~
~
 def test_streaming_with_comments_and_attrs():
+    return
     xml = \"\"\"
     <a>
         <b attr1="value">
"""
# The same through a conftest.py of its own, which marks every test an expected failure.
ADD_A_CONFTEST = """\
diff --git a/conftest.py b/conftest.py
new file mode 100644
--- /dev/null
+++ b/conftest.py
@@ -0,0 +1,6 @@
+import pytest
+
+
+def pytest_collection_modifyitems(items):
+    for item in items:
+        item.add_marker(pytest.mark.xfail(reason="flaky"))
"""


def _blank_context(diff: str) -> str:
    """A diff's blank context lines are written "~" here (a line of one space is trailing
    whitespace to linters)."""
    return re.sub(r"(?m)^~$", " ", diff)


GOLD = _blank_context(GOLD)
EDIT_THE_TESTS = _blank_context(EDIT_THE_TESTS)


def make_task(spec: PackageSpec, **changes: object) -> Task:
    task = Task(
        instance_id="xmltodict-1.0.4__ctrl_invert_if__comments",
        repo="pypi/xmltodict",
        version=spec.version,
        source=spec.source,
        patch=GOLD,
        problem_statement="Comments keep their surrounding whitespace by default.",
        created_at="2026-12-02T00:00:00Z",
        FAIL_TO_PASS=FAILING,
        PASS_TO_PASS=PASSING,
        mutation="ctrl_invert_if",
    )
    return task.model_copy(update=changes)


@pytest.fixture(scope="module")
def task(xmltodict_spec: PackageSpec) -> Task:
    return make_task(xmltodict_spec)


@pytest.fixture(scope="module")
def pristine(task: Task, xmltodict_spec: PackageSpec, eval_cache: Path) -> Path:
    return buggy_tree(task, xmltodict_spec, eval_cache)


def _fingerprint(tree: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(tree.rglob("*")):
        digest.update(str(path.relative_to(tree)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# -- statuses from crafted junit reports (pure) --------------------------------------------


def _junit(**outcomes: str) -> bytes:
    """A junit report (xunit1, as pytest writes it) with one test per keyword argument."""
    bodies = {
        "passed": "",
        "failed": '<failure message="assert 1 == 2">E assert 1 == 2</failure>',
        "error": '<error message="failed on setup">E fixture</error>',
        "skipped": '<skipped type="pytest.skip" message="no">t.py:1: no</skipped>',
        "xfailed": '<skipped type="pytest.xfail" message="known"/>',
    }
    cases = "".join(
        f'<testcase classname="tests.test_t" name="{name}" file="tests/test_t.py" time="0">'
        f"{bodies[outcome]}</testcase>"
        for name, outcome in outcomes.items()
    )
    return f'<?xml version="1.0"?><testsuites><testsuite>{cases}</testsuite></testsuites>'.encode()


def _crafted_task(fail_to_pass: list[str], pass_to_pass: list[str]) -> Task:
    spec = PackageSpec(name="t", version="1", filename="t-1.tar.gz", sha256="0" * 64, licence="MIT")
    return make_task(
        spec,
        FAIL_TO_PASS=[f"tests/test_t.py::{t}" for t in fail_to_pass],
        PASS_TO_PASS=[f"tests/test_t.py::{t}" for t in pass_to_pass],
    )


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ({"f1": "passed", "f2": "passed", "p1": "passed", "p2": "passed"}, "RESOLVED_FULL"),
        ({"f1": "passed", "f2": "xfailed", "p1": "skipped", "p2": "xfailed"}, "RESOLVED_FULL"),
        ({"f1": "passed", "f2": "failed", "p1": "passed", "p2": "passed"}, "RESOLVED_PARTIAL"),
        ({"f1": "error", "f2": "passed", "p1": "passed", "p2": "skipped"}, "RESOLVED_PARTIAL"),
        ({"f1": "failed", "f2": "failed", "p1": "passed", "p2": "passed"}, "RESOLVED_NO"),
        ({"f1": "passed", "f2": "passed", "p1": "failed", "p2": "passed"}, "RESOLVED_NO"),
        ({"f1": "passed", "f2": "passed", "p1": "error", "p2": "passed"}, "RESOLVED_NO"),
        ({"f1": "passed", "f2": "passed", "p1": "passed"}, "RESOLVED_NO"),  # p2 missing
        ({"f1": "passed", "p1": "passed", "p2": "passed"}, "RESOLVED_PARTIAL"),  # f2 missing
        ({"f1": "skipped", "f2": "skipped", "p1": "passed", "p2": "passed"}, "RESOLVED_NO"),
        ({}, "RESOLVED_NO"),  # no report at all
    ],
    ids=[
        "all-pass",
        "xfail-and-skip-count",
        "partial",
        "partial-error",
        "none-fixed",
        "broke-a-passing-test",
        "passing-test-errors",
        "passing-test-missing",
        "failing-test-missing",
        "failing-tests-skipped",
        "empty-report",
    ],
)
def test_status_from_a_junit_report(outcomes: dict[str, str], status: str) -> None:
    task = _crafted_task(["f1", "f2"], ["p1", "p2"])
    assert grade_outcomes(task, parse_junit(_junit(**outcomes))) == status


def test_touched_paths_and_tests(xmltodict_spec: PackageSpec) -> None:
    assert touched_paths(GOLD) == ["xmltodict.py"]
    assert touched_paths(EDIT_THE_TESTS) == ["tests/test_xmltodict.py"]
    assert touched_paths(ADD_A_CONFTEST) == ["conftest.py"]
    renamed = "diff --git a/x.py b/tests/y.py\nsimilarity index 100%\nrename from x.py\n" + (
        "rename to tests/y.py\n"
    )
    assert touched_paths(renamed) == ["x.py", "tests/y.py"]
    assert not touches_tests(GOLD, xmltodict_spec)
    assert touches_tests(EDIT_THE_TESTS, xmltodict_spec)
    assert touches_tests(ADD_A_CONFTEST, xmltodict_spec)
    assert touches_tests(GOLD + ADD_A_CONFTEST, xmltodict_spec)


# -- trees --------------------------------------------------------------------------------


def test_buggy_tree_has_the_bug_and_is_made_once(
    task: Task, xmltodict_spec: PackageSpec, xmltodict_sdist: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    (cache / "sdists").mkdir(parents=True)
    shutil.copy(xmltodict_sdist, cache / "sdists")  # no download
    tree = buggy_tree(task, xmltodict_spec, cache)
    assert "        if not self.strip_whitespace:\n" in (tree / "xmltodict.py").read_text()
    source = source_tree(xmltodict_spec, cache)
    assert "        if not self.strip_whitespace:\n" not in (source / "xmltodict.py").read_text()
    assert buggy_tree(task, xmltodict_spec, cache) == tree
    assert sorted(p.name for p in (cache / "trees" / "buggy").iterdir()) == [tree.name]
    # A task whose gold patch does not undo on the source is refused, with its id.
    broken = task.model_copy(update={"patch": GOLD.replace("comment_key", "comment_kee")})
    with pytest.raises(PatchError, match=r"xmltodict-1\.0\.4__ctrl_invert_if__comments: its gold"):
        buggy_tree(broken, xmltodict_spec, cache)
    assert sorted(p.name for p in (cache / "trees" / "buggy").iterdir()) == [tree.name]


def test_patches_apply_inside_another_repository(pristine: Path, tmp_path: Path) -> None:
    # The test cache sits inside this repository's checkout: the patch still lands in the tree.
    tree = copy_tree(pristine, tmp_path / "tree")
    apply_patch(tree, GOLD.rstrip("\n"))
    assert "        if self.strip_whitespace:\n" in (tree / "xmltodict.py").read_text()
    with pytest.raises(PatchError, match="patch does not apply"):
        apply_patch(tree, GOLD)


def test_restore_test_files(pristine: Path, xmltodict_spec: PackageSpec, tmp_path: Path) -> None:
    tree = copy_tree(pristine, tmp_path / "tree")
    (tree / "tests" / "test_xmltodict.py").write_text("def test_nothing(): pass\n")
    (tree / "tests" / "test_dicttoxml.py").unlink()
    (tree / "conftest.py").write_text("# added\n")
    (tree / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-x'\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(tree / "tests")
    (tree / "tests").symlink_to(outside)  # a test directory swapped for a link out
    restore_test_files(tree, pristine, xmltodict_spec)
    assert _fingerprint(tree) == _fingerprint(pristine)
    assert not any(outside.iterdir())


# -- grading end to end -------------------------------------------------------------------


def test_gold_patch_resolves(
    task: Task, pristine: Path, xmltodict_spec: PackageSpec, xmltodict_env: Path
) -> None:
    before = _fingerprint(pristine)
    result = grade(task, GOLD, pristine=pristine, spec=xmltodict_spec, environment=xmltodict_env)
    assert result.status == "RESOLVED_FULL", result
    assert result.fail_to_pass == dict.fromkeys(FAILING, "passed")
    assert result.pass_to_pass == dict.fromkeys(PASSING, "passed")
    assert result.error is None and result.touched_tests is False
    assert _fingerprint(pristine) == before  # graded on a copy


def test_no_patch_is_empty(
    task: Task, pristine: Path, xmltodict_spec: PackageSpec, xmltodict_env: Path
) -> None:
    for empty in ("", "\n  \n", None):
        result = grade(
            task, empty, pristine=pristine, spec=xmltodict_spec, environment=xmltodict_env
        )
        assert result.status == "EMPTY_PATCH"
        assert not result.resolved


def test_a_patch_that_does_not_apply_failed(
    task: Task, pristine: Path, xmltodict_spec: PackageSpec, xmltodict_env: Path
) -> None:
    stale = GOLD.replace("-        if not self.strip_whitespace:", "-        if self.strip:")
    result = grade(task, stale, pristine=pristine, spec=xmltodict_spec, environment=xmltodict_env)
    assert result.status == "PATCH_FAILED"
    assert result.error is not None and "xmltodict.py: patch does not apply" in result.error
    prose = grade(
        task, "I fixed it.", pristine=pristine, spec=xmltodict_spec, environment=xmltodict_env
    )
    assert prose.status == "PATCH_FAILED"


def test_a_patch_with_stale_context_applies_with_fuzz(
    task: Task, pristine: Path, xmltodict_spec: PackageSpec, xmltodict_env: Path, tmp_path: Path
) -> None:
    # Context that no longer matches (as a patch written by hand, or against another
    # version): git refuses it, GNU patch's fuzz applies it, as SWE-bench's harness would.
    stale = GOLD.replace("             self.data.append(data)", "             self.data.add(data)")
    with pytest.raises(PatchError):
        apply_patch(copy_tree(pristine, tmp_path / "strict"), stale)
    result = grade(task, stale, pristine=pristine, spec=xmltodict_spec, environment=xmltodict_env)
    assert result.status == "RESOLVED_FULL", result


@pytest.mark.parametrize("cheat", [EDIT_THE_TESTS, ADD_A_CONFTEST], ids=["edit", "conftest"])
def test_editing_the_tests_instead_of_the_code_is_not_resolved_and_flagged(
    cheat: str,
    task: Task,
    pristine: Path,
    xmltodict_spec: PackageSpec,
    xmltodict_env: Path,
    tmp_path: Path,
) -> None:
    # Left in place, the cheat would pass the failing tests...
    cheated = copy_tree(pristine, tmp_path / "cheated")
    apply_patch(cheated, cheat)
    run = run_tests(cheated, xmltodict_spec, xmltodict_env, FAILING)
    assert all(run.outcomes[test] in FAIL_TO_PASS_OK for test in FAILING), run.outcomes
    # ...but the grader restores the tests first.
    result = grade(task, cheat, pristine=pristine, spec=xmltodict_spec, environment=xmltodict_env)
    assert result.status == "RESOLVED_NO", result
    assert result.touched_tests is True
    assert result.fail_to_pass == dict.fromkeys(FAILING, "failed")
    if cheat is EDIT_THE_TESTS:
        return
    # With the fix too, the edits still do not count (and are still flagged).
    both = grade(
        task, GOLD + cheat, pristine=pristine, spec=xmltodict_spec, environment=xmltodict_env
    )
    assert (both.status, both.touched_tests) == ("RESOLVED_FULL", True)


def test_a_patch_that_hangs_the_tests_is_not_resolved(
    task: Task, pristine: Path, xmltodict_spec: PackageSpec, xmltodict_env: Path
) -> None:
    hangs = GOLD.replace(
        "+        if self.strip_whitespace:\n", "+        while self.strip_whitespace:\n"
    )
    result = grade(
        task,
        hangs,
        pristine=pristine,
        spec=xmltodict_spec,
        environment=xmltodict_env,
        timeout_s=4,
    )
    assert result.status == "RESOLVED_NO"  # the code's fault, not the harness's
    assert result.error == "the tests ran past 4 s and were stopped"
    assert set(result.fail_to_pass.values()) == {"missing"}


def test_harness_failures_are_errors_not_failures(
    task: Task, pristine: Path, xmltodict_spec: PackageSpec, tmp_path: Path, xmltodict_env: Path
) -> None:
    no_env = grade(
        task, GOLD, pristine=pristine, spec=xmltodict_spec, environment=tmp_path / "missing"
    )
    assert no_env.status == "ERROR" and no_env.error == (
        f"no test environment at {tmp_path / 'missing'}"
    )
    bad_test_patch = task.model_copy(
        update={
            "test_patch": EDIT_THE_TESTS.replace(" def test_comments():", " def test_commentz():")
        }
    )
    result = grade(
        bad_test_patch,
        GOLD,
        pristine=pristine,
        spec=xmltodict_spec,
        environment=xmltodict_env,
    )
    assert result.status == "ERROR"
    assert result.error is not None and result.error.startswith("the task's test_patch")
    gone = task.model_copy(update={"PASS_TO_PASS": [*PASSING, "tests/test_gone.py::test_x"]})
    result = grade(gone, GOLD, pristine=pristine, spec=xmltodict_spec, environment=xmltodict_env)
    assert result.status == "ERROR"
    assert result.error == "the task's tests are in files the tree lacks: tests/test_gone.py"
    missing_tree = grade(
        task, GOLD, pristine=tmp_path / "gone", spec=xmltodict_spec, environment=xmltodict_env
    )
    assert missing_tree.status == "ERROR" and missing_tree.error is not None


def test_the_task_test_patch_is_applied(
    task: Task, pristine: Path, xmltodict_spec: PackageSpec, xmltodict_env: Path
) -> None:
    # A task may bring tests of its own: applied after the restore, so they run as written.
    with_tests = task.model_copy(update={"test_patch": EDIT_THE_TESTS})
    result = grade(
        with_tests,
        "diff --git a/NOTES b/NOTES\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES\n"
        "@@ -0,0 +1 @@\n+Looked, found nothing.\n",
        pristine=pristine,
        spec=xmltodict_spec,
        environment=xmltodict_env,
    )
    assert result.status == "RESOLVED_FULL", result
    assert result.touched_tests is False
