"""A two-tier store of engine state (KV) for prompt prefixes, bounded in bytes.

RAM holds the most recently used entries up to its budget; what it evicts moves to disk when
the disk tier has room. One-hour entries are also written through to disk at once, so they
survive a restart. Each entry expires at its TTL; a hit pushes the expiry out again. The clock
is wall time (entries outlive the process) and injectable for tests.

Capturing state costs time and memory, so an engine may register an entry as *live*: its prefix
is still in the engine's context, and the engine captures it only before that context changes.
An entry may also be an *alias*: its prefix is served from the state of a longer prefix, cut
short. An agent that extends one conversation turn after turn thus costs one snapshot, taken
when another prompt takes over the context, not one per turn.

On disk an entry is `<key>.kv` (the state) and `<key>.json` (its tokens, size and expiry),
each written to a temporary name and renamed, so a crash never leaves half an entry visible.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tercet.cache.config import CacheConfig
from tercet.engine.base import CacheTTL

TTL_SECONDS: dict[CacheTTL, float] = {"5m": 300.0, "1h": 3600.0}


@dataclass
class _Entry:
    tokens: int
    size: int
    expires_at: float
    data: bytearray | None = None  # None: on disk only, live or an alias
    on_disk: bool = False
    live: bool = False  # the state is still in the engine's context, not captured yet
    source: str | None = None  # an alias: served by the state of this longer entry

    @property
    def stored(self) -> bool:
        return self.data is not None or self.on_disk or self.live or self.source is not None


@dataclass(frozen=True)
class CacheStats:
    entries: int
    live_entries: int
    alias_entries: int
    ram_entries: int
    ram_bytes: int
    ram_budget: int
    disk_entries: int
    disk_bytes: int
    disk_budget: int
    hits: int
    misses: int
    writes: int


class PromptCache:
    """Prefix snapshots by key. Thread-safe: the decode thread writes, request threads look up."""

    def __init__(
        self,
        config: CacheConfig,
        directory: Path | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._directory = directory if config.disk_bytes > 0 else None
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._hits = self._misses = self._writes = 0
        if self._directory is not None:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._load_index()

    def contains(self, key: str) -> bool:
        with self._lock:
            self._expire()
            found = key in self._entries
            if found:
                self._hits += 1
            else:
                self._misses += 1
            return found

    def tokens(self, key: str) -> int | None:
        with self._lock:
            self._expire()
            entry = self._entries.get(key)
            return entry.tokens if entry else None

    def get(self, key: str) -> tuple[bytearray, int] | None:
        """The state that serves `key` and how many tokens it holds (more than the entry's for
        an alias: cut it short), or None when it has expired, is gone, or is live."""
        with self._lock:
            self._expire()
            entry = self._entries.get(key)
            if entry is None or entry.live:
                return None
            self._entries.move_to_end(key)
            if entry.source is not None:
                key, entry = entry.source, self._entries[entry.source]
                self._entries.move_to_end(key)
            if entry.data is not None:
                return entry.data, entry.tokens
            tokens = entry.tokens
        data = self._read(key)
        return None if data is None else (data, tokens)

    def put(self, key: str, tokens: int, data: bytearray, ttl: CacheTTL) -> None:
        """Save a snapshot of a prefix of `tokens` tokens for `ttl`."""
        with self._lock:
            self._expire()
            expires = self._clock() + TTL_SECONDS[ttl]
            old = self._entries.pop(key, None)
            if old is not None:
                expires = max(expires, old.expires_at)
            entry = _Entry(tokens, len(data), expires, data, on_disk=bool(old and old.on_disk))
            self._entries[key] = entry
            self._writes += 1
            if ttl == "1h" or len(data) > self.config.ram_bytes:
                self._to_disk(key, entry)
            self._fit()

    def put_live(self, key: str, tokens: int, ttl: CacheTTL) -> None:
        """Register an entry whose state is still in the engine's context (see `capture`)."""
        with self._lock:
            self._expire()
            self._entries[key] = _Entry(tokens, 0, self._clock() + TTL_SECONDS[ttl], live=True)
            self._writes += 1

    def live(self) -> list[tuple[str, int]]:
        """The live entries, as (key, tokens)."""
        with self._lock:
            self._expire()
            return [(k, e.tokens) for k, e in self._entries.items() if e.live]

    def capture(self, key: str, data: bytearray) -> None:
        """The state of a live entry, taken before the engine's context moves on."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.live:
                return
            entry.live, entry.data, entry.size = False, data, len(data)
            if entry.size > self.config.ram_bytes:
                self._to_disk(key, entry)
            self._fit()

    def alias(self, key: str, source: str) -> None:
        """A live entry becomes served by `source`, the captured state of a longer prefix."""
        with self._lock:
            entry, target = self._entries.get(key), self._entries.get(source)
            if entry is None or not entry.live:
                return
            if target is None or target.live:  # nothing to serve it from
                del self._entries[key]
                return
            entry.live, entry.source = False, source
            target.expires_at = max(target.expires_at, entry.expires_at)

    def forget(self, key: str) -> None:
        """Drop an entry (and its aliases): its state is lost."""
        with self._lock:
            self._drop(key)

    def refresh(self, key: str, ttl: CacheTTL) -> None:
        """A hit: the entry lives another `ttl` from now (never less than it had)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.expires_at = max(entry.expires_at, self._clock() + TTL_SECONDS[ttl])
            self._entries.move_to_end(key)
            if entry.on_disk:
                self._write_meta(key, entry)
            if entry.source is not None:  # the state it is served from must live as long
                self._entries.move_to_end(entry.source)
                source = self._entries[entry.source]
                source.expires_at = max(source.expires_at, entry.expires_at)
                if source.on_disk:
                    self._write_meta(entry.source, source)

    def stats(self) -> CacheStats:
        with self._lock:
            self._expire()
            in_ram = [e for e in self._entries.values() if e.data is not None]
            on_disk = [e for e in self._entries.values() if e.on_disk]
            return CacheStats(
                entries=len(self._entries),
                live_entries=sum(e.live for e in self._entries.values()),
                alias_entries=sum(e.source is not None for e in self._entries.values()),
                ram_entries=len(in_ram),
                ram_bytes=sum(e.size for e in in_ram),
                ram_budget=self.config.ram_bytes,
                disk_entries=len(on_disk),
                disk_bytes=sum(e.size for e in on_disk),
                disk_budget=self.config.disk_bytes if self._directory else 0,
                hits=self._hits,
                misses=self._misses,
                writes=self._writes,
            )

    # Everything below runs with the lock held, except `_read`.

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            if key in self._entries:  # not gone with its source already
                self._drop(key)

    def _fit(self) -> None:
        """Evict least recently used state from RAM (to disk if it fits), then from disk."""
        ram = sum(e.size for e in self._entries.values() if e.data is not None)
        for key, entry in list(self._entries.items()):
            if ram <= self.config.ram_bytes:
                break
            if entry.data is None:
                continue
            ram -= entry.size
            if not entry.on_disk:
                self._to_disk(key, entry)
            entry.data = None
        disk = sum(e.size for e in self._entries.values() if e.on_disk)
        for key, entry in list(self._entries.items()):
            if disk <= self.config.disk_bytes:
                break
            if entry.on_disk:
                disk -= entry.size
                self._remove_files(key)
                entry.on_disk = False
        for key in [k for k, e in self._entries.items() if not e.stored]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if entry.on_disk:
            self._remove_files(key)
        for alias in [k for k, e in self._entries.items() if e.source == key]:
            del self._entries[alias]

    def _to_disk(self, key: str, entry: _Entry) -> None:
        if self._directory is None or entry.data is None or entry.size > self.config.disk_bytes:
            return
        _write_atomic(self._directory / f"{key}.kv", entry.data)
        entry.on_disk = True
        self._write_meta(key, entry)

    def _write_meta(self, key: str, entry: _Entry) -> None:
        assert self._directory is not None
        meta = {"tokens": entry.tokens, "size": entry.size, "expires_at": entry.expires_at}
        _write_atomic(self._directory / f"{key}.json", json.dumps(meta).encode())

    def _remove_files(self, key: str) -> None:
        assert self._directory is not None
        for suffix in (".json", ".kv"):  # metadata first: without it the state is an orphan
            (self._directory / f"{key}{suffix}").unlink(missing_ok=True)

    def _read(self, key: str) -> bytearray | None:
        if self._directory is None:
            return None
        path = self._directory / f"{key}.kv"
        try:
            with path.open("rb") as source:
                data = bytearray(os.fstat(source.fileno()).st_size)
                source.readinto(data)
        except FileNotFoundError:  # evicted meanwhile
            return None
        return data

    def _load_index(self) -> None:
        """Find the entries a previous run left on disk; drop expired, partial or orphan files."""
        assert self._directory is not None
        now = self._clock()
        found: list[tuple[float, str, _Entry]] = []
        for meta_path in self._directory.glob("*.json"):
            key = meta_path.stem
            try:
                meta = json.loads(meta_path.read_text())
                entry = _Entry(int(meta["tokens"]), int(meta["size"]), float(meta["expires_at"]))
                state = self._directory / f"{key}.kv"
                usable = state.stat().st_size == entry.size and entry.expires_at > now
            except (OSError, ValueError, KeyError, TypeError):
                usable = False
            if usable:
                entry.on_disk = True
                found.append((entry.expires_at, key, entry))
            else:
                self._remove_files(key)
        for _, key, entry in sorted(found):  # the soonest to expire count as least recent
            self._entries[key] = entry
        known = set(self._entries)
        for path in self._directory.iterdir():
            if path.stem not in known or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
        self._fit()


def _write_atomic(path: Path, data: bytes | bytearray) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as target:
        target.write(data)
        target.flush()
        os.fsync(target.fileno())
    temporary.replace(path)
