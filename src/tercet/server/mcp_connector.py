"""The MCP connector: remote MCP servers a request names, their tools offered to the model, and
the model's calls to them run by the server (Anthropic's `mcp_servers` beta).

Two request forms. `mcp-client-2025-04-04`: each server carries `tool_configuration`
(`enabled`, `allowed_tools`). `mcp-client-2025-11-20`: servers carry only how to reach them, and
one `mcp_toolset` in `tools` per server chooses its tools (`default_config`, `configs`).

Discovery happens before the response starts, so a server that cannot be used (refused URL,
refused token, down) is a 400 naming it. Once the model is running, every failure of a call
is an `is_error` result the model reads; the pool (`tercet.mcp`) keeps sessions per (URL,
token) across requests. Tokens are never part of a message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, replace

from tercet.engine.base import Conversation, Turn
from tercet.mcp import McpError, McpPool, McpPoolFull, McpTool, McpUrlRefused
from tercet.server.client_tools import offered_tools
from tercet.wire.content import (
    ContentBlockParam,
    MCPToolResultBlock,
    MCPToolUseBlockParam,
    TextBlock,
)
from tercet.wire.errors import InvalidRequestError, OverloadedError
from tercet.wire.requests import (
    CustomToolParam,
    MCPServerDefinition,
    MCPToolsetParam,
    PromptParams,
)

log = logging.getLogger(__name__)

BETA_V1 = "mcp-client-2025-04-04"
BETA_V2 = "mcp-client-2025-11-20"

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
MAX_SERVERS = 20  # per request: each is a connection, and its tools a part of the prompt


@dataclass(frozen=True)
class McpOffer:
    """One MCP tool as the model is offered it: under `model_name`, which is unique among all
    the request's tools, from `server`."""

    model_name: str
    server: MCPServerDefinition
    tool: McpTool


@dataclass(frozen=True)
class McpToolbox:
    """The MCP tools one request offers, and running the model's calls to them."""

    pool: McpPool
    offers: Mapping[str, McpOffer]  # by model-facing name, in the order offered
    tools: Sequence[CustomToolParam]  # what the model reads, in the same order

    def names(self) -> dict[str, tuple[str, str]]:
        """Model-facing name -> (server name, the tool's own name)."""
        return {n: (o.server.name, o.tool.name) for n, o in self.offers.items()}

    def renamed_history(self, conversation: Conversation) -> Conversation:
        """`conversation` with its earlier MCP calls named as the model is offered the tools
        now (a client sends them back under the tools' own names)."""
        names = {(o.server.name, o.tool.name): n for n, o in self.offers.items()}

        def named(block: ContentBlockParam) -> ContentBlockParam:
            if not isinstance(block, MCPToolUseBlockParam):
                return block
            name = names.get((block.server_name, block.name), block.name)
            return block.model_copy(update={"name": name})

        turns = [Turn(t.role, [named(b) for b in t.blocks]) for t in conversation.turns]
        return replace(conversation, turns=turns)

    async def call(self, block: MCPToolUseBlockParam) -> MCPToolResultBlock:
        """Run one call of the model's; whatever goes wrong is an `is_error` result."""
        offer = self.offers.get(block.name)
        if offer is None:  # the reply names a tool we did not offer: only if the engine erred
            return _error(block.id, f"no MCP tool named {block.name!r} is offered")
        server = offer.server
        try:
            result = await self.pool.call_tool(
                server.url, server.authorization_token, offer.tool.name, block.input
            )
        except McpUrlRefused as refused:  # the policy changed since discovery
            return _error(block.id, str(refused))
        content = [TextBlock(text=str(b.get("text", ""))) for b in result.content]
        return MCPToolResultBlock(tool_use_id=block.id, is_error=result.is_error, content=content)


async def discover(
    request: PromptParams, betas: Set[str], pool: McpPool | None
) -> McpToolbox | None:
    """The request's MCP tools, or None when it names no MCP servers.

    Raises `InvalidRequestError` for a request that breaks the connector's rules or names a
    server that cannot be used.
    """
    toolsets = [t for t in request.tools or () if isinstance(t, MCPToolsetParam)]
    servers = request.mcp_servers or []
    if not servers and not toolsets:
        return None
    v2 = BETA_V2 in betas
    if not v2 and BETA_V1 not in betas:
        raise InvalidRequestError(
            f"mcp_servers: the MCP connector is a beta; send the `anthropic-beta: {BETA_V2}` "
            "header to use it"
        )
    if pool is None:
        raise InvalidRequestError("mcp_servers: this server does not run the MCP connector")
    if len(servers) > MAX_SERVERS:
        raise InvalidRequestError(
            f"mcp_servers: at most {MAX_SERVERS} MCP servers per request; got {len(servers)}"
        )
    _check_names(servers)
    by_server = _toolsets_by_server(servers, toolsets, v2)
    listed = await asyncio.gather(
        *(_list_tools(pool, index, server) for index, server in enumerate(servers))
    )
    taken = {t.name for t in offered_tools(request.tools)}
    offers: dict[str, McpOffer] = {}
    tools: list[CustomToolParam] = []
    for server, server_tools in zip(servers, listed, strict=True):
        chosen = _chosen(server, server_tools, by_server.get(server.name), v2)
        toolset = by_server.get(server.name)
        for position, tool in enumerate(chosen):
            name = _model_name(server.name, tool.name, taken)
            taken.add(name)
            offers[name] = McpOffer(name, server, tool)
            last = position == len(chosen) - 1
            tools.append(
                CustomToolParam(
                    name=name,
                    description=tool.description or None,
                    input_schema=tool.input_schema or {"type": "object"},
                    cache_control=toolset.cache_control if toolset and last else None,
                )
            )
    return McpToolbox(pool, offers, tools)


def _check_names(servers: Sequence[MCPServerDefinition]) -> None:
    seen: set[str] = set()
    for index, server in enumerate(servers):
        if server.name in seen:
            raise InvalidRequestError(
                f"mcp_servers.{index}.name: MCP server names must be unique; "
                f"{server.name!r} appears more than once"
            )
        seen.add(server.name)


def _toolsets_by_server(
    servers: Sequence[MCPServerDefinition], toolsets: Sequence[MCPToolsetParam], v2: bool
) -> dict[str, MCPToolsetParam]:
    """Each server's toolset, checked by the rules of the request's form."""
    if not v2:
        if toolsets:
            raise InvalidRequestError(
                f"tools: `mcp_toolset` needs the `anthropic-beta: {BETA_V2}` header"
            )
        return {}
    known = {s.name for s in servers}
    by_server: dict[str, MCPToolsetParam] = {}
    for toolset in toolsets:
        name = toolset.mcp_server_name
        if name not in known:
            raise InvalidRequestError(
                f"tools: mcp_toolset names MCP server {name!r}, which is not in `mcp_servers`"
            )
        if name in by_server:
            raise InvalidRequestError(
                f"tools: MCP server {name!r} is referenced by more than one mcp_toolset"
            )
        by_server[name] = toolset
    for index, server in enumerate(servers):
        if server.tool_configuration is not None:
            raise InvalidRequestError(
                f"mcp_servers.{index}.tool_configuration: not supported with {BETA_V2}; "
                "choose tools with an `mcp_toolset` in `tools`"
            )
        if server.name not in by_server:
            raise InvalidRequestError(
                f"mcp_servers.{index}: MCP server {server.name!r} must be referenced by exactly "
                "one mcp_toolset in `tools`"
            )
    return by_server


async def _list_tools(pool: McpPool, index: int, server: MCPServerDefinition) -> list[McpTool]:
    try:
        return await pool.list_tools(server.url, server.authorization_token)
    except McpUrlRefused as refused:
        raise InvalidRequestError(f"mcp_servers.{index}.url: {refused}") from None
    except McpPoolFull as full:  # busy, not the request's fault: a 529 the SDK retries
        raise OverloadedError(f"mcp_servers.{index}: {full}") from None
    except McpError as failure:
        raise InvalidRequestError(
            f"mcp_servers.{index}: MCP server {server.name!r} cannot be used: {failure}"
        ) from None


def _chosen(
    server: MCPServerDefinition,
    tools: Sequence[McpTool],
    toolset: MCPToolsetParam | None,
    v2: bool,
) -> list[McpTool]:
    """The server's tools the request offers the model."""
    if not v2:
        configuration = server.tool_configuration
        if configuration is None:
            return list(tools)
        if configuration.enabled is False:
            return []
        allowed = configuration.allowed_tools
        return [t for t in tools if allowed is None or t.name in allowed]
    assert toolset is not None
    default = toolset.default_config
    default_on = default is None or default.enabled is not False
    configs = toolset.configs or {}
    unknown = set(configs) - {t.name for t in tools}
    if unknown:  # Anthropic's rule: named tools the server lacks are noted, not refused
        log.info("mcp_toolset for %r names unknown tools: %s", server.name, sorted(unknown))
    chosen = []
    for tool in tools:
        config = configs.get(tool.name)
        enabled = config.enabled if config and config.enabled is not None else default_on
        if enabled:
            chosen.append(tool)
    return chosen


def _model_name(server: str, tool: str, taken: Set[str]) -> str:
    """The tool's own name when it is a valid tool name no other tool has; else one made from
    the server's and the tool's names, numbered until unique."""
    if _TOOL_NAME.match(tool) and tool not in taken:
        return tool
    base = re.sub(r"[^a-zA-Z0-9_-]", "_", f"{server}__{tool}")[:120]
    name, number = base, 2
    while name in taken:
        name, number = f"{base}_{number}", number + 1
    return name


def _error(tool_use_id: str, text: str) -> MCPToolResultBlock:
    return MCPToolResultBlock(
        tool_use_id=tool_use_id, is_error=True, content=[TextBlock(text=text)]
    )
