"""The prompt-injection guard (`tercet.guard`) over the calls the server runs itself: code
execution and MCP connector tools (`tercet serve --guard POLICY`).

Each request that offers such tools gets a fresh `Guard`. What the request carries is recorded
as already read: the system prompt and the user's text trusted; client tool results and earlier
MCP and code execution results untrusted (unmarked first, where an earlier request spotlighted
them). The MCP servers' tool listings are observed as untrusted too. Then every call is checked
before it runs and every result observed before the model and the client see it. A server has
nobody to ask, so the policy's "ask" refuses as "deny" does; a refused call never runs, and its
result is the tool's own error result saying why.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel

from tercet.guard import Guard, Policy, Source, Spotlight, Verdict
from tercet.guard.detect import AsyncDetector
from tercet.server.code_execution import code_execution_tools, error_result, only_reads
from tercet.server.conversation import with_system_text
from tercet.server.mcp_connector import McpToolbox
from tercet.wire.content import (
    MCPToolResultBlock,
    MCPToolResultBlockParam,
    MCPToolUseBlockParam,
    ServerToolResultBlock,
    ServerToolResultBlockParam,
    ServerToolUseBlockParam,
    TextBlock,
    TextBlockParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from tercet.wire.requests import PromptParams

ServerCall = ServerToolUseBlockParam | MCPToolUseBlockParam
ServerResult = ServerToolResultBlock | MCPToolResultBlock
Request = TypeVar("Request", bound=PromptParams)
CODE_EXECUTION = Source("tool", "code_execution")
# The fields of a code execution result the model reads as text (execution_text): the rest are
# the result's shape (types, return codes, file ids) and the model's own input echoed.
READ_FIELDS = ("stdout", "stderr", "content")
# The code the refusal of a code execution call carries: Anthropic's codes have none for a
# refusal, and this one says the input was the problem (`error_message` says how).
REFUSED_CODE = "invalid_tool_input"
REFUSAL = "the guard refused this call"  # how a refused call's result text begins


class ServerGuard:
    """The server's guard: its policy, and a spotlight boundary per API key that stays the
    same across requests (the system prompt, and with it the prompt cache's prefixes, stays
    the same), drawn from a secret of this process (one key cannot learn another's)."""

    def __init__(self, policy: Policy, secret: bytes | None = None) -> None:
        self.policy = policy
        self._secret = secret or secrets.token_bytes(16)

    def start(
        self, request: PromptParams, owner: str, toolbox: McpToolbox | None = None
    ) -> RequestGuard | None:
        """A fresh guard for `request` (its history recorded, the MCP listings of `toolbox`
        observed), or None when the request offers no tool the server runs (there is nothing
        to guard). CPU-bound (a long history takes a fraction of a second): a worker thread's."""
        if not _serves_tools(request):
            return None
        guard = RequestGuard(self.policy, request, self.boundary(owner))
        if toolbox is not None:
            guard.observe_listing(toolbox)
        return guard

    def instructed(self, request: Request, owner: str) -> Request:
        """`request` with the spotlighting instruction at the end of its system prompt, where
        the server will mark what its tools return; else `request` itself."""
        if self.policy.spotlight == "off" or not _serves_tools(request):
            return request
        instruction = Spotlight(self.policy.spotlight, self.boundary(owner)).system_instruction()
        return with_system_text(request, instruction)

    def boundary(self, owner: str) -> str:
        """The spotlight boundary of `owner`'s requests (see app.owner_of)."""
        return hmac.new(self._secret, owner.encode(), hashlib.sha256).hexdigest()[:8]


class RequestGuard:
    """One request's guard: `check` a server-run call before it runs, `refused` its result
    when the verdict is not allow, `shown` what a result that ran becomes."""

    def __init__(self, policy: Policy, request: PromptParams, boundary: str) -> None:
        self.guard = Guard(policy, boundary=boundary)
        self._toolbox: McpToolbox | None = None
        _record_history(self.guard, request)

    def observe_listing(self, toolbox: McpToolbox) -> None:
        """The MCP tools offered: their servers wrote the names, descriptions and schemas the
        model reads, so a poisoned listing's values count as untrusted."""
        self._toolbox = toolbox
        for offer in toolbox.offers.values():
            tool = offer.tool
            listing = {
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.input_schema,
            }
            self.guard.observe_listing(listing, Source("mcp", offer.server.name))

    def check(self, call: ServerCall) -> Verdict:
        """The policy's verdict on `call`, before it runs (never raises: the guard denies on
        an error of its own)."""
        if isinstance(call, MCPToolUseBlockParam):
            offer = self._toolbox.offers.get(call.name) if self._toolbox else None
            if offer is None:  # not offered: McpToolbox.call answers with an error
                return self.guard.check_call(call.name, call.input)
            hint = offer.tool.read_only_hint
            return self.guard.check_call(offer.tool.name, call.input, read_only=hint)
        return self.guard.check_call(
            call.name, call.input, read_only=only_reads(call.name, call.input)
        )

    def refused(self, call: ServerCall, verdict: Verdict) -> ServerResult:
        """The result of a call the guard did not let run: the tool's error result, saying why."""
        if verdict.action == "ask":
            why = (
                f"{REFUSAL}: its policy asks for approval ({verdict.rule}: {verdict.reason}), "
                "and a server has nobody to ask"
            )
        else:
            why = f"{REFUSAL} ({verdict.rule}): {verdict.reason}"
        if isinstance(call, MCPToolUseBlockParam):
            return MCPToolResultBlock(
                tool_use_id=call.id, is_error=True, content=[TextBlock(text=why)]
            )
        return error_result(call.name, call.id, REFUSED_CODE, why)

    async def shown(self, call: ServerCall, result: ServerResult) -> ServerResult:
        """`result` as the model reads it and the client receives it: observed as untrusted
        content from its source, spotlighted, redacted or withheld as the policy says."""
        if isinstance(result, MCPToolResultBlock):
            assert isinstance(call, MCPToolUseBlockParam)
            blocks = result.content
            if isinstance(blocks, str):
                blocks = [TextBlock(text=blocks)]
            shown = await self._observe([b.text for b in blocks], Source("mcp", call.server_name))
            if isinstance(shown, str):  # withheld whole: the notice in place of the content
                content = [TextBlock(text=shown)]
            else:
                content = [
                    b.model_copy(update={"text": t}) for b, t in zip(blocks, shown, strict=True)
                ]
            return result.model_copy(update={"content": content})
        read = _read_fields(result.content)
        if not read:  # an error code, or a result with nothing read from the container
            return result
        observed = await self._observe(read, CODE_EXECUTION)
        if isinstance(observed, str):  # withheld whole: the notice in place of the output
            observed = {name: observed if i == 0 else "" for i, name in enumerate(read)}
        return result.model_copy(update={"content": {**result.content, **observed}})

    async def _observe(self, content: Any, source: Source) -> Any:
        """`Guard.observe` off the event loop (the detectors read the whole result), or
        `aobserve` where a detector waits on I/O itself."""
        if any(isinstance(d, AsyncDetector) for d in self.guard.detectors):
            return await self.guard.aobserve(content, source)
        return await anyio.to_thread.run_sync(self.guard.observe, content, source)


def _serves_tools(request: PromptParams) -> bool:
    """Whether the server may run calls for `request` (code execution, MCP servers)."""
    return bool(code_execution_tools(request.tools) or request.mcp_servers)


def _record_history(guard: Guard, request: PromptParams) -> None:
    """What the model has already read in `request`: the system prompt, the user's text and
    system turns trusted; every tool result untrusted, from the tool (or MCP server) that
    the call it answers names."""
    system = request.system
    if system is not None:
        texts = [system] if isinstance(system, str) else [b.text for b in system]
        guard.record(texts, Source("system"))
    calls: dict[str, ToolUseBlockParam | MCPToolUseBlockParam] = {}
    for message in request.messages:
        content = message.content
        # The user's and system turns' own text; the assistant's is the model's, read elsewhere.
        speaker = None if message.role == "assistant" else Source(message.role)
        if isinstance(content, str):
            if speaker is not None:
                guard.record(content, speaker)
            continue
        for block in content:
            if isinstance(block, ToolUseBlockParam | MCPToolUseBlockParam):
                calls[block.id] = block
            elif isinstance(block, TextBlockParam) and speaker is not None:
                guard.record(block.text, speaker)
            elif isinstance(block, ToolResultBlockParam):
                call = calls.get(block.tool_use_id)
                source = Source("tool", call.name if call else "")
                guard.record(_unmarked(guard, _result_content(block.content)), source)
            elif isinstance(block, MCPToolResultBlockParam):
                call = calls.get(block.tool_use_id)
                server = call.server_name if isinstance(call, MCPToolUseBlockParam) else ""
                guard.record(
                    _unmarked(guard, _result_content(block.content)), Source("mcp", server)
                )
            elif isinstance(block, ServerToolResultBlockParam):
                read = _read_fields(block.content) or block.content
                source = CODE_EXECUTION if _is_code_execution(block) else Source("tool", block.type)
                guard.record(_unmarked(guard, read), source)


def _result_content(content: str | Sequence[BaseModel]) -> list[Any]:
    """A tool result's content as the guard reads it: its text, or its blocks as dicts."""
    return [content] if isinstance(content, str) else [b.model_dump() for b in content]


def _is_code_execution(block: ServerToolResultBlockParam) -> bool:
    return "code_execution" in block.type


def _read_fields(content: Any) -> dict[str, str]:
    """The texts of a code execution result that the model reads (none for an error)."""
    if not isinstance(content, Mapping):
        return {}
    return {name: content[name] for name in READ_FIELDS if isinstance(content.get(name), str)}


def _unmarked(guard: Guard, content: Any) -> Any:
    """`content` with every text an earlier request's guard spotlighted as it was before
    (marking is per text: an MCP result's blocks, an execution's stdout and stderr)."""

    def unmark(text: str) -> str:
        try:
            return guard.spotlight.unmark(text)
        except ValueError:  # not marked: spotlighting was off, or the text came from elsewhere
            return text

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return unmark(value)
        if isinstance(value, Mapping):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        return value

    return walk(content)
