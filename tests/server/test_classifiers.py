"""The constitutional classifiers in the server: input refusals, output halts mid-stream, modes
per key and route, failures, the judge prompt and its cache.

The engine and the in-process classifiers are scripted (tests/server/classifier_fixtures.py), so
where a stream stops is exact; the real model's judge is tested at the end.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tercet.engine.llama import LlamaCppEngine
from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.guard.classifiers import Exchange, JudgeClassifier
from tercet.guard.constitution import Constitution, ConstitutionError
from tercet.server.app import create_app, owner_of
from tercet.server.classifiers import ClassifierConfigError, InProcessJudgeModel
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL
from tests.server import classifier_fixtures
from tests.server.classifier_fixtures import MARKER

WORDS = [f"w{i}" for i in range(1, 41)]
USER = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture(autouse=True)
def _clear_seen() -> Iterator[None]:
    classifier_fixtures.SEEN.clear()
    yield
    classifier_fixtures.SEEN.clear()


def settings_file(tmp_path: Path, text: str, name: str = "classifiers.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def marker_settings(tmp_path: Path, extra: str = "", factory: str = "marker") -> str:
    return settings_file(
        tmp_path,
        f'in_process = "tests.server.classifier_fixtures:{factory}"\n'
        f"output_check_every = 4\ntimeout_s = 2\n{extra}",
    )


def serve(engine: ScriptedEngine, classifiers: str, **settings: object) -> BackgroundServer:
    config = ServerConfig.model_validate({"api_keys": [], "classifiers": classifiers, **settings})
    return BackgroundServer(create_app(config, [engine]))


def sdk(running: BackgroundServer, key: str = "k") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=running.base_url, api_key=key, max_retries=0)


def sse_events(running: BackgroundServer, body: dict[str, object]) -> list[dict[str, object]]:
    """The stream's events as sent, in order (raw: nothing the SDK might smooth over)."""
    events = []
    with httpx.stream(
        "POST", f"{running.base_url}/v1/messages", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def streamed_text(events: list[dict[str, object]]) -> str:
    return "".join(
        e["delta"]["text"]  # type: ignore[index]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"  # type: ignore[index]
    )


def test_input_flag_refuses_before_generation(tmp_path: Path) -> None:
    engine = ScriptedEngine([" ".join(WORDS)])
    with serve(engine, marker_settings(tmp_path)) as running:
        client = sdk(running)
        asked = [{"role": "user", "content": f"please {MARKER} now"}]
        message = client.messages.create(model=CLAUDE_MODEL, max_tokens=50, messages=asked)
        assert message.stop_reason == "refusal"
        assert message.content == []
        assert message.stop_details is not None
        assert message.stop_details.type == "refusal"
        assert message.stop_details.category == "bio"  # the default constitution's first
        explanation = message.stop_details.explanation or ""
        assert explanation.startswith("input holds the marker")
        assert f"held as {message._request_id}" in explanation
        assert message.usage.output_tokens == 0 and message.usage.input_tokens > 0
        with client.messages.stream(model=CLAUDE_MODEL, max_tokens=50, messages=asked) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_message()
        assert kinds == ["message_start", "message_delta", "message_stop"]
        assert final.stop_reason == "refusal" and final.stop_details is not None
    assert engine.log == []  # the engine was never asked
    assert [e.stage for e in classifier_fixtures.SEEN] == ["input"]  # then from the cache


def test_output_flag_halts_the_stream_at_the_check_after_the_offending_text(
    tmp_path: Path,
) -> None:
    # The marker is the 6th word; checks fall after every 4th: the one after word 8 flags.
    reply = " ".join([*WORDS[:5], MARKER, *WORDS[6:]])
    engine = ScriptedEngine([reply], delay=0.002)
    with serve(engine, marker_settings(tmp_path)) as running:
        events = sse_events(running, {"model": CLAUDE_MODEL, "max_tokens": 100, "messages": USER})
        message = sdk(running).messages.create(model=CLAUDE_MODEL, max_tokens=100, messages=USER)
    words = reply.split()
    assert streamed_text(events).split() == words[:8]  # nothing after the flagging check
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "refusal"  # type: ignore[index]
    assert delta["delta"]["stop_details"]["type"] == "refusal"  # type: ignore[index]
    assert delta["usage"]["output_tokens"] == 8  # type: ignore[index]
    assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]
    answers = [e.answer.split() for e in classifier_fixtures.SEEN if e.stage == "output"]
    assert answers == [words[:4], words[:8]]  # the second request's decisions: from the cache
    assert engine.log == ["cancelled", "cancelled"]  # generation stopped, not run to the end
    assert message.stop_reason == "refusal"
    assert [b.text.split() for b in message.content if b.type == "text"] == [words[:8]]


def test_the_check_at_the_end_judges_what_no_check_saw(tmp_path: Path) -> None:
    engine = ScriptedEngine([f"a b c d e {MARKER}"])  # 6 words: one check at 4, one at the end
    with serve(engine, marker_settings(tmp_path)) as running:
        message = sdk(running).messages.create(model=CLAUDE_MODEL, max_tokens=100, messages=USER)
    assert message.stop_reason == "refusal"
    assert [len(e.answer.split()) for e in classifier_fixtures.SEEN if e.stage == "output"] == [
        4,
        6,
    ]


def test_a_clean_answer_passes_every_check(tmp_path: Path) -> None:
    engine = ScriptedEngine([" ".join(WORDS[:10])])
    with serve(engine, marker_settings(tmp_path)) as running:
        message = sdk(running).messages.create(model=CLAUDE_MODEL, max_tokens=100, messages=USER)
        metrics = httpx.get(f"{running.base_url}/metrics").text
    assert message.stop_reason == "end_turn" and message.stop_details is None
    assert message.content[0].text.split() == WORDS[:10]  # type: ignore[union-attr]
    stages = [e.stage for e in classifier_fixtures.SEEN]
    assert stages == ["input", "output", "output", "output"]  # after 4, 8, and the end (10)
    checks = 'tercet_classifier_checks_total{decision="allow",mode="enforce",stage="output"} 3.0'
    assert checks in metrics
    assert 'tercet_classifier_tokens_total{kind="input",stage="output"} 21.0' in metrics


def test_monitor_mode_only_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reply = " ".join([MARKER, *WORDS[:9]])
    engine = ScriptedEngine([reply])
    settings = marker_settings(tmp_path, 'mode = "monitor"\n')
    with (
        caplog.at_level(logging.WARNING, logger="tercet.server"),
        serve(engine, settings) as running,
    ):
        asked = [{"role": "user", "content": MARKER}]
        message = sdk(running).messages.create(model=CLAUDE_MODEL, max_tokens=100, messages=asked)
        metrics = httpx.get(f"{running.base_url}/metrics").text
    assert message.stop_reason == "end_turn"
    assert message.content[0].text == reply  # type: ignore[union-attr]
    flagged = [r.getMessage() for r in caplog.records if "classifier_flagged" in r.getMessage()]
    assert any("stage=input" in line and "mode=monitor" in line for line in flagged)
    assert any("stage=output" in line for line in flagged)
    assert 'tercet_classifier_checks_total{decision="flag",mode="monitor",stage="input"} 1.0' in (
        metrics
    )


@pytest.mark.parametrize("factory", ["failing", "slow"])
def test_a_classifier_that_fails_or_times_out_fails_closed_in_enforce(
    tmp_path: Path, factory: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = ScriptedEngine([" ".join(WORDS)])
    settings = settings_file(
        tmp_path,
        f'in_process = "tests.server.classifier_fixtures:{factory}"\ntimeout_s = 0.5\n',
    )
    with (
        caplog.at_level(logging.WARNING, logger="tercet.server"),
        serve(engine, settings) as running,
    ):
        message = sdk(running).messages.create(model=CLAUDE_MODEL, max_tokens=100, messages=USER)
        metrics = httpx.get(f"{running.base_url}/metrics").text
    assert message.stop_reason == "refusal" and message.content == []
    assert message.stop_details is not None and message.stop_details.category is None
    assert "could not decide" in (message.stop_details.explanation or "")
    assert engine.log == []
    if factory == "slow":  # a check that timed out counts its time
        assert _metric_value(metrics, 'tercet_classifier_seconds_sum{stage="input"}') >= 0.5
    assert any("classifier_error" in r.getMessage() for r in caplog.records)


def test_on_error_open_goes_on_and_still_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = ScriptedEngine(["fine answer"])
    settings = settings_file(
        tmp_path,
        'in_process = "tests.server.classifier_fixtures:failing"\non_error = "open"\n',
    )
    with (
        caplog.at_level(logging.WARNING, logger="tercet.server"),
        serve(engine, settings) as running,
    ):
        message = sdk(running).messages.create(model=CLAUDE_MODEL, max_tokens=100, messages=USER)
    assert message.stop_reason == "end_turn"
    errors = [r.getMessage() for r in caplog.records if "classifier_error" in r.getMessage()]
    assert len(errors) == 2 and all("refused=False" in e for e in errors)  # input and output


def test_modes_per_key_and_per_route(tmp_path: Path) -> None:
    monitored, trusted = "key-monitored", "key-trusted"
    extra = (
        f'[keys.{owner_of(monitored)[:12]}]\nmode = "monitor"\n'
        f'[keys.{owner_of(trusted)[:12]}]\nmode = "off"\n'
        '[routes."claude-haiku-*"]\nmode = "off"\n'
    )
    engine = ScriptedEngine(["an answer"])
    asked = [{"role": "user", "content": MARKER}]
    keys = ["key-enforced", monitored, trusted]
    with serve(engine, marker_settings(tmp_path, extra), api_keys=keys) as running:

        def ask(key: str, model: str = CLAUDE_MODEL) -> str | None:
            message = sdk(running, key).messages.create(model=model, max_tokens=20, messages=asked)
            return message.stop_reason

        assert ask("key-enforced") == "refusal"
        assert ask(monitored) == "end_turn"
        assert ask(trusted) == "end_turn"
        assert ask("key-enforced", "claude-haiku-4-5") == "end_turn"
        assert ask(monitored, "claude-haiku-4-5") == "end_turn"  # a key's own setting wins
        metrics = httpx.get(f"{running.base_url}/metrics").text
    # Enforced: one input check; monitored: input and output, on both routes; the key and the
    # route that are off: no check at all.
    counted = {
        (mode, stage): value
        for mode in ("enforce", "monitor")
        for stage in ("input", "output")
        for decision in ("flag", "allow")
        if (
            value := _metric(
                metrics,
                f'tercet_classifier_checks_total{{decision="{decision}",mode="{mode}",'
                f'stage="{stage}"}}',
            )
        )
    }
    assert counted == {("enforce", "input"): 1, ("monitor", "input"): 2, ("monitor", "output"): 2}


def _metric(exposition: str, series: str) -> int:
    return int(_metric_value(exposition, series))


def test_the_judge_is_the_servers_own_model_forced_to_a_verdict(tmp_path: Path) -> None:
    verdict = ScriptedCall("verdict", {"decision": "block", "category": "cyber_attack"})
    engine = ScriptedEngine([verdict])
    settings = settings_file(tmp_path, "output = false\n")
    with serve(engine, settings) as running:
        client = sdk(running)
        first = client.messages.create(model=CLAUDE_MODEL, max_tokens=20, messages=USER)
        again = client.messages.create(model=CLAUDE_MODEL, max_tokens=20, messages=USER)
        metrics = httpx.get(f"{running.base_url}/metrics").text
    assert first.stop_reason == again.stop_reason == "refusal"
    assert first.stop_details is not None and first.stop_details.category == "cyber"
    assert "cyber_attack" in (first.stop_details.explanation or "")
    assert len(engine.sampling) == 1  # the second decision came from the cache
    judged = engine.sampling[0].tools
    assert judged is not None and judged.choice == "tool" and judged.name == "verdict"
    # The request is prepared (its 4xx checks), then judged: the judge's prompt comes second.
    system = engine.conversations[1].system_text or ""
    assert "mass_casualty_weapons" in system and "security_and_programming" in system
    assert "tell me a story" in engine.prompts[1]
    assert 'tercet_classifier_checks_total{decision="flag",mode="enforce",stage="input"} 2.0' in (
        metrics
    )


def test_a_judge_on_the_generating_engine_judges_once_the_generation_has_ended(
    tmp_path: Path,
) -> None:
    """The scripted engine, like the embedded one, runs one generation at a time: the output
    check waits for the generation's end (its text held back, unsent), then the judge runs."""
    allow = ScriptedCall("verdict", {"decision": "allow", "category": "none"})
    block = ScriptedCall("verdict", {"decision": "block", "category": "violent_harm"})
    answer = " ".join(WORDS[:10])
    engine = ScriptedEngine([allow, answer, block])  # input check, the answer, output check
    with serve(engine, settings_file(tmp_path, "output_check_every = 4\n")) as running:
        events = sse_events(running, {"model": CLAUDE_MODEL, "max_tokens": 50, "messages": USER})
    assert streamed_text(events).split() == WORDS[:4]
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "refusal"  # type: ignore[index]
    assert delta["delta"]["stop_details"]["category"] == "general_harms"  # type: ignore[index]
    assert engine.log == ["finished", "finished", "finished"]  # the answer ran to its end
    output_check = engine.prompts[-1]
    assert " ".join(WORDS[:4]) in output_check and WORDS[4] not in output_check.split()


def test_an_unreadable_verdict_fails_closed(tmp_path: Path) -> None:
    engine = ScriptedEngine(["I think it is probably fine"])  # text, neither ALLOW nor BLOCK
    with serve(engine, settings_file(tmp_path, "output = false\n")) as running:
        message = sdk(running).messages.create(model=CLAUDE_MODEL, max_tokens=20, messages=USER)
    assert message.stop_reason == "refusal"
    assert "neither a verdict" in (message.stop_details.explanation or "")  # type: ignore[union-attr]


def test_the_judge_must_be_a_served_model(tmp_path: Path) -> None:
    settings = settings_file(tmp_path, '[judge]\nmodel = "no-such-model"\n')
    config = ServerConfig.model_validate({"api_keys": [], "classifiers": settings})
    with pytest.raises(ClassifierConfigError, match=r"judge\.model: 'no-such-model'"):
        create_app(config, [ScriptedEngine()])


@pytest.mark.parametrize(
    ("constitution", "problem"),
    [
        ('name = "x"\n', "category: needs at least one"),
        ('[[category]]\nname = "a"\nkind = "allowed"\ndescription = "d"\n', "no category is"),
        ('[[category]]\nname = "a"\nkind = "forbidden"\ndescription = "d"\n', "category[0].kind"),
        (
            '[[category]]\nname = "a"\nkind = "restricted"\ndescription = "d"\n'
            'stop_category = "weapons"\n',
            "category[0].stop_category",
        ),
        (
            '[[category]]\nname = "a"\nkind = "restricted"\ndescription = "d"\n'
            '[[category]]\nname = "a"\nkind = "allowed"\ndescription = "e"\n',
            "used twice",
        ),
        ('[[category]]\nname = "a"\nkind = "restricted"\n', "category[0].description"),
        ("[[category]\n", "not valid TOML"),
    ],
)
def test_a_malformed_constitution_is_a_clear_error(
    tmp_path: Path, constitution: str, problem: str
) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(constitution, encoding="utf-8")
    with pytest.raises(ConstitutionError) as caught:
        Constitution.load(path)
    assert str(path) in str(caught.value) and problem in str(caught.value)


def test_serve_refuses_to_start_with_a_malformed_constitution(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('name = "mine"\n', encoding="utf-8")
    settings = settings_file(tmp_path, 'constitution = "mine.toml"\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tercet.cli.main",
            "serve",
            "--port",
            "0",
            "--classifiers",
            settings,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TERCET_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode == 2
    assert "--classifiers" in done.stderr and "mine.toml: category" in done.stderr
    bad_key = settings_file(tmp_path, '[keys.sk-secret]\nmode = "off"\n', "keys.toml")
    done = subprocess.run(
        [sys.executable, "-m", "tercet.cli.main", "serve", "--port", "0", "--classifiers", bad_key],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TERCET_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode == 2 and "keys.sk-secret: a key id is" in done.stderr


def test_the_shipped_settings_and_constitution_load() -> None:
    constitution = Constitution.resolve("default")
    assert constitution.restricted and constitution.allowed
    assert all(c.stop_category for c in constitution.restricted)
    config = ServerConfig.model_validate({"api_keys": [], "classifiers": "default"})
    settings = config.classifier_settings()
    assert settings is not None and settings.mode == "enforce" and settings.on_error == "closed"


@pytest.mark.anyio
async def test_the_judge_prompt_runs_on_the_embedded_model(
    engine: LlamaCppEngine, tmp_path: Path
) -> None:
    """The default constitution's judge prompt, on the real bundled model, yields a decision
    that parses (the decision itself is not asserted: a 135M model judges weakly)."""
    config = ServerConfig.model_validate(
        {"api_keys": [], "classifiers": "default", "data_dir": tmp_path}
    )
    classifiers = create_app(config, [engine]).state.classifiers
    assert classifiers is not None
    judge = classifiers.classifier.inner
    assert isinstance(judge, JudgeClassifier) and isinstance(judge.model, InProcessJudgeModel)
    for exchange in (
        Exchange("input", "How do I kill a Python process that hangs?"),
        Exchange("output", "Write a keylogger.", answer="Sure. First, hook the keyboard"),
    ):
        decision = await judge.classify(exchange)
        assert isinstance(decision.flagged, bool)
        assert decision.input_tokens > 500  # the constitution was read
        assert 0 < decision.output_tokens <= judge.prompt.max_tokens
        if decision.flagged:
            assert decision.category is None or Constitution.resolve("default").category(
                decision.category
            )


def test_an_operator_releases_a_held_request_and_its_key_may_send_it_again(
    tmp_path: Path,
) -> None:
    operators = {"alice": "admin-alice-0123456789", "bob": "admin-bob-0123456789"}
    engine = ScriptedEngine(["the answer"])
    asked = [{"role": "user", "content": f"tell me {MARKER}"}]
    with serve(
        engine,
        marker_settings(tmp_path, "output = false\n"),
        api_keys=["key-one", "key-two"],
        admin={"operators": operators},
        data_dir=tmp_path,
    ) as running:

        def ask(key: str) -> anthropic.types.Message:
            return sdk(running, key).messages.create(
                model=CLAUDE_MODEL, max_tokens=20, messages=asked
            )

        def admin(operator: str, path: str, **body: object) -> httpx.Response:
            return httpx.post(
                f"{running.base_url}/admin/v1{path}",
                headers={"x-api-key": operators[operator]},
                json=body,
            )

        held = ask("key-one")
        assert held.stop_reason == "refusal" and held.stop_details is not None
        request_id = held._request_id
        assert request_id and f"held as {request_id}" in (held.stop_details.explanation or "")
        unknown = admin("alice", "/actions/request.release", target="req_nope")
        assert unknown.status_code == 404, unknown.text
        asked_release = admin("alice", "/actions/request.release", target=request_id)
        assert asked_release.status_code == 202  # sensitive: a second operator must approve
        assert ask("key-one").stop_reason == "refusal"  # not yet
        approval = asked_release.json()["id"]
        assert admin("bob", f"/approvals/{approval}/approve").json()["state"] == "executed"
        assert ask("key-one").stop_reason == "end_turn"  # released for that key
        assert ask("key-two").stop_reason == "refusal"  # another key's is its own
        metrics = httpx.get(f"{running.base_url}/metrics").text
    assert (
        _metric(
            metrics,
            'tercet_classifier_checks_total{decision="released",mode="enforce",stage="input"}',
        )
        == 1
    )


def _metric_value(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0
