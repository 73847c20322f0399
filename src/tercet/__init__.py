"""tercet: a self-hosted server, agent and guardrails compatible with Anthropic's Messages API."""

__version__ = "0.1.0"
