"""`tercet eval`: the subcommands wired to the harness, run in-process on the hand-written
xmltodict tasks of test_run.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tercet.cli.main import main
from tercet.evals.run import RESULTS_FILE, ResultsFile
from tercet.evals.selection import SELECTIONS_FILE, SelectionsFile
from tercet.evals.stats import format_rate
from tercet.evals.task import Prediction, Task, read_jsonl, write_jsonl
from tests.evals.test_run import dataset_dir

__all__ = ["dataset_dir"]  # the fixture, shared with test_run.py


def test_eval_lists_its_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for action in ("build", "run", "grade", "report"):
        assert action in out
    with pytest.raises(SystemExit):
        main(["eval", "build", "--help"])
    assert "--per-package" in capsys.readouterr().out  # the builder's own options


def test_run_then_report(
    dataset_dir: Path, eval_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    args = [
        "eval", "run", "--dataset", str(dataset_dir), "--split", "test", "--agent", "oracle",
        "--cache", str(eval_cache), "--run-dir", str(run_dir), "--quiet",
        "--instances", "xmltodict-force-list,xmltodict-attr-name", "--limit", "1",
    ]  # fmt: skip
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0
    assert f"resolved {format_rate(1, 1)} of all 1 attempts" in out
    assert f"tercet eval report {run_dir}" in out
    [result] = ResultsFile(run_dir / RESULTS_FILE).load()
    assert result.instance_id == "xmltodict-force-list"  # in the test split, first of the two
    assert main(["eval", "report", str(run_dir)]) == 0
    assert "# Evaluation report: oracle on" in capsys.readouterr().out
    for name in ("report.md", "report.html", "predictions.jsonl", "by_package.png"):
        assert (run_dir / name).is_file(), name

    # Resumed with more attempts: only the new attempt runs; the two are alike (agreement).
    assert main([*args, "--resume", "--attempts", "2"]) == 0
    headline = f"| {format_rate(2, 2)} | {format_rate(1, 1)} | {format_rate(1, 1)} | 2 |"
    assert headline in capsys.readouterr().out
    [selection] = SelectionsFile(run_dir / SELECTIONS_FILE).load().values()
    assert (selection.chosen, selection.method) == (0, "agreement")
    results = ResultsFile(run_dir / RESULTS_FILE).load()
    assert [(r.instance_id, r.attempt) for r in results] == [
        ("xmltodict-force-list", 0),
        ("xmltodict-force-list", 1),
    ]
    assert results[0] == result
    assert main(["eval", "report", str(run_dir), "--no-html"]) == 0
    assert headline in capsys.readouterr().out
    assert (run_dir / "predictions.attempt-1.jsonl").is_file()


def test_grade_predictions_from_elsewhere(
    dataset_dir: Path, eval_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = {t.instance_id: t for t in read_jsonl(dataset_dir / "tasks.jsonl", Task)}
    gold = tasks["xmltodict-strip"].patch
    predictions = tmp_path / "predictions.jsonl"
    write_jsonl(
        predictions,
        [
            Prediction(instance_id="xmltodict-strip", model_name_or_path="m", model_patch=gold),
            Prediction(
                instance_id="xmltodict-force-list",
                model_name_or_path="m",
                model_patch=gold.replace("strip()", "lstrip()"),  # does not apply
            ),
            Prediction(instance_id="xmltodict-attr-name", model_name_or_path="m", model_patch=None),
            Prediction(instance_id="xmltodict-strip", model_name_or_path="m", model_patch=""),
        ],
    )
    run_dir = tmp_path / "graded"
    args = [
        "eval", "grade", "--predictions", str(predictions), "--dataset", str(dataset_dir),
        "--cache", str(eval_cache), "--run-dir", str(run_dir), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    assert "resolved 1/4" in capsys.readouterr().out
    results = {(r.instance_id, r.attempt): r for r in ResultsFile(run_dir / RESULTS_FILE).load()}
    assert {key: r.grade.status for key, r in results.items()} == {
        ("xmltodict-strip", 0): "RESOLVED_FULL",
        ("xmltodict-force-list", 0): "PATCH_FAILED",
        ("xmltodict-attr-name", 0): "EMPTY_PATCH",
        ("xmltodict-strip", 1): "EMPTY_PATCH",  # an instance's second prediction: attempt 1
    }
    assert {r.model for r in results.values()} == {"m"}
    # xmltodict-strip has two predictions: one is chosen (the other is empty); the others
    # have one of two and get no selection.
    selections = SelectionsFile(run_dir / SELECTIONS_FILE).load()
    assert list(selections) == ["xmltodict-strip"]
    assert (selections["xmltodict-strip"].chosen, selections["xmltodict-strip"].method) == (
        0,
        "only",
    )
    record = json.loads((run_dir / "run.json").read_text())
    assert record["agent"] == "predictions" and record["settings"]["attempts"] == 2

    saved = (run_dir / RESULTS_FILE).read_bytes()
    assert main([*args, "--resume"]) == 0  # everything graded already: nothing redone
    assert (run_dir / RESULTS_FILE).read_bytes() == saved

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"instance_id": "nope", "model_name_or_path": "m"}) + "\n")
    capsys.readouterr()
    assert main([*args[:3], str(unknown), *args[4:], "--resume"]) == 2
    assert "instances not in" in capsys.readouterr().err
    assert (run_dir / RESULTS_FILE).read_bytes() == saved


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--price", "3,15"], "--price needs --model"),
        (["--model", "m", "--price", "3"], "give INPUT,OUTPUT"),
        (["--max-turns", "0"], "--max-turns must be positive"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--agent-option", "novalue"], "give KEY=VALUE"),
        (["--split", "dev", "--instances", "xmltodict-attr-name"], "not in the dev split"),
    ],
)
def test_bad_options_are_said_plainly(
    options: list[str],
    message: str,
    dataset_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["eval", "run", "--dataset", str(dataset_dir), "--agent", "noop",
         "--run-dir", str(tmp_path / "run"), *options]
    )  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / RESULTS_FILE).exists()
