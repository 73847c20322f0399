"""The HTTP server: the Messages API over engines."""
