"""The agent adapters and their registry: oracle and noop in a git workspace, the tercet agent
on a scripted model (usage mapped to compute, bash sandboxed with the test environment
readable), Claude Code's JSON result and process handling with a stand-in binary."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tercet.agent import Budget, ScriptedModel, Usage
from tercet.agent.budget import ModelPrice
from tercet.agent.scripted import tool_use, turn
from tercet.evals.agents import (
    AgentSettings,
    TaskView,
    UnknownAgent,
    Workspace,
    agent_entry,
    create_agent,
    register_agent,
)
from tercet.evals.agents.claude_code import ClaudeCodeAgent, find_claude, parse_result
from tercet.evals.agents.reference import NoopAgent, OracleAgent
from tercet.evals.agents.tercet_sdk import TercetAgent, flops_estimate, gguf_parameters
from tercet.evals.run import GitWorkspace, collect_diff, make_workspace
from tercet.evals.task import EvalInputError
from tercet.sandbox import runner

VIEW = TaskView("demo-1", "pypi/demo", "1.0", "add(2, 2) returns 0")
FIX = "--- a/demo.py\n+++ b/demo.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"


@pytest.fixture
def workspace(tmp_path: Path) -> GitWorkspace:
    """A buggy one-file package as the runner makes a workspace: a git repo, one commit."""
    pristine = tmp_path / "pristine"
    (pristine / "tests").mkdir(parents=True)
    (pristine / "demo.py").write_text("def add(a, b):\n    return a - b\n")
    (pristine / "tests" / "test_demo.py").write_text(
        "from demo import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n"
    )
    (pristine / ".gitignore").write_text("*.py\n")  # the package's own ignores do not hide it
    return make_workspace(pristine, tmp_path / "work")


def test_unknown_agent_lists_the_known_ones() -> None:
    with pytest.raises(
        UnknownAgent, match=r"unknown agent 'gpt'.*claude-code, noop, oracle, tercet"
    ):
        agent_entry("gpt")
    with pytest.raises(UnknownAgent, match="cannot import"):
        agent_entry("no.such.module:factory")
    with pytest.raises(UnknownAgent, match="has no factory"):
        agent_entry("tercet.evals.agents.reference:nothing")
    assert isinstance(UnknownAgent("x"), EvalInputError)


def test_only_the_oracle_sees_gold_patches() -> None:
    seen: list[AgentSettings] = []

    def spy(settings: AgentSettings) -> NoopAgent:
        seen.append(settings)
        return NoopAgent()

    register_agent("spy", spy, "records its settings")
    create_agent("spy", AgentSettings(gold_patches={"demo-1": FIX}))
    assert seen[0].gold_patches == {}
    oracle = create_agent("oracle", AgentSettings(gold_patches={"demo-1": FIX}))
    assert isinstance(oracle, OracleAgent)
    by_path = agent_entry("tercet.evals.agents.reference:noop")  # a module:factory path
    assert isinstance(by_path.factory(AgentSettings()), NoopAgent)


def test_oracle_applies_the_gold_patch_and_noop_changes_nothing(
    workspace: GitWorkspace,
) -> None:
    path = workspace.path
    budget = Budget()
    outcome = asyncio.run(NoopAgent().solve(VIEW, Workspace(path), budget))
    assert outcome.stop_reason == "end_turn"
    assert collect_diff(workspace) == ""
    missing = asyncio.run(OracleAgent({}).solve(VIEW, Workspace(path), budget))
    assert missing.stop_reason == "error" and "no gold patch" in (missing.error or "")
    outcome = asyncio.run(OracleAgent({"demo-1": FIX}).solve(VIEW, Workspace(path), budget))
    assert outcome.error is None
    assert "+    return a + b" in collect_diff(workspace)
    again = asyncio.run(OracleAgent({"demo-1": FIX}).solve(VIEW, Workspace(path), budget))
    assert again.stop_reason == "error" and "git apply failed" in (again.error or "")


def test_diff_holds_new_files_and_commits_but_not_caches(workspace: GitWorkspace) -> None:
    path = workspace.path
    (path / "notes.txt").write_text("new\n")
    (path / "__pycache__").mkdir()
    (path / "__pycache__" / "demo.cpython-311.pyc").write_bytes(b"\0\1")
    (path / "demo.py").write_text("def add(a, b):\n    return a + b\n")
    subprocess.run(["git", "commit", "-qam", "agent's own commit"], cwd=path, check=True,
                   env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
                        "GIT_COMMITTER_EMAIL": "a@b", "PATH": "/usr/bin:/bin"})  # fmt: skip
    patch = collect_diff(workspace)
    assert "b/notes.txt" in patch and "+    return a + b" in patch
    assert "__pycache__" not in patch


def test_diff_never_runs_what_the_agent_put_in_its_git_directory(
    workspace: GitWorkspace, tmp_path: Path
) -> None:
    path = workspace.path
    pwned = tmp_path / "pwned"
    with (path / ".git" / "config").open("a") as config:
        config.write(
            f'[filter "x"]\n\tclean = touch {pwned}\n[core]\n\tfsmonitor = touch {pwned}\n'
        )
    (path / ".gitattributes").write_text("* filter=x\n")
    (path / "demo.py").write_text("def add(a, b):\n    return a + b\n")
    assert "+    return a + b" in collect_diff(workspace)
    assert not pwned.exists()
    shutil.rmtree(path / ".git")  # and a repository the agent removed still diffs
    assert "+    return a + b" in collect_diff(workspace)


def _scripted_agent(model: ScriptedModel, settings: AgentSettings, **kwargs: object) -> TercetAgent:
    return TercetAgent(model, "local-model", settings, **kwargs)  # type: ignore[arg-type]


def test_tercet_agent_maps_usage_to_compute(workspace: GitWorkspace, tmp_path: Path) -> None:
    path = workspace.path
    model = ScriptedModel(
        [
            turn(
                tool_use(
                    "str_replace_based_edit_tool",
                    {
                        "command": "str_replace",
                        "path": str(path / "demo.py"),
                        "old_str": "a - b",
                        "new_str": "a + b",
                    },
                ),
                usage=Usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=50),
            ),
            turn("Fixed the sign.", usage=Usage(input_tokens=30, output_tokens=5)),
        ]
    )
    settings = AgentSettings(trajectories=tmp_path / "sessions", prices={})
    agent = _scripted_agent(model, settings, parameters=1000)
    outcome = asyncio.run(agent.solve(VIEW, Workspace(path, "pytest -q tests"), Budget()))
    assert outcome.stop_reason == "end_turn", outcome.error
    c = outcome.compute
    assert (c.input_tokens, c.output_tokens, c.cache_read_tokens) == (130, 25, 50)
    assert (c.model_calls, c.tool_calls) == (2, 1)
    assert c.cost_usd is None  # no price for the model: unknown, not 0
    assert c.flops == flops_estimate(1000, 130 + 25) == 2 * 1000 * 155
    assert c.wall_seconds > 0
    assert "+    return a + b" in collect_diff(workspace)
    first = model.requests[0].messages[0]["content"][0]["text"]
    assert "add(2, 2) returns 0" in first and "pytest -q tests" in first
    assert outcome.trajectory and Path(outcome.trajectory).is_file()


def test_tercet_agent_prices_and_budgets(workspace: GitWorkspace, tmp_path: Path) -> None:
    path = workspace.path
    model = ScriptedModel([turn(tool_use("bash", {"command": "true"}), usage=Usage(1000, 0))] * 3)
    settings = AgentSettings(
        trajectories=tmp_path / "sessions", prices={"local-model": ModelPrice(2000.0, 10.0)}
    )
    outcome = asyncio.run(
        _scripted_agent(model, settings).solve(VIEW, Workspace(path), Budget(max_turns=2))
    )
    assert outcome.stop_reason == "max_turns", outcome.error
    assert outcome.compute.cost_usd == pytest.approx(4.0)
    assert outcome.compute.flops is None  # size unknown: "n/a"


@pytest.mark.skipif(runner.unavailable_reason() is not None, reason="no bubblewrap here")
def test_tercet_agent_bash_is_sandboxed_with_the_environment_readable(
    workspace: GitWorkspace, tmp_path: Path
) -> None:
    path = workspace.path
    environment = Path(runner.__file__).resolve().parents[3] / ".venv"
    outside = tmp_path / "secret.txt"
    outside.write_text("gold")
    command = (
        f"{environment}/bin/python -c 'print(2 + 2)'; cat {outside}; "
        "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), 2)'"
    )
    model = ScriptedModel([turn(tool_use("bash", {"command": command})), turn("done")])
    settings = AgentSettings(trajectories=tmp_path / "sessions")
    asyncio.run(
        _scripted_agent(model, settings).solve(VIEW, Workspace(path, None, environment), Budget())
    )
    output = json.dumps(model.requests[1].messages[-1]["content"])
    assert "4" in output  # the environment's Python runs inside
    assert "No such file" in output and "gold" not in output  # nothing else outside
    assert "Network is unreachable" in output or "OSError" in output


def test_gguf_parameters_of_the_bundled_model() -> None:
    from tercet.engine.bundled import bundled_model_path

    assert gguf_parameters(bundled_model_path()) == pytest.approx(134.5e6, rel=0.01)
    assert gguf_parameters(Path("/nonexistent.gguf")) is None


def test_claude_code_result_parsing() -> None:
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "num_turns": 4,
        "result": "done",
        "total_cost_usd": 0.0123,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 3000,
            "output_tokens": 40,
        },
        "modelUsage": {"claude-sonnet-4-6": {}},
    }
    outcome = parse_result("noise\n" + json.dumps(result), "", 0, 12.0, 1000)
    assert outcome.stop_reason == "end_turn" and outcome.model == "claude-sonnet-4-6"
    c = outcome.compute
    assert (c.input_tokens, c.cache_write_tokens, c.cache_read_tokens, c.output_tokens) == (
        10,
        200,
        3000,
        40,
    )
    assert (c.model_calls, c.cost_usd, c.flops) == (4, 0.0123, 2 * 1000 * 250)
    turns = parse_result(json.dumps({**result, "subtype": "error_max_turns"}), "", 1, 1.0, None)
    assert turns.stop_reason == "max_turns"
    broken = parse_result("", "Invalid API key", 1, 1.0, None)
    assert broken.stop_reason == "error" and "Invalid API key" in (broken.error or "")
    with pytest.raises(EvalInputError, match="--claude-binary"):
        find_claude(Path("/nonexistent/claude"))


def _fake_claude(tmp_path: Path, body: str) -> Path:
    binary = tmp_path / "claude"
    binary.write_text("#!/bin/bash\n" + body)
    binary.chmod(0o755)
    return binary


def test_claude_code_runs_in_the_workspace_against_the_base_url(
    workspace: GitWorkspace, tmp_path: Path
) -> None:
    path = workspace.path
    binary = _fake_claude(
        tmp_path,
        'sed -i "s/a - b/a + b/" demo.py\n'
        'echo "{\\"type\\":\\"result\\",\\"subtype\\":\\"success\\",\\"num_turns\\":2,'
        '\\"usage\\":{\\"input_tokens\\":5,\\"output_tokens\\":7}}"\n'
        f'printf "%s\\n" "$ANTHROPIC_BASE_URL" "$@" > {tmp_path}/args.txt\n',
    )
    settings = AgentSettings(base_url="http://127.0.0.1:9", max_tokens=512)
    outcome = asyncio.run(
        ClaudeCodeAgent(binary, settings).solve(VIEW, Workspace(path), Budget(max_turns=7))
    )
    assert outcome.stop_reason == "end_turn", outcome.error
    assert (outcome.compute.input_tokens, outcome.compute.output_tokens) == (5, 7)
    assert "+    return a + b" in collect_diff(workspace)
    args = (tmp_path / "args.txt").read_text().splitlines()
    assert args[0] == "http://127.0.0.1:9"
    assert args[args.index("--max-turns") + 1] == "7"
    assert "add(2, 2) returns 0" in args


def test_claude_code_past_its_wall_time_is_killed(workspace: GitWorkspace, tmp_path: Path) -> None:
    path = workspace.path
    binary = _fake_claude(tmp_path, "sleep 60\n")
    outcome = asyncio.run(
        ClaudeCodeAgent(binary, AgentSettings()).solve(
            VIEW, Workspace(path), Budget(max_wall_time_s=0.5)
        )
    )
    assert outcome.stop_reason == "max_wall_time"
    assert outcome.compute.wall_seconds < 30


def test_the_scaffold_in_the_docs_plugs_in(
    workspace: GitWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/evals.md's example agent, as written there, runs by its import path."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "evals.md").read_text()
    section = docs.split("## Plugging in another scaffold", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_agents.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = agent_entry("my_agents:make_agent")
    command = 'sed -i "s/a - b/a + b/" demo.py && test -n "$TASK"'
    agent = entry.factory(AgentSettings(options={"command": command}))
    outcome = asyncio.run(agent.solve(VIEW, Workspace(workspace.path), Budget()))
    assert outcome.stop_reason == "end_turn", outcome.error
    assert "+    return a + b" in collect_diff(workspace)


def test_tercet_agent_editor_stays_in_the_workspace(
    workspace: GitWorkspace, tmp_path: Path
) -> None:
    """The editor runs on the host: the run directory beside the workspace (gold patches) is
    out of its reach, through a symlink too."""
    secret = tmp_path / "tasks.jsonl"
    secret.write_text("the gold patch")
    (workspace.path / "link").symlink_to(secret)
    view = "str_replace_based_edit_tool"
    model = ScriptedModel(
        [
            turn(tool_use(view, {"command": "view", "path": str(secret)})),
            turn(tool_use(view, {"command": "view", "path": "../tasks.jsonl"})),
            turn(tool_use(view, {"command": "view", "path": "link"})),
            turn(tool_use(view, {"command": "view", "path": "demo.py"})),
            turn("done"),
        ]
    )
    settings = AgentSettings(trajectories=tmp_path / "sessions")
    asyncio.run(_scripted_agent(model, settings).solve(VIEW, Workspace(workspace.path), Budget()))
    answers = [json.dumps(r.messages[-1]["content"]) for r in model.requests[1:]]
    assert all("outside the workspace" in a and "the gold patch" not in a for a in answers[:3])
    assert "return a - b" in answers[3]
