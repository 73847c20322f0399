"""A two-tier store of engine state (KV) for prompt prefixes, bounded in bytes.

RAM holds the most recently used entries up to its budget; what it evicts moves to disk when
the disk tier has room. One-hour entries (written for an hour, or refreshed for one) are also
written through to disk, so they survive a restart. Each entry expires at its TTL; a hit pushes
the expiry out again, on disk too. The clock is wall time (entries outlive the process) and
injectable for tests.

Capturing state costs time and memory, so an engine may register an entry as *live*: its prefix
is still in the engine's context, and the engine captures it only before that context changes.
An entry may also be an *alias*: its prefix is served from the state of a longer prefix, cut
short. An agent that extends one conversation turn after turn thus costs one snapshot, taken
when another prompt takes over the context, not one per turn.

On disk an entry is `<key>.kv` (the state) and `<key>.json` (its tokens, size and expiry),
each written to a temporary name and renamed, so a crash never leaves half an entry visible.
Writing a state can take seconds, so no file is touched under the lock that lookups take: what
to write or remove is decided under it and queued, and a writer thread does the queue in order
(a removal never overtakes the write it undoes). A state on its way to disk is served from
memory until it is there.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tercet.cache.config import CacheConfig
from tercet.engine.base import CacheTTL

TTL_SECONDS: dict[CacheTTL, float] = {"5m": 300.0, "1h": 3600.0}

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    tokens: int
    size: int
    expires_at: float
    data: bytearray | None = None  # None: on disk only, live or an alias
    on_disk: bool = False  # its files are on disk, or queued to be
    live: bool = False  # the state is still in the engine's context, not captured yet
    source: str | None = None  # an alias: served by the state of this longer entry
    hour: bool = False  # written or refreshed for an hour: kept on disk too

    @property
    def stored(self) -> bool:
        return self.data is not None or self.on_disk or self.live or self.source is not None


@dataclass(frozen=True)
class _FileWork:
    """One queued change on disk: an entry's state, its metadata, or removing both."""

    kind: Literal["state", "meta", "remove"]
    key: str
    data: bytes | bytearray = b""


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
        self._work: deque[_FileWork] = deque()  # file work decided, not done yet, in order
        self._queued = self._done = 0  # file work queued and done since the start
        self._work_done = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self._writing: dict[str, bytearray] = {}  # states queued for disk, served from here
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
            data = entry.data if entry.data is not None else self._writing.get(key)
            if data is not None:
                return data, entry.tokens
        data = self._read(key)
        if data is None:
            with self._lock:
                # The file is gone (or unreadable): an entry that cannot be served must not
                # count as a hit, or every prompt that reads it would be billed for nothing.
                if self._entries.get(key) is entry and entry.data is None:
                    self._drop(key)
                    self._start_writer()
            return None
        return data, entry.tokens

    def put(self, key: str, tokens: int, data: bytearray, ttl: CacheTTL) -> None:
        """Save a snapshot of a prefix of `tokens` tokens for `ttl`. Returns once the files it
        needs are on disk (the lock is free meanwhile)."""
        with self._lock:
            self._expire()
            entry = _Entry(tokens, len(data), self._clock() + TTL_SECONDS[ttl], data)
            entry.hour = ttl == "1h"
            old = self._entries.pop(key, None)
            if old is not None:
                entry.expires_at = max(entry.expires_at, old.expires_at)
                entry.hour = entry.hour or old.hour
                if old.on_disk:  # its files are rewritten below, with the new expiry
                    self._remove(key)
            self._entries[key] = entry
            self._writes += 1
            if entry.hour or (old and old.on_disk) or len(data) > self.config.ram_bytes:
                self._to_disk(key, entry)
            self._fit()
            self._finish_work()

    def put_live(self, key: str, tokens: int, ttl: CacheTTL) -> None:
        """Register an entry whose state is still in the engine's context (see `capture`)."""
        with self._lock:
            self._expire()
            if key in self._entries:  # stored meanwhile: that state serves it already
                return
            entry = _Entry(tokens, 0, self._clock() + TTL_SECONDS[ttl], live=True)
            entry.hour = ttl == "1h"
            self._entries[key] = entry
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
            if entry.hour or entry.size > self.config.ram_bytes:
                self._to_disk(key, entry)
            self._fit()
            self._finish_work()

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
            self._extend(source, target, entry.expires_at, entry.hour)
            self._fit()
            self._finish_work()

    def forget(self, key: str) -> None:
        """Drop an entry (and its aliases): its state is lost."""
        with self._lock:
            self._drop(key)
            self._start_writer()

    def discard(self, key: str) -> None:
        """The state that serves `key` is unusable (it failed to load): drop the entry that
        holds it, the source of an alias, with every alias of it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._drop(entry.source or key)
                self._start_writer()

    def refresh(self, key: str, ttl: CacheTTL) -> None:
        """A hit: the entry lives another `ttl` from now (never less than it had)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            self._extend(key, entry, self._clock() + TTL_SECONDS[ttl], ttl == "1h")
            if entry.source is not None:  # the state it is served from must live as long
                self._extend(
                    entry.source, self._entries[entry.source], entry.expires_at, entry.hour
                )
            self._fit()
            self._start_writer()  # a lookup never waits for the disk

    def flush(self) -> None:
        """Wait until every file change decided so far is on disk."""
        with self._lock:
            self._finish_work()

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

    # Everything below runs with the lock held, except what the writer thread does on disk.

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            if key in self._entries:  # not gone with its source already
                self._drop(key)
        self._start_writer()

    def _extend(self, key: str, entry: _Entry, expires_at: float, hour: bool) -> None:
        """Make an entry live until `expires_at` at least; an hour's entry goes to disk too."""
        entry.expires_at = max(entry.expires_at, expires_at)
        entry.hour = entry.hour or hour
        self._entries.move_to_end(key)
        if entry.on_disk:  # persist the new expiry, or a restart would find it expired early
            self._queue(_FileWork("meta", key, self._meta(entry)))
        elif entry.hour and entry.data is not None:
            self._to_disk(key, entry)

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
                self._remove(key)
                entry.on_disk = False
        for key in [k for k, e in self._entries.items() if not e.stored]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if entry.on_disk:
            self._remove(key)
        for alias in [k for k, e in self._entries.items() if e.source == key]:
            del self._entries[alias]

    def _to_disk(self, key: str, entry: _Entry) -> None:
        if self._directory is None or entry.data is None or entry.size > self.config.disk_bytes:
            return
        if not entry.on_disk:
            self._queue(_FileWork("state", key, entry.data))
            self._writing[key] = entry.data
            entry.on_disk = True
        self._queue(_FileWork("meta", key, self._meta(entry)))

    @staticmethod
    def _meta(entry: _Entry) -> bytes:
        meta = {"tokens": entry.tokens, "size": entry.size, "expires_at": entry.expires_at}
        return json.dumps(meta).encode()

    def _remove(self, key: str) -> None:
        self._queue(_FileWork("remove", key))
        self._writing.pop(key, None)  # a write still queued is undone by the removal

    def _queue(self, work: _FileWork) -> None:
        if self._directory is not None:
            self._work.append(work)
            self._queued += 1

    def _start_writer(self) -> None:
        """Have the writer thread do the queued file work (starting it if it is not running)."""
        if self._work and self._writer is None:
            # Not a daemon: at exit, the interpreter waits for the work already decided.
            self._writer = threading.Thread(
                target=self._write_queued, name="prompt-cache-writer", daemon=False
            )
            self._writer.start()

    def _finish_work(self) -> None:
        """Wait (with the lock released meanwhile) until the work queued so far is done."""
        self._start_writer()
        target = self._queued
        while self._done < target:
            self._work_done.wait()

    def _write_queued(self) -> None:
        """The writer thread: does the queued file work in order, and ends when none is left."""
        while True:
            with self._lock:
                if not self._work:
                    self._writer = None
                    return
                work = self._work.popleft()
            failed = False
            try:
                self._do(work)
            except Exception as error:  # the disk is full, say; the writer must go on all the
                # same, or whoever waits for this work would wait for ever
                log.warning("prompt cache: %s of %s failed: %s", work.kind, work.key, error)
                failed = True
            with self._lock:
                # Whether this is the state of the entry now under that key (not of one
                # dropped or replaced since): on disk now, or never.
                current = work.kind == "state" and self._writing.get(work.key) is work.data
                if current:
                    del self._writing[work.key]
                entry = self._entries.get(work.key)
                if current and failed and entry is not None:
                    entry.on_disk = False
                    self._remove(work.key)  # its metadata, if that gets written
                    if not entry.stored:
                        self._drop(work.key)
                self._done += 1
                self._work_done.notify_all()

    def _do(self, work: _FileWork) -> None:
        assert self._directory is not None
        if work.kind == "state":
            _write_atomic(self._directory / f"{work.key}.kv", work.data)
        elif work.kind == "meta":
            _write_atomic(self._directory / f"{work.key}.json", work.data)
        else:
            _remove_files(self._directory, work.key)

    def _read(self, key: str) -> bytearray | None:
        if self._directory is None:
            return None
        path = self._directory / f"{key}.kv"
        try:
            with path.open("rb") as source:
                data = bytearray(os.fstat(source.fileno()).st_size)
                source.readinto(data)
        except OSError:  # evicted meanwhile, or unreadable
            return None
        return data

    def _load_index(self) -> None:
        """Find the entries a previous run left on disk; drop expired, partial or orphan files.
        Runs before any other thread can see the store, so it touches files directly."""
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
                _remove_files(self._directory, key)
        for _, key, entry in sorted(found):  # the soonest to expire count as least recent
            self._entries[key] = entry
        known = set(self._entries)
        for path in self._directory.iterdir():
            if path.stem not in known or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
        with self._lock:
            self._fit()
            self._finish_work()


def _remove_files(directory: Path, key: str) -> None:
    for suffix in (".json", ".kv"):  # metadata first: without it the state is an orphan
        (directory / f"{key}{suffix}").unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes | bytearray) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("wb") as target:
            target.write(data)
            target.flush()
            os.fsync(target.fileno())
        temporary.replace(path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
