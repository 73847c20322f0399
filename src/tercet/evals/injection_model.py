"""The guard measured with a model on AgentDojo (issue 19): tercet's own agent plays the tasks.

`TercetAgentElement` is an AgentDojo pipeline element whose `query` is one run of tercet's
agent loop (`tercet.agent.Agent`) on a Messages API model: any endpoint by base URL (tercet
serving any engine, or Anthropic's API), or tercet's app in this process on the embedded
model (`InProcessModel`, as `tercet eval run` does). The suite's AgentDojo functions are the
agent's client tools (`FunctionTool`: the schema from the function's pydantic parameters,
each call run by AgentDojo's `FunctionsRuntime` on the task's environment, the result as
AgentDojo formats it). With a guard, the agent runs it as it always does: the task observed
as the user's, each result as the tool's, each call checked after the permission rules.

The agent's run is handed back in AgentDojo's message format (assistant `tool_calls`, `tool`
messages), and AgentDojo's own checks score it (`TaskSuite.run_task_with_pipeline`). A call
the guard (or anything else) kept from running is not listed: AgentDojo scores every call
listed. The attacks' text is the model-free measurement's (`injection.injections_for`: the
victim named "Claude"), so both measurements put the same words in front of the agent.

AgentDojo calls `query` synchronously; the model's client (an HTTP pool, or the in-process
app and its engine) lives on one event loop for the whole measurement, `ModelSession`'s, on a
thread of its own, and each run is sent to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import threading
import time
import traceback
from ast import literal_eval
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentdojo.agent_pipeline.agent_pipeline import (  # type: ignore[import-untyped]
    load_system_message,
)
from agentdojo.agent_pipeline.base_pipeline_element import (  # type: ignore[import-untyped]
    BasePipelineElement,
)
from agentdojo.agent_pipeline.tool_execution import (  # type: ignore[import-untyped]
    tool_result_to_str,
)
from agentdojo.functions_runtime import (  # type: ignore[import-untyped]
    EmptyEnv,
    FunctionCall,
    FunctionsRuntime,
)
from agentdojo.task_suite.task_suite import (  # type: ignore[import-untyped]
    functions_stack_trace_from_messages,
)
from agentdojo.types import text_content_block_from_string  # type: ignore[import-untyped]

from tercet.agent import (
    Agent,
    AgentConfig,
    AnthropicModel,
    AssistantMessage,
    Budget,
    Event,
    Model,
    PermissionDecided,
    Permissions,
    PostToolUseInput,
    Result,
    ToolCall,
    ToolFinished,
)
from tercet.agent.compaction import CompactionConfig
from tercet.agent.hooks import Hooks
from tercet.agent.tools.base import ToolContext, ToolResult, one_line
from tercet.evals.injection import (
    PIPELINE_NAME,
    assistant_message,
    carries_injection,
    first_tasks,
    injections_for,
    suite,
    user_message,
)
from tercet.evals.injection_report import CallRow, InjectionRun
from tercet.guard import Guard, Policy

log = logging.getLogger("tercet.evals")
T = TypeVar("T")

# AgentDojo's own default system message (its data/system_messages.yaml), as its pipelines use.
SYSTEM_PROMPT: str = load_system_message(None)
DEFAULT_MAX_TURNS = 10
DEFAULT_MAX_TOKENS = 512
ANSWER_CHARS = 2000  # of the last reply, kept in the record to see what the model did
# The agent's working directory, which its system prompt names: the same for every run, so
# that runs share a prompt prefix (the prompt cache) and differ only where the guard acts.
AGENT_CWD = Path(tempfile.gettempdir()) / "tercet-agentdojo"


class FunctionTool:
    """One AgentDojo function as a client tool of tercet's agent, run on one task's
    environment (`env`, which the function changes in place, as AgentDojo's executor does)."""

    def __init__(self, function: Any, runtime: Any, env: Any) -> None:
        self.function = function
        self.name: str = function.name
        self.runtime = runtime
        self.env = env
        self._schema = input_schema(function)

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": str(self.function.description).strip(),
            "input_schema": self._schema,
        }

    def is_read_only(self, input: dict[str, Any]) -> bool:
        # AgentDojo's functions say nothing of what they change: for the guard, the policy's
        # tool classes decide (agentdojo.toml names every one); unclassed, they may write.
        return False

    def describe(self, input: dict[str, Any]) -> str:
        return one_line(f"{self.name}({json.dumps(input, ensure_ascii=False)})")

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> ToolResult:
        arguments = _lists_parsed(input, self._schema)
        result, error = self.runtime.run_function(self.env, self.name, arguments)
        if error is not None:
            return ToolResult(str(error), True)
        return ToolResult(tool_result_to_str(result))

    async def aclose(self) -> None:
        return None


def input_schema(function: Any) -> dict[str, Any]:
    """The JSON schema of a function's pydantic parameters, without pydantic's titles (words
    the model would read for nothing)."""
    schema: dict[str, Any] = _untitled(function.parameters.model_json_schema())
    return schema


def _untitled(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: (_untitled(item) if key != "properties" else _properties(item))
            for key, item in value.items()
            if key != "title"
        }
    if isinstance(value, list):
        return [_untitled(item) for item in value]
    return value


def _properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    # Keys of "properties" are parameter names: a parameter may be called "title".
    return {name: _untitled(schema) for name, schema in properties.items()}


def _lists_parsed(input: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """The input with a list the model wrote as a string (`"['a', 'b']"`) parsed, where the
    schema asks for an array; anything else as it is (AgentDojo's validation judges it)."""
    arguments = dict(input)
    for name, value in input.items():
        wanted = schema.get("properties", {}).get(name, {})
        if isinstance(value, str) and _allows_array(wanted):
            try:
                parsed = literal_eval(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                arguments[name] = parsed
    return arguments


def _allows_array(schema: Mapping[str, Any]) -> bool:
    options = [schema, *schema.get("anyOf", [])]
    return any(option.get("type") == "array" for option in options)


def function_tools(runtime: Any, env: Any) -> list[FunctionTool]:
    """The runtime's functions as tools on `env`."""
    return [FunctionTool(function, runtime, env) for function in runtime.functions.values()]


@dataclass(frozen=True)
class ElementSettings:
    """How the agent plays each task."""

    model: str  # the name requests ask for
    max_turns: int = DEFAULT_MAX_TURNS
    max_tokens: int = DEFAULT_MAX_TOKENS  # per model call
    policy: Policy | None = None  # a fresh guard on it for each run; None: no guard
    system_prompt: str = SYSTEM_PROMPT


@dataclass
class AgentRun:
    """What the element saw of its last run: the agent's events, the calls that ran, how it
    ended, and the run in AgentDojo's messages."""

    events: list[Event] = field(default_factory=list)
    executed: set[str] = field(default_factory=set)  # tool_use ids that ran
    result: Result | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


class TercetAgentElement(BasePipelineElement):  # type: ignore[misc]  # AgentDojo's is untyped
    """An AgentDojo pipeline element that runs tercet's agent on `model`; coroutines go to
    `submit` (a `ModelSession`'s loop: see the module's docstring). `last` is the latest run."""

    name = PIPELINE_NAME  # the attacks read the victim's name from it (injection.py says why)

    def __init__(
        self,
        model: Model,
        settings: ElementSettings,
        submit: Callable[[Coroutine[Any, Any, Any]], Any],
    ) -> None:
        self.model = model
        self.settings = settings
        self.submit = submit
        self.last = AgentRun()

    def query(
        self,
        query: str,
        runtime: Any,
        env: Any = EmptyEnv(),  # noqa: B008  # AgentDojo's signature
        messages: Sequence[Any] = (),
        extra_args: Mapping[str, Any] | None = None,
    ) -> tuple[str, Any, Any, list[Any], dict[str, Any]]:
        run = self.last = AgentRun()
        run.result = self.submit(self._play(query, function_tools(runtime, env), run))
        run.messages = agentdojo_messages(query, run)
        return query, runtime, env, [*messages, *run.messages], dict(extra_args or {})

    async def _play(self, query: str, tools: list[FunctionTool], run: AgentRun) -> Result:
        s = self.settings
        AGENT_CWD.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="tercet-agentdojo-sessions-"))
        hooks = Hooks()

        def ran(call: PostToolUseInput) -> None:  # only calls that ran reach PostToolUse
            run.executed.add(call.tool_use_id)

        hooks.add("PostToolUse", ran)
        config = AgentConfig(
            model=s.model,
            system_prompt=s.system_prompt,
            cwd=AGENT_CWD,
            load_instructions=False,
            tools=tools,
            # Every call may run as far as permissions go: only the guard (if any) refuses.
            permissions=Permissions(mode="bypassPermissions", cwd=AGENT_CWD),
            hooks=hooks,
            budget=Budget(max_turns=s.max_turns),
            max_tokens=s.max_tokens,
            sessions_dir=scratch,  # the trajectory is not kept: the record is runs.jsonl
            checkpoints=False,
            compaction=CompactionConfig(enabled=False),  # AgentDojo's tasks are short
            guard=None if s.policy is None else Guard(s.policy),
        )
        result: Result | None = None
        try:
            async with Agent(self.model, config) as agent:
                async for event in agent.run(query):
                    run.events.append(event)
                    if isinstance(event, Result):
                        result = event
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if result is None:
            raise RuntimeError("the agent's run ended without a result")
        return result


def agentdojo_messages(query: str, run: AgentRun) -> list[dict[str, Any]]:
    """The agent's run as AgentDojo's messages: the user's query; each reply as an assistant
    message listing only the calls that ran (with the input they ran with), each followed by
    its result as a tool message; an assistant message last, where AgentDojo reads the answer
    (it asks the pipeline again, up to 3 times, while there is none)."""
    inputs = {e.tool_use_id: e.input for e in run.events if isinstance(e, ToolCall)}
    results = {e.tool_use_id: e for e in run.events if isinstance(e, ToolFinished)}
    messages: list[dict[str, Any]] = [user_message(query)]
    for event in run.events:
        if not isinstance(event, AssistantMessage):
            continue
        text = _text(event.content).strip()
        calls = [
            FunctionCall(function=b["name"], args=dict(inputs.get(b["id"], b["input"])), id=b["id"])
            for b in event.content
            if b.get("type") == "tool_use" and b["id"] in run.executed and b["id"] in results
        ]
        messages.append(assistant_message(text or None, calls or None))
        messages += [_tool(call, results[call.id]) for call in calls]
    last = messages[-1]
    if last["role"] != "assistant":
        messages.append(assistant_message("", None))
    elif last["content"] is None:
        last["content"] = [text_content_block_from_string("")]
    return messages


def call_rows(run: AgentRun, *, guarded: bool) -> list[CallRow]:
    """Every call the model made, in order, and what became of it (the guard's verdict when
    guarded: a refused "ask" is a deny here, nobody being there to answer)."""
    decided = {e.tool_use_id: e for e in run.events if isinstance(e, PermissionDecided)}
    rows: list[CallRow] = []
    for event in run.events:
        if not isinstance(event, ToolFinished):
            continue
        ran = event.tool_use_id in run.executed
        decision = decided.get(event.tool_use_id)
        by_guard = decision is not None and decision.by == "guard"
        verdict = "none"
        if guarded and decision is not None:
            verdict = decision.action if by_guard else "allow"
        rows.append(
            CallRow(
                tool=event.name,
                executed=ran,
                verdict=verdict,
                rule=decision.rule if decision is not None and by_guard else "",
                error=_text(event.content) if ran and event.is_error else None,
                tool_seconds=event.duration_s,
            )
        )
    return rows


def _tool(call: FunctionCall, finished: ToolFinished) -> dict[str, Any]:
    text = _text(finished.content)
    return {
        "role": "tool",
        "content": [text_content_block_from_string("" if finished.is_error else text)],
        "tool_call_id": call.id,
        "tool_call": call,
        "error": text if finished.is_error else None,
    }


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(block.get("text", "") for block in content if block.get("type") == "text")


class ModelSession:
    """A model and the event loop it lives on, for a whole measurement (a context manager:
    leaving it closes the model, then the loop, and removes `scratch`, the model's files)."""

    def __init__(self, model: Model, model_name: str, scratch: Path | None = None) -> None:
        self.model = model
        self.model_name = model_name
        self.scratch = scratch
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tercet-agentdojo-loop", daemon=True
        )
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs `coroutine` on the session's loop and waits for its value."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def element(self, settings: ElementSettings) -> TercetAgentElement:
        return TercetAgentElement(self.model, settings, self.submit)

    def close(self) -> None:
        try:
            self.submit(self.model.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> ModelSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass(frozen=True)
class ModelTarget:
    """Which model: a Messages API endpoint (`base_url`), or the embedded one in process."""

    base_url: str | None = None
    model: str | None = None  # the name requests ask for (default: the endpoint's default)
    api_key: str | None = None
    temperature: float | None = None  # None: the server's default
    threads: int | None = None  # in process: CPU threads
    context_window: int | None = None  # in process


def open_session(target: ModelTarget) -> ModelSession:
    """A session on the target's model."""
    extra = {} if target.temperature is None else {"temperature": target.temperature}
    if target.base_url:
        name = target.model or AgentConfig.model
        model: Model = AnthropicModel(
            base_url=target.base_url, api_key=target.api_key or "none", extra_body=extra
        )
        return ModelSession(model, name)
    return _embedded(target, extra)


def _embedded(target: ModelTarget, extra: dict[str, Any]) -> ModelSession:
    """tercet's app on the bundled model, in this process (imports llama.cpp only here)."""
    from tercet.agent import InProcessModel
    from tercet.cache.config import MIB, CacheConfig
    from tercet.cache.store import PromptCache
    from tercet.engine.bundled import (
        BUNDLED_MODEL_ID,
        BUNDLED_REPETITION,
        BUNDLED_TEMPERATURE,
        BUNDLED_TOP_P,
        bundled_model_path,
    )
    from tercet.engine.llama import DEFAULT_CONTEXT_WINDOW, LlamaCppEngine
    from tercet.server.config import ServerConfig

    data_dir = Path(tempfile.mkdtemp(prefix="tercet-agentdojo-server-"))
    cache = PromptCache(CacheConfig(ram_bytes=512 * MIB, disk_bytes=0), data_dir / "prompt-cache")
    engine = LlamaCppEngine(
        bundled_model_path(),
        model_id=BUNDLED_MODEL_ID,
        context_window=target.context_window or DEFAULT_CONTEXT_WINDOW,
        default_temperature=BUNDLED_TEMPERATURE,
        default_top_p=BUNDLED_TOP_P,
        default_repetition=BUNDLED_REPETITION,
        threads=target.threads,
        cache=cache,
    )
    # Every worker waits its turn at the one engine: none is turned away (529).
    config = ServerConfig(api_keys=[], data_dir=data_dir, max_queue=1024)
    model = InProcessModel(engine, config=config, extra_body=extra)
    return ModelSession(model, target.model or engine.spec.id, scratch=data_dir)


def run_model(
    session: ModelSession,
    suite_name: str,
    user_id: str,
    injection_id: str | None = None,
    *,
    policy: Policy | None = None,
    policy_name: str = "",
    attack_name: str = "important_instructions",
    max_turns: int = DEFAULT_MAX_TURNS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> InjectionRun:
    """One run of tercet's agent on a task (attacked when `injection_id` is given), guarded
    when `policy` is, scored by AgentDojo; an exception inside is recorded, not raised.
    `policy_name` labels the measurement the run belongs to (its guarded runs' policy)."""
    tasks = suite(suite_name)
    record = InjectionRun(
        agent="model",
        model=session.model_name,
        policy=policy_name,
        guarded=policy is not None,
        suite=suite_name,
        user_task=user_id,
        injection_task=injection_id,
        attack=attack_name,
    )
    settings = ElementSettings(session.model_name, max_turns, max_tokens, policy)
    element = session.element(settings)
    started = time.monotonic()
    injections: dict[str, str] = {}
    try:
        injection_task = None if injection_id is None else tasks.injection_tasks[injection_id]
        injections = (
            {}
            if injection_id is None
            else injections_for(suite_name, user_id, injection_id, attack_name)
        )
        utility, security = tasks.run_task_with_pipeline(
            element,
            tasks.user_tasks[user_id],
            injection_task,
            injections,
            runtime_class=FunctionsRuntime,
        )
        record.utility = bool(utility)
        record.security = None if injection_task is None else bool(security)
    except Exception:
        record.error = traceback.format_exc(limit=5)
    played = element.last
    record.duration_s = time.monotonic() - started
    record.calls = call_rows(played, guarded=policy is not None)
    record.trace = [call.function for call in functions_stack_trace_from_messages(played.messages)]
    read = [_text(e.content) for e in played.events if isinstance(e, ToolFinished)]
    record.injection_seen = carries_injection(read, injections.values())
    if played.result is not None:
        usage = played.result.usage
        record.input_tokens, record.output_tokens = usage.prompt_tokens, usage.output_tokens
        record.turns, record.reason = played.result.turns, played.result.reason
        record.answer = played.result.text[:ANSWER_CHARS]
    return record


@dataclass(frozen=True)
class ModelPlan:
    """The runs of a model measurement: per user task, the benign run and each attacked run,
    each without the guard and with it."""

    suites: Sequence[str]
    user_tasks: int | None = None  # the first N of each suite (all: None)
    injection_tasks: int | None = None
    attack: str = "important_instructions"
    policy: Policy | None = None
    policy_name: str = ""
    max_turns: int = DEFAULT_MAX_TURNS
    max_tokens: int = DEFAULT_MAX_TOKENS

    def runs(self) -> list[tuple[str, str, str | None, bool]]:
        """(suite, user task, injection task or None, guarded), in the order they run."""
        planned: list[tuple[str, str, str | None, bool]] = []
        for name in self.suites:
            tasks = suite(name)
            injections = first_tasks(tasks.injection_tasks, self.injection_tasks)
            for user in first_tasks(tasks.user_tasks, self.user_tasks):
                for injection in (None, *injections):
                    planned += [(name, user, injection, guarded) for guarded in (False, True)]
        return planned


def measure_model(
    session: ModelSession,
    plan: ModelPlan,
    *,
    done: Iterable[tuple[str, str, str | None, bool]] = (),
    on_run: Callable[[InjectionRun], None] | None = None,
    workers: int = 1,
) -> list[InjectionRun]:
    """Runs the plan's runs not in `done` (`workers` at a time: they queue at the model),
    calling `on_run` with each as it ends; the runs, in the plan's order."""

    def one(entry: tuple[str, str, str | None, bool]) -> InjectionRun:
        name, user, injection, guarded = entry
        record = run_model(
            session,
            name,
            user,
            injection,
            policy=plan.policy if guarded else None,
            policy_name=plan.policy_name,
            attack_name=plan.attack,
            max_turns=plan.max_turns,
            max_tokens=plan.max_tokens,
        )
        if on_run is not None:
            on_run(record)
        return record

    skipped = set(done)
    todo = [entry for entry in plan.runs() if entry not in skipped]
    if workers <= 1:
        return [one(entry) for entry in todo]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, todo))


def planned(run: InjectionRun) -> tuple[str, str, str | None, bool]:
    """A recorded run as `ModelPlan.runs` names it."""
    return run.suite, run.user_task, run.injection_task, run.guarded
