"""Constitutional classifiers in the server (`tercet serve --classifiers SETTINGS`).

Per API key and per route the classifiers are off, monitor (judge and log, never refuse) or
enforce. With them on, the request's latest user turn is judged before generation starts, and
the answer every `output_check_every` engine chunks (one a token on the embedded engine) and at
the end. The stream waits at each check: when one flags, the reply stops there with
`stop_reason: "refusal"` and `stop_details`, and nothing generated after the check is sent.

The judge is a Messages API model: by default the server's own (called in process, in a line
of its own, so that a check never waits behind the request it judges), another model the
server routes, or an upstream server. An operator's in-process classifier can take its place.
A check that fails or times out refuses in enforce mode unless `on_error = "open"`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import tomllib
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tercet.engine.base import (
    Finish,
    GenerationEvent,
    ModelSpec,
    TextChunk,
    ThinkingChunk,
    ToolCallDelta,
    ToolCallStart,
)
from tercet.guard.classifiers import (
    AnthropicJudgeModel,
    CachedClassifier,
    Classifier,
    ClassifierError,
    Decision,
    Exchange,
    JudgeClassifier,
    JudgeReply,
    Stage,
    load_factory,
)
from tercet.guard.constitution import Constitution
from tercet.server.approvals import Action, Outcome
from tercet.server.conversation import latest_turn
from tercet.server.request_log import ClassifierCheck, GenerationStats
from tercet.wire.requests import MessageCreateRequest
from tercet.wire.responses import Message, RefusalStopDetails

log = logging.getLogger("tercet.server")

SHIPPED_SETTINGS = Path(__file__).with_name("classifiers.toml")
RELEASE = "request.release"  # the operators' action on a held request
MAX_HELD = 10_000  # held requests remembered (the oldest forgotten first)
Mode = Literal["off", "monitor", "enforce"]
EngineEvent = TextChunk | ThinkingChunk | ToolCallStart | ToolCallDelta


class ClassifierConfigError(ValueError):
    """Classifier settings that cannot be used; names the file, the key and the problem."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModeSetting(_Settings):
    mode: Mode


class JudgeSettings(_Settings):
    model: str = Field(
        default="self",
        description="'self' (the server's default model), a model name this server serves or "
        "routes, or with base_url the upstream's model name",
    )
    base_url: str | None = Field(default=None, description="an upstream Messages API server")
    api_key_env: str | None = Field(default=None, description="the upstream key's variable")


class ClassifierSettings(_Settings):
    """The classifiers' settings, as a TOML file (classifiers.toml is the shipped one)."""

    constitution: str = Field(default="default", description="a shipped name or a TOML path")
    mode: Mode = "enforce"
    on_error: Literal["closed", "open"] = Field(
        default="closed", description="what a check that fails or times out does in enforce"
    )
    input: bool = True
    output: bool = True
    output_check_every: int = Field(default=32, ge=1, description="engine chunks between checks")
    timeout_s: float = Field(default=30.0, gt=0)
    max_context_chars: int = Field(default=8000, ge=100)
    cache_size: int = Field(default=4096, ge=0, description="decisions kept by content hash")
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    in_process: str | None = Field(
        default=None, description="'module:factory' of an in-process classifier (no judge)"
    )
    keys: dict[str, ModeSetting] = Field(
        default_factory=dict, description="key id (the request log's key=) -> mode"
    )
    routes: dict[str, ModeSetting] = Field(
        default_factory=dict, description="requested model name glob -> mode"
    )
    source: Path | None = Field(default=None, exclude=True)

    @classmethod
    def resolve(cls, name_or_path: str) -> ClassifierSettings:
        """'default' (the shipped settings: enforce, the default constitution, the server's
        own model as judge) or a settings file's path."""
        path = SHIPPED_SETTINGS if name_or_path == "default" else Path(name_or_path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ClassifierConfigError(f"{path}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ClassifierConfigError(f"{path}: not valid TOML: {exc}") from None
        try:
            settings = cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(p) for p in error["loc"])
            raise ClassifierConfigError(f"{path}: {key}: {error['msg']}") from None
        for key_id in settings.keys:
            if len(key_id) < 8 or any(c not in "0123456789abcdef" for c in key_id):
                raise ClassifierConfigError(
                    f"{path}: keys.{key_id}: a key id is 8 or more hex digits, as the request "
                    "log's key= shows (the start of the key's SHA-256), never the key itself"
                )
        settings.source = path
        return settings

    def load_constitution(self) -> Constitution:
        """The constitution (a relative path is read from the settings file's folder); raises
        `ConstitutionError` naming the file, the key and the problem."""
        name = self.constitution
        if self.source is not None and ("/" in name or name.endswith(".toml")):
            path = Path(name)
            name = str(path if path.is_absolute() else self.source.parent / path)
        return Constitution.resolve(name)


# Sends one Messages API request to a model of this server, in process (see app.py).
InProcessCreate = Callable[[MessageCreateRequest], Awaitable[Message]]


class InProcessJudgeModel:
    """The judge on a model this server serves, without a socket."""

    def __init__(self, create: InProcessCreate) -> None:
        self._create = create

    async def create(self, body: dict[str, Any]) -> JudgeReply:
        message = await self._create(MessageCreateRequest.model_validate(body))
        usage = message.usage
        return JudgeReply(
            [block.model_dump() for block in message.content],
            usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens,
            usage.output_tokens,
        )


class ServerClassifiers:
    """The server's classifiers: one classifier (cached), the settings, and the mode that
    applies to each key and route."""

    def __init__(
        self,
        settings: ClassifierSettings,
        constitution: Constitution,
        classifier: Classifier,
        close: Callable[[], Awaitable[None]] | None = None,
        judge_engine: str | None = None,
    ) -> None:
        self.settings = settings
        self.judge_engine = judge_engine  # the served engine the judge runs on, if one is
        self.constitution = constitution
        self.classifier = CachedClassifier(
            classifier,
            scope=constitution.digest,
            timeout_s=settings.timeout_s,
            size=settings.cache_size,
        )
        self._close = close
        # A key's own mode set through the admin API (None: these settings decide).
        self.key_modes: Callable[[str], Mode | None] = lambda _owner: None
        # Requests the input classifier refused in enforce mode, by request id (the newest
        # MAX_HELD), and the ones operators released: that key may send them again.
        self.held: OrderedDict[str, HeldRequest] = OrderedDict()
        self._released: set[tuple[str, str]] = set()  # (owner, exchange digest)
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        settings: ClassifierSettings,
        served: Callable[[str], tuple[str, str]],
        create: InProcessCreate,
    ) -> ServerClassifiers:
        """The classifiers the settings describe. `served(name)` is the model name to ask and the
        served engine it reaches (raises for none); `create` runs a request on this server in process. Raises
        `ConstitutionError` or `ClassifierConfigError` naming what is wrong."""
        constitution = settings.load_constitution()
        if settings.in_process is not None:
            try:
                factory = load_factory(settings.in_process)
            except ValueError as exc:
                raise ClassifierConfigError(f"{settings.source}: {exc}") from None
            return cls(settings, constitution, factory(constitution))
        judge = settings.judge
        if judge.base_url is not None:
            key = os.environ.get(judge.api_key_env) if judge.api_key_env else None
            if judge.api_key_env and key is None:
                raise ClassifierConfigError(
                    f"{settings.source}: judge.api_key_env: ${judge.api_key_env} is not set"
                )
            upstream = AnthropicJudgeModel(judge.base_url, key, settings.timeout_s)
            classifier = JudgeClassifier(
                upstream,
                constitution,
                model_name=judge.model,
                max_chars=settings.max_context_chars,
            )
            return cls(settings, constitution, classifier, upstream.aclose)
        try:
            model_name, engine_id = served(judge.model)
        except Exception as exc:
            raise ClassifierConfigError(
                f"{settings.source}: judge.model: {judge.model!r} is not a model this server "
                f"serves or routes ({exc})"
            ) from None
        local = InProcessJudgeModel(create)
        classifier = JudgeClassifier(
            local, constitution, model_name=model_name, max_chars=settings.max_context_chars
        )
        return cls(settings, constitution, classifier, judge_engine=engine_id)

    def mode_for(self, owner: str, model: str) -> Mode:
        """A key's mode set through the admin API first, then its setting here, then the first
        route whose glob the model name matches, then the default."""
        chosen = self.key_modes(owner)
        if chosen is not None:
            return chosen
        for key_id, setting in self.settings.keys.items():
            if owner.startswith(key_id):
                return setting.mode
        for pattern, setting in self.settings.routes.items():
            if fnmatch.fnmatchcase(model, pattern):
                return setting.mode
        return self.settings.mode

    def start(
        self,
        request: MessageCreateRequest,
        owner: str,
        stats: GenerationStats,
        request_id: str | None = None,
    ) -> RequestClassifiers | None:
        """The classifiers for one request, or None where they are off for its key and route."""
        mode = self.mode_for(owner, request.model)
        if mode == "off":
            return None
        return RequestClassifiers(self, mode, owner, request, stats, request_id)

    def hold(self, held: HeldRequest) -> None:
        with self._lock:
            self.held[held.request_id] = held
            while len(self.held) > MAX_HELD:
                self.held.popitem(last=False)

    def released(self, owner: str, exchange: Exchange) -> bool:
        with self._lock:
            return (owner, exchange.digest) in self._released

    def release(self, request_id: str) -> HeldRequest:
        """Let the held request's key send it again past the input classifier (an operator's
        action: `request.release`); LookupError for a request not held."""
        with self._lock:
            held = self.held.pop(request_id, None)
            if held is None:
                raise LookupError(f"no held request {request_id}")
            self._released.add((held.owner, held.digest))
            return held

    def actions(self) -> dict[str, Action]:
        """The operators' actions on the classifiers (the admin API's `request.release`)."""

        def check(request_id: str, _: dict[str, Any]) -> dict[str, Any]:
            with self._lock:
                if request_id not in self.held:
                    raise LookupError(f"no held request {request_id}")
            return {}

        def run(request_id: str, _: dict[str, Any]) -> Outcome:
            held = self.release(request_id)
            return Outcome(
                {
                    "request_id": held.request_id,
                    "key_id": held.owner[:12],
                    "category": held.category,
                }
            )

        return {RELEASE: Action(run=run, check=check)}

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()


class RequestClassifiers:
    """One request's checks: its input once, its output as it is generated. Each check is
    recorded in the request's stats (log line, metrics); a flag or failure refuses only in
    enforce mode."""

    def __init__(
        self,
        server: ServerClassifiers,
        mode: Mode,
        owner: str,
        request: MessageCreateRequest,
        stats: GenerationStats,
        request_id: str | None = None,
    ) -> None:
        self.server = server
        self.mode = mode
        self.owner = owner
        self.stats = stats
        self.request_id = request_id
        self.model = request.model
        context, self.prompt = latest_turn(request)
        self.context = context

    async def check_input(self) -> RefusalStopDetails | None:
        if not self.server.settings.input or not self.prompt.strip():
            return None
        return await self.judge(Exchange("input", self.prompt, context=self.context))

    def watch(self, generating: ModelSpec) -> OutputWatch | None:
        """The output checks of a reply `generating` writes (None where output is not judged).
        A judge on that same engine, which runs one generation at a time, can only judge once
        the generation has ended: the watch then waits for its end at the first due check."""
        settings = self.server.settings
        if not settings.output:
            return None
        shared = self.server.judge_engine == generating.id and generating.parallel == 1
        return OutputWatch(self, settings.output_check_every, wait_for_end=shared)

    async def judge(self, exchange: Exchange) -> RefusalStopDetails | None:
        """One check, recorded; the refusal it calls for, if any."""
        if exchange.stage == "input" and self.server.released(self.owner, exchange):
            self._record(exchange.stage, "released", Decision(False))
            return None
        began = perf_counter()
        try:
            decision = await self.server.classifier.classify(exchange)
        except ClassifierError as exc:  # what it cost until it failed (a timeout: the limit)
            self._record(exchange.stage, "error", Decision(False, seconds=perf_counter() - began))
            refuse = self.mode == "enforce" and self.server.settings.on_error == "closed"
            log.warning(
                "classifier_error stage=%s key=%s model=%s mode=%s refused=%s: %s",
                exchange.stage,
                self.owner[:12],
                self.model,
                self.mode,
                refuse,
                exc,
            )
            if not refuse:
                return None
            return RefusalStopDetails(
                explanation=f"The {exchange.stage} classifier could not decide ({exc}); this "
                "server refuses when it cannot check."
            )
        self._record(exchange.stage, "flag" if decision.flagged else "allow", decision)
        if not decision.flagged:
            return None
        log.warning(
            "classifier_flagged stage=%s key=%s model=%s mode=%s category=%s",
            exchange.stage,
            self.owner[:12],
            self.model,
            self.mode,
            decision.category or "-",
        )
        if self.mode != "enforce":
            return None
        category = self.server.constitution.category(decision.category or "")
        explanation = decision.explanation or ""
        if exchange.stage == "input" and self.request_id is not None:
            self.server.hold(
                HeldRequest(self.request_id, self.owner, exchange.digest, decision.category)
            )
            explanation += (
                f" The request is held as {self.request_id}: an operator may release it, "
                "and then it may be sent again."
            )
        return RefusalStopDetails(
            category=category.stop_category if category else None,
            explanation=explanation.strip() or None,
        )

    def _record(self, stage: Stage, outcome: str, decision: Decision) -> None:
        self.stats.classifier_checks.append(
            ClassifierCheck(
                stage,
                outcome,
                self.mode,
                decision.input_tokens,
                decision.output_tokens,
                decision.seconds,
                decision.cached,
                decision.category,
            )
        )


@dataclass(frozen=True)
class HeldRequest:
    """A request the input classifier refused in enforce mode, until an operator releases it."""

    request_id: str
    owner: str
    digest: str  # its input exchange's: what a resend must match
    category: str | None


@dataclass(frozen=True)
class Halt:
    """An output check refused the answer: the stream stops here."""

    details: RefusalStopDetails


class OutputWatch:
    """The answer as it is generated (thinking, text and tool input alike), judged every
    `every` chunks and once more at the end of each generation for what is left."""

    def __init__(self, checks: RequestClassifiers, every: int, wait_for_end: bool) -> None:
        self.checks = checks
        self.every = every
        self.wait_for_end = wait_for_end
        self.chunks = 0
        self._answer: list[str] = []
        self._checked = 0  # chunks already judged

    async def watched(
        self, events: AsyncGenerator[GenerationEvent, None]
    ) -> AsyncGenerator[GenerationEvent | Halt, None]:
        """The engine's events in order, each due check made after the event before it was
        handled (sent) and before the next is taken; a `Halt` ends them."""
        held: deque[GenerationEvent] = deque()
        try:
            while True:
                if held:
                    event = held.popleft()
                else:
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        return
                yield event
                if isinstance(event, Finish) or not self.add(event):
                    continue
                if self.wait_for_end and not held:
                    # The judge needs the engine this generation holds: the rest of the
                    # generation waits here, unsent, while it ends.
                    held.extend([e async for e in events])
                halt = await self.check()
                if halt is not None:
                    yield Halt(halt)
                    return
        finally:
            await events.aclose()

    def add(self, event: EngineEvent) -> bool:
        """Take one engine event; True when a check is due."""
        if isinstance(event, ToolCallStart):
            self._answer.append(f"\n[calls {event.name}] ")
            return False
        self._answer.append(
            event.text if not isinstance(event, ToolCallDelta) else event.partial_json
        )
        self.chunks += 1
        return self.chunks - self._checked >= self.every

    async def check(self) -> RefusalStopDetails | None:
        """Judge the answer so far."""
        self._checked = self.chunks
        exchange = Exchange("output", self.checks.prompt, answer="".join(self._answer))
        return await self.checks.judge(exchange)

    async def check_rest(self) -> RefusalStopDetails | None:
        """At the end of a generation: judge what no check has seen yet, if anything."""
        return await self.check() if self.chunks > self._checked else None
