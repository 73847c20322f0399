"""The prompt cache: Anthropic's breakpoint rules and billing, and a two-tier store of KV state."""
