"""The agent's client tools: bash, the text editor, memory and report_impossible, with Anthropic's tool types; and
the tools of MCP servers (stdio, Streamable HTTP, SSE), configured as Claude Code's `.mcp.json`."""

from tercet.agent.tools.base import AgentTool, ToolContext, ToolResult
from tercet.agent.tools.bash import BashTool
from tercet.agent.tools.editor import TextEditorTool
from tercet.agent.tools.mcp import McpServerError, McpServers, McpServerTool
from tercet.agent.tools.mcp_config import (
    HttpServerConfig,
    McpConfig,
    McpConfigError,
    McpServerConfig,
    SseServerConfig,
    StdioServerConfig,
    find_mcp_config,
    load_mcp_config,
    parse_mcp_config,
)
from tercet.agent.tools.memory import MemoryTool
from tercet.agent.tools.report_impossible import ReportImpossibleTool

__all__ = [
    "AgentTool",
    "BashTool",
    "HttpServerConfig",
    "McpConfig",
    "McpConfigError",
    "McpServerConfig",
    "McpServerError",
    "McpServerTool",
    "McpServers",
    "MemoryTool",
    "ReportImpossibleTool",
    "SseServerConfig",
    "StdioServerConfig",
    "TextEditorTool",
    "ToolContext",
    "ToolResult",
    "find_mcp_config",
    "load_mcp_config",
    "parse_mcp_config",
]
