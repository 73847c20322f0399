"""Best of k in the harness: which attempt is chosen, from what (never the hidden tests), the
scorer where the regression tests tie, selections.jsonl kept current as attempts finish or are
redone, and the report's numbers; end to end once on the real xmltodict tasks."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from tercet.agent import ScriptedModel
from tercet.agent.events import Usage
from tercet.agent.scripted import tool_use, turn
from tercet.attempts.metrics import format_mean
from tercet.cli.main import main
from tercet.evals.agents import AgentOutcome, AgentSettings, Budget, TaskView, Workspace
from tercet.evals.agents.reference import apply_patch
from tercet.evals.report import best_of_k, load_run, markdown_report
from tercet.evals.run import Dataset, RunOptions, run_eval, select_run
from tercet.evals.selection import (
    SELECTIONS_FILE,
    ScorerSettings,
    SelectionsFile,
    Selector,
    candidate_of,
    select_task,
)
from tercet.evals.stats import format_rate
from tercet.evals.task import AttemptResult, Compute, Grade, PackageSource, Task, write_jsonl
from tests.conftest import CLAUDE_MODEL
from tests.evals.test_run import dataset, dataset_dir

__all__ = ["dataset", "dataset_dir"]  # the fixtures, shared with test_run.py

pytestmark = pytest.mark.anyio
P2P = ["tests/test_m.py::test_keep_a", "tests/test_m.py::test_keep_b"]
F2P = ["tests/test_m.py::test_bug"]
FIX = "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-return a - b\n+return a + b\n"
OTHER_FIX = "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-return a - b\n+return b + a\n"


def _task(instance_id: str = "m-1") -> Task:
    return Task(
        instance_id=instance_id,
        repo="pypi/m",
        version="1.0",
        source=PackageSource(
            name="m", version="1.0", filename="m-1.0.tar.gz", sha256="0" * 64, licence="MIT"
        ),
        patch=FIX,
        problem_statement="add() subtracts",
        created_at="2026-01-01T00:00:00Z",
        FAIL_TO_PASS=F2P,
        PASS_TO_PASS=P2P,
        mutation="op_change",
    )


def _attempt(
    attempt: int,
    status: str,
    *,
    patch: str = FIX,
    broken: Sequence[str] = (),
    f2p: str | None = None,
    instance_id: str = "m-1",
    stop_reason: str = "end_turn",
    tokens: int = 1000,
) -> AttemptResult:
    """An attempt graded `status`; `broken` PASS_TO_PASS tests fail; FAIL_TO_PASS outcomes as
    the status implies unless `f2p` says."""
    ran = status in ("RESOLVED_FULL", "RESOLVED_PARTIAL", "RESOLVED_NO")
    outcome = f2p or ("passed" if status == "RESOLVED_FULL" else "failed")
    return AttemptResult(
        instance_id=instance_id,
        attempt=attempt,
        agent="tercet",
        model="m",
        model_patch="" if status == "EMPTY_PATCH" else patch,
        grade=Grade(
            status=status,
            fail_to_pass=dict.fromkeys(F2P, outcome) if ran else {},
            pass_to_pass={t: "failed" if t in broken else "passed" for t in P2P} if ran else {},
            error={"ERROR": "the sandbox broke", "PATCH_FAILED": "hunk 1 failed"}.get(status),
        ),
        compute=Compute(input_tokens=tokens, output_tokens=tokens // 10),
        stop_reason=stop_reason,
        agent_error="the model went away" if stop_reason == "error" else None,
        started_at="2026-01-01T00:00:00+00:00",
        ended_at="2026-01-01T00:00:30+00:00",
    )


def _scorer_model(*labels: str, input_tokens: int = 300) -> ScriptedModel:
    return ScriptedModel(
        [
            turn(
                tool_use("choose_candidate", {"label": label, "reason": f"{label} is right"}),
                usage=Usage(input_tokens=input_tokens, output_tokens=20),
            )
            for label in labels
        ]
    )


def _scorer(*labels: str) -> tuple[ScriptedModel, ScorerSettings]:
    model = _scorer_model(*labels)
    return model, ScorerSettings(model="judge", client=model)


# ---------------------------------------------------------------------------- choosing


async def test_each_kind_of_attempt_becomes_the_right_candidate() -> None:
    attempts = [
        _attempt(0, "RESOLVED_NO", patch=FIX, stop_reason="error"),  # the agent failed
        _attempt(1, "EMPTY_PATCH"),
        _attempt(2, "PATCH_FAILED"),
        _attempt(3, "RESOLVED_NO", broken=[P2P[1]]),  # broke a regression test
        _attempt(4, "ERROR"),  # the harness could not grade it
        _attempt(5, "RESOLVED_FULL"),
    ]
    selection = await select_task(_task(), attempts)
    statuses = {c.attempt: (c.status, c.reason) for c in selection.candidates}
    assert statuses[0] == ("failed", "the agent failed: the model went away")
    assert statuses[1] == ("empty", "the attempt changed nothing")
    assert statuses[2] == ("patch_failed", "the diff does not apply: hunk 1 failed")
    assert statuses[3][0] == "regressed" and P2P[1] in (statuses[3][1] or "")
    assert statuses[4] == ("failed", "the harness failed: the sandbox broke")
    assert statuses[5] == ("candidate", None)
    assert [c.regressions for c in selection.candidates][3] == [P2P[1]]
    assert (selection.chosen, selection.method, selection.attempts) == (5, "only", 6)
    assert [c.passing for c in selection.candidates] == [None, None, None, 1, None, 2]


async def test_the_most_regression_tests_passing_wins_and_none_usable_chooses_none() -> None:
    # A P2P test missing from an attempt's report counts as not passing (a regression).
    partial = _attempt(0, "RESOLVED_NO")
    partial.grade.pass_to_pass.pop(P2P[0])
    selection = await select_task(_task(), [partial, _attempt(1, "RESOLVED_PARTIAL")])
    assert selection.candidates[0].status == "regressed"
    assert (selection.chosen, selection.method) == (1, "only")

    nothing = await select_task(_task(), [_attempt(0, "EMPTY_PATCH"), _attempt(1, "ERROR")])
    assert (nothing.chosen, nothing.method) == (None, "none")


async def test_the_hidden_tests_never_sway_the_choice() -> None:
    """Two attempts alike in what an agent can see (both pass every PASS_TO_PASS test), one of
    which fixes the bug: the choice is the same whichever of them the hidden tests favour."""
    first_fixes = [
        _attempt(0, "RESOLVED_FULL", patch=FIX),
        _attempt(1, "RESOLVED_NO", patch=OTHER_FIX),
    ]
    second_fixes = [
        _attempt(0, "RESOLVED_NO", patch=FIX),
        _attempt(1, "RESOLVED_FULL", patch=OTHER_FIX),
    ]
    a = await select_task(_task(), first_fixes)
    b = await select_task(_task(), second_fixes)
    assert a.chosen == b.chosen == 0 and a.method == b.method == "first"
    assert a.candidates == b.candidates
    # The candidates themselves carry nothing of the hidden outcomes.
    for one, other in zip(first_fixes, second_fixes, strict=True):
        assert candidate_of(one) == candidate_of(other)
        assert candidate_of(one).check is not None
        assert set(candidate_of(one).check.outcomes) == set(P2P)  # type: ignore[union-attr]

    # The scorer is shown the same candidates either way, so it answers the same.
    model_a, settings_a = _scorer("B")
    model_b, settings_b = _scorer("B")
    scorer_a, scorer_b = settings_a.create(), settings_b.create()
    picked_a = await select_task(_task(), first_fixes, scorer_a.choose, "judge")
    picked_b = await select_task(_task(), second_fixes, scorer_b.choose, "judge")
    assert picked_a.chosen == picked_b.chosen == 1
    assert model_a.requests == model_b.requests


async def test_the_scorer_chooses_where_the_tests_tie() -> None:
    model, settings = _scorer("B")
    scorer = settings.create()
    attempts = [
        _attempt(0, "RESOLVED_NO", patch=FIX),
        _attempt(1, "RESOLVED_FULL", patch=OTHER_FIX),
        _attempt(2, "RESOLVED_NO", patch=FIX.replace("a + b", "a+b")),  # as attempt 0
        _attempt(3, "RESOLVED_NO", broken=P2P),  # regressed: never shown to the scorer
    ]
    selection = await select_task(_task(), attempts, scorer.choose, "judge")
    assert (selection.chosen, selection.method, selection.reason) == (1, "scorer", "B is right")
    assert selection.scorer == "judge" and selection.scorer_error is None
    assert (selection.scorer_usage.input_tokens, selection.scorer_usage.output_tokens) == (300, 20)
    [request] = model.requests
    shown = request.messages[0]["content"]
    assert shown.count("<candidate ") == 2  # attempts 0 and 2 are one change, shown once
    assert "add() subtracts" in shown and "2/2 tests pass" in shown
    assert request.tools[0]["input_schema"]["properties"]["label"]["enum"] == ["A", "B"]


async def test_more_than_four_tied_candidates_go_through_a_knockout() -> None:
    # Groups of four: A-D first (C wins: attempt 2), then attempt 4 alone; the final of the
    # two winners picks B (attempt 4).
    model, settings = _scorer("C", "B")
    scorer = settings.create()
    attempts = [
        _attempt(n, "RESOLVED_NO", patch=FIX.replace("a + b", f"a + b + {n}")) for n in range(5)
    ]
    selection = await select_task(_task(), attempts, scorer.choose, "judge")
    assert (selection.chosen, selection.method) == (4, "scorer")
    assert len(model.requests) == 2
    assert [
        len(r.tools[0]["input_schema"]["properties"]["label"]["enum"]) for r in model.requests
    ] == [4, 2]
    assert "a + b + 2" in model.requests[1].messages[0]["content"]
    assert selection.scorer_usage.input_tokens == 600  # both calls counted


async def test_a_scorer_that_fails_leaves_the_choice_to_agreement_and_says_why() -> None:
    model = ScriptedModel([turn("I cannot decide between them.")])
    scorer = ScorerSettings(model="judge", client=model).create()
    attempts = [
        _attempt(0, "RESOLVED_NO", patch=FIX),
        _attempt(1, "RESOLVED_FULL", patch=OTHER_FIX),
        _attempt(2, "RESOLVED_FULL", patch=OTHER_FIX),
    ]
    selection = await select_task(_task(), attempts, scorer.choose, "judge")
    assert (selection.chosen, selection.method) == (1, "agreement")
    assert "did not name a candidate" in (selection.scorer_error or "")


def test_scorer_settings_that_cannot_work_are_refused_early(tmp_path: Path) -> None:
    from tercet.evals.task import EvalInputError

    with pytest.raises(EvalInputError, match="--scorer needs a Messages API server"):
        ScorerSettings(model="judge").check()
    bad = tmp_path / "prompt.toml"
    bad.write_text('system = "s"\nuser = "{nope}"\ncandidate = "{label}"\n')
    with pytest.raises(EvalInputError, match="bad placeholder"):
        ScorerSettings(model="judge", base_url="http://127.0.0.1:1", prompt=bad).check()
    with pytest.raises(EvalInputError, match="cannot read the scorer prompt"):
        ScorerSettings(model="j", base_url="http://127.0.0.1:1", prompt=tmp_path / "no").check()


# ---------------------------------------------------------------------------- the file


async def test_a_task_is_selected_once_its_k_attempts_finish_and_again_when_one_is_redone(
    tmp_path: Path,
) -> None:
    tasks = {"m-1": _task("m-1"), "m-2": _task("m-2")}
    selector = Selector(tmp_path, tasks, attempts=2)
    assert await selector.add(_attempt(0, "RESOLVED_NO", instance_id="m-1")) is None
    assert await selector.add(_attempt(0, "RESOLVED_FULL", instance_id="m-2")) is None
    first = await selector.add(_attempt(1, "EMPTY_PATCH", instance_id="m-1"))
    assert first is not None and (first.chosen, first.method) == (0, "only")
    assert list(SelectionsFile(tmp_path / SELECTIONS_FILE).load()) == ["m-1"]  # m-2: 1 of 2
    assert await selector.catch_up() == []  # nothing new to choose

    # Resumed: the results read back, m-1's attempt 0 redone (--retry-errors).
    results = [
        _attempt(0, "RESOLVED_NO", instance_id="m-1"),
        _attempt(1, "EMPTY_PATCH", instance_id="m-1"),
        _attempt(0, "RESOLVED_FULL", instance_id="m-2"),
    ]
    resumed = Selector(tmp_path, tasks, attempts=2, results=results)
    assert await resumed.catch_up() == []  # m-1's selection is current
    again = await resumed.add(_attempt(0, "EMPTY_PATCH", instance_id="m-1"))
    assert again is not None and (again.chosen, again.method) == (None, "none")
    assert (await resumed.add(_attempt(1, "RESOLVED_FULL", instance_id="m-2"))) is not None
    lines = (tmp_path / SELECTIONS_FILE).read_text().splitlines()
    assert [json.loads(line)["instance_id"] for line in lines] == ["m-1", "m-1", "m-2"]
    loaded = SelectionsFile(tmp_path / SELECTIONS_FILE).load()
    assert loaded["m-1"].method == "none"  # the latest line of an instance counts

    # A last line cut short by a kill is ignored; a bad line elsewhere is an error.
    with (tmp_path / SELECTIONS_FILE).open("a") as handle:
        handle.write('{"instance_id": "m-2", "attem')
    assert SelectionsFile(tmp_path / SELECTIONS_FILE).load()["m-2"].chosen is not None
    (tmp_path / SELECTIONS_FILE).write_text('{"instance_id": 3}\n' + lines[0] + "\n")
    from tercet.evals.task import EvalInputError

    with pytest.raises(EvalInputError, match=r"selections.jsonl:1: not a valid TaskSelection"):
        SelectionsFile(tmp_path / SELECTIONS_FILE).load()


# ---------------------------------------------------------------------------- the report


def _run_dir(tmp_path: Path) -> Path:
    """A run of k=2 over five tasks: m-4 has one finished attempt of two."""
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "tasks.jsonl", [_task(f"m-{n}") for n in range(1, 6)])
    record = {
        "harness": {"name": "tercet", "version": "0.1.0"},
        "dataset": {"name": "pypi-bugs-v1", "version": "1.0"},
        "agent": "tercet",
        "model": "m",
        "settings": {"split": "test", "attempts": 2},
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    (run / "run.json").write_text(json.dumps(record))
    results = [
        # m-1: the fix, and an attempt that broke a regression test: the fix is chosen.
        _attempt(0, "RESOLVED_FULL", instance_id="m-1"),
        _attempt(1, "RESOLVED_NO", broken=[P2P[0]], instance_id="m-1"),
        # m-2: the same wrong change twice: agreement, not resolved.
        _attempt(0, "RESOLVED_NO", instance_id="m-2"),
        _attempt(1, "RESOLVED_NO", instance_id="m-2"),
        # m-3: nothing, then the fix.
        _attempt(0, "EMPTY_PATCH", instance_id="m-3"),
        _attempt(1, "RESOLVED_FULL", instance_id="m-3"),
        # m-4: one attempt of two.
        _attempt(0, "RESOLVED_FULL", instance_id="m-4"),
        # m-5: a wrong change, then another that fixes it; the tests tie: the first is chosen.
        _attempt(0, "RESOLVED_NO", instance_id="m-5"),
        _attempt(1, "RESOLVED_FULL", patch=OTHER_FIX, instance_id="m-5"),
    ]
    write_jsonl(run / "results.jsonl", results)
    return run


def test_the_report_gives_best_of_k_over_complete_tasks(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    assert len(select_run(run_dir)) == 4  # m-4 is incomplete
    run = load_run(run_dir)
    numbers = best_of_k(run)
    assert numbers is not None
    assert (numbers.k, numbers.tasks, numbers.incomplete) == (2, 4, ["m-4"])
    assert (numbers.single.k, numbers.single.n) == (3, 8)
    assert (numbers.selected_rate.k, numbers.oracle.k) == (2, 3)
    assert dict(numbers.methods) == {"only": 2, "agreement": 1, "first": 1}
    assert numbers.pass_at(1) == [0.5, 0.0, 0.5, 0.5]
    assert numbers.pass_at(2) == [1.0, 0.0, 1.0, 1.0]
    assert numbers.pass_hat(2) == [0.0] * 4

    text = markdown_report(run)
    assert "| single attempt | selected@k | oracle@k | k |" in text
    assert f"| {format_rate(3, 8)} | {format_rate(2, 4)} | {format_rate(3, 4)} | 2 |" in text
    assert "1 task incomplete (fewer than 2 finished attempts)" in text and "m-4" in text
    assert f"| 1 | {format_mean([0.5, 0.0, 0.5, 0.5])} |" in text
    assert f"| 2 | {format_mean([1.0, 0.0, 1.0, 1.0])} | {format_mean([0.0] * 4)} |" in text
    assert f"| only | 2 | {format_rate(2, 2)} |" in text
    assert f"| first | 1 | {format_rate(0, 1)} |" in text
    assert f"kept as candidates: {format_rate(6, 8)}; dropped: empty 1, regressed 1." in text
    # 8 attempts of 1,100 tokens, no scorer, over 4 tasks
    assert "Tokens per task (all its attempts and the scorer): 2,200 (8,800 by attempts" in text

    # A redone attempt makes its task's selection stale: counted, as not resolved, and said.
    with (run_dir / "results.jsonl").open("a") as handle:
        handle.write(_attempt(1, "RESOLVED_FULL", instance_id="m-2").model_dump_json() + "\n")
    run = load_run(run_dir)
    text = markdown_report(run)
    assert "Complete tasks without a selection recorded for their current results: 1" in text
    assert f"| no selection recorded | 1 | {format_rate(0, 1)} |" in text
    assert f"| {format_rate(4, 8)} | {format_rate(2, 4)} | {format_rate(4, 4)} | 2 |" in text


def test_the_select_command_chooses_again_with_a_scorer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    run_dir = _run_dir(tmp_path)
    assert main(["eval", "select", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "4 tasks selected" in out
    assert f"| {format_rate(3, 8)} | {format_rate(2, 4)} | {format_rate(3, 4)} | 2 |" in out
    assert "1 task incomplete (fewer than 2 finished attempts)" in out

    # With a scorer, m-5's tie goes to it (it picks B, the fix), the tokens are counted.
    model, settings = _scorer("B")
    select_run(run_dir, settings)
    assert len(model.requests) == 1
    selections = SelectionsFile(run_dir / SELECTIONS_FILE).load()
    assert (selections["m-5"].chosen, selections["m-5"].method) == (1, "scorer")
    assert len((run_dir / SELECTIONS_FILE).read_text().splitlines()) == 4  # a line a task
    text = markdown_report(load_run(run_dir))
    assert f"| {format_rate(3, 8)} | {format_rate(3, 4)} | {format_rate(3, 4)} | 2 |" in text
    assert "320 by the scorer" in text

    assert main(["eval", "select", str(run_dir), "--scorer", "judge"]) == 2
    assert "--scorer needs a Messages API server" in capsys.readouterr().err
    assert main(["eval", "select", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_the_scorer_over_the_wire_with_the_embedded_model(tmp_path: Path, server: str) -> None:
    """A real scorer: tercet's server on the bundled model, asked through `AnthropicModel`.
    Its forced tool call can only name a shown candidate, so m-5's tie goes to the scorer
    whatever the small model thinks."""
    run_dir = _run_dir(tmp_path)
    select_run(run_dir, ScorerSettings(model=CLAUDE_MODEL, base_url=server, api_key="any"))
    chosen = SelectionsFile(run_dir / SELECTIONS_FILE).load()["m-5"]
    assert chosen.method == "scorer", chosen.scorer_error
    assert chosen.chosen in (0, 1) and chosen.scorer == CLAUDE_MODEL
    assert chosen.scorer_usage.input_tokens > 0 and chosen.scorer_usage.output_tokens > 0


def test_one_attempt_a_task_has_no_best_of_k(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    results = [_attempt(0, "RESOLVED_FULL", instance_id=f"m-{n}") for n in range(1, 4)]
    write_jsonl(run_dir / "results.jsonl", results)
    record = json.loads((run_dir / "run.json").read_text())
    record["settings"]["attempts"] = 1
    (run_dir / "run.json").write_text(json.dumps(record))
    assert best_of_k(load_run(run_dir)) is None
    assert "selected@k" not in markdown_report(load_run(run_dir))
    from tercet.evals.task import EvalInputError

    with pytest.raises(EvalInputError, match="nothing to choose"):
        select_run(run_dir)


# ---------------------------------------------------------------------------- end to end


class _PlannedAgent:
    """Per task, one plan a call: "break" (the gold fix, and a change that breaks every
    regression test), "gold", "tidy" (the gold fix and a comment: another change that the
    tests cannot tell from it) or "nothing"."""

    name = "planned"
    model = ""

    def __init__(self, gold: dict[str, str], plans: dict[str, list[str]]) -> None:
        self.gold = gold
        self.plans = {k: list(v) for k, v in plans.items()}

    async def solve(self, task: TaskView, workspace: Workspace, budget: Budget) -> AgentOutcome:
        plan = self.plans[task.instance_id].pop(0)
        if plan in ("gold", "break", "tidy"):
            assert await apply_patch(workspace.path, self.gold[task.instance_id]) is None
        if plan in ("break", "tidy"):
            with (workspace.path / "xmltodict.py").open("a") as handle:
                handle.write("\nparse = None\n" if plan == "break" else "\n# tidied\n")
        return AgentOutcome("end_turn", Compute(input_tokens=100, output_tokens=10))

    async def aclose(self) -> None:
        pass


def test_best_of_two_on_real_tasks(
    dataset: Dataset, eval_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The grader's real PASS_TO_PASS outcomes drive the choice: an attempt that breaks the
    package is dropped for the one that does not; two empty attempts leave nothing; two
    different changes the tests cannot tell apart go to the scorer."""
    plans = {
        "xmltodict-strip": ["break", "gold"],
        "xmltodict-force-list": ["nothing"] * 2,
        "xmltodict-attr-name": ["gold", "tidy"],
    }
    scorer_model, scorer = _scorer("B")
    run_dir = tmp_path / "run"
    # One worker: each task's attempts call the agent in order, so its plans go in order.
    options = RunOptions(split="all", attempts=2, cache=eval_cache, instances=tuple(plans))
    run_eval(
        dataset,
        "oracle",
        AgentSettings(),
        options,
        run_dir,
        stream=None,
        agent_factory=lambda settings: _PlannedAgent(dict(settings.gold_patches), plans),
        scorer=scorer,
    )
    selections = SelectionsFile(run_dir / SELECTIONS_FILE).load()
    strip = selections["xmltodict-strip"]
    assert (strip.chosen, strip.method) == (1, "only")
    assert strip.candidates[0].status == "regressed"
    assert selections["xmltodict-force-list"].method == "none"
    tied = selections["xmltodict-attr-name"]
    assert (tied.chosen, tied.method, tied.scorer) == (1, "scorer", "judge")
    [request] = scorer_model.requests
    assert "# tidied" in request.messages[0]["content"]
    assert scorer_model.closed  # the run closes the scorer's model
    record = json.loads((run_dir / "run.json").read_text())
    assert record["settings"]["scorer"] == {"model": "judge", "base_url": None, "prompt": None}
    assert main(["eval", "report", str(run_dir), "--no-html"]) == 0
    out = capsys.readouterr().out
    assert f"| {format_rate(3, 6)} | {format_rate(2, 3)} | {format_rate(2, 3)} | 2 |" in out
    assert re.search(r"dropped: empty 2, regressed 1\.", out)
    assert "Tokens per task (all its attempts and the scorer): 327 (660 by attempts, 320 by" in out


def test_a_scorer_needs_several_attempts_and_a_server(
    dataset_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    base = ["eval", "run", "--dataset", str(dataset_dir), "--agent", "noop",
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    for options, message in [
        (["--scorer", "judge", "--scorer-base-url", "http://127.0.0.1:1"], "--attempts 2 or"),
        (["--scorer", "judge", "--attempts", "2"], "--scorer needs a Messages API server"),
        (["--scorer-prompt", "p.toml"], "--scorer-prompt needs --scorer MODEL"),
    ]:
        assert main([*base, *options]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
