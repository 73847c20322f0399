"""The audit log: tamper-evident records of what every key and operator did (issue 21).

`AuditLog` appends (log.py), `tercet.audit.verify.verify` checks the chain, `records`/`tail`/`Follower`
read it (read.py); `tercet audit` is the command line over all three.
"""

from tercet.audit.log import (
    AuditConfig,
    AuditError,
    AuditLog,
    AuditRecord,
    content_digest,
    key_id,
)
from tercet.audit.read import Follower, RecordFilter, records, tail

# `verify` is not re-exported: the name would hide its module (import it from tercet.audit.verify)

__all__ = [
    "AuditConfig",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "Follower",
    "RecordFilter",
    "content_digest",
    "key_id",
    "records",
    "tail",
]
