"""The code execution server tool: the loop, containers, files and errors with a scripted model
(exact control flow), and the real model calling it through the SDK."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.sandbox.config import ContainerLimits, ExecutionLimits
from tercet.sandbox.runner import unavailable_reason
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"
)
BASH_TOOL = {"type": "code_execution_20250825", "name": "code_execution"}
PYTHON_TOOL = {"type": "code_execution_20250522", "name": "code_execution"}


def bash(command: str) -> ScriptedCall:
    return ScriptedCall("bash_code_execution", {"command": command})


@contextmanager
def scripted_server(
    tmp_path: Path, replies: list[str | ScriptedCall], **config: Any
) -> Iterator[tuple[anthropic.Anthropic, ScriptedEngine]]:
    engine = ScriptedEngine(replies)
    settings = ServerConfig(data_dir=tmp_path, api_keys=[], **config)
    with BackgroundServer(create_app(settings, [engine])) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        yield client, engine


def ask(client: anthropic.Anthropic, text: str = "Go.", **params: Any) -> Any:
    body: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "max_tokens": 500,
        "tools": [BASH_TOOL],
        "messages": [{"role": "user", "content": text}],
    }
    return client.messages.create(**(body | params))


def test_the_server_runs_the_call_and_the_model_goes_on(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [bash("echo $((6 * 7))"), "The answer is 42."]
    with scripted_server(tmp_path, replies) as (client, engine):
        message = ask(client)
        assert [b.type for b in message.content] == [
            "server_tool_use",
            "bash_code_execution_tool_result",
            "text",
        ]
        call, result, answer = message.content
        assert call.id.startswith("srvtoolu_") and call.input == {"command": "echo $((6 * 7))"}
        assert result.tool_use_id == call.id
        assert result.content.type == "bash_code_execution_result"
        assert (result.content.stdout, result.content.return_code) == ("42\n", 0)
        assert answer.text == "The answer is 42." and message.stop_reason == "end_turn"
        assert "42" in engine.prompts[-1]  # the model read the result
        assert message.container is not None and message.container.id.startswith("container_")


def test_streamed_in_order(tmp_path: Path) -> None:
    with scripted_server(tmp_path, [bash("echo hi"), "Done."]) as (client, _):
        with client.messages.stream(
            model=CLAUDE_MODEL,
            max_tokens=100,
            tools=[BASH_TOOL],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Go."}],
        ) as stream:
            starts = [e.content_block.type for e in stream if e.type == "content_block_start"]
            final = stream.get_final_message()
        assert starts == ["server_tool_use", "bash_code_execution_tool_result", "text"]
        assert final.container is not None


def test_containers_keep_files_across_requests(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [
        bash("echo saved > note.txt"),
        "ok",
        bash("cat note.txt"),
        "ok",
    ]
    with scripted_server(tmp_path, replies) as (client, _):
        first = ask(client)
        second = ask(client, container=first.container.id)
        assert second.container.id == first.container.id
        assert second.content[1].content.stdout == "saved\n"
        fresh = ask(client)  # no container named: a new, empty one
        assert fresh.container.id != first.container.id


def test_uploaded_csv_is_read_and_outputs_come_back_as_files(tmp_path: Path) -> None:
    code = (
        "import pandas, matplotlib.pyplot as plt\n"
        "frame = pandas.read_csv('data.csv')\n"
        "print(frame.value.sum())\n"
        "frame.plot(); plt.savefig('outputs/plot.png')\n"
    )
    replies: list[str | ScriptedCall] = [ScriptedCall("code_execution", {"code": code}), "ok"]
    with scripted_server(tmp_path, replies) as (client, _):
        csv = client.beta.files.upload(
            file=("data.csv", io.BytesIO(b"value\n1\n2\n3\n"), "text/csv")
        )
        message = ask(
            client,
            tools=[PYTHON_TOOL],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Sum the values and plot them."},
                        {"type": "container_upload", "file_id": csv.id},
                    ],
                }
            ],
        )
        result = message.content[1]
        assert result.type == "code_execution_tool_result"
        assert result.content.stdout == "6\n", result.content.stderr
        (output,) = result.content.content
        plot = client.beta.files.retrieve_metadata(output.file_id)
        assert (plot.filename, plot.mime_type, plot.downloadable) == ("plot.png", "image/png", True)
        assert client.beta.files.download(output.file_id).read()[:4] == b"\x89PNG"


def test_the_text_editor(tmp_path: Path) -> None:
    editor = "text_editor_code_execution"
    replies: list[str | ScriptedCall] = [
        ScriptedCall(editor, {"command": "create", "path": "a.txt", "file_text": "one\ntwo\n"}),
        ScriptedCall(
            editor,
            {
                "command": "str_replace",
                "path": "/workspace/a.txt",
                "old_str": "two",
                "new_str": "2",
            },
        ),
        ScriptedCall(editor, {"command": "view", "path": "a.txt"}),
        ScriptedCall(editor, {"command": "view", "path": "../../etc/passwd"}),
        ScriptedCall(editor, {"command": "view", "path": "missing.txt"}),
        "done",
    ]
    with scripted_server(tmp_path, replies) as (client, _):
        results = [b.content for b in ask(client).content if b.type.endswith("_result")]
        assert results[0].type == "text_editor_code_execution_create_result"
        assert results[1].lines == ["-two", "+2"] and results[1].old_start == 2
        assert results[2].content == "one\n2\n" and results[2].total_lines == 2
        assert [r.error_code for r in results[3:]] == ["invalid_tool_input", "file_not_found"]


def edit(command: str, path: str, **more: str) -> ScriptedCall:
    return ScriptedCall("text_editor_code_execution", {"command": command, "path": path, **more})


def results_of(message: Any) -> list[Any]:
    return [b.content for b in message.content if b.type.endswith("_result")]


def test_links_the_code_makes_lead_nowhere_on_the_host(tmp_path: Path) -> None:
    # The server reads and writes workspaces as its own user (root here); code in the
    # container may plant links to make it read or write the host's files for it.
    replies: list[str | ScriptedCall] = [
        bash("mkdir real && ln -s /etc etc && ln -s /etc/hostname host && mkfifo pipe.txt"),
        edit("view", "etc/hostname"),
        edit("view", "host"),
        edit("create", "etc/tercet-was-here", file_text="x"),
        edit("create", "pipe.txt", file_text="x"),  # a FIFO: must not block the server
        edit("view", "bad\u0000path"),
        edit("create", "ok.txt", file_text="\ud800"),  # cannot be saved as UTF-8
        bash("rm -rf outputs && ln -s /etc outputs"),  # outputs/ itself a link
        "done",
    ]
    with scripted_server(tmp_path, replies) as (client, _):
        results = results_of(ask(client))
        assert results[0].return_code == 0, results[0].stderr
        assert [r.error_code for r in results[1:7]] == ["invalid_tool_input"] * 6
        assert results[7].return_code == 0 and results[7].content == []
        assert list(client.beta.files.list()) == []  # nothing of /etc came back as a file
    assert not Path("/etc/tercet-was-here").exists()


def test_containers_belong_to_their_api_key(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [bash("echo A-secret > notes.txt"), "ok"]
    limits = ContainerLimits(max_per_owner=1)
    with scripted_server(tmp_path, replies, container_limits=limits) as (client, _):
        mine = ask(client)
        other = client.with_options(api_key="someone-else")
        replies[0] = bash("cat notes.txt")
        theirs = ask(other, container=mine.container.id)
        assert results_of(theirs)[0].error_code == "unavailable"
        assert ask(client, container=mine.container.id).container.id == mine.container.id
        # One key's limit leaves room for the others.
        assert results_of(ask(client))[0].error_code == "too_many_requests"
        assert results_of(ask(other))[0].type == "bash_code_execution_result"
        strange = ask(client, container={"id": 5})
        assert results_of(strange)[0].error_code == "unavailable"


def test_editor_made_folders_belong_to_the_container(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [
        edit("create", "src/app.py", file_text="print(1)\n"),
        bash("echo y > src/other.py && rm src/app.py && ls src"),
        "done",
    ]
    with scripted_server(tmp_path, replies) as (client, _):
        created, listed = results_of(ask(client))
        assert created.type == "text_editor_code_execution_create_result"
        assert (listed.stdout, listed.return_code) == ("other.py\n", 0), listed.stderr


def test_an_upload_onto_a_directory_is_left_out(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [bash("mkdir data.csv"), "ok", bash("ls -F"), "ok"]
    with scripted_server(tmp_path, replies) as (client, _):
        first = ask(client)
        csv = client.beta.files.upload(file=("data.csv", io.BytesIO(b"a\n"), "text/csv"))
        content = [
            {"type": "text", "text": "Go."},
            {"type": "container_upload", "file_id": csv.id},
        ]
        second = ask(
            client, container=first.container.id, messages=[{"role": "user", "content": content}]
        )
        assert results_of(second)[0].stdout == "data.csv/\noutputs/\n"


def test_outputs_count_against_the_storage_quota(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [bash("echo 0123456789 > outputs/big.txt"), "ok"]
    with scripted_server(tmp_path, replies, file_quota_bytes=5) as (client, _):
        (result,) = results_of(ask(client))
        assert result.return_code == 0 and result.content == []


def test_iterations_end_in_pause_turn_and_continue(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [bash("echo 1"), bash("echo 2"), "finished"]
    with scripted_server(tmp_path, replies, max_tool_iterations=2) as (client, _):
        first = ask(client)
        assert first.stop_reason == "pause_turn"
        assert [b.type for b in first.content].count("bash_code_execution_tool_result") == 2
        # Sending the turn back as it is continues it.
        going_on = ask(
            client,
            container=first.container.id,
            messages=[
                {"role": "user", "content": "Go."},
                {"role": "assistant", "content": first.content},
            ],
        )
        assert going_on.stop_reason == "end_turn" and going_on.content[-1].text == "finished"


def test_failures_are_result_blocks(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [bash("sleep 5"), "ok", bash("echo hi"), "ok"]
    limits = ExecutionLimits(wall_seconds=1)
    with scripted_server(tmp_path, replies, execution_limits=limits) as (client, _):
        slow = ask(client)
        assert slow.content[1].content.type == "bash_code_execution_tool_result_error"
        assert slow.content[1].content.error_code == "execution_time_exceeded"
        assert slow.stop_reason == "end_turn"  # the model went on after the error
        unknown = ask(client, container="container_never_made")
        assert unknown.content[1].content.error_code == "unavailable"


@pytest.mark.parametrize("stream", [False, True])
def test_the_real_model_calls_it(client: anthropic.Anthropic, stream: bool) -> None:
    # Forced, as the 135M model would not choose the tool; its command is its own.
    params: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "max_tokens": 120,
        "tools": [BASH_TOOL],
        "tool_choice": {"type": "tool", "name": "bash_code_execution"},
        "messages": [{"role": "user", "content": "List the files here."}],
        "extra_body": {"temperature": 0},
    }
    if stream:
        with client.messages.stream(**params) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**params)
    kinds = [b.type for b in message.content]
    assert kinds[:2] == ["server_tool_use", "bash_code_execution_tool_result"], kinds
    call, result = message.content[:2]
    assert call.name == "bash_code_execution" and isinstance(call.input["command"], str)
    assert result.tool_use_id == call.id
    assert result.content.type in (
        "bash_code_execution_result",
        "bash_code_execution_tool_result_error",
    )
    assert message.container is not None
    again = client.messages.create(**(params | {"extra_body": {"container": message.container.id}}))
    assert again.container is not None and again.container.id == message.container.id


def test_the_real_model_reads_an_upload_and_writes_an_output(client: anthropic.Anthropic) -> None:
    # The 135M model copies a command it is given (greedy, so the same every run); the files,
    # the sandbox and the Files API round trip are real.
    data = b"value\n1\n2\n3\n"
    csv = client.beta.files.upload(file=("data.csv", io.BytesIO(data), "text/csv"))

    def run(command: str) -> Any:
        message = client.beta.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=150,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"Run this command: {command}"},
                        {"type": "container_upload", "file_id": csv.id},
                    ],
                }
            ],
            tools=[BASH_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "bash_code_execution"},
            betas=["code-execution-2025-08-25", "files-api-2025-04-14"],
            extra_body={"temperature": 0},
        )
        call, result = message.content[:2]
        assert call.input == {"command": command}, call.input
        return result.content

    assert run("cat data.csv").stdout == data.decode()
    copied = run("cp data.csv outputs/copy.csv")
    assert copied.return_code == 0, copied.stderr
    (output,) = copied.content
    assert client.beta.files.retrieve_metadata(output.file_id).filename == "copy.csv"
    assert client.beta.files.download(output.file_id).read() == data


def started_workspace(data_dir: Path, timeout: float = 60.0) -> Path:
    """The workspace whose command has written `started` (polled: the command runs in the
    sandbox, another process; the deadline only turns a hang into a failure)."""
    import time

    deadline = time.monotonic() + timeout
    while not (found := list(data_dir.glob("sandbox/*/workspace/started"))):
        assert time.monotonic() < deadline, "the sandboxed command did not start"
        time.sleep(0.01)
    return found[0].parent


# A command that runs until the test lets it go, so what the test checks meanwhile happens
# while the command provably runs: no sleep stands in for "it has started", no clock for
# "it has not ended yet". The probes get a timeout shorter than the command's wall limit, so a
# server that waited for the command fails them instead of answering late.
GATED = "touch started; while [ ! -e go ]; do {body}; done; echo let go"
PROBE_TIMEOUT_S = 30.0


def test_the_server_keeps_serving_while_code_runs(tmp_path: Path) -> None:
    import threading

    spin = bash(GATED.format(body=":"))  # a busy loop: the command keeps a core busy
    replies: list[str | ScriptedCall] = [spin, "ok"]
    limits = ExecutionLimits(wall_seconds=PROBE_TIMEOUT_S * 2)
    with scripted_server(tmp_path, replies, execution_limits=limits) as (client, _):
        answers: list[Any] = []
        busy = threading.Thread(target=lambda: answers.append(ask(client)))
        busy.start()
        workspace = started_workspace(tmp_path)
        probe = client.with_options(timeout=PROBE_TIMEOUT_S)
        assert [m.id for m in probe.models.list()] == ["scripted"]
        assert list(probe.beta.files.list()) == []
        assert busy.is_alive()
        (workspace / "go").touch()
        busy.join()
    (answer,) = answers
    assert answer.content[1].content.stdout == "let go\n"  # it ran to its end, not to a limit


def test_other_requests_use_the_model_while_code_runs(tmp_path: Path) -> None:
    import threading

    # One engine slot: A's command holds no slot while it runs, so B is answered meanwhile.
    gated = bash(GATED.format(body="sleep 0.05"))
    replies: list[str | ScriptedCall] = [gated, "B done.", "A done."]
    limits = ExecutionLimits(wall_seconds=PROBE_TIMEOUT_S * 2)
    with scripted_server(tmp_path, replies, execution_limits=limits) as (client, engine):
        answers: list[Any] = []
        slow = threading.Thread(target=lambda: answers.append(ask(client)))
        slow.start()
        workspace = started_workspace(tmp_path)
        quick = client.with_options(timeout=PROBE_TIMEOUT_S).messages.create(
            model=CLAUDE_MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        )
        assert quick.content[0].text == "B done."
        assert slow.is_alive()
        (workspace / "go").touch()
        slow.join()
    (a,) = answers
    assert [b.type for b in a.content] == [
        "server_tool_use",
        "bash_code_execution_tool_result",
        "text",
    ]
    assert a.content[2].text == "A done." and engine.log == ["finished"] * 3


def test_too_many_containers_is_a_result(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [bash("true"), "ok"]
    limits = ContainerLimits(max_containers=1)
    with scripted_server(tmp_path, replies, container_limits=limits) as (client, _):
        assert ask(client).content[1].content.type == "bash_code_execution_result"
        refused = ask(client)  # a second container while the first is alive
        assert refused.content[1].content.error_code == "too_many_requests"
