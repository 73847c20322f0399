"""Engines: what turns a conversation into generated text. The server sees only `Engine`."""
