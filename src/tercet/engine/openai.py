"""An engine for any OpenAI-compatible server (vLLM, Ollama, llama-server, llama-cpp-python).

The conversation is sent as `/v1/chat/completions` messages and streamed back. What is exact and
what is approximate, compared with the embedded engine:

- text, `max_tokens`, `temperature`, `top_p`, `top_k`: passed through; exact as the upstream does them.
- `stop_sequences`: matched here, so the stop reason and matched sequence are exact; the upstream
  stream is closed at the match.
- tools and `tool_choice`: sent as OpenAI functions (`any` -> "required", or the function by
  name when there is only one; `tool` -> the named function, `disable_parallel_tool_use` -> `parallel_tool_calls: false`); whether inputs follow
  their schema is up to the upstream.
- thinking: `reasoning_content` (or `reasoning`) deltas become the thinking block. The budget is
  sent as a hint (`reasoning_effort`, and `chat_template_kwargs.enable_thinking` for templates
  such as Qwen3's); the engine shows at most `budget` thinking pieces, but the upstream decides
  when it stops thinking. Models without reasoning return an empty thinking block.
- token counts: `count_tokens` and the prompt check use the upstream's tokenizer when it exposes
  one (`/tokenize` or `/extras/tokenize/count`) on the flattened text, else about four characters
  a token; `usage` takes the upstream's own counts when it reports them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tercet.engine.base import (
    Conversation,
    Finish,
    FinishReason,
    GenerationEvent,
    ModelSpec,
    PreparedPrompt,
    SamplingParams,
    TextChunk,
    ThinkingChunk,
    ToolCallDelta,
    ToolCallStart,
    ToolPolicy,
)
from tercet.engine.chat_template import content_text, result_text
from tercet.engine.stops import StopSequenceMatcher
from tercet.wire.content import (
    MCPToolResultBlockParam,
    MCPToolUseBlockParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from tercet.wire.errors import InternalError, InvalidRequestError, OverloadedError
from tercet.wire.requests import CustomToolParam

FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
}


def effort_for(budget: int) -> str:
    """The OpenAI `reasoning_effort` nearest a thinking budget."""
    return "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"


class OpenAICompatibleEngine:
    """Serves a model from an OpenAI-compatible upstream; many requests may run at once."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        model_id: str | None = None,
        context_window: int = 32768,
        max_output_tokens: int = 128_000,
        parallel: int = 4,
        timeout: float = 600.0,
        cache_salt: bool = False,
    ) -> None:
        root = base_url.rstrip("/").removesuffix("/v1")
        # vLLM's `cache_salt`: prefix-cache blocks are shared only between requests with the
        # same salt, so one API key's prompts never warm (or time) another's. Off by default:
        # an upstream that rejects unknown fields would refuse every request.
        self._cache_salt = cache_salt
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=root, headers=headers, timeout=timeout)
        self._model = model or _first_model(root, headers)
        self._counter: str | None = None  # which tokenize endpoint works, once known
        self._spec = ModelSpec(
            id=model_id or self._model.rsplit("/", 1)[-1].removesuffix(".gguf").lower(),
            display_name=f"{self._model} at {root}",
            context_window=context_window,
            max_output_tokens=max_output_tokens,
            parallel=parallel,
            adaptive_thinking=True,  # the upstream model decides, given reasoning_effort
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    async def prepare(self, conversation: Conversation) -> PreparedPrompt:
        messages = _messages(conversation, self._spec.id)
        functions = [_function(t) for t in conversation.tools]
        text = "\n".join(str(m.get("content") or "") for m in messages)
        text += "".join(json.dumps(f) for f in functions)
        return PreparedPrompt(
            tokens=(),
            text=text,
            estimated_tokens=await self._count(text) + 4 * len(messages),
            payload=_Payload(messages, functions, conversation.cache_scope),
        )

    async def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        if params.max_tokens == 0:  # a cache fill; the upstream has no cache for us to fill
            yield Finish("max_tokens", 0)
            return
        body = self._body(prompt, params)
        stops = StopSequenceMatcher(params.stop_sequences)
        budget = params.thinking_budget
        thought = pieces = 0
        calls: dict[int, bool] = {}  # tool call index -> started
        finish_reason: FinishReason | None = None
        usage: Mapping[str, Any] = {}
        async with self._stream(body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if reasoning and budget is not None and thought < budget:
                        thought += 1
                        pieces += 1
                        yield ThinkingChunk(reasoning)
                    if content := delta.get("content"):
                        pieces += 1
                        scan = stops.feed(content)
                        if scan.release:
                            yield TextChunk(scan.release)
                        if scan.matched is not None:
                            yield Finish("stop_sequence", pieces, scan.matched, thought)
                            return
                    for call in delta.get("tool_calls") or []:
                        function = call.get("function") or {}
                        index = call.get("index", 0)
                        if not calls.get(index) and function.get("name"):
                            calls[index] = True
                            yield ToolCallStart(function["name"])
                        if calls.get(index) and (arguments := function.get("arguments")):
                            pieces += 1
                            yield ToolCallDelta(arguments)
                    if reason := choice.get("finish_reason"):
                        finish_reason = FINISH_REASONS.get(reason, "end_turn")
        if finish_reason is None:
            raise InternalError("the upstream model server ended its stream without finishing")
        if rest := stops.flush():
            yield TextChunk(rest)
        if calls and finish_reason == "end_turn":
            finish_reason = "tool_use"  # some servers say "stop" after a tool call
        yield Finish(
            finish_reason,
            int(usage.get("completion_tokens") or max(pieces, 1)),
            thinking_tokens=thought,
            input_tokens=usage.get("prompt_tokens"),
        )

    @asynccontextmanager
    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        try:
            async with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                await _raise_for_upstream(response)
                yield response
        except httpx.HTTPError as exc:
            # Unreachable or failing mid-stream: temporary, so clients may retry (529).
            raise OverloadedError(
                f"the upstream model server is unavailable: {type(exc).__name__}"
            ) from exc

    def _body(self, prompt: PreparedPrompt, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": prompt.payload.messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.top_k:
            body["top_k"] = params.top_k
        if params.thinking_budget is not None:
            body["reasoning_effort"] = effort_for(params.thinking_budget)
            body["chat_template_kwargs"] = {"enable_thinking": True}
        if params.tools is not None:
            body |= _tool_choice(params.tools, prompt.payload.functions)
        if self._cache_salt and prompt.payload.cache_scope:
            body["cache_salt"] = cache_salt_for(prompt.payload.cache_scope)
        return body

    async def _count(self, text: str) -> int:
        """Tokens in `text` by the upstream's tokenizer where it has an endpoint for it."""
        paths = [self._counter] if self._counter else list(_TOKENIZE_ENDPOINTS)
        for path in paths:
            if path not in _TOKENIZE_ENDPOINTS:
                break
            try:
                response = await self._client.post(path, json=_TOKENIZE_ENDPOINTS[path](text))
                if response.status_code == 200:
                    self._counter = path
                    return _token_count(response.json())
            except (httpx.HTTPError, KeyError, ValueError, TypeError):
                pass
        self._counter = self._counter or "estimate"  # ask no more
        return max(1, len(text) // 4)

    def cache_stats(self) -> None:
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


# Tokenizer endpoints of OpenAI-compatible servers: llama-cpp-python's, llama-server's and vLLM's.
_TOKENIZE_ENDPOINTS: dict[str, Callable[[str], dict[str, str]]] = {
    "/extras/tokenize/count": lambda text: {"input": text},
    "/tokenize": lambda text: {"content": text, "prompt": text},
}


def _token_count(answer: Mapping[str, Any]) -> int:
    if "count" in answer:
        return int(answer["count"])
    return len(answer["tokens"]) if "tokens" in answer else int(answer["count"])


def _first_model(root: str, headers: Mapping[str, str]) -> str:
    try:
        response = httpx.get(f"{root}/v1/models", headers=dict(headers), timeout=30)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"cannot list the models of {root}: {exc}") from exc


def cache_salt_for(scope: str) -> str:
    """The salt for one cache scope: a digest, so the owner's id never leaves the server."""
    return hashlib.sha256(f"tercet-cache-scope:{scope}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Payload:
    """A prepared prompt in the upstream's terms."""

    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    cache_scope: str = ""  # who the request is from (the server's owner of the API key)


def _function(tool: CustomToolParam) -> dict[str, Any]:
    function = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(policy: ToolPolicy, functions: list[dict[str, Any]]) -> dict[str, Any]:
    choice: Any = {"auto": "auto", "any": "required"}.get(policy.choice)
    named = policy.name if policy.choice == "tool" else None
    if policy.choice == "any" and len(functions) == 1:
        # The same thing, in the form more upstreams support (llama-cpp-python has no "required").
        named = functions[0]["function"]["name"]
    if named is not None:
        choice = {"type": "function", "function": {"name": named}}
    return {"tools": functions, "tool_choice": choice, "parallel_tool_calls": policy.parallel}


def _messages(conversation: Conversation, model_id: str) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages: tool calls and results become their own fields."""
    messages: list[dict[str, Any]] = []
    if conversation.system_text:
        messages.append({"role": "system", "content": conversation.system_text})
    for turn in conversation.turns:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in turn.blocks:
            if isinstance(block, ToolUseBlockParam | MCPToolUseBlockParam):
                arguments = json.dumps(block.input, ensure_ascii=False)
                calls.append(
                    {
                        "id": block.id,
                        "type": "function",
                        "function": {"name": block.name, "arguments": arguments},
                    }
                )
            elif isinstance(block, ToolResultBlockParam | MCPToolResultBlockParam):
                text = result_text(block, model_id)
                messages.append(
                    {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}
                )
            elif text := content_text(block, model_id):
                texts.append(text)
        if texts or calls:
            # Content stays a string even beside tool calls: some servers reject null there.
            message: dict[str, Any] = {"role": turn.role, "content": "\n\n".join(texts)}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
    return messages


async def _raise_for_upstream(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    detail = (await response.aread()).decode("utf-8", "replace")[:500]
    if response.status_code in (400, 413, 422):
        raise InvalidRequestError(f"the upstream model server refused the request: {detail}")
    if response.status_code in (429, 503):
        raise OverloadedError("Overloaded")
    raise InternalError(f"the upstream model server failed ({response.status_code})")
