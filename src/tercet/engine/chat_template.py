"""Rendering a `Conversation` into prompt text with a model's own Jinja chat template.

This is where wire blocks become the plain messages a chat template understands; the text forms
chosen here (tool calls, tool results, documents) are the embedded engine's prompt format.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tercet.engine.base import Conversation, Turn
from tercet.wire.content import (
    Base64DocumentSource,
    ContentBlockParam,
    ContentDocumentSource,
    DocumentBlockParam,
    ImageBlockParam,
    MCPToolResultBlockParam,
    MCPToolUseBlockParam,
    PlainTextSource,
    SearchResultBlockParam,
    ServerToolResultBlockParam,
    ServerToolUseBlockParam,
    TextBlockParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from tercet.wire.errors import InvalidRequestError
from tercet.wire.requests import CustomToolParam

# Used when a GGUF carries no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ThinkingMarkers:
    """How a model's thinking is delimited, in its prompt and in its output."""

    open: str  # appended to the prompt to start thinking
    close: str  # in the output: the model has finished thinking
    forced_close: str  # written by the engine to end thinking at the budget
    instruction: str | None  # added to the system prompt when the model must be asked to think
    native: bool  # the model was trained to think with these markers
    after_close: str = ""  # written by the engine once the model closed thinking itself
    answer_open: str = ""  # appended to the prompt when the reply must not think
    reopen: str | None = None  # what the model writes to think again between tool calls


# For models with no thinking of their own: ask for a scratchpad and open it for them.
SCRATCHPAD = ThinkingMarkers(
    open="<think>\n",
    close="</think>",
    forced_close="\n</think>\n\n",
    instruction=(
        "Before you answer, think the problem through step by step between <think> and "
        "</think>. After </think>, give your answer."
    ),
    native=False,
    reopen="<think>",
)
# Models whose chat template knows <think> (Qwen3, DeepSeek-R1 and their kin).
NATIVE_THINK = replace(SCRATCHPAD, instruction=None, native=True)
# OpenAI's harmony format (gpt-oss): thinking is the `analysis` channel, the answer `final`.
# Its markers are special tokens, which a grammar cannot offer, so it does not think between
# tool calls here.
HARMONY = ThinkingMarkers(
    open="<|channel|>analysis<|message|>",
    close="<|end|>",
    forced_close="<|end|><|start|>assistant<|channel|>final<|message|>",
    after_close="<|start|>assistant<|channel|>final<|message|>",
    answer_open="<|channel|>final<|message|>",
    instruction=None,
    native=True,
)


def thinking_markers(template_source: str | None) -> ThinkingMarkers:
    """The markers a model thinks with, read from its chat template."""
    if not template_source:
        return SCRATCHPAD
    if "<|channel|>" in template_source:
        return HARMONY
    return NATIVE_THINK if "<think>" in template_source else SCRATCHPAD


# How the embedded engine writes a tool call: a tag around {"name": ..., "arguments": {...}}.
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def _raise_template_error(message: str) -> None:
    raise TemplateError(message)


@dataclass(frozen=True)
class MarkedPrompt:
    """A rendered prompt and where the conversation lies in it (character offsets)."""

    text: str
    ends: list[int] | None  # where each block ends; None where the blocks cannot be located
    # Where the first message's content begins. The text before it is the template's own (its
    # header, a default system prompt), the same for every conversation: a prefix that every
    # prompt shares. 0 where it cannot be located.
    content_start: int


class ChatTemplate:
    """A model's chat template, compiled once, that turns conversations into prompt text."""

    def __init__(
        self,
        source: str | None,
        *,
        model_id: str,
        bos_token: str,
        eos_token: str,
        thinking: ThinkingMarkers | None = None,
    ):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        self._template = env.from_string(source or CHATML_TEMPLATE)
        self._model_id = model_id
        self._bos_token = bos_token
        self._eos_token = eos_token
        self.thinking = thinking or thinking_markers(source)

    def render(self, conversation: Conversation) -> str:
        return self._render(conversation, _no_mark)

    def render_with_boundaries(self, conversation: Conversation) -> MarkedPrompt:
        """The prompt text, where each block of `conversation.blocks()` ends in it, and where
        the conversation's own text begins (see `MarkedPrompt`)."""
        expected = self.render(conversation)
        marked = self._locate(expected, self._render(conversation, _mark, _CONTENT_MARK))
        if marked is None:  # the template moves or trims text at the mark: blocks only
            marked = self._locate(expected, self._render(conversation, _mark))
        if marked is None or len(marked.ends or ()) != len(conversation.blocks()):
            return MarkedPrompt(expected, None, 0)
        return marked

    @staticmethod
    def _locate(expected: str, text: str) -> MarkedPrompt | None:
        """The offsets of the marks in `text`, removed; None unless what is left is `expected`."""
        clean: list[str] = []
        ends: list[int] = []
        content_start = 0
        length = 0
        position = 0
        while (start := _next_mark(text, position)) != -1:
            clean.append(text[position:start])
            length += start - position
            if text[start] == _CONTENT_MARK:
                content_start = length
                position = start + 1
                continue
            stop = text.find(_MARK_CLOSE, start)
            if stop == -1 or text[start + 1 : stop] != str(len(ends)):
                return None
            ends.append(length)
            position = stop + 1
        clean.append(text[position:])
        if "".join(clean) != expected:
            return None
        return MarkedPrompt(expected, ends, content_start)

    def _render(self, conversation: Conversation, mark: _Marker, content_mark: str = "") -> str:
        prefill = conversation.prefill
        turns = conversation.turns[:-1] if prefill else conversation.turns
        messages: list[dict[str, str]] = []
        instruction = self.thinking.instruction if conversation.thinking else None
        first = len(conversation.tools)
        system_text = "\n".join(
            block.text + mark(first + i) for i, block in enumerate(conversation.system)
        )
        # Tools, then the system prompt, then the thinking instruction: the order in which
        # Anthropic's cache nests its prefixes (changing thinking keeps tools and system cached).
        system = _join(_render_tools(conversation.tools, mark), system_text, instruction)
        if system:
            messages.append({"role": "system", "content": system})
        first += len(conversation.system)
        for turn in turns:
            messages.append({"role": turn.role, "content": self._turn_text(turn, mark, first)})
            first += len(turn.blocks)
        if messages:
            messages[0]["content"] = content_mark + messages[0]["content"]
        try:
            text = self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                # Qwen3-style templates read this; with it false they close an empty block.
                enable_thinking=conversation.thinking,
            )
        except TemplateError as exc:
            raise InvalidRequestError(
                f"the chat template of {self._model_id} rejected this conversation: {exc}"
            ) from exc
        if conversation.thinking:
            # Some templates (DeepSeek-R1's) open the thinking block themselves.
            opened = text.rstrip().endswith(self.thinking.open.strip())
            return text if opened else text + self.thinking.open
        answer = text + self.thinking.answer_open
        return answer + (self._turn_text(prefill, mark, first) if prefill else "")

    def _turn_text(self, turn: Turn, mark: _Marker, first: int) -> str:
        """The turn's blocks, a blank line apart; each block's mark right after it."""
        text = ""
        written = False
        for index, block in enumerate(turn.blocks):
            piece = self._block_text(block)
            if piece:
                text += ("\n\n" if written else "") + piece
                written = True
            text += mark(first + index)
        return text

    def _block_text(self, block: ContentBlockParam) -> str:
        if isinstance(block, ToolUseBlockParam | ServerToolUseBlockParam | MCPToolUseBlockParam):
            call = {"name": block.name, "arguments": block.input}
            body = json.dumps(call, ensure_ascii=False)
            return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"
        if isinstance(block, ToolResultBlockParam | MCPToolResultBlockParam):
            marker = " error" if block.is_error else ""
            return (
                f"<tool_response{marker}>\n{result_text(block, self._model_id)}\n</tool_response>"
            )
        if isinstance(block, ServerToolResultBlockParam) and "code_execution" in block.type:
            return f"<tool_response>\n{execution_text(block.content)}\n</tool_response>"
        return content_text(block, self._model_id)


def content_text(block: ContentBlockParam, model_id: str) -> str:
    """The text a text-only model reads for a content block ("" for blocks it does not read)."""
    if isinstance(block, TextBlockParam):
        return block.text
    if isinstance(block, ImageBlockParam):
        raise InvalidRequestError(f"{model_id} does not support image input; send text only")
    if isinstance(block, DocumentBlockParam):
        return _document_text(block, model_id)
    if isinstance(block, SearchResultBlockParam):
        body = "\n".join(b.text for b in block.content)
        return f"[search result: {block.title} ({block.source})]\n{body}"
    # Thinking blocks, server tool results and uploads carry nothing this model reads.
    return ""


def execution_text(content: Any) -> str:
    """A code execution result as the model reads it."""
    if not isinstance(content, dict):
        return str(content)
    kind = str(content.get("type", ""))
    if kind.endswith("_error"):
        message = content.get("error_message")  # tercet's own, e.g. why the guard refused it
        return f"error: {content.get('error_code')}" + (f": {message}" if message else "")
    if "stdout" in content:
        parts = [str(content.get("stdout", ""))]
        if content.get("stderr"):
            parts.append(f"stderr:\n{content['stderr']}")
        parts.append(f"return code: {content.get('return_code')}")
        return "\n".join(p for p in parts if p)
    if kind.endswith("view_result"):
        return str(content.get("content", ""))
    if kind.endswith("create_result"):
        return "file updated" if content.get("is_file_update") else "file created"
    if kind.endswith("str_replace_result"):
        return "\n".join(str(line) for line in content.get("lines", []))
    return json.dumps(content)


def result_text(block: ToolResultBlockParam | MCPToolResultBlockParam, model_id: str) -> str:
    """A tool result's content as text."""
    if isinstance(block.content, str):
        return block.content
    return "\n\n".join(content_text(b, model_id) for b in block.content)


def _document_text(block: DocumentBlockParam, model_id: str) -> str:
    source = block.source
    if isinstance(source, PlainTextSource):
        body = source.data
    elif isinstance(source, ContentDocumentSource):
        if isinstance(source.content, str):
            body = source.content
        else:
            body = "\n\n".join(content_text(b, model_id) for b in source.content)
    elif isinstance(source, Base64DocumentSource) and source.media_type == "text/plain":
        try:
            body = base64.b64decode(source.data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidRequestError(
                "document.source.data is not base64-encoded UTF-8 text"
            ) from exc
    else:
        raise InvalidRequestError(
            f"document source {source.type!r} ({getattr(source, 'media_type', '')}) "
            "is not supported yet; send the document as text"
        )
    header = "\n".join(
        line
        for line in (
            f"Document: {block.title}" if block.title else "",
            f"Context: {block.context}" if block.context else "",
        )
        if line
    )
    return _join(header, body) or ""


def _render_tools(tools: Sequence[CustomToolParam], mark: _Marker) -> str | None:
    if not tools:
        return None
    listing = "\n".join(
        json.dumps(
            {"name": t.name, "description": t.description or "", "parameters": t.input_schema},
            ensure_ascii=False,
        )
        + mark(index)
        for index, t in enumerate(tools)
    )
    return (
        "# Tools\n\nYou may call one of these tools. To call one, answer with\n"
        '<tool_call>\n{"name": <tool name>, "arguments": <arguments object>}\n</tool_call>\n\n'
        f"<tools>\n{listing}\n</tools>"
    )


# Block boundaries are found by rendering with a mark after every block (private-use
# characters around the block's index) and removing the marks again; another mark goes before
# the first message's content.
_MARK_OPEN = "\ue000"
_MARK_CLOSE = "\ue001"
_CONTENT_MARK = "\ue002"
_Marker = Callable[[int], str]


def _next_mark(text: str, position: int) -> int:
    found = (text.find(_MARK_OPEN, position), text.find(_CONTENT_MARK, position))
    return min((i for i in found if i != -1), default=-1)


def _mark(index: int) -> str:
    return f"{_MARK_OPEN}{index}{_MARK_CLOSE}"


def _no_mark(index: int) -> str:
    return ""


def _join(*parts: str | None) -> str | None:
    present = [p for p in parts if p]
    return "\n\n".join(present) if present else None
