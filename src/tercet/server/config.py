"""Server settings, as data. Every default lives here and can be changed in one place."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field

from tercet.guard import Policy
from tercet.sandbox.config import ContainerLimits, ExecutionLimits
from tercet.server.admin import AdminSettings
from tercet.server.classifiers import ClassifierSettings

DATA_DIR_ENV = "TERCET_DATA_DIR"
API_KEYS_ENV = "TERCET_API_KEYS"


def default_data_dir() -> Path:
    """`$TERCET_DATA_DIR`, else the user's data folder (for example ~/.local/share/tercet)."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured) if configured else Path(platformdirs.user_data_dir("tercet"))


def default_api_keys() -> list[str]:
    return [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]


class ModelRoute(BaseModel):
    """Requests for model names matching `pattern` (shell-style glob) go to `target`."""

    pattern: str
    target: str


# Claude Code and the SDK ask for Claude model names; by default they reach the served model.
DEFAULT_ROUTES = [
    ModelRoute(pattern="claude-*", target="*"),
    ModelRoute(pattern="anthropic*", target="*"),
]


class ServerConfig(BaseModel):
    """How the server runs. `target: "*"` in a route means the default (first) served model."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Field(default_factory=default_data_dir)
    api_keys: list[str] = Field(default_factory=default_api_keys)
    routes: list[ModelRoute] = Field(default_factory=lambda: list(DEFAULT_ROUTES))
    max_queue: int = Field(default=16, ge=0, description="requests that may wait for the engine")
    max_body_bytes: int = Field(default=32 * 1024 * 1024, description="larger bodies get 413")
    ping_interval: float = Field(default=10.0, gt=0, description="seconds between SSE pings")
    max_file_bytes: int = Field(default=500 * 1000**2, description="larger uploads get 413")
    file_quota_bytes: int = Field(
        default=100 * 1000**3, description="stored file bytes per API key (workspace)"
    )
    max_tool_iterations: int = Field(
        default=10, ge=1, description="server tool calls in one response before pause_turn"
    )
    mcp_allowed_urls: list[str] = Field(
        default_factory=list,
        description="URL prefixes of the MCP servers requests may name ('*' for any); "
        "a request must not make the server a proxy into the operator's network",
    )
    mcp_allow_loopback: bool = Field(default=True, description="MCP servers on loopback too")
    mcp_connect_timeout_s: float = Field(default=10.0, gt=0, description="connect and list tools")
    mcp_call_timeout_s: float = Field(default=60.0, gt=0, description="one MCP tool call")
    mcp_idle_timeout_s: float = Field(default=300.0, gt=0, description="pooled sessions close")
    mcp_max_connections: int = Field(
        default=256, ge=1, description="MCP sessions held at once (least recently used go first)"
    )
    prefill_progress_interval_s: float = Field(
        default=5.0, ge=0, description="seconds between a long prefill's progress lines in the log"
    )
    metrics: Literal["open", "key", "off"] = Field(
        default="open",
        description="/metrics for Prometheus: open (no API key, as vLLM's; it shows counts and "
        "timings, never keys or content), key (one of api_keys, as x-api-key or Bearer), or off",
    )
    guard: str | None = Field(
        default=None,
        description="the prompt-injection guard over the tools the server runs (code execution, "
        "MCP connector): a policy file's path, or a shipped policy's name ('default'); off when "
        "None",
    )
    classifiers: str | None = Field(
        default=None,
        description="the safety classifiers' settings: a TOML file's path, or 'default' (enforce, "
        "the default constitution, the server's own model as judge); off when None",
    )
    end_conversation: bool = Field(
        default=False,
        description="offer the model an end_conversation tool (after repeated abuse; "
        "end_conversation.toml); an ended conversation sent again is refused with 403",
    )
    audit: bool = Field(
        default=False,
        description="append every request, server-run tool call, classifier and guard "
        "decision, operator action and egress connection to the hash-chained audit log in "
        "<data_dir>/audit (`tercet audit verify|tail|search|scan`)",
    )
    audit_content: bool = Field(
        default=False,
        description="log the latest user turn, answers and tool inputs and outputs as text; "
        "by default only their SHA-256 digests",
    )
    audit_retention_days: int = Field(default=90, ge=0, description="0 keeps every segment")
    admin: AdminSettings = Field(
        default_factory=AdminSettings,
        description="operators (admin keys) and the actions that wait for their approvals",
    )
    container_limits: ContainerLimits = Field(default_factory=ContainerLimits)
    execution_limits: ExecutionLimits = Field(default_factory=ExecutionLimits)

    def guard_policy(self) -> Policy | None:
        """The `guard` policy, loaded and checked (None when the guard is off); raises
        `tercet.guard.PolicyError` naming the file, the key and the problem."""
        return None if self.guard is None else Policy.resolve(self.guard)

    def classifier_settings(self) -> ClassifierSettings | None:
        """The `classifiers` settings, read and checked, their constitution too (None when
        off); raises `ClassifierConfigError` or `ConstitutionError` naming what is wrong."""
        if self.classifiers is None:
            return None
        settings = ClassifierSettings.resolve(self.classifiers)
        settings.load_constitution()
        return settings

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
