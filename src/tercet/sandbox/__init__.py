"""A sandbox for untrusted code: Linux namespaces through bubblewrap, resource limits, and
containers (private workspaces) that persist between executions. Usable on its own."""
