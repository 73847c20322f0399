"""The Messages API wire format: the single source of truth for requests, blocks, events and errors.

One module per concept: `content` (blocks), `requests`, `responses`, `events` (streaming) and
`errors`. The server, the engines and the tests all import from here.
"""
