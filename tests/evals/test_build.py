"""The task builder end to end on one small real package (xmltodict: real download, real
mutation, real pytest in the sandbox, validation), and its pure parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tercet.evals.build import (
    DATASETS,
    DEFAULT_DATASET,
    BuildResult,
    build,
    instance_id,
    portable_paths,
    problem_statement,
    split_of,
)
from tercet.evals.packages import PackageSpec, load_specs
from tercet.evals.sources import unpack
from tercet.evals.task import EvalInputError, Task, read_jsonl
from tercet.evals.testrun import TestRun


def test_build_from_one_package_end_to_end(
    xmltodict_spec: PackageSpec, xmltodict_sdist: Path, eval_cache: Path, tmp_path: Path
) -> None:
    families = ["op_change", "remove_cond"]

    def run(out: Path, messages: list[str]) -> BuildResult:
        return build(
            [xmltodict_spec],
            out,
            eval_cache,
            per_package=2,
            seed=3,
            families=families,
            max_tries=8,
            finished=tmp_path / "finished",  # never a build kept from an earlier run
            progress=messages.append,
        )

    result = run(tmp_path / "out", [])
    tasks = read_jsonl(tmp_path / "out" / "tasks.jsonl", Task)
    assert tasks == result.tasks
    assert 1 <= len(tasks) <= 2
    [report] = result.reports
    assert report.kept == len(tasks) and report.tried >= len(tasks)
    assert report.tests > 100 and report.sandboxed
    clean = unpack(xmltodict_sdist, tmp_path / "clean")
    for number, task in enumerate(tasks, start=1):
        assert task.instance_id == f"xmltodict__xmltodict-{number:04d}"
        assert task.split == split_of(task.instance_id)
        assert task.mutation in families
        assert task.source == xmltodict_spec.source and task.repo == "pypi/xmltodict"
        assert task.FAIL_TO_PASS and task.PASS_TO_PASS
        assert not set(task.FAIL_TO_PASS) & set(task.PASS_TO_PASS)
        assert all(test.startswith("tests/") and "::" in test for test in task.FAIL_TO_PASS)
        # The statement says what fails, never how the bug was made.
        statement = task.problem_statement
        assert task.FAIL_TO_PASS[0] in statement
        assert "diff --git" not in statement and task.mutation not in statement
        assert "@@" not in statement
        # The gold patch is a fix: reversed on the clean tree, it puts the bug in.
        buggy = tmp_path / f"buggy-{number}"
        subprocess.run(["cp", "-r", str(clean), str(buggy)], check=True)
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)}
        subprocess.run(
            ["git", "apply", "-R", "-"], cwd=buggy, input=task.patch, text=True, check=True, env=env
        )
        assert (buggy / "xmltodict.py").read_text() != (clean / "xmltodict.py").read_text()

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["tasks"] == len(tasks)
    [package] = manifest["packages"]
    assert package["package"] == "xmltodict" and package["sha256"] == xmltodict_spec.sha256
    assert package["licence"] == "MIT"
    assert sum(package["by_split"].values()) == len(tasks)
    assert package["by_family"] == dict(Counter(t.mutation for t in tasks))

    # A second build resumes from the finished package instead of redoing it.
    again: list[str] = []
    resumed = run(tmp_path / "out2", again)
    assert [t.model_dump() for t in resumed.tasks] == [t.model_dump() for t in tasks]
    assert any("resumed" in message for message in again)


def test_unknown_family_and_no_packages_are_input_errors(
    xmltodict_spec: PackageSpec, tmp_path: Path
) -> None:
    with pytest.raises(EvalInputError, match="unknown mutation families"):
        build([xmltodict_spec], tmp_path, tmp_path, families=["nope"])
    with pytest.raises(EvalInputError, match="no packages"):
        build([], tmp_path, tmp_path)


def test_ids_and_splits_are_fixed() -> None:
    assert instance_id("toolz", 7) == "toolz__toolz-0007"
    ids = [instance_id("pkg", n) for n in range(1, 501)]
    splits = Counter(split_of(i) for i in ids)
    assert splits["dev"] + splits["test"] == 500
    assert 60 <= splits["dev"] <= 140  # about 20%
    assert [split_of(i) for i in ids] == [split_of(i) for i in ids]


def test_problem_statement_reads_like_a_bug_report(xmltodict_spec: PackageSpec) -> None:
    failing = [f"tests/test_a.py::test_{n}" for n in range(10)]
    trace = "\n".join(["tests/test_a.py:3: in test_0", *(f"    line {n}" for n in range(50))])
    run = TestRun({}, "", 1.0, True, junit_failures={failing[0]: trace + "\nE   assert 1 == 2"})
    text = problem_statement(xmltodict_spec, failing, run)
    assert text.startswith("xmltodict 1.0.4: 10 of the package's own tests fail")
    assert "tests/test_a.py::test_7" in text and "... and 2 more" in text
    assert "E   assert 1 == 2" in text and "line 49" in text and "line 20" not in text
    single = problem_statement(xmltodict_spec, failing[:1], run)
    assert "one of the package's own tests fails" in single
    assert "this test fails" in single and "... and" not in single


def test_bundled_dataset_is_consistent() -> None:
    """The committed dataset: every task valid, its package pinned in packages.toml and the
    manifest, the counts as the manifest says."""
    folder = DATASETS / DEFAULT_DATASET
    specs = load_specs(folder / "packages.toml")
    tasks = read_jsonl(folder / "tasks.jsonl", Task)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(tasks) == manifest["totals"]["tasks"]
    assert len({t.instance_id for t in tasks}) == len(tasks)
    listed = {p["package"]: p for p in manifest["packages"]}
    for task in tasks:
        spec = specs[task.source.name]
        assert task.source == spec.source
        assert listed[spec.name]["sha256"] == spec.sha256
        assert task.split == split_of(task.instance_id)
        assert task.patch.startswith("diff --git a/")
        assert not spec.is_test_file(task.patch.split()[2][2:])  # the fix is in the code
    assert Counter(t.split for t in tasks) == Counter(manifest["totals"]["by_split"])


def test_statements_name_no_path_of_the_building_machine() -> None:
    prefix = sys.base_prefix.rstrip("/")
    trace = f"{prefix}/lib/python3.11/json/decoder.py:337: in decode"
    assert portable_paths(trace) == "/usr/lib/python3.11/json/decoder.py:337: in decode"
    tasks = read_jsonl(DATASETS / DEFAULT_DATASET / "tasks.jsonl", Task)
    if prefix not in ("", "/usr"):
        assert not any(prefix in task.problem_statement for task in tasks)
