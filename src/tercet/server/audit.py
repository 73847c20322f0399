"""The server's audit log (`tercet serve --audit`): what every key did, in `tercet.audit`'s
hash-chained log.

When a request ends, the middleware hands its record here: one `request` record (key id,
route, model, sizes, token usage, stop reason, digests of the latest user turn and of the
answer, or their text with content logging on), then one record per server-run tool call,
classifier check and guard decision it made, and `conversation_ended` where the model ended it.
Operator actions and egress connections come through `event`. Keys appear only as key ids;
an MCP call's token is never in a record (only the call's name, input digest and outcome).

Records are appended on the event loop as the request ends: their JSON, hash and one write to
the page cache (the log fsyncs on a thread of its own). Handing them to a writer thread was
tried twice, all of the work and then only the write: under the GIL each thread hand-off cost
more than it saved (bench/audit.py measured both slower).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tercet.audit import AuditLog
from tercet.server.request_log import RequestRecord, ToolCallRecord
from tercet.wire.content import MCPToolResultBlock, MCPToolUseBlockParam

log = logging.getLogger("tercet.server")
SKIPPED_ROUTES = frozenset({"/metrics", "/"})  # scrapes and probes: no one's traffic


class ServerAudit:
    def __init__(self, audit_log: AuditLog) -> None:
        self.log = audit_log

    def request_ended(self, record: RequestRecord) -> None:
        """The records of one request that has ended (its middleware's `on_end`)."""
        if record.route not in SKIPPED_ROUTES:
            self._request_records(record)

    def event(self, kind: str, actor: str | None, fields: dict[str, Any]) -> None:
        """An operator action or an egress connection, as its component reports it."""
        try:
            self.log.append(kind, actor, **fields)
        except Exception:  # it happened; that the log could not keep it must be loud
            log.exception("the audit log could not record a %s event", kind)
            raise

    def close(self) -> None:
        self.log.close()

    def _request_records(self, record: RequestRecord) -> None:
        if record.operator is not None:
            actor: str | None = f"op:{record.operator}"
        else:
            actor = None if record.owner is None else record.owner[:12]
        generation = record.generation
        usage = generation.usage if generation is not None else None
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "method": record.method,
            "route": record.route,
            "status": record.status,
            "seconds": round(record.seconds, 4),
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
        }
        if record.error_type is not None:
            fields["error_type"] = record.error_type
        if record.model is not None:
            fields.update(model=record.model, served_model=record.served_model)
        if record.conversation is not None:
            fields["conversation"] = record.conversation
        if usage is not None:
            fields.update(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_input_tokens,
                cache_write_tokens=usage.cache_creation_input_tokens,
            )
        elif record.prompt is not None:  # cut off: the prompt was read, the answer unknown
            fields["input_tokens"] = record.prompt.total_tokens
        if generation is not None and generation.stop_reason is not None:
            fields["stop_reason"] = generation.stop_reason
        fields.update(self.log.content("prompt", record.prompt_text))
        if generation is not None:
            fields.update(self.log.content("answer", generation.answer))
        self.log.append("request", actor, **fields)
        if generation is None:
            return
        request_id = record.request_id
        for call in generation.tool_calls:
            self.log.append("tool_call", actor, request_id=request_id, **self._tool_call(call))
        for check in generation.classifier_checks:
            self.log.append(
                "classifier",
                actor,
                request_id=request_id,
                stage=check.stage,
                decision=check.outcome,
                mode=check.mode,
                category=check.category,
                cached=check.cached,
            )
        for action, rule in generation.guard_decisions:
            self.log.append("guard", actor, request_id=request_id, action=action, rule=rule)
        if generation.ended_conversation is not None:
            self.log.append(
                "conversation_ended",
                actor,
                request_id=request_id,
                conversation=generation.ended_conversation[:16],
            )

    def _tool_call(self, call: ToolCallRecord) -> dict[str, Any]:
        block, result = call.call, call.result
        if isinstance(block, MCPToolUseBlockParam):
            tool = f"mcp:{block.server_name}/{block.name}"
        else:
            tool = block.name
        error = (
            result.is_error
            if isinstance(result, MCPToolResultBlock)
            else "error" in getattr(result.content, "type", "")
        )
        output = json.dumps(result.model_dump(mode="json")["content"], sort_keys=True)
        return {
            "tool": tool,
            "outcome": "refused" if call.refused else ("error" if error else "ok"),
            "seconds": round(call.seconds, 4),
            **self.log.content("tool_input", json.dumps(block.input, sort_keys=True)),
            **self.log.content("tool_output", output),
        }
