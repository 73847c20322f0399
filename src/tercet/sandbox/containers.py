"""Containers: private workspaces that persist between executions until they sit idle.

Each container is a directory `<root>/<id>/workspace` (with `outputs/` for files meant to be
handed back) and, when the server runs as root, a user id of its own, so one container's
processes can neither read another's files nor count against its process limit.
A container has no network unless an operator grants it egress (`grant_egress`): then its
commands reach the destinations of the grant through a proxy of its own (`egress`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tercet.sandbox import runner
from tercet.sandbox.config import ContainerLimits, ExecutionLimits
from tercet.sandbox.egress import EgressEvent, EgressGrant, EgressProxies
from tercet.sandbox.runner import ExecResult, disk_usage

_ID_ALPHABET = string.ascii_letters + string.digits
_VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FIRST_UID = 200_000  # container users: far from the system's and people's ids
REMEMBERED_EXPIRED = 10_000  # expired ids kept to answer `container_expired`; older: unavailable
OUTPUTS = "outputs"
RECORD = "container.json"  # its user, owner and times; the last use is the file's mtime


class ContainerError(Exception):
    """A container cannot be used; `code` is the Anthropic error code for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Container:
    id: str
    uid: int
    created_at: float
    last_used: float
    directory: Path
    owner: str = ""  # who made it (the server's id of an API key); only they may use it

    @property
    def workspace(self) -> Path:
        return self.directory / "workspace"

    def expires_at(self, limits: ContainerLimits) -> float:
        return self.last_used + limits.idle_seconds


class ContainerManager:
    """Creates, finds, runs in and expires containers under `root`. `on_egress_event` gets
    each egress connection's event, on the egress proxies' own thread (see `egress`)."""

    def __init__(
        self,
        root: Path,
        limits: ContainerLimits | None = None,
        execution: ExecutionLimits | None = None,
        runtime: Path | None = None,
        clock: Callable[[], float] = time.time,
        on_egress_event: Callable[[EgressEvent], None] | None = None,
    ) -> None:
        self.root = root
        self.limits = limits or ContainerLimits()
        self.execution = execution or ExecutionLimits()
        self.runtime = runtime
        self._clock = clock
        self._lock = threading.Lock()
        self._containers: dict[str, Container] = {}
        self._expired: OrderedDict[str, str] = OrderedDict()  # id -> owner, oldest first
        self._egress = EgressProxies(on_egress_event, clock)  # grants live in memory only
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)  # container users may pass through, not list
        self._load()

    def create(self, container_id: str | None = None, owner: str = "") -> Container:
        if container_id is not None and not _valid_id(container_id):
            raise ContainerError(
                "invalid_tool_input", "a container id is 1-64 letters, digits, _ or -"
            )
        with self._lock:
            self._expire()
            if container_id in self._containers:
                raise ContainerError("invalid_tool_input", f"a container {container_id} exists")
            if len(self._containers) >= self.limits.max_containers:
                raise ContainerError(
                    "too_many_requests",
                    f"the limit of {self.limits.max_containers} live containers is reached",
                )
            owned = sum(1 for c in self._containers.values() if c.owner == owner)
            if owned >= self.limits.max_per_owner:  # so one key cannot take every slot
                raise ContainerError(
                    "too_many_requests",
                    f"the limit of {self.limits.max_per_owner} live containers per API key "
                    "is reached",
                )
            new_id = container_id or "container_" + "".join(
                secrets.choice(_ID_ALPHABET) for _ in range(24)
            )
            self._expired.pop(new_id, None)  # an expired id may be used again
            uid = self._free_uid()
            now = self._clock()
            container = Container(new_id, uid, now, now, self.root / new_id, owner)
            (container.workspace / OUTPUTS).mkdir(parents=True)
            self._own(container)
            self._containers[new_id] = container
            self._save(container)
            return container

    def get(self, container_id: str, owner: str = "") -> Container:
        """The live container `container_id` of `owner`; another owner's is as good as missing
        (its existence is not revealed)."""
        with self._lock:
            self._expire()
            container = self._containers.get(container_id) if _valid_id(container_id) else None
            if container is not None and container.owner != owner:
                container = None
            if container is None:
                if self._expired.get(container_id) == owner:
                    raise ContainerError("container_expired", f"{container_id} has expired")
                raise ContainerError("unavailable", f"no container {container_id}")
            return container

    def run(self, container: Container, command: Sequence[str], stdin: bytes = b"") -> ExecResult:
        """Run a command in the container's workspace, then check its disk use."""
        container.last_used = self._clock()
        result = runner.run(
            command,
            container.workspace,
            self.execution,
            uid=container.uid,
            runtime=self.runtime,
            stdin=stdin,
            disk_bytes=self.limits.disk_bytes,
            egress=self._egress.socket(container.id),
        )
        container.last_used = self._clock()
        self._touch(container)
        used = disk_usage(container.workspace)
        if result.over_quota or used > self.limits.disk_bytes:
            stopped = "the command was stopped: " if result.over_quota else ""
            raise ContainerError(
                "output_file_too_large",
                f"{stopped}the workspace holds {used} bytes, over its quota of "
                f"{self.limits.disk_bytes}; delete files to go on",
            )
        return result

    def delete(self, container_id: str) -> None:
        with self._lock:
            container = self._containers.pop(container_id, None)
            if container is not None:
                shutil.rmtree(container.directory, ignore_errors=True)
        self._egress.revoke(container_id, "the container was deleted")

    def grant_egress(self, container_id: str, grant: EgressGrant) -> None:
        """Let the live container `container_id` (any owner's) reach `grant`'s destinations,
        from its next command on, replacing (and cutting) any grant it has. `EgressGrantError`
        for a grant already expired; `ContainerError` for a missing container."""
        with self._lock:
            self._expire()
            container = self._containers.get(container_id) if _valid_id(container_id) else None
        if container is None:
            raise ContainerError("unavailable", f"no container {container_id}")
        if runner.forwarder_python(self.runtime) is None:
            raise ContainerError("unavailable", "egress needs a Python in the sandbox")
        uid = container.uid if os.geteuid() == 0 else None  # the sandbox's user connects
        self._egress.grant(container_id, grant, uid)

    def revoke_egress(self, container_id: str) -> bool:
        """Take `container_id`'s grant away, cutting its connections; whether it had one."""
        return self._egress.revoke(container_id)

    def egress_grant(self, container_id: str) -> EgressGrant | None:
        """The container's live grant, if any."""
        return self._egress.grant_of(container_id)

    def close(self) -> None:
        """Revoke every egress grant (stopping the proxies' thread); containers stay."""
        self._egress.close()

    def live(self) -> list[Container]:
        with self._lock:
            self._expire()
            return list(self._containers.values())

    def _expire(self) -> None:
        now = self._clock()
        for container in list(self._containers.values()):
            if container.expires_at(self.limits) <= now:
                del self._containers[container.id]
                self._egress.revoke(container.id, "the container expired", wait=False)
                self._expired[container.id] = container.owner
                if len(self._expired) > REMEMBERED_EXPIRED:
                    self._expired.popitem(last=False)
                shutil.rmtree(container.directory, ignore_errors=True)

    def _free_uid(self) -> int:
        taken = {c.uid for c in self._containers.values()}
        uid = FIRST_UID
        while uid in taken:
            uid += 1
        return uid

    def _own(self, container: Container) -> None:
        if os.geteuid() != 0:
            return
        for path in (container.workspace, container.workspace / OUTPUTS):
            os.chown(path, container.uid, container.uid)
        os.chmod(container.workspace, 0o700)

    def _save(self, container: Container) -> None:
        record: dict[str, object] = {"uid": container.uid, "created_at": container.created_at}
        record["last_used"] = container.last_used
        record["owner"] = container.owner
        (container.directory / RECORD).write_text(json.dumps(record))
        self._touch(container)

    def _touch(self, container: Container) -> None:
        """Keep its last use as the record's modification time: rewriting the record on every
        execution would cost more than a plain subprocess (ext4 flushes a file rewritten in
        place when it is closed)."""
        try:
            os.utime(container.directory / RECORD, (container.last_used, container.last_used))
        except FileNotFoundError:  # removed under it: written again whole
            self._save(container)

    def _load(self) -> None:
        """Containers a previous run left; expired or broken ones are removed."""
        for directory in self.root.iterdir():
            try:
                path = directory / RECORD
                record = json.loads(path.read_text())
                container = Container(
                    directory.name,
                    int(record["uid"]),
                    float(record["created_at"]),
                    max(float(record["last_used"]), path.stat().st_mtime),  # see _touch
                    directory,
                    str(record.get("owner", "")),
                )
            except (OSError, ValueError, KeyError, TypeError):
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self._containers[container.id] = container
        self._expire()


def _valid_id(container_id: object) -> bool:
    return isinstance(container_id, str) and _VALID_ID.fullmatch(container_id) is not None
