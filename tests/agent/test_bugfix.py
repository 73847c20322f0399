"""The issue's check: a scripted model fixes a real bug in a small repository with the real
tools (view, str_replace, bash running the repository's tests), and the tests end passing."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tercet.agent import (
    BashTool,
    ModelRequest,
    Permissions,
    ScriptedModel,
    ScriptedTurn,
    TextEditorTool,
    ToolFinished,
    tool_use,
    turn,
)
from tests.agent.conftest import MakeAgent, collect, result_of

pytestmark = pytest.mark.anyio
REPO = Path(__file__).parent / "fixtures" / "buggy_repo"
EDITOR = "str_replace_based_edit_tool"
RUN_TESTS = f"{shlex.quote(sys.executable)} -m unittest -q"


def last_output(request: ModelRequest) -> str:
    """What the last tool call returned, as the model reads it."""
    (result,) = request.messages[-1]["content"]
    assert result["type"] == "tool_result"
    content = result["content"]
    assert isinstance(content, str)
    return content


def after_view(request: ModelRequest) -> ScriptedTurn:
    assert "return list(range(start, stop))" in last_output(request)
    return turn("Let me run the tests first.", tool_use("bash", {"command": RUN_TESTS}))


def after_failing_tests(request: ModelRequest) -> ScriptedTurn:
    output = last_output(request)
    assert "FAILED (failures=2)" in output and "[1, 2]" in output
    fix = {
        "command": "str_replace",
        "path": "ranges.py",
        "old_str": "range(start, stop))",
        "new_str": "range(start, stop + 1))",
    }
    return turn("`range` leaves out `stop`: an off-by-one.", tool_use(EDITOR, fix))


def after_fix(request: ModelRequest) -> ScriptedTurn:
    assert "has been edited" in last_output(request)
    return turn(tool_use("bash", {"command": RUN_TESTS}))


def after_passing_tests(request: ModelRequest) -> ScriptedTurn:
    assert last_output(request).rstrip().endswith("OK")
    return turn("Fixed the off-by-one in inclusive_range; both tests pass.")


async def test_scripted_model_fixes_an_off_by_one_with_the_real_tools(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    model = ScriptedModel(
        [
            turn(tool_use(EDITOR, {"command": "view", "path": "ranges.py"})),
            after_view,
            after_failing_tests,
            after_fix,
            after_passing_tests,
        ]
    )
    # As a careful user would set it up: edits in the project allowed, and the test command.
    permissions = Permissions.from_lists(
        allow=[f"Bash({RUN_TESTS}:*)"], mode="acceptEdits", cwd=repo
    )
    agent = make_agent(
        model, cwd=repo, tools=[BashTool(timeout_s=60), TextEditorTool()], permissions=permissions
    )
    events = await collect(agent.run("The tests of ranges.py fail. Find the bug and fix it."))

    result = result_of(events)
    assert result.ok, result.message
    assert result.turns == 5 and model.remaining == 0
    assert [e.name for e in events if isinstance(e, ToolFinished)] == [
        EDITOR,
        "bash",
        EDITOR,
        "bash",
    ]
    assert not any(e.is_error for e in events if isinstance(e, ToolFinished))
    assert "range(start, stop + 1)" in (repo / "ranges.py").read_text()
    tests = subprocess.run(
        [sys.executable, "-m", "unittest", "-q"], cwd=repo, capture_output=True, text=True
    )
    assert tests.returncode == 0, tests.stderr

    # The edit was checkpointed: rewinding to its turn brings the bug back.
    assert agent.rewind(3) == [repo / "ranges.py"]
    assert (repo / "ranges.py").read_text() == (REPO / "ranges.py").read_text()
