"""The runner end to end on real tasks: one-line bugs written by hand into xmltodict (a small
real package from PyPI), run by the reference agents, a scripted agent and the embedded model,
graded in the sandbox; a run interrupted with Ctrl-C resumes without losing or repeating an
attempt; bad input is said clearly and loses nothing."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tercet.agent import ScriptedModel
from tercet.agent.model import ModelRequest
from tercet.agent.scripted import ScriptedTurn, tool_use, turn
from tercet.cli.main import main
from tercet.evals.agents import AgentSettings
from tercet.evals.agents.tercet_sdk import TercetAgent
from tercet.evals.packages import PackageSpec
from tercet.evals.run import (
    RESULTS_FILE,
    Dataset,
    ResultsFile,
    RunOptions,
    load_dataset,
    run_eval,
)
from tercet.evals.task import AttemptResult, EvalInputError, PackageSource, Task, write_jsonl
from tercet.evals.workspace import source_tree

SPECS = Path(__file__).parent / "packages.toml"
T = "tests/test_xmltodict.py::"
D = "tests/test_dicttoxml.py::"
# (instance id, mutation family, the correct line, the buggy line, FAIL_TO_PASS, PASS_TO_PASS)
BUGS = [
    (
        "xmltodict-strip",
        "op_change",
        "data = data.strip() or None",
        "data = data.rstrip() or None",
        [T + "test_comments"],
        [T + "test_minimal", T + "test_simple", T + "test_force_cdata"],
    ),
    (
        "xmltodict-force-list",
        "ctrl_invert_if",
        "return key in self.force_list",
        "return key not in self.force_list",
        [T + "test_force_list_basic"],
        [T + "test_minimal", T + "test_simple"],
    ),
    (
        "xmltodict-attr-name",
        "op_change_const",
        "attr_name = ik[len(attr_prefix) :]",
        "attr_name = ik[len(attr_prefix) - 1 :]",
        [D + "test_attrib", D + "test_attrib_and_cdata", D + "test_nested"],
        [D + "test_root", D + "test_simple_cdata", D + "test_cdata", D + "test_list"],
    ),
]


def xmltodict_tasks(source: Path, spec: PackageSpec) -> list[Task]:
    """The hand-written tasks; each gold patch is the diff from the buggy to the real file."""
    original = (source / "xmltodict.py").read_text()
    tasks = []
    for index, (instance_id, family, good, bad, fail, keep) in enumerate(BUGS):
        assert original.count(good) == 1, good
        buggy = original.replace(good, bad)
        patch = "".join(
            difflib.unified_diff(
                buggy.splitlines(keepends=True),
                original.splitlines(keepends=True),
                "a/xmltodict.py",
                "b/xmltodict.py",
            )
        )
        tasks.append(
            Task(
                instance_id=instance_id,
                repo="pypi/xmltodict",
                version=spec.version,
                source=spec.source,
                patch=patch,
                problem_statement=f"{fail[0]} fails: xmltodict gives the wrong result.",
                created_at="2026-12-02T00:00:00Z",
                FAIL_TO_PASS=fail,
                PASS_TO_PASS=keep,
                mutation=family,
                split="dev" if index == 0 else "test",
            )
        )
    return tasks


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset directory (tasks.jsonl, packages.toml) of the hand-written tasks."""
    from tercet.evals.packages import load_specs

    cache = Path(__file__).resolve().parents[2] / ".cache" / "evals"
    spec = load_specs(SPECS)["xmltodict"]
    directory = tmp_path_factory.mktemp("dataset")
    shutil.copy(SPECS, directory / "packages.toml")
    write_jsonl(directory / "tasks.jsonl", xmltodict_tasks(source_tree(spec, cache), spec))
    return directory


@pytest.fixture(scope="module")
def dataset(dataset_dir: Path) -> Dataset:
    return load_dataset(dataset_dir)


def _options(eval_cache: Path, **overrides: object) -> RunOptions:
    return RunOptions(split="all", cache=eval_cache, **overrides)  # type: ignore[arg-type]


def _results(run_dir: Path) -> list[AttemptResult]:
    return ResultsFile(run_dir / RESULTS_FILE).load()


def test_oracle_resolves_every_task_and_noop_none(
    dataset: Dataset, eval_cache: Path, tmp_path: Path
) -> None:
    oracle = tmp_path / "oracle"
    summary = run_eval(
        dataset, "oracle", AgentSettings(), _options(eval_cache, workers=2), oracle, stream=None
    )
    assert (summary.total, summary.progress.done, summary.progress.resolved) == (3, 3, 3)
    results = _results(oracle)
    assert {r.instance_id: r.grade.status for r in results} == {
        b[0]: "RESOLVED_FULL" for b in BUGS
    }, [r.grade for r in results]
    assert all(not r.grade.touched_tests for r in results)
    record = json.loads((oracle / "run.json").read_text())
    assert record["agent"] == "oracle" and record["dataset"]["version"].startswith("sha256:")
    assert record["harness"]["name"] == "tercet" and record["settings"]["workers"] == 2
    assert not (oracle / "workspaces").exists() or not any((oracle / "workspaces").iterdir())

    noop = tmp_path / "noop"
    run_eval(dataset, "noop", AgentSettings(), _options(eval_cache), noop, stream=None)
    assert {r.grade.status for r in _results(noop)} == {"EMPTY_PATCH"}


def _test_editor() -> ScriptedModel:
    """A model that runs the tests with the command its prompt gives, then 'fixes' the bug by
    making the failing test pass vacuously."""

    def run_the_tests(request: ModelRequest) -> ScriptedTurn:
        prompt = request.messages[0]["content"][0]["text"]
        command = prompt.split("Run the package's tests", 1)[1].split("\n\n    ", 1)[1]
        return turn(tool_use("bash", {"command": command.strip() + " -q -x"}))

    edit = r"sed -i 's/^def test_comments():/def test_comments():\n    return/' " + (
        "tests/test_xmltodict.py"
    )
    return ScriptedModel(
        [run_the_tests, turn(tool_use("bash", {"command": edit})), turn("Fixed the test.")]
    )


def test_an_agent_that_edits_the_failing_test_is_not_resolved_and_is_flagged(
    dataset: Dataset, eval_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _test_editor()

    def scripted(settings: AgentSettings) -> TercetAgent:
        return TercetAgent(model, "scripted", settings)

    # A relative run directory: the workspace and test command the agent is shown must still
    # hold from its own working directory (they were relative once, and the tests not found).
    monkeypatch.chdir(tmp_path)
    run_dir = Path("run")
    run_eval(
        dataset,
        "tercet",
        AgentSettings(),
        _options(eval_cache, instances=("xmltodict-strip",)),
        run_dir,
        stream=None,
        agent_factory=scripted,
    )
    # The test command of its prompt ran the package's tests in the sandbox: the bug shows.
    tests_ran = json.dumps(model.requests[1].messages[-1]["content"])
    assert "test_comments" in tests_ran and "1 failed" in tests_ran, tests_ran
    [result] = _results(run_dir)
    assert "tests/test_xmltodict.py" in result.model_patch
    assert result.grade.status == "RESOLVED_NO", result.grade
    assert result.grade.touched_tests
    assert result.grade.fail_to_pass == {T + "test_comments": "failed"}
    assert (result.compute.model_calls, result.compute.tool_calls) == (3, 2)
    assert result.stop_reason == "end_turn" and result.model == "scripted"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tercet.cli.main", "eval", *args]


def test_an_interrupted_run_resumes_without_losing_or_repeating_attempts(
    dataset_dir: Path, eval_cache: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    command = _cli(
        "run", "--dataset", str(dataset_dir), "--split", "all", "--agent", "oracle",
        "--cache", str(eval_cache), "--run-dir", str(run_dir),
    )  # fmt: skip
    # A suite started in the background (`cmd &`) has SIGINT ignored, and an ignored signal
    # stays ignored in a child: the CLI would never see the Ctrl-C. Its child starts with
    # the default (a handled signal is reset to it by exec).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # a line per finished attempt, once it is in the file
        seen.append(line)
        if ": RESOLVED_FULL" in line:
            process.send_signal(signal.SIGINT)
            break
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 130, "".join(seen) + rest
    assert "--resume" in rest
    before = _results(run_dir)
    assert 1 <= len(before) < 3, "".join(seen) + rest
    # A kill in the middle of a write leaves half a line; it is dropped and redone.
    with (run_dir / RESULTS_FILE).open("a") as handle:
        handle.write('{"instance_id": "xmltodict-force-list", "attempt": 0, "agent": "or')

    again = subprocess.run([*command, "--resume", "--quiet"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resolved 3/3" in again.stdout
    after = _results(run_dir)
    assert sorted(r.instance_id for r in after) == sorted(b[0] for b in BUGS)  # none twice
    assert after[: len(before)] == before  # finished attempts kept as they were
    assert all(r.grade.status == "RESOLVED_FULL" for r in after)
    lines = (run_dir / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    record = json.loads((run_dir / "run.json").read_text())
    assert [s["interrupted"] for s in record["sessions"]] == [True, False]


def test_bad_input_is_a_clear_error_and_loses_nothing(
    dataset: Dataset,
    dataset_dir: Path,
    eval_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A malformed task file names the file and line.
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(dataset_dir / "packages.toml", broken / "packages.toml")
    lines = (dataset_dir / "tasks.jsonl").read_text().splitlines()
    (broken / "tasks.jsonl").write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    with pytest.raises(EvalInputError, match=r"tasks.jsonl:2: not a valid Task"):
        load_dataset(broken)
    # A task whose package has no spec.
    task = json.loads(lines[0])
    task["source"]["name"] = "nosuchpackage"
    (broken / "tasks.jsonl").write_text(json.dumps(task) + "\n")
    with pytest.raises(EvalInputError, match=r"no package spec for nosuchpackage"):
        load_dataset(broken)
    with pytest.raises(EvalInputError, match="no dataset"):
        load_dataset(tmp_path / "nowhere")

    # A finished run, then bad commands against its directory: nothing in it is lost.
    run_dir = tmp_path / "run"
    options = _options(eval_cache, instances=("xmltodict-strip",))
    run_eval(dataset, "noop", AgentSettings(), options, run_dir, stream=None)
    saved = (run_dir / RESULTS_FILE).read_bytes()
    with pytest.raises(EvalInputError, match=r"unknown agent 'nope'.*oracle"):
        run_eval(dataset, "nope", AgentSettings(), options, run_dir, resume=True, stream=None)
    with pytest.raises(EvalInputError, match=r"unknown instance in .*: xmltodict-nope"):
        run_eval(
            dataset,
            "noop",
            AgentSettings(),
            _options(eval_cache, instances=("xmltodict-nope",)),
            run_dir,
            resume=True,
            stream=None,
        )
    with pytest.raises(EvalInputError, match="already holds a run; add --resume"):
        run_eval(dataset, "noop", AgentSettings(), options, run_dir, stream=None)
    with pytest.raises(EvalInputError, match="was run with agent 'noop', not 'oracle'"):
        run_eval(dataset, "oracle", AgentSettings(), options, run_dir, resume=True, stream=None)
    assert (run_dir / RESULTS_FILE).read_bytes() == saved

    # The same through the command line: exit status 2 and one line saying what is wrong.
    for args, message in [
        (["--agent", "nope"], "unknown agent 'nope'"),
        (["--instances", "xmltodict-nope", "--resume"], "unknown instance"),
        (["--dataset", str(tmp_path / "nowhere")], "no dataset"),
    ]:
        code = main(
            [
                "eval", "run", "--dataset", str(dataset_dir), "--split", "all",
                "--agent", "noop", "--cache", str(eval_cache), "--run-dir", str(run_dir), *args,
            ]
        )  # fmt: skip
        error = capsys.readouterr().err
        assert code == 2 and error.startswith("error: ") and message in error, error
    assert (run_dir / RESULTS_FILE).read_bytes() == saved


def test_a_harness_failure_is_an_error_result_not_a_crash(
    dataset: Dataset, eval_cache: Path, tmp_path: Path
) -> None:
    """A package that cannot be fetched (a wrong hash) grades ERROR, with why."""
    task = dataset.tasks[0]
    source = PackageSource(**{**task.source.model_dump(), "sha256": "f" * 64})
    spec = dataset.specs["xmltodict"].model_copy(update={"sha256": "f" * 64})
    broken = Dataset(
        "broken",
        "0",
        dataset.tasks_path,
        [task.model_copy(update={"source": source})],
        {"xmltodict": spec},
    )
    run_dir = tmp_path / "run"
    summary = run_eval(broken, "noop", AgentSettings(), _options(eval_cache), run_dir, stream=None)
    [result] = _results(run_dir)
    assert result.grade.status == "ERROR" and "preparing the task failed" in (
        result.grade.error or ""
    )
    assert summary.progress.errors == 1


@pytest.mark.timeout(600)
def test_the_embedded_model_through_the_tercet_agent(
    dataset_dir: Path, eval_cache: Path, tmp_path: Path
) -> None:
    """The bundled 135M model works on three tasks end to end; what it resolves is reported
    (printed), not asserted: every attempt must end graded, with its compute recorded."""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        _cli(
            "run",
            "--dataset",
            str(dataset_dir),
            "--split",
            "all",
            "--agent",
            "tercet",
            "--cache",
            str(eval_cache),
            "--run-dir",
            str(run_dir),
            "--quiet",
            "--max-turns",
            "3",
            "--max-wall-time",
            "40",
            "--max-tokens",
            "256",
            "--context-window",
            "8192",
            "--threads",
            str(min(2, os.cpu_count() or 1)),
        ),
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = _results(run_dir)
    assert len(results) == 3
    for result in results:
        assert result.grade.status != "ERROR", result.grade.error
        assert result.compute.model_calls >= 1 and result.compute.input_tokens > 0
        assert result.compute.flops is not None  # the GGUF says the model's size
        assert result.model == "smollm2-135m-instruct"
    report = subprocess.run(_cli("report", str(run_dir)), capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    print(done.stdout, report.stdout, sep="\n")  # what the model resolved, for the log
