"""The agent's client tools on the real thing: bash processes, files in tmp_path, bubblewrap."""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tercet.agent.checkpoints import Checkpoints
from tercet.agent.tools import (
    BashTool,
    MemoryTool,
    TextEditorTool,
    ToolContext,
    ToolResult,
    editor,
    memory,
)
from tercet.agent.tools.bash_syntax import is_read_only_command, split_commands
from tercet.sandbox.runner import unavailable_reason

pytestmark = pytest.mark.anyio


def text(result: ToolResult) -> str:
    assert isinstance(result.content, str)
    return result.content


def gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def wait_gone(pid: int, seconds: float = 30) -> bool:
    """Whether `pid` ends (polled: a killed process dies when the kernel gets to it, and an
    orphan is reaped by init); `seconds` only turns a hang into a failure."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        await asyncio.sleep(0.05)
    return gone(pid)


# --- bash ------------------------------------------------------------------------------------


@pytest.fixture
async def bash() -> AsyncIterator[BashTool]:
    tool = BashTool(timeout_s=10)
    yield tool
    await tool.aclose()


async def test_bash_definition_is_anthropics_type() -> None:
    assert BashTool().definition() == {"type": "bash_20250124", "name": "bash"}


async def test_bash_state_persists_between_calls(bash: BashTool, tmp_path: Path) -> None:
    ctx = ToolContext(tmp_path)
    (tmp_path / "sub").mkdir()
    await bash.run({"command": "cd sub && export GREETING=hello && shout() { echo ${1^^}; }"}, ctx)
    result = await bash.run({"command": 'pwd; echo "$GREETING"; shout quiet'}, ctx)
    assert text(result) == f"{tmp_path / 'sub'}\nhello\nQUIET\n"
    assert not result.is_error


async def test_bash_restart_starts_a_fresh_shell(bash: BashTool, tmp_path: Path) -> None:
    ctx = ToolContext(tmp_path)
    await bash.run({"command": "export MARK=1; cd /"}, ctx)
    assert text(await bash.run({"restart": True}, ctx)) == "The shell has been restarted."
    assert text(await bash.run({"command": 'echo "[$MARK]"; pwd'}, ctx)) == f"[]\n{tmp_path}\n"


async def test_bash_combines_stderr_and_reports_exit_status(bash: BashTool, tmp_path: Path) -> None:
    result = await bash.run(
        {"command": "echo out; echo err >&2; exit_with() { return $1; }; exit_with 3"},
        ToolContext(tmp_path),
    )
    assert text(result) == "out\nerr\nExit code 3"
    assert not result.is_error  # the command ran; its failure is information for the model
    assert text(await bash.run({"command": "true"}, ToolContext(tmp_path))) == "(no output)"


async def test_bash_survives_syntax_errors_and_stdin_readers(
    bash: BashTool, tmp_path: Path
) -> None:
    ctx = ToolContext(tmp_path)
    broken = await bash.run({"command": "echo 'never closed"}, ctx)
    assert "unexpected EOF" in text(broken)
    assert text(await bash.run({"command": "cat; echo after-cat"}, ctx)) == "after-cat\n"
    assert text(await bash.run({"command": "echo still here"}, ctx)) == "still here\n"


async def test_bash_exit_ends_the_shell_and_the_next_call_gets_a_new_one(
    bash: BashTool, tmp_path: Path
) -> None:
    ctx = ToolContext(tmp_path)
    result = await bash.run({"command": "exit 4"}, ctx)
    assert result.is_error and "exited with status 4" in text(result)
    assert text(await bash.run({"command": "echo back"}, ctx)) == "back\n"


async def test_bash_timeout_kills_the_process_group_and_restarts(tmp_path: Path) -> None:
    tool = BashTool(timeout_s=1.5)
    ctx = ToolContext(tmp_path)
    try:
        await tool.run({"command": "export BEFORE=1; echo $$ > shell.pid"}, ctx)
        started = time.monotonic()
        result = await tool.run(
            {"command": "sleep 300 & echo $! > child.pid; echo waiting; sleep 300"}, ctx
        )
        assert time.monotonic() - started < 60  # the 1.5 s timeout, not the 300 s sleep
        assert result.is_error
        assert text(result).startswith("waiting\n")
        assert "timed out after 1.5 seconds" in text(result)
        assert "shell was restarted" in text(result)
        assert await wait_gone(int((tmp_path / "child.pid").read_text()))  # the background job
        assert await wait_gone(int((tmp_path / "shell.pid").read_text()))  # and the shell
        after = await tool.run({"command": 'echo "next [$BEFORE]"'}, ctx)
        assert text(after) == "next []\n" and not after.is_error
    finally:
        await tool.aclose()


@pytest.mark.timeout(30)
async def test_bash_exec_redirecting_the_shells_output_restarts_it(tmp_path: Path) -> None:
    # Regression: EOF on the shell's output used to wait forever for a bash still alive (it
    # waits for input), holding the tool's lock so every later call hung as well.
    tool = BashTool(timeout_s=3)
    ctx = ToolContext(tmp_path)
    try:
        await tool.run({"command": "echo $$ > shell.pid"}, ctx)
        result = await asyncio.wait_for(
            tool.run({"command": "exec > log.txt 2>&1; echo hidden"}, ctx), 10
        )
        assert result.is_error and "output was closed" in text(result)
        assert await wait_gone(int((tmp_path / "shell.pid").read_text()))
        assert (tmp_path / "log.txt").read_text().startswith("hidden\n")
        after = await asyncio.wait_for(tool.run({"command": "echo fresh"}, ctx), 10)
        assert text(after) == "fresh\n" and not after.is_error
    finally:
        await tool.aclose()


@pytest.mark.timeout(30)
async def test_bash_works_with_a_space_in_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the command file's path went to the shell unquoted.
    spaced = tmp_path / "tmp dir"
    spaced.mkdir()
    monkeypatch.setenv("TMPDIR", str(spaced))
    monkeypatch.setattr(tempfile, "tempdir", str(spaced))
    tool = BashTool(timeout_s=10)
    try:
        result = await tool.run({"command": "echo ok"}, ToolContext(tmp_path))
        assert text(result) == "ok\n" and not result.is_error
    finally:
        await tool.aclose()


async def test_bash_truncates_keeping_head_and_tail(tmp_path: Path) -> None:
    tool = BashTool(max_output_chars=1000)
    try:
        result = text(await tool.run({"command": "seq 1 20000"}, ToolContext(tmp_path)))
    finally:
        await tool.aclose()
    assert result.startswith("1\n2\n3\n")
    assert result.endswith("19999\n20000\n")
    assert len(result) < 1200
    head, marker, tail = result.partition("[... output truncated: ")
    assert marker and "omitted from the middle ...]" in tail
    shown = [int(n) for n in (head + tail.split("]\n", 1)[1]).split()]
    omitted = int(tail.split(" lines)")[0].rsplit("(", 1)[1])
    assert len(shown) + omitted == 20000  # every line is shown or counted
    gaps = [b - a for a, b in itertools.pairwise(shown)]
    assert sorted(gaps)[:-1] == [1] * (len(gaps) - 1)  # consecutive but for the one cut


async def test_bash_flood_of_output_is_bounded(tmp_path: Path) -> None:
    tool = BashTool(max_output_chars=2000)
    try:
        result = text(
            await tool.run(
                {"command": "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo END"},
                ToolContext(tmp_path),
            )
        )
    finally:
        await tool.aclose()
    assert result.endswith("x\nEND\n") and len(result) < 2300
    head, marker, rest = result.partition("\n[... output truncated: ")
    count, _, tail = rest.partition(" characters (0 lines) omitted from the middle ...]\n")
    assert marker and tail
    assert len(head) + int(count) + len(tail) == 20_000_000 + len("\nEND\n")


async def test_bash_read_only_detection() -> None:
    tool = BashTool()
    read_only = [
        "ls -la",
        "cat README.md | head -5",
        "grep -rn TODO src && git status",
        "git diff HEAD~1 -- src 2>&1",
        "git log --oneline -5",
        "find . -name '*.py' -type f",
        "rg foo src 2>/dev/null | wc -l",
        "cd src && ls",
    ]
    writing = [
        "rm -rf build",
        "ls > listing.txt",
        "cat a >> b",
        "ls; rm x",
        "find . -name '*.pyc' -delete",
        "find . -exec rm {} +",
        "echo $(rm x)",
        "echo `rm x`",
        "ls\nrm x",
        "sort -o out.txt in.txt",
        "sort -no out.txt in.txt",
        "git commit -m x",
        "git -c core.pager=sh log",
        "git branch new-branch",
        "PAGER=evil git log",
        "(cd x && rm y)",
        "python -c 'print(1)'",
        "rg --pre ./evil foo",
        "git diff --output=patch.txt",
        # Long options abbreviated, as getopt_long and git accept them.
        "sort --compress-prog=sh -S 1 big.txt",
        "sort --outp=out.txt in.txt",
        "git grep --open-files-in-pag='touch x;true' -e foo",
        "git diff --outp=patch.txt",
        "echo 'unbalanced",
    ]
    for command in read_only:
        assert tool.is_read_only({"command": command}), command
    for command in writing:
        assert not tool.is_read_only({"command": command}), command
    assert tool.is_read_only({"restart": True})


def test_split_commands_sees_operators_and_redirects() -> None:
    commands = split_commands("npm run test -- -k x 2>&1 | tee log.txt && echo 'a b' > /dev/null")
    assert commands is not None
    assert [c.text for c in commands] == [
        "npm run test -- -k x",
        "tee log.txt",
        "echo 'a b'",
    ]
    assert [c.writes_by_redirect for c in commands] == [False, False, False]
    assert split_commands("echo $(whoami)") is None
    assert is_read_only_command("git --no-pager log -1")


async def test_bash_describe_is_one_line() -> None:
    assert BashTool().describe({"command": "pytest -q\n  --maxfail=1"}) == (
        "bash: pytest -q --maxfail=1"
    )


sandboxed = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"
)


@sandboxed
async def test_sandboxed_bash_writes_the_project_only(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    outside = tmp_path / "outside.txt"
    tool = BashTool(timeout_s=30, sandbox=True)
    ctx = ToolContext(project)
    script = (
        "pwd; echo made > made.txt && cat made.txt; "
        f"echo escape > {outside}; "  # lands in the sandbox's private /tmp at most
        "touch /usr/escape 2>/dev/null || echo usr-refused; "
        "grep -c : /proc/net/dev; grep CapEff /proc/self/status"
    )
    result = text(await tool.run({"command": script}, ctx))
    lines = result.splitlines()
    assert lines[0] == str(project)
    assert lines[1] == "made"
    assert "usr-refused" in lines
    assert (project / "made.txt").read_text() == "made\n"
    assert not outside.exists()
    assert "1" in lines  # /proc/net/dev lists only the loopback interface: no network
    assert "CapEff:\t0000000000000000" in lines
    # state is per call: cd does not carry over
    await tool.run({"command": "mkdir -p sub && cd sub"}, ctx)
    assert text(await tool.run({"command": "pwd"}, ctx)) == f"{project}\n"


@sandboxed
async def test_sandboxed_bash_timeout_kills_everything(tmp_path: Path) -> None:
    tool = BashTool(timeout_s=2, sandbox=True)
    started = time.monotonic()
    result = await tool.run(
        {"command": "sleep 300 & echo started; sleep 300"}, ToolContext(tmp_path)
    )
    assert time.monotonic() - started < 60  # the 2 s timeout, not the 300 s sleep
    assert result.is_error and "timed out after 2 seconds" in text(result)
    assert text(result).startswith("started\n")
    ok = await tool.run({"command": "echo fine; exit 2"}, ToolContext(tmp_path))
    assert text(ok) == "fine\nExit code 2"


# --- text editor -----------------------------------------------------------------------------


async def edit(tool: TextEditorTool, ctx: ToolContext, **input: Any) -> ToolResult:
    return await tool.run(input, ctx)


async def test_editor_definition_carries_max_characters() -> None:
    assert TextEditorTool(max_characters=500).definition() == {
        "type": "text_editor_20250728",
        "name": "str_replace_based_edit_tool",
        "max_characters": 500,
    }
    assert "max_characters" not in TextEditorTool(max_characters=None).definition()


async def test_editor_create_makes_parents_and_overwrites(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    result = await edit(tool, ctx, command="create", path="a/b/new.py", file_text="x = 1\n")
    assert text(result) == "File created successfully at: a/b/new.py"
    assert (tmp_path / "a/b/new.py").read_text() == "x = 1\n"
    again = await edit(
        tool, ctx, command="create", path=str(tmp_path / "a/b/new.py"), file_text="y"
    )
    assert "overwritten" in text(again) and not again.is_error
    assert (tmp_path / "a/b/new.py").read_text() == "y"


async def test_editor_view_numbers_lines_and_takes_ranges(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    (tmp_path / "f.txt").write_text("one\ntwo\nthree\nfour\n")
    whole = text(await edit(tool, ctx, command="view", path="f.txt"))
    assert whole == (
        "Here's the result of running `cat -n` on f.txt:\n"
        "     1\tone\n     2\ttwo\n     3\tthree\n     4\tfour"
    )
    middle = text(await edit(tool, ctx, command="view", path="f.txt", view_range=[2, 3]))
    assert middle.splitlines()[1:] == ["     2\ttwo", "     3\tthree"]
    rest = text(await edit(tool, ctx, command="view", path="f.txt", view_range=[3, -1]))
    assert rest.splitlines()[1:] == ["     3\tthree", "     4\tfour"]
    bad = await edit(tool, ctx, command="view", path="f.txt", view_range=[9, 10])
    assert bad.is_error and "[1, 4]" in text(bad)
    backwards = await edit(tool, ctx, command="view", path="f.txt", view_range=[3, 2])
    assert backwards.is_error
    missing = await edit(tool, ctx, command="view", path="nope.txt")
    assert missing.is_error and "does not exist" in text(missing)


async def test_editor_view_truncates_long_files_with_a_note(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(max_characters=200), ToolContext(tmp_path)
    (tmp_path / "long.txt").write_text("".join(f"line {n}\n" for n in range(1, 101)))
    result = text(await edit(tool, ctx, command="view", path="long.txt"))
    body, note = result.rsplit("\n", 1)
    shown = body.splitlines()[1:]
    assert len("\n".join(shown)) <= 200
    last = len(shown)
    assert shown[-1] == f"{last:>6}\tline {last}"
    assert f"lines 1-{last} of 100" in note and f"[{last + 1}, 100]" in note


async def test_editor_view_lists_a_directory_two_levels_without_hidden(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    (tmp_path / "src/pkg/deep").mkdir(parents=True)
    (tmp_path / "src/pkg/deep/too_deep.py").write_text("")
    (tmp_path / "src/main.py").write_text("")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".env").write_text("SECRET=1")
    listing = text(await edit(tool, ctx, command="view", path=str(tmp_path)))
    lines = listing.splitlines()
    assert "up to 2 levels deep" in lines[0] and "excluding hidden items" in lines[0]
    assert f"{tmp_path}/src/" in lines and f"{tmp_path}/src/main.py" in lines
    assert f"{tmp_path}/src/pkg/" in lines
    assert not any("too_deep" in line or "/deep" in line for line in lines)
    assert not any(".git" in line or ".env" in line for line in lines)


async def test_editor_str_replace_exactly_once(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    path = tmp_path / "m.py"
    path.write_text("def f():\n    return 1\n\n\ndef g():\n    return 1\n")
    result = await edit(
        tool,
        ctx,
        command="str_replace",
        path="m.py",
        old_str="def g():\n    return 1",
        new_str="def g():\n    return 2",
    )
    assert not result.is_error
    assert text(result).startswith("The file m.py has been edited.")
    assert "     6\t    return 2" in text(result)
    assert path.read_text() == "def f():\n    return 1\n\n\ndef g():\n    return 2\n"


async def test_editor_str_replace_with_two_matches_names_their_lines(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    path = tmp_path / "m.py"
    path.write_text("x = 1\ny = 2\nx = 1\n")
    result = await edit(
        tool, ctx, command="str_replace", path="m.py", old_str="x = 1", new_str="x = 3"
    )
    assert result.is_error
    assert "Multiple occurrences" in text(result) and "lines 1, 3" in text(result)
    assert path.read_text() == "x = 1\ny = 2\nx = 1\n"


async def test_editor_str_replace_miss_is_helpful(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    path = tmp_path / "m.py"
    path.write_text("def f():\n\treturn compute(1)\n")
    # indentation differs: the hint names the lines and says what to check
    spaces = await edit(
        tool, ctx, command="str_replace", path="m.py", old_str="    return compute(1)", new_str=""
    )
    assert spaces.is_error
    assert "did not appear verbatim in m.py" in text(spaces)
    assert "ignoring whitespace, lines 2-2" in text(spaces) and "tabs" in text(spaces)
    # a near miss: the closest line is shown
    typo = await edit(
        tool, ctx, command="str_replace", path="m.py", old_str="return compte(1)", new_str=""
    )
    assert typo.is_error and "closest lines are 2-2" in text(typo)
    assert "     2\t\treturn compute(1)" in text(typo)
    assert path.read_text() == "def f():\n\treturn compute(1)\n"


async def test_editor_insert_after_a_line(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    path = tmp_path / "f.txt"
    path.write_text("a\nb\n")
    top = await edit(tool, ctx, command="insert", path="f.txt", insert_line=0, insert_text="top\n")
    assert not top.is_error and "has been edited" in text(top)
    await edit(tool, ctx, command="insert", path="f.txt", insert_line=2, insert_text="mid")
    await edit(tool, ctx, command="insert", path="f.txt", insert_line=4, new_str="end\nlast")
    assert path.read_text() == "top\na\nmid\nb\nend\nlast\n"
    bad = await edit(tool, ctx, command="insert", path="f.txt", insert_line=99, insert_text="x")
    assert bad.is_error and "[0, 6]" in text(bad)


async def test_editor_keeps_crlf_line_endings(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    path = tmp_path / "win.txt"
    path.write_bytes(b"one\r\ntwo\r\n")
    result = await edit(
        tool, ctx, command="str_replace", path="win.txt", old_str="one\ntwo", new_str="1\n2"
    )
    assert not result.is_error
    assert path.read_bytes() == b"1\r\n2\r\n"


async def test_editor_leaves_mixed_line_endings_alone(tmp_path: Path) -> None:
    # Regression: one "\r\n" inside a string literal turned every line ending into CRLF.
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    path = tmp_path / "mixed.py"
    path.write_bytes(b"line1\nline2\nsep = '\r\n'\nline4\n")
    result = await edit(
        tool, ctx, command="str_replace", path="mixed.py", old_str="line1", new_str="LINE1"
    )
    assert not result.is_error
    assert path.read_bytes() == b"LINE1\nline2\nsep = '\r\n'\nline4\n"


async def test_editor_view_reads_a_huge_file_only_in_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: `view` read the whole file into memory before cutting what it showed.
    monkeypatch.setattr(editor, "MAX_VIEW_BYTES", 100)
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    (tmp_path / "huge.txt").write_text("".join(f"line {n} é\n" for n in range(1, 1001)))
    result = await edit(tool, ctx, command="view", path="huge.txt")
    lines = text(result).splitlines()
    assert not result.is_error
    assert lines[1:-1] == [f"{n:>6}\tline {n} é" for n in range(1, len(lines) - 1)]
    assert len("".join(lines[1:-1])) < 150
    assert "longer than 100 bytes: only its first" in lines[-1]


@pytest.mark.parametrize("command", ["str_replace", "insert"])
async def test_editor_refuses_to_edit_a_file_too_large_to_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setattr(editor, "MAX_EDITED_BYTES", 100)
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    path = tmp_path / "huge.txt"
    path.write_text("needle\n" + "hay\n" * 100)
    before = path.read_bytes()
    edits = (
        {"old_str": "needle", "new_str": "pin"}
        if command == "str_replace"
        else {"insert_line": 0, "insert_text": "top\n"}
    )
    result = await edit(tool, ctx, command=command, path="huge.txt", **edits)
    assert result.is_error and "larger than 100 bytes, too large to edit" in text(result)
    assert path.read_bytes() == before
    small = tmp_path / "small.txt"
    small.write_text("needle\n")
    edits["path"] = "small.txt"
    assert not (await edit(tool, ctx, command=command, **edits)).is_error


async def test_editor_refuses_binary_and_unknown_commands(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    assert (await edit(tool, ctx, command="view", path="blob.bin")).is_error
    undo = await edit(tool, ctx, command="undo_edit", path="blob.bin")
    assert undo.is_error and "view, create, str_replace, insert" in text(undo)


async def test_editor_shows_images_as_image_blocks(tmp_path: Path) -> None:
    tool, ctx = TextEditorTool(), ToolContext(tmp_path)
    (tmp_path / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    result = await edit(tool, ctx, command="view", path="pic.png")
    assert isinstance(result.content, list)
    assert result.content[0]["source"]["media_type"] == "image/png"


async def test_editor_records_checkpoints_before_each_write(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    project = tmp_path / "project"
    project.mkdir()
    (project / "kept.txt").write_text("original\n")
    tool = TextEditorTool()
    ctx = ToolContext(project, checkpoints, step=3)
    await edit(
        tool, ctx, command="str_replace", path="kept.txt", old_str="original", new_str="changed"
    )
    await edit(tool, ctx, command="create", path="new.txt", file_text="new\n")
    assert checkpoints.steps() == [3]
    assert checkpoints.rewind(3) == sorted([project / "kept.txt", project / "new.txt"])
    assert (project / "kept.txt").read_text() == "original\n"
    assert not (project / "new.txt").exists()


# --- memory ----------------------------------------------------------------------------------


async def memo(tool: MemoryTool, **input: Any) -> ToolResult:
    return await tool.run(input, ToolContext(Path("/nonexistent-cwd-is-not-used")))


async def test_memory_commands_round_trip(tmp_path: Path) -> None:
    tool = MemoryTool(tmp_path / "mem")
    assert tool.definition() == {"type": "memory_20250818", "name": "memory"}
    created = await memo(
        tool, command="create", path="/memories/notes/todo.md", file_text="- a\n- b\n"
    )
    assert text(created) == "File created successfully at: /memories/notes/todo.md"
    assert (tmp_path / "mem/notes/todo.md").read_text() == "- a\n- b\n"
    exists = await memo(tool, command="create", path="/memories/notes/todo.md", file_text="x")
    assert exists.is_error and "already exists" in text(exists)

    view = text(await memo(tool, command="view", path="/memories/notes/todo.md"))
    assert view == (
        "Here's the content of /memories/notes/todo.md with line numbers:\n     1\t- a\n     2\t- b"
    )
    listing = text(await memo(tool, command="view", path="/memories"))
    assert listing.splitlines()[0].startswith("Here're the files and directories up to 2 levels")
    assert any(line.endswith("\t/memories/notes/todo.md") for line in listing.splitlines())

    replaced = await memo(
        tool, command="str_replace", path="/memories/notes/todo.md", old_str="- b", new_str="- c"
    )
    assert text(replaced).startswith("The memory file has been edited.")
    inserted = await memo(
        tool,
        command="insert",
        path="/memories/notes/todo.md",
        insert_line=0,
        insert_text="# todo\n",
    )
    assert text(inserted) == "The file /memories/notes/todo.md has been edited."
    assert (tmp_path / "mem/notes/todo.md").read_text() == "# todo\n- a\n- c\n"

    renamed = await memo(
        tool, command="rename", old_path="/memories/notes", new_path="/memories/archive"
    )
    assert text(renamed) == "Successfully renamed /memories/notes to /memories/archive"
    assert (tmp_path / "mem/archive/todo.md").exists()
    deleted = await memo(tool, command="delete", path="/memories/archive/todo.md")
    assert text(deleted) == "Successfully deleted /memories/archive/todo.md"
    assert (await memo(tool, command="delete", path="/memories")).is_error


async def test_memory_views_the_start_of_a_huge_file_but_will_not_edit_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "MAX_VIEW_BYTES", 100)
    monkeypatch.setattr(editor, "MAX_EDITED_BYTES", 100)
    tool = MemoryTool(tmp_path / "mem")
    (tmp_path / "mem/big.md").write_text("".join(f"note {n}\n" for n in range(100)))
    view = await memo(tool, command="view", path="/memories/big.md")
    lines = text(view).splitlines()
    assert not view.is_error and lines[1] == "     1\tnote 0"
    assert lines[-1] == "[/memories/big.md is longer than 100 bytes: only its start is shown]"
    assert len(lines) < 20
    edit = await memo(
        tool, command="str_replace", path="/memories/big.md", old_str="note 0", new_str="x"
    )
    assert edit.is_error and "too large to edit" in text(edit)


async def test_memory_refuses_paths_outside_memories(tmp_path: Path) -> None:
    root = tmp_path / "mem"
    tool = MemoryTool(root)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    (root / "link").symlink_to(tmp_path)
    (root / "file_link").symlink_to(secret)
    attempts = [
        {"command": "view", "path": "/memories/../secret.txt"},
        {"command": "view", "path": "/etc/passwd"},
        {"command": "view", "path": "/memoriesX/a"},
        {"command": "view", "path": "/memories/link/secret.txt"},
        {"command": "view", "path": "/memories/file_link"},
        {"command": "create", "path": "/memories/link/planted.txt", "file_text": "x"},
        {"command": "create", "path": "/memories/a/../../planted.txt", "file_text": "x"},
        {"command": "delete", "path": "/memories/link/secret.txt"},
        {"command": "rename", "old_path": "/memories/file_link", "new_path": "/memories/x"},
        {"command": "rename", "old_path": "/memories/link", "new_path": "/memories/../../moved"},
    ]
    for attempt in attempts:
        result = await tool.run(attempt, ToolContext(tmp_path))
        assert result.is_error, attempt
        assert "do not read" not in text(result)
    assert secret.read_text() == "do not read"
    assert not (tmp_path / "planted.txt").exists()
    listing = text(await memo(tool, command="view", path="/memories"))
    assert "link" not in listing  # links out of the root are not listed either


async def test_memory_is_read_only_only_for_view(tmp_path: Path) -> None:
    tool = MemoryTool(tmp_path)
    assert tool.is_read_only({"command": "view", "path": "/memories"})
    assert not tool.is_read_only({"command": "delete", "path": "/memories/x"})
    assert tool.describe(
        {"command": "rename", "old_path": "/memories/a", "new_path": "/memories/b"}
    ) == ("memory: rename /memories/a -> /memories/b")


async def test_tools_do_not_share_state_across_instances(tmp_path: Path) -> None:
    one, two = BashTool(), BashTool()
    try:
        await one.run({"command": "export ONLY_ONE=1"}, ToolContext(tmp_path))
        result = await two.run({"command": 'echo "[${ONLY_ONE:-}]"'}, ToolContext(tmp_path))
        assert text(result) == "[]\n"
    finally:
        await one.aclose()
        await two.aclose()
    assert os.path.isdir(tmp_path)
