"""Running tests in the sandbox and reading their outcomes from junit XML: a real package's
suite, a crafted suite with every outcome and awkward IDs, and junit files parsed alone."""

from __future__ import annotations

import os
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tercet.evals.environments import (
    BASE_REQUIREMENTS,
    ID_PLUGIN,
    environment_key,
    test_environment,
)
from tercet.evals.packages import PackageSpec
from tercet.evals.testrun import files_of, node_id, parse_junit, parse_junit_report, run_tests
from tercet.sandbox import runner

SANDBOXED = runner.unavailable_reason() is None

CRAFTED_TESTS = """\
import time

import pytest

import crafted


@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown boom")


@pytest.mark.parametrize("value", ["a b", "x::y", "c[d]", "tab\\there"])
def test_param(value):
    assert crafted.same(value) != "c[d]"


class TestGroup:
    def test_ok(self):
        pass

    @pytest.mark.xfail(reason="known")
    def test_xfail(self):
        assert 0

    @pytest.mark.xfail(reason="not any more")
    def test_xpass(self):
        pass

    @pytest.mark.xfail(strict=True)
    def test_xpass_strict(self):
        pass

    class TestInner:
        def test_inner(self):
            assert crafted.same(1) == 2, "one is not two"


def test_skip():
    pytest.skip("not here")


def test_teardown_error(bad_teardown):
    pass


def test_setup_error(no_such_fixture):
    pass


def test_slow():
    time.sleep(float(crafted.SLEEP))
"""

CRAFTED_EXPECTED = {
    "tests/test_crafted.py::test_param[a b]": "passed",
    "tests/test_crafted.py::test_param[x::y]": "passed",
    "tests/test_crafted.py::test_param[c[d]]": "failed",
    "tests/test_crafted.py::test_param[tab\\there]": "passed",
    "tests/test_crafted.py::TestGroup::test_ok": "passed",
    "tests/test_crafted.py::TestGroup::test_xfail": "xfailed",
    "tests/test_crafted.py::TestGroup::test_xpass": "xpassed",
    "tests/test_crafted.py::TestGroup::test_xpass_strict": "failed",
    "tests/test_crafted.py::TestGroup::TestInner::test_inner": "failed",
    "tests/test_crafted.py::test_skip": "skipped",
    "tests/test_crafted.py::test_teardown_error": "error",
    "tests/test_crafted.py::test_setup_error": "error",
    "tests/test_crafted.py::test_slow": "passed",
    "tests/test_other.py::test_other": "passed",
}


def crafted_spec(**changes: object) -> PackageSpec:
    spec = PackageSpec(
        name="crafted",
        version="0",
        filename="crafted-0.tar.gz",
        sha256="0" * 64,
        licence="MIT",
        import_root="src",
    )
    return spec.model_copy(update=changes)


@pytest.fixture
def crafted_tree(tmp_path: Path) -> Path:
    """A src-layout package whose suite has every outcome and IDs with spaces and brackets."""
    root = tmp_path / "crafted-0"
    (root / "src" / "crafted").mkdir(parents=True)
    (root / "src" / "crafted" / "__init__.py").write_text(
        "SLEEP = 0\n\ndef same(value):\n    return value\n"
    )
    (root / "tests").mkdir()
    (root / "tests" / "test_crafted.py").write_text(CRAFTED_TESTS)
    (root / "tests" / "test_other.py").write_text("def test_other():\n    pass\n")
    return root


def test_environment_holds_pinned_pytest_and_the_id_plugin(
    xmltodict_spec: PackageSpec, xmltodict_env: Path, eval_cache: Path
) -> None:
    assert xmltodict_env.name == f"xmltodict-{environment_key(xmltodict_spec)}"
    site = next(xmltodict_env.glob("lib/python*/site-packages"))
    assert (site / f"{ID_PLUGIN}.py").is_file()
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert installed == {r.split("==")[0] for r in BASE_REQUIREMENTS}
    assert not (site / "xmltodict.py").exists()  # the package under test is never installed
    assert "pytest-9.2.0.dist-info" in {p.name for p in site.glob("*.dist-info")}
    # Built once: the same spec finds it; other requirements get their own.
    assert test_environment(xmltodict_spec, eval_cache) == xmltodict_env
    other = xmltodict_spec.model_copy(update={"test_deps": ["six==1.17.0"]})
    assert environment_key(other) != environment_key(xmltodict_spec)


def test_environment_is_built_whole_once_even_when_two_build_it(
    xmltodict_spec: PackageSpec, tmp_path: Path
) -> None:
    killed = tmp_path / "envs" / ".building-xmltodict-killed"  # what a killed build leaves
    (killed / "bin").mkdir(parents=True)
    long_ago = tmp_path / "envs" / ".building-xmltodict-long-ago"  # swept away
    long_ago.mkdir()
    os.utime(long_ago, (0, 0))
    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda _: test_environment(xmltodict_spec, tmp_path), range(2)))
    assert built[0] == built[1] == tmp_path / "envs" / built[0].name
    assert (built[0] / "bin" / "python").exists()
    assert sorted(p.name for p in (tmp_path / "envs").iterdir()) == sorted(
        [built[0].name, killed.name]
    )


def test_real_suite_passes_in_the_sandbox(
    xmltodict_spec: PackageSpec, xmltodict_env: Path, xmltodict_tree: Path
) -> None:
    before = sorted(p.relative_to(xmltodict_tree) for p in xmltodict_tree.rglob("*"))
    run = run_tests(xmltodict_tree, xmltodict_spec, xmltodict_env)
    assert run.error is None and run.problem is None, run.output
    assert run.sandboxed is SANDBOXED
    assert len(run.outcomes) == 119
    assert set(run.outcomes.values()) == {"passed"}
    assert "tests/test_xmltodict.py::test_minimal" in run.outcomes
    assert "119 passed" in run.output
    # The run leaves nothing in the tree: no report, no caches, no bytecode.
    assert sorted(p.relative_to(xmltodict_tree) for p in xmltodict_tree.rglob("*")) == before


def test_selected_tests_run_their_files(
    xmltodict_spec: PackageSpec, xmltodict_env: Path, xmltodict_tree: Path
) -> None:
    run = run_tests(
        xmltodict_tree,
        xmltodict_spec,
        xmltodict_env,
        ["tests/test_xmltodict.py::test_minimal", "tests/test_xmltodict.py::test_simple"],
    )
    assert run.outcomes and all(k.startswith("tests/test_xmltodict.py::") for k in run.outcomes)
    assert run.outcomes["tests/test_xmltodict.py::test_simple"] == "passed"


def test_crafted_suite_every_outcome_and_awkward_ids(
    crafted_tree: Path, xmltodict_env: Path
) -> None:
    run = run_tests(crafted_tree, crafted_spec(), xmltodict_env)
    assert run.error is None and run.problem is None, run.output
    assert run.return_code == 1
    assert run.outcomes == CRAFTED_EXPECTED
    failure = run.junit_failures["tests/test_crafted.py::TestGroup::TestInner::test_inner"]
    assert "one is not two" in failure and "assert 1 == 2" in failure
    assert "teardown boom" in run.junit_failures["tests/test_crafted.py::test_teardown_error"]
    assert "no_such_fixture" in run.junit_failures["tests/test_crafted.py::test_setup_error"]
    assert set(run.junit_failures) == {
        k for k, v in CRAFTED_EXPECTED.items() if v in {"failed", "error"}
    }


def test_without_the_sandbox_it_runs_directly_and_says_so(
    crafted_tree: Path,
    xmltodict_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(runner, "unavailable_reason", lambda: "no bubblewrap here")
    run = run_tests(
        crafted_tree, crafted_spec(), xmltodict_env, ["tests/test_other.py::test_other"]
    )
    assert run.sandboxed is False
    assert run.output.startswith("[not sandboxed: no bubblewrap here]")
    assert "outside the sandbox: no bubblewrap here" in caplog.text
    assert run.outcomes == {"tests/test_other.py::test_other": "passed"}


def test_a_suite_that_runs_too_long_is_stopped(crafted_tree: Path, xmltodict_env: Path) -> None:
    (crafted_tree / "src" / "crafted" / "__init__.py").write_text(
        "SLEEP = 600\n\ndef same(value):\n    return value\n"
    )
    run = run_tests(crafted_tree, crafted_spec(), xmltodict_env, timeout_s=3)
    assert run.timed_out and run.error is None
    assert run.problem == "the tests ran past 3 s and were stopped"
    assert run.outcomes == {}
    assert run.seconds < 60


def test_code_that_breaks_conftest_is_a_problem_not_a_harness_error(
    crafted_tree: Path, xmltodict_env: Path
) -> None:
    (crafted_tree / "conftest.py").write_text("import crafted\n")
    (crafted_tree / "src" / "crafted" / "__init__.py").write_text("def same(value:\n")
    run = run_tests(crafted_tree, crafted_spec(), xmltodict_env)
    assert run.error is None
    assert run.outcomes == {}
    assert run.problem is not None and "before writing its report" in run.problem
    assert "SyntaxError" in run.output


def test_test_files_not_in_the_tree_are_left_out(crafted_tree: Path, xmltodict_env: Path) -> None:
    spec = crafted_spec()
    run = run_tests(
        crafted_tree, spec, xmltodict_env, ["tests/test_other.py::test_other", "tests/gone.py::t"]
    )
    assert run.outcomes == {"tests/test_other.py::test_other": "passed"}
    assert run.problem == "test files not in the tree: tests/gone.py"
    none = run_tests(crafted_tree, spec, xmltodict_env, ["tests/gone.py::t"])
    assert (none.outcomes, none.problem) == ({}, "no test files to run (tests/gone.py)")


def test_a_missing_environment_is_a_harness_error(crafted_tree: Path, tmp_path: Path) -> None:
    run = run_tests(crafted_tree, crafted_spec(), tmp_path / "no-env")
    assert run.error == f"no test environment at {tmp_path / 'no-env'}"


def test_an_environment_whose_pytest_cannot_start_is_a_harness_error(
    crafted_tree: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-env"
    (broken / "bin").mkdir(parents=True)
    (broken / "bin" / "python").write_text("#!/bin/sh\necho 'no pytest here' >&2\nexit 1\n")
    (broken / "bin" / "python").chmod(0o755)
    run = run_tests(crafted_tree, crafted_spec(), broken)
    assert run.problem is None and run.outcomes == {}
    assert run.error is not None
    assert run.error.startswith("pytest did not run: `python -m pytest --version` failed (exit 1)")
    assert "no pytest here" in run.error


def test_files_of() -> None:
    assert files_of(["a.py::t[x::y]", "b.py::C::t", "a.py::u", "c.md::c.md"]) == [
        "a.py",
        "b.py",
        "c.md",
    ]


# junit files as pytest writes them without the ID plugin (xunit1: file, classname, name).
JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="1" skipped="2"
 tests="9" time="0.1">
<testcase classname="tests.test_a" name="test_p[a b]" file="tests/test_a.py" line="3" time="0"/>
<testcase classname="tests.test_a.TestK.TestIn" name="test_x[1-[2]]" file="tests/test_a.py"
 line="9" time="0"><failure message="assert 1 == 2">E   assert 1 == 2</failure></testcase>
<testcase classname="tests.test_a" name="test_xf" file="tests/test_a.py" line="12" time="0">
 <skipped type="pytest.xfail" message="known"/></testcase>
<testcase classname="tests.test_a" name="test_sk" file="tests/test_a.py" line="14" time="0">
 <skipped type="pytest.skip" message="why">tests/test_a.py:15: why</skipped></testcase>
<testcase classname="tests.test_a" name="test_td" file="tests/test_a.py" line="16" time="0">
 <failure message="assert 0">E assert 0</failure>
 <error message="failed on teardown with &quot;boom&quot;">E boom</error></testcase>
<testcase classname="tests.test_b.TestChild" name="test_base" file="tests/base.py" line="2"
 time="0"/>
<testcase classname="pkg.tests.test_c" name="test_c" file="pkg/tests/test_c.py" time="0"/>
<testcase classname="" name="tests.test_broken" file="tests/test_broken.py" time="0">
 <error message="collection failure">ImportError: nope</error></testcase>
<testcase classname="docs.guide.md" name="guide.md" file="docs/guide.md" line="0" time="0"/>
</testsuite></testsuites>
"""


def test_parse_junit_rebuilds_node_ids() -> None:
    assert parse_junit(JUNIT) == {
        "tests/test_a.py::test_p[a b]": "passed",
        "tests/test_a.py::TestK::TestIn::test_x[1-[2]]": "failed",
        "tests/test_a.py::test_xf": "xfailed",
        "tests/test_a.py::test_sk": "skipped",
        "tests/test_a.py::test_td": "error",
        "tests/test_b.py::TestChild::test_base": "passed",  # inherited from tests/base.py
        "pkg/tests/test_c.py::test_c": "passed",
        "tests/test_broken.py": "error",
        "docs/guide.md::guide.md": "passed",
    }
    _, failures = parse_junit_report(JUNIT)
    assert failures["tests/test_a.py::TestK::TestIn::test_x[1-[2]]"] == "E   assert 1 == 2"
    assert failures["tests/test_a.py::test_td"] == (
        'E assert 0\n\nfailed on teardown with "boom"\nE boom'
    )


def test_parse_junit_prefers_the_recorded_node_id() -> None:
    xml = textwrap.dedent("""\
        <testsuites><testsuite>
        <testcase classname="tests.test_a" name="test_p[a.b]" file="tests/test_a.py">
          <properties><property name="nodeid" value="tests/test_a.py::test_p[a.b]"/>
          <property name="outcome" value="xpassed"/></properties></testcase>
        </testsuite></testsuites>""").encode()
    assert parse_junit(xml) == {"tests/test_a.py::test_p[a.b]": "xpassed"}


@pytest.mark.parametrize(
    ("file", "classname", "name", "expected"),
    [
        ("t/test_a.py", "t.test_a", "test_x", "t/test_a.py::test_x"),
        ("t/test_a.py", "t.test_a.C", "test_x[a.b c]", "t/test_a.py::C::test_x[a.b c]"),
        ("", "t.test_a.C", "test_x", "t/test_a.py::C::test_x"),
        ("t/test_a.py", "", "t.test_a", "t/test_a.py"),
    ],
)
def test_node_id(file: str, classname: str, name: str, expected: str) -> None:
    assert node_id(file, classname, name) == expected
