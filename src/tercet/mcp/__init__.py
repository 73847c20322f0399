"""The MCP connector's client side: sessions to remote MCP servers (Streamable HTTP or SSE),
pooled per server and token, and the policy saying which server URLs may be reached."""

from tercet.mcp.policy import McpUrlRefused, UrlPolicy
from tercet.mcp.pool import (
    McpAuthError,
    McpCallResult,
    McpError,
    McpPool,
    McpPoolFull,
    McpTool,
)

__all__ = [
    "McpAuthError",
    "McpCallResult",
    "McpError",
    "McpPool",
    "McpPoolFull",
    "McpTool",
    "McpUrlRefused",
    "UrlPolicy",
]
