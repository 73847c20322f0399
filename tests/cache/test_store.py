"""The two-tier snapshot store: budgets, spilling to disk, expiry, and restarts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tercet.cache import store as store_module
from tercet.cache.config import CacheConfig
from tercet.cache.store import PromptCache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def store(directory: Path, clock: Clock, ram: int = 100, disk: int = 1000) -> PromptCache:
    return PromptCache(CacheConfig(ram_bytes=ram, disk_bytes=disk), directory, clock)


def data(size: int, fill: int = 1) -> bytearray:
    return bytearray([fill]) * size


def test_ram_evicts_least_recently_used_to_disk(tmp_path: Path) -> None:
    clock = Clock()
    cache = store(tmp_path, clock)
    cache.put("a", 10, data(40, 1), "5m")
    cache.put("b", 10, data(40, 2), "5m")
    assert cache.get("a") == (data(40, 1), 10)  # "a" is now the most recently used
    cache.put("c", 10, data(40, 3), "5m")  # over the RAM budget: "b" goes to disk
    stats = cache.stats()
    assert (stats.ram_entries, stats.ram_bytes, stats.disk_entries) == (2, 80, 1)
    assert (tmp_path / "b.kv").read_bytes() == data(40, 2)
    assert cache.get("b") == (data(40, 2), 10)  # still served, from disk


def test_disk_is_bounded_too(tmp_path: Path) -> None:
    cache = store(tmp_path, Clock(), ram=50, disk=100)
    for key in "abcd":
        cache.put(key, 10, data(40), "5m")
    stats = cache.stats()
    assert stats.ram_bytes <= 50 and stats.disk_bytes <= 100
    assert not cache.contains("a")  # the oldest fell out of both tiers
    assert cache.contains("d")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{k}.{s}" for k in "bc" for s in ("json", "kv")
    )


def test_entries_expire_and_hits_extend_them(tmp_path: Path) -> None:
    clock = Clock()
    cache = store(tmp_path, clock)
    cache.put("short", 10, data(8), "5m")
    cache.put("long", 10, data(8), "1h")
    clock.now += 240
    cache.refresh("short", "5m")  # a hit four minutes in: five more minutes from now
    clock.now += 240
    assert cache.contains("short")
    clock.now += 61
    assert not cache.contains("short") and cache.get("short") is None
    assert cache.contains("long")
    clock.now += 3600
    assert not cache.contains("long")
    cache.flush()  # a lookup only queues the removal
    assert list(tmp_path.iterdir()) == []  # the 1-hour entry's files went with it


def test_one_hour_entries_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    cache = store(tmp_path, clock)
    cache.put("hour", 10, data(8, 7), "1h")
    cache.put("minutes", 10, data(8, 8), "5m")
    reopened = store(tmp_path, clock)
    assert reopened.get("hour") == (data(8, 7), 10)
    assert not reopened.contains("minutes")  # RAM only, as it fit there
    clock.now += 3601
    assert not store(tmp_path, clock).contains("hour")


def test_partial_and_orphan_files_are_removed_on_start(tmp_path: Path) -> None:
    clock = Clock()
    cache = store(tmp_path, clock)
    cache.put("whole", 10, data(8), "1h")
    (tmp_path / "torn.kv.tmp").write_bytes(b"half")
    (tmp_path / "orphan.kv").write_bytes(b"no metadata")
    (tmp_path / "short.json").write_text('{"tokens": 1, "size": 99, "expires_at": 2e9}')
    (tmp_path / "short.kv").write_bytes(b"only 12 byte")
    reopened = store(tmp_path, clock)
    assert reopened.contains("whole") and not reopened.contains("short")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole.json", "whole.kv"]


def test_memory_only_when_the_disk_tier_is_off(tmp_path: Path) -> None:
    cache = store(tmp_path / "unused", Clock(), ram=50, disk=0)
    cache.put("a", 10, data(40), "1h")
    cache.put("b", 10, data(40), "1h")
    assert not cache.contains("a") and cache.contains("b")
    assert not (tmp_path / "unused").exists()


def test_live_entries_are_captured_once_and_aliased(tmp_path: Path) -> None:
    cache = store(tmp_path, Clock())
    cache.put_live("short", 10, "5m")
    cache.put_live("long", 20, "5m")
    assert cache.contains("short") and cache.get("short") is None  # in the engine's context
    assert sorted(cache.live()) == [("long", 20), ("short", 10)]
    cache.capture("long", data(40, 5))
    cache.alias("short", "long")
    assert cache.get("short") == (data(40, 5), 20)  # the longer state, to be cut short
    stats = cache.stats()
    assert (stats.entries, stats.ram_entries, stats.alias_entries, stats.live_entries) == (
        2,
        1,
        1,
        0,
    )
    cache.forget("long")  # an alias goes with its source
    assert not cache.contains("short")


def test_an_alias_keeps_its_source_alive(tmp_path: Path) -> None:
    clock = Clock()
    cache = store(tmp_path, clock)
    cache.put_live("short", 10, "5m")
    cache.put_live("long", 20, "5m")
    cache.capture("long", data(40))
    cache.alias("short", "long")
    clock.now += 200
    cache.refresh("short", "5m")
    clock.now += 200  # past the source's own five minutes
    assert cache.get("short") is not None and cache.contains("long")
    cache.put_live("orphan", 5, "5m")
    cache.alias("orphan", "missing")
    assert not cache.contains("orphan")


def test_lookups_do_not_wait_for_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = store(tmp_path, Clock(), ram=50)
    cache.put("a", 10, data(40, 1), "5m")
    writing, release = threading.Event(), threading.Event()
    original = store_module._write_atomic

    def slow_write(path: Path, payload: bytes | bytearray) -> None:
        writing.set()
        release.wait(60)  # held until the test lets it go; the bound only ends a hang
        original(path, payload)

    monkeypatch.setattr(store_module, "_write_atomic", slow_write)
    putter = threading.Thread(target=cache.put, args=("b", 10, data(40, 2), "5m"))
    putter.start()  # over the RAM budget: "a" goes to disk, slowly
    try:
        assert writing.wait(30)
        # Meanwhile lookups answer, and "a" is served from memory until its file is whole.
        assert cache.contains("b") and cache.tokens("a") == 10
        assert cache.get("a") == (data(40, 1), 10)
        assert cache.stats().disk_entries == 1
        assert putter.is_alive()  # put itself returns once its files are written
    finally:
        release.set()
    putter.join(30)
    assert (tmp_path / "a.kv").read_bytes() == data(40, 1)
    assert cache.get("a") == (data(40, 1), 10)


def test_a_refresh_for_an_hour_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    cache = store(tmp_path, clock)
    cache.put("minutes", 10, data(8, 3), "5m")  # fits in RAM: not on disk
    cache.put("source", 20, data(8, 4), "1h")
    cache.put_live("alias", 10, "5m")
    cache.alias("alias", "source")
    clock.now += 240
    cache.refresh("minutes", "1h")  # a hit by a 1-hour breakpoint: kept as one is
    clock.now += 1800
    cache.refresh("alias", "1h")  # the state that serves it lives as long, on disk too
    cache.flush()
    clock.now += 1660  # past the source's first hour, within the refreshed ones
    reopened = store(tmp_path, clock)
    assert reopened.get("minutes") == (data(8, 3), 10)
    assert reopened.get("source") == (data(8, 4), 20)


def test_a_second_put_rewrites_the_entry_on_disk(tmp_path: Path) -> None:
    clock = Clock()
    cache = store(tmp_path, clock, ram=50)
    cache.put("a", 10, data(40, 1), "5m")
    cache.put("b", 10, data(40, 2), "5m")  # "a" goes to disk, to expire in five minutes
    clock.now += 200
    cache.put("a", 10, data(40, 1), "5m")  # saved again: five more minutes, on disk too
    clock.now += 200
    assert store(tmp_path, clock).get("a") == (data(40, 1), 10)
