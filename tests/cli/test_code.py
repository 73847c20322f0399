"""`tercet code`: the coding agent on the command line.

The run logic on a scripted model (tools, permissions, output formats, resume, the
interactive mode on a fake stdin, Ctrl-C), the real command against a scripted server
(signals), and the real bundled model in-process and over HTTP (the mechanics, and that both
save the same trajectory format)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tercet.agent import (
    FORMAT_VERSION,
    Model,
    ModelRequest,
    ScriptedModel,
    ScriptedTurn,
    load_session,
    tool_use,
    turn,
)
from tercet.cli.code import CodeOptions, Interrupts, run_interactive, run_print, split_rules
from tercet.cli.main import main
from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL, cli_server

EDITOR = "str_replace_based_edit_tool"
RECORDED_KINDS = {"header", "run_started", "request_sent", "user_message", "assistant_message"}


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs in this process keep their default sessions and memory out of the user's folder."""
    data = tmp_path / "data"
    monkeypatch.setenv("TERCET_DATA_DIR", str(data))
    return data


def options_in(tmp_path: Path, **changes: Any) -> CodeOptions:
    """Options for a run in tmp_path/work, sessions in tmp_path/sessions; unless `changes`
    say otherwise, every call allowed and no MCP."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    changes.setdefault("permission_mode", "bypassPermissions")
    changes.setdefault("mcp", False)
    return CodeOptions(cwd=work, sessions_dir=tmp_path / "sessions", **changes)


async def print_run(
    model: Model, options: CodeOptions, prompt: str = "Do the task.", **kwargs: Any
) -> tuple[int, str, str]:
    """`run_print`: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    status = await run_print(model, options, prompt, out, err, **kwargs)
    return status, out.getvalue(), err.getvalue()


def records(path: Path | str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def without_time(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "time"}


# ---------------------------------------------------------------------------- -p, scripted


@pytest.mark.anyio
async def test_stream_json_shows_every_event_of_a_run_with_bash_and_the_editor(
    tmp_path: Path,
) -> None:
    model = ScriptedModel(
        [
            turn("Writing a draft.", tool_use("bash", {"command": "echo draft > note.txt"})),
            turn(
                tool_use(
                    EDITOR,
                    {
                        "command": "str_replace",
                        "path": "note.txt",
                        "old_str": "draft",
                        "new_str": "final",
                    },
                )
            ),
            turn("Done: note.txt says final."),
        ]
    )
    options = options_in(tmp_path, output_format="stream-json")
    status, out, _ = await print_run(model, options)
    assert status == 0
    assert (options.cwd / "note.txt").read_text() == "final\n"
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "run_started" and kinds[-1] == "result"
    assert "text_delta" in kinds and kinds.count("tool_call") == 2
    finished = [event for event in events if event["type"] == "tool_result"]
    assert [(e["name"], e["is_error"]) for e in finished] == [("bash", False), (EDITOR, False)]
    result = events[-1]
    assert result["reason"] == "end_turn" and result["text"] == "Done: note.txt says final."
    # The saved events are exactly the streamed ones, less the deltas.
    saved = [without_time(r) for r in records(result["trajectory"])[1:]]
    assert saved == [e for e in events if not e["type"].endswith("_delta")]


@pytest.mark.anyio
async def test_print_mode_denies_what_would_ask_and_reports_json(tmp_path: Path) -> None:
    model = ScriptedModel([turn(tool_use("bash", {"command": "touch made.txt"})), "I could not."])
    options = options_in(tmp_path, output_format="json", permission_mode="default")
    status, out, err = await print_run(model, options)
    assert status == 0, err
    assert not (options.cwd / "made.txt").exists()
    (line,) = out.splitlines()
    result = json.loads(line)
    assert set(result) == {
        "type", "reason", "session_id", "message", "turns", "usage", "cost_usd", "text",
        "duration_s", "trajectory", "estimated_output_tokens",
    }  # fmt: skip
    assert (result["type"], result["reason"], result["turns"]) == ("result", "end_turn", 2)
    assert result["text"] == "I could not." and result["usage"]["output_tokens"] > 0
    assert result["cost_usd"] > 0  # priced as the Claude model it asked for
    assert Path(result["trajectory"]) == options.sessions_dir / f"{result['session_id']}.jsonl"
    (denied,) = model.requests[1].messages[-1]["content"]
    assert denied["is_error"] and "Permission to use bash was denied" in denied["content"]
    assert "no one can be asked" in denied["content"]


@pytest.mark.anyio
async def test_allowed_and_disallowed_tools_are_permission_rules(tmp_path: Path) -> None:
    model = ScriptedModel(
        [
            turn(
                tool_use("bash", {"command": "touch allowed.txt"}),
                tool_use(EDITOR, {"command": "create", "path": "edited.txt", "file_text": "x"}),
                tool_use("bash", {"command": "touch allowed.txt && rm -f other.txt"}),
            ),
            "Done.",
        ]
    )
    options = options_in(
        tmp_path,
        output_format="stream-json",
        permission_mode="default",
        allowed_tools=["Bash(touch:*)"],
        disallowed_tools=["Edit,Write"],
    )
    status, out, _ = await print_run(model, options)
    assert status == 0
    decisions = [json.loads(line) for line in out.splitlines()]
    decisions = [
        (e["name"], e["action"], e["reason"]) for e in decisions if e["type"] == "permission"
    ]
    assert decisions == [
        ("bash", "allow", "allowed by the permission rule Bash(touch:*)"),
        (EDITOR, "deny", "denied by the permission rule Edit"),
        ("bash", "deny", "it needs the user's approval (no rule allows bash: touch allowed.txt "
         "&& rm -f other.txt) and no one can be asked"),
    ]  # fmt: skip
    assert (options.cwd / "allowed.txt").exists() and not (options.cwd / "edited.txt").exists()


def test_rules_are_split_as_claude_code_writes_them() -> None:
    assert split_rules(["Bash(npm run test:*) Edit,Read(src/**)", " mcp__github "]) == [
        "Bash(npm run test:*)",
        "Edit",
        "Read(src/**)",
        "mcp__github",
    ]
    assert split_rules(["Bash(unclosed x"]) == ["Bash(unclosed x"]  # left for the parser to refuse


@pytest.mark.anyio
async def test_memory_is_kept_across_runs_of_a_project(tmp_path: Path) -> None:
    from tercet.cli.code import default_memory_dir

    memory = default_memory_dir(tmp_path / "work")
    assert memory.is_relative_to(tmp_path / "data")  # beside the sessions, not in the project
    note = {"command": "create", "path": "/memories/notes.md", "file_text": "tests: pytest -q\n"}
    first = ScriptedModel([turn(tool_use("memory", note)), "Noted."])
    status, _, err = await print_run(first, options_in(tmp_path, memory_dir=memory))
    assert status == 0, err

    def read_back(request: ModelRequest) -> ScriptedTurn:
        return turn(tool_use("memory", {"command": "view", "path": "/memories/notes.md"}))

    def check(request: ModelRequest) -> str:
        result = request.messages[-1]["content"][0]
        assert "tests: pytest -q" in str(result["content"])
        return "The tests run with pytest -q."

    second = ScriptedModel([read_back, check])  # a new session: only memory carries the note
    status, out, err = await print_run(second, options_in(tmp_path, memory_dir=memory))
    assert status == 0 and out == "The tests run with pytest -q.\n", err
    assert not list((tmp_path / "work").iterdir())


@pytest.mark.anyio
async def test_resume_continues_the_session(tmp_path: Path) -> None:
    options = options_in(tmp_path, output_format="json")
    status, out, _ = await print_run(ScriptedModel(["The answer is 4."]), options, "2+2?")
    first = json.loads(out)
    assert status == 0 and first["turns"] == 1

    def check(request: ModelRequest) -> str:
        said = [[b["text"] for b in m["content"]] for m in request.messages]
        assert said == [["2+2?"], ["The answer is 4."], ["And 3+3?"]]
        return "6."

    options.resume = first["session_id"]
    status, out, _ = await print_run(ScriptedModel([check]), options, "And 3+3?")
    second = json.loads(out)
    assert status == 0 and second["text"] == "6."
    assert (second["session_id"], second["trajectory"]) == (
        first["session_id"],
        first["trajectory"],
    )
    started = [r for r in records(second["trajectory"]) if r["type"] == "run_started"]
    assert [(r["resumed"], r["prompt"]) for r in started] == [(False, "2+2?"), (True, "And 3+3?")]
    assert load_session(Path(second["trajectory"])).turns == 2


@pytest.mark.anyio
async def test_limits_and_errors_have_their_exit_status(tmp_path: Path) -> None:
    looping = ScriptedModel([turn("Looking.", tool_use("bash", {"command": "true"}))] * 2)
    status, out, err = await print_run(looping, options_in(tmp_path, max_turns=1))
    assert status == 3
    assert out == "Looking.\n"  # the text output: the last reply's text
    assert "error: the run stopped (max_turns): the run used its 1 turns" in err
    assert "session " in err and "--resume" in err

    status, out, err = await print_run(ScriptedModel([]), options_in(tmp_path))
    assert status == 1 and out == ""
    assert "error: the run stopped (error): ScriptExhausted" in err

    status, _, err = await print_run(
        ScriptedModel([]), options_in(tmp_path, resume="20200101-000000-abcdef")
    )
    assert status == 1 and "cannot resume the session" in err


@pytest.mark.anyio
async def test_mcp_servers_that_fail_are_warnings(tmp_path: Path) -> None:
    options = options_in(tmp_path, mcp=True)
    config = {"mcpServers": {"broken": {"command": str(tmp_path / "no-such-server")}}}
    (options.cwd / ".mcp.json").write_text(json.dumps(config))
    model = ScriptedModel(["Fine."])
    status, out, err = await print_run(model, options)
    assert (status, out) == (0, "Fine.\n")
    assert err.startswith("warning: MCP server 'broken': ") and "(its tools are left out)" in err
    assert [tool["name"] for tool in model.requests[0].tools] == ["bash", EDITOR]

    (options.cwd / ".mcp.json").write_text("{not json")
    status, _, err = await print_run(ScriptedModel(["Fine."]), options)
    assert status == 0 and err.startswith("warning: no MCP servers: ")


# ---------------------------------------------------------------------------- interactive


@pytest.mark.anyio
async def test_interactive_asks_inline_and_continues_the_session(tmp_path: Path) -> None:
    model = ScriptedModel(
        [turn(tool_use("bash", {"command": "touch made.txt"})), "Made it.", "Stopping now."]
    )
    options = options_in(tmp_path, permission_mode="default")
    stdin = io.StringIO("make the file\ny\n\nthanks\n/exit\nnever read\n")
    out, err = io.StringIO(), io.StringIO()
    assert await run_interactive(model, options, stdin, out, err) == 0
    assert (options.cwd / "made.txt").exists()
    shown = out.getvalue()
    assert "* bash: touch made.txt\nAllow bash: touch made.txt? [y]es / [n]o / [a]lways: " in shown
    assert "Made it." in shown and "Stopping now." in shown
    assert shown.count("[end_turn · ") == 2
    # One session: the second prompt went to the model after the first conversation.
    said = [m["content"][-1].get("text") for m in model.requests[2].messages]
    assert said == ["make the file", None, None, "Made it.", "thanks"]
    (session,) = (tmp_path / "sessions").glob("*.jsonl")
    assert f"--resume {session.stem}" in err.getvalue()
    assert model.remaining == 0


@pytest.mark.anyio
async def test_interactive_always_and_no_with_a_reason(tmp_path: Path) -> None:
    create = {"command": "create", "path": "c.txt", "file_text": "c"}
    model = ScriptedModel(
        [
            turn(tool_use("bash", {"command": "touch a.txt"})),
            turn(tool_use("bash", {"command": "touch b.txt"})),
            "Both made.",
            turn(tool_use(EDITOR, create)),
            "Fine, I will not.",
        ]
    )
    options = options_in(tmp_path, permission_mode="default")
    stdin = io.StringIO("go\na\nnow c\nno, call it d.txt\n")  # then EOF
    out = io.StringIO()
    assert await run_interactive(model, options, stdin, out, io.StringIO()) == 0
    assert out.getvalue().count("Allow ") == 2  # bash was allowed for the session
    assert {p.name for p in options.cwd.iterdir()} == {"a.txt", "b.txt"}
    (refused,) = model.requests[4].messages[-1]["content"]
    assert refused["is_error"] and "the user said no: no, call it d.txt" in refused["content"]


@pytest.mark.anyio
async def test_interactive_prompts_go_on_after_a_trailing_backslash(tmp_path: Path) -> None:
    model = ScriptedModel(["Both lines read.", "One line."])
    stdin = io.StringIO("first line \\\nsecond line\n\\\n\nsingle\n")
    assert (
        await run_interactive(model, options_in(tmp_path), stdin, io.StringIO(), io.StringIO()) == 0
    )
    first, second = (m.messages[-1]["content"][-1]["text"] for m in model.requests)
    assert (first, second) == ("first line \nsecond line", "single")  # a lone "\\" is blank


@pytest.mark.anyio
async def test_interactive_reports_a_session_it_cannot_resume(tmp_path: Path) -> None:
    options = options_in(tmp_path, resume="20200101-000000-abcdef")
    err = io.StringIO()
    status = await run_interactive(
        ScriptedModel([]), options, io.StringIO("hi\n"), io.StringIO(), err
    )
    assert status == 1 and "cannot resume the session" in err.getvalue()


# ---------------------------------------------------------------------------- Ctrl-C


@pytest.mark.anyio
async def test_ctrl_c_once_stops_the_run_at_its_next_step(tmp_path: Path) -> None:
    interrupts = Interrupts(io.StringIO())

    def press(request: ModelRequest) -> ScriptedTurn:
        interrupts.press()
        return turn("one two three four", tool_use("bash", {"command": "touch never.txt"}))

    options = options_in(tmp_path, output_format="json")
    status, out, _ = await print_run(ScriptedModel([press]), options, interrupts=interrupts)
    assert status == 130
    result = json.loads(out)
    assert result["reason"] == "interrupted" and not (options.cwd / "never.txt").exists()
    assert records(result["trajectory"])[-1]["reason"] == "interrupted"


@pytest.mark.anyio
async def test_ctrl_c_twice_cancels_a_long_tool_call(tmp_path: Path) -> None:
    interrupts = Interrupts(io.StringIO())

    def press_twice(request: ModelRequest) -> ScriptedTurn:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, interrupts.press)
        loop.call_later(0.5, interrupts.press)
        return turn(tool_use("bash", {"command": "sleep 30"}))

    started = time.monotonic()
    status, out, err = await print_run(
        ScriptedModel([press_twice]), options_in(tmp_path), interrupts=interrupts
    )
    assert status == 130 and time.monotonic() - started < 25  # cancelled, not the 30 s sleep
    assert out == "" and "error: the run stopped (interrupted): the run was cancelled" in err
    (session,) = (tmp_path / "sessions").glob("*.jsonl")
    last = records(session)[-1]
    assert (last["type"], last["reason"]) == ("result", "interrupted")


# ---------------------------------------------------------------------------- the command


def tercet_code(
    *args: str, cwd: Path, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tercet.cli.main", "code", *args],
        cwd=cwd,
        env={**environ, "TERCET_DATA_DIR": str(data_dir), **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[str]:
    """A server whose model first runs `sleep 30` with bash, then writes 400 slow words."""
    engine = ScriptedEngine(
        [ScriptedCall("bash", {"command": "sleep 30"}), " ".join(["word"] * 400)], delay=0.02
    )
    config = ServerConfig(data_dir=tmp_path / "server", api_keys=[])
    with BackgroundServer(create_app(config, [engine])) as running:
        yield running.base_url


def test_ctrl_c_in_the_command_saves_the_interrupted_session(
    slow_server: str, tmp_path: Path
) -> None:
    """SIGINT as a terminal sends it: twice during a long tool call, then once during a
    long reply (the resumed session); each run ends with 130 and an "interrupted" result."""
    common = [
        "--base-url",
        slow_server,
        "--output-format",
        "stream-json",
        "--no-mcp",
        "--max-tokens",
        "1024",
    ]
    common += ["--permission-mode", "bypassPermissions", "--sessions-dir", str(tmp_path / "s")]

    def interrupt(process: subprocess.Popen[str], when: str, presses: int) -> list[dict[str, Any]]:
        assert process.stdout is not None and process.stderr is not None
        events = []
        seen_err = ""
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1]["type"] == when:
                for press in range(presses):
                    process.send_signal(signal.SIGINT)
                    if press + 1 < presses:
                        # The next press once the command has taken this one (it says so):
                        # two signals sent before it runs its handler arrive as one.
                        while "Ctrl-C again" not in (line := process.stderr.readline()):
                            assert line, f"the command ended first: {seen_err}"
                            seen_err += line
                        seen_err += line
                break
        rest, err = process.communicate(timeout=30)
        err = seen_err + err
        assert process.returncode == 130, err
        assert "Traceback" not in err
        return events + [json.loads(line) for line in rest.splitlines()]

    first = tercet_code("-p", "Wait.", *common, cwd=tmp_path, data_dir=tmp_path / "data")
    events = interrupt(first, "tool_call", presses=2)
    (session,) = (tmp_path / "s").glob("*.jsonl")
    assert events[-1]["reason"] == "interrupted"  # the result the loop saved, cancelled
    assert records(session)[-1] == {**events[-1], "time": records(session)[-1]["time"]}

    resumed = tercet_code(
        "-p", "Talk.", "--resume", session.stem, *common, cwd=tmp_path, data_dir=tmp_path / "data"
    )
    events = interrupt(resumed, "text_delta", presses=1)
    assert events[-1]["type"] == "result" and events[-1]["reason"] == "interrupted"
    assert events[-1]["session_id"] == session.stem
    assert records(session)[-1] == {**events[-1], "time": records(session)[-1]["time"]}


def test_the_command_on_a_server_prints_and_converses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-p -` reads the task from stdin and prints the answer; without -p stdin's lines are
    prompts. Both through `main`, on a scripted server."""
    engine = ScriptedEngine(["The answer is 4."])
    config = ServerConfig(data_dir=tmp_path / "server", api_keys=[])
    common = ["--max-tokens", "1024", "--sessions-dir", str(tmp_path / "s"), "--no-mcp"]
    common += ["--model", CLAUDE_MODEL]  # the SDK warns about older names
    with BackgroundServer(create_app(config, [engine])) as running:
        common += ["--base-url", running.base_url, "--cwd", str(tmp_path)]
        monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2+2?\n"))
        assert main(["code", "-p", "-", *common]) == 0
        printed = capsys.readouterr()
        assert printed.out == "The answer is 4.\n" and "What is 2+2?" in engine.prompts[0]
        assert re.fullmatch(r"session \S+ \(continue it with --resume\)\n", printed.err)

        monkeypatch.setattr(sys, "stdin", io.StringIO("And 2+3?\n"))
        assert main(["code", *common]) == 0
    chatted = capsys.readouterr()
    assert chatted.out.startswith("The answer is 4.\n[end_turn · 1 turn · ")
    assert "--resume " in chatted.err and "And 2+3?" in engine.prompts[1]


def test_a_closed_output_ends_the_run_quietly(tmp_path: Path) -> None:
    engine = ScriptedEngine([" ".join(["word"] * 400)], delay=0.01)
    config = ServerConfig(data_dir=tmp_path / "server", api_keys=[])
    with BackgroundServer(create_app(config, [engine])) as running:
        args = ["-p", "Talk.", "--output-format", "stream-json", "--no-mcp"]
        args += ["--base-url", running.base_url, "--model", CLAUDE_MODEL]
        args += ["--sessions-dir", str(tmp_path / "s"), "--max-tokens", "1024"]
        process = tercet_code(*args, cwd=tmp_path, data_dir=tmp_path / "data")
        assert process.stdout is not None and process.stderr is not None
        assert json.loads(process.stdout.readline())["type"] == "run_started"
        process.stdout.close()  # as `| head -1` does
        status = process.wait(timeout=60)
        err = process.stderr.read()
    assert status == 141 and "Traceback" not in err, err
    (session,) = (tmp_path / "s").glob("*.jsonl")
    assert records(session)[-1]["type"] == "result"


def test_continue_picks_the_projects_latest_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = ScriptedEngine(["Noted."])
    config = ServerConfig(data_dir=tmp_path / "server", api_keys=[])
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    common = ["--sessions-dir", str(tmp_path / "s"), "--no-mcp", "--output-format", "json"]
    common += ["--model", CLAUDE_MODEL, "--max-tokens", "1024"]
    with BackgroundServer(create_app(config, [engine])) as running:
        common += ["--base-url", running.base_url]

        def code(*args: str) -> tuple[int, dict[str, Any] | str]:
            status = main(["code", *args, *common])
            out, err = capsys.readouterr()
            return status, json.loads(out) if status == 0 else err

        assert code("--continue", "-p", "Hi", "--cwd", str(here)) == (
            2,
            f"error: --continue: no saved session of {here} to continue\n",
        )
        _, first = code("-p", "The word is kiwi.", "--cwd", str(here))
        code("-p", "Another project.", "--cwd", str(elsewhere))  # changed last, not ours
        status, again = code("--continue", "-p", "What was the word?", "--cwd", str(here))
    assert status == 0 and isinstance(first, dict) and isinstance(again, dict)
    assert again["session_id"] == first["session_id"]
    assert "The word is kiwi." in engine.prompts[-1] and "Another" not in engine.prompts[-1]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--cwd", "/nonexistent/dir"], 2, "--cwd /nonexistent/dir is not a directory"),
        (["--allowed-tools", "Bash(unclosed"], 2, "cannot read the permission rule"),
        (["--thinking-budget", "100"], 2, "--thinking-budget must be at least 1024"),
        (["--model", "my.gguf"], 2, "use --gguf"),
        (["--max-turns", "0"], 2, "--max-turns must be positive"),
        (["--max-budget-usd", "-1"], 2, "--max-budget-usd must be positive"),
        (["--resume", "nosuch"], 1, "cannot resume the session"),
    ],
)
def test_bad_command_lines_get_a_message(
    args: list[str],
    status: int,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["code", "-p", "task", "--sessions-dir", str(tmp_path), *args])
    captured = capsys.readouterr()
    assert code == status and captured.err.startswith("error: ") and message in captured.err
    assert captured.out == ""


def test_an_empty_task_or_a_format_without_a_task_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["code", "-p", " "]) == 2
    assert "-p needs a task" in capsys.readouterr().err
    assert main(["code", "--output-format", "json"]) == 2
    assert "--output-format json is for -p runs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        main(["code", "-p", "x", "--output-format", "xml"])
    assert exit.value.code == 2


# ---------------------------------------------------------------------------- the real model


def run_bundled(work: Path, tmp_path: Path, name: str, args: list[str]) -> list[dict[str, Any]]:
    """`tercet code` with `args`, checked; its trajectory's records."""
    sessions = tmp_path / f"sessions-{name}"
    process = tercet_code(
        *args, "--sessions-dir", str(sessions), cwd=work, data_dir=tmp_path / name
    )
    out, err = process.communicate(timeout=180)
    result = json.loads(out)
    assert result["reason"] in ("end_turn", "max_turns"), (name, result, err)
    assert process.returncode == (0 if result["reason"] == "end_turn" else 3)
    assert 1 <= result["turns"] <= 2 and result["usage"]["input_tokens"] > 100
    (path,) = sessions.glob("*.jsonl")
    assert str(path) == result["trajectory"]
    assert load_session(path).turns == result["turns"]
    return records(path)


def test_the_bundled_model_in_process_and_over_http(tmp_path: Path) -> None:
    """The real SmolLM2-135M runs a small task in-process and through `tercet serve`: the
    loop runs, each run ends within its budget, and both save the same trajectory format.
    One thread each: llama.cpp's threads spin-wait, and on a busy 2-core machine two of them
    can stall for minutes."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "hello.txt").write_text("hello\n")
    common = ["-p", "Show the contents of hello.txt.", "--max-tokens", "64", "--max-turns", "2"]
    common += ["--output-format", "json", "--permission-mode", "plan"]  # nothing can change
    engine = ["--threads", "1", "--context-window", "8192"]
    with cli_server(*engine, "--data-dir", str(tmp_path / "server")) as server:
        runs = {"in-process": engine, "http": ["--base-url", server]}
        trajectories = {
            name: run_bundled(work, tmp_path, name, [*common, *extra])
            for name, extra in runs.items()
        }
    assert (work / "hello.txt").read_text() == "hello\n" and len(list(work.iterdir())) == 1
    local, remote = trajectories["in-process"], trajectories["http"]
    header = ("tercet-trajectory", FORMAT_VERSION)
    assert (local[0]["format"], local[0]["version"]) == header
    assert (remote[0]["format"], remote[0]["version"]) == header
    kinds = [{r["type"]: set(r) for r in t} for t in (local, remote)]
    assert RECORDED_KINDS | {"result"} <= kinds[0].keys() & kinds[1].keys()
    for kind in kinds[0].keys() & kinds[1].keys():
        assert kinds[0][kind] == kinds[1][kind], kind
    assert local[-1]["cost_usd"] == 0  # the local model is free in-process
