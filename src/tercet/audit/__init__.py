"""The audit log: tamper-evident records of what every key and operator did (issue 21)."""

from tercet.audit.log import (
    AuditConfig,
    AuditError,
    AuditLog,
    AuditRecord,
    content_digest,
    key_id,
)

__all__ = ["AuditConfig", "AuditError", "AuditLog", "AuditRecord", "content_digest", "key_id"]
