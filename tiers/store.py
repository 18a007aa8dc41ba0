"""The contract every tier store keeps, and the bookkeeping they all share.

Subclasses implement ``_put``/``_get``/``_delete``/``_clear``/``describe`` over their medium. The
public methods here wrap them with what must be identical everywhere: capacity checks, occupancy,
counters, latency histograms, integrity checks on the way out, health, and injected faults
(``down``, ``slow``, ``corrupt``, ``full``), so a fault behaves the same on every kind of tier.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

import numpy as np

from .block import Block, BlockHash, Payload, byte_view
from .errors import BlockCorrupt, StoreFull, StoreUnavailable
from .health import Health
from .stats import StoreStats

Buffer = Payload
HealthListener = Callable[["TierStore", Health, Health, str], None]


class FaultKind(StrEnum):
    DOWN = "down"  # every operation fails as if the medium were unreachable
    SLOW = "slow"  # every operation takes ``delay_s`` longer
    CORRUPT = "corrupt"  # blocks read back fail their checksum (and are removed)
    FULL = "full"  # puts fail as if the medium had no space left


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    until: float | None  # time.monotonic() deadline; None lasts until cleared
    delay_s: float = 0.0

    def expired(self, now: float) -> bool:
        return self.until is not None and now >= self.until


_FAULT_HEALTH = {
    FaultKind.DOWN: Health.DOWN,
    FaultKind.SLOW: Health.DEGRADED,
    FaultKind.CORRUPT: Health.DEGRADED,
    FaultKind.FULL: Health.DEGRADED,
}


class TierStore(ABC):
    """A byte-capacity store of KV blocks on one medium."""

    kind: ClassVar[str] = "store"
    #: Check every block's checksum on the way out (media that can rot or be tampered with).
    verify_on_get: ClassVar[bool] = False

    def __init__(self, name: str, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity of tier {name!r} must be >= 0, got {capacity_bytes}")
        self.name = name
        self._capacity = int(capacity_bytes)
        self._sizes: dict[BlockHash, int] = {}
        self._used = 0
        self.stats = StoreStats()
        self._medium_health = Health.OK
        self._medium_reason = ""
        self._faults: dict[FaultKind, Fault] = {}
        self._reported_health = Health.OK
        self.health_listener: HealthListener | None = None

    # ---------------------------------------------------------------- what a subclass provides

    @abstractmethod
    def _put(self, block: Block) -> None:
        """Store the block's bytes (the key is new to this store and fits)."""

    @abstractmethod
    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        """Return the block (payload copied into ``out`` when given), or None if it is not there."""

    @abstractmethod
    def _delete(self, key: BlockHash) -> None:
        """Forget the block (the key is resident)."""

    @abstractmethod
    def _clear(self) -> None:
        """Forget every block."""

    @abstractmethod
    def describe(self) -> str:
        """What this tier really is on this machine, e.g. 'dram: 64 MiB arena, 256 KiB slots'."""

    def max_capacity(self) -> int | None:
        """The largest capacity this medium can take (None: no fixed limit)."""
        return None

    def close(self) -> None:  # noqa: B027  (most media have nothing to release)
        """Release the medium (files, sockets, memory). The store is unusable afterwards."""

    # ---------------------------------------------------------------- occupancy and capacity

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    def set_capacity(self, capacity_bytes: int) -> None:
        """Change the capacity. The caller must first evict down to it (the hierarchy does)."""
        limit = self.max_capacity()
        if capacity_bytes < 0:
            raise ValueError(f"capacity of tier {self.name!r} must be >= 0, got {capacity_bytes}")
        if limit is not None and capacity_bytes > limit:
            raise ValueError(
                f"capacity {capacity_bytes} B for tier {self.name!r} exceeds what its medium "
                f"holds ({limit} B)"
            )
        if capacity_bytes < self._used:
            raise ValueError(
                f"tier {self.name!r} holds {self._used} B; "
                f"evict before shrinking to {capacity_bytes}"
            )
        self._capacity = int(capacity_bytes)

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def num_blocks(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def keys(self) -> list[BlockHash]:
        return list(self._sizes)

    def size_of(self, key: BlockHash) -> int:
        return self._sizes[key]

    def _adopt(self, key: BlockHash, nbytes: int) -> None:
        """Record a block found on the medium at start-up (e.g. a reopened disk directory)."""
        self._used -= self._sizes.get(key, 0)
        self._sizes[key] = nbytes
        self._used += nbytes

    # ---------------------------------------------------------------- operations

    def put(self, block: Block) -> None:
        """Store a copy of the block. Raises StoreFull or StoreUnavailable; then nothing changed."""
        started = time.perf_counter_ns()
        self._check_faults(is_put=True)
        key, nbytes = block.key, block.header.nbytes
        replaced = self._sizes.get(key, 0)
        if self._used - replaced + nbytes > self._capacity:
            self.stats.errors += 1
            raise StoreFull(
                f"tier {self.name!r}: {nbytes} B does not fit "
                f"({self._used}/{self._capacity} B used)"
            )
        if key in self._sizes:  # a re-put replaces; if the new put then fails, the key is gone
            self.delete(key)
        try:
            self._put(block)
        except (StoreFull, StoreUnavailable):
            self.stats.errors += 1
            raise
        self._sizes[key] = nbytes
        self._used += nbytes
        stats = self.stats
        stats.puts += 1
        stats.bytes_in += nbytes
        stats.latency["put"].record(time.perf_counter_ns() - started)

    def get(self, key: BlockHash, out: Buffer | None = None) -> Block | None:
        """The block as it was put, or None. Raises BlockCorrupt (block removed) or
        StoreUnavailable; a corrupt block is never returned (though ``out``, when given, may
        already hold its bytes: a caller must not use ``out`` after an exception).

        A corrupt block is handled here for every medium, whether the checksum check below finds
        it or the subclass's ``_get`` raises BlockCorrupt (damage it sees before a checksum can
        be checked, e.g. a bad on-disk header): counted once, removed, forgotten, re-raised."""
        started = time.perf_counter_ns()
        self._check_faults(is_put=False)
        stats = self.stats
        stats.gets += 1
        try:
            block = self._get(key, out) if key in self._sizes else None
        except BlockCorrupt:
            self._drop_corrupt(key, started)
            raise
        if block is None:
            stats.misses += 1
            if key in self._sizes:  # the medium lost it (server restarted, file removed)
                self._forget(key)
            stats.latency["get"].record(time.perf_counter_ns() - started)
            return None
        corrupt_fault = FaultKind.CORRUPT in self._faults
        if corrupt_fault:
            block = _corrupted_copy(block)
        if (self.verify_on_get or corrupt_fault) and not block.verify():
            self._drop_corrupt(key, started)
            raise BlockCorrupt(key, f"checksum mismatch in tier {self.name!r}")
        stats.hits += 1
        stats.bytes_out += block.header.nbytes
        stats.latency["get"].record(time.perf_counter_ns() - started)
        return block

    def delete(self, key: BlockHash) -> bool:
        """Remove the block; False when it was not here."""
        started = time.perf_counter_ns()
        self._check_faults(is_put=False)
        if key not in self._sizes:
            return False
        self._delete(key)
        self._forget(key)
        self.stats.deletes += 1
        self.stats.latency["delete"].record(time.perf_counter_ns() - started)
        return True

    def clear(self) -> int:
        """Remove every block; returns the bytes freed."""
        self._check_faults(is_put=False)
        freed = self._used
        self._clear()
        self._sizes.clear()
        self._used = 0
        return freed

    def _forget(self, key: BlockHash) -> None:
        self._used -= self._sizes.pop(key, 0)

    def _drop_corrupt(self, key: BlockHash, started_ns: int) -> None:
        """Count a corrupt block as a miss, remove it from the medium and forget it. A wrapper
        whose inner store already did this (the key is gone) is not counted twice."""
        stats = self.stats
        if key in self._sizes:
            stats.corrupt += 1
            stats.misses += 1
            self._delete(key)
            self._forget(key)
        stats.latency["get"].record(time.perf_counter_ns() - started_ns)

    # ---------------------------------------------------------------- health and faults

    @property
    def health(self) -> Health:
        self._expire_faults()
        worst = self._medium_health
        for fault in self._faults.values():
            worst = max(worst, _FAULT_HEALTH[fault.kind], key=_severity)
        return worst

    @property
    def health_reason(self) -> str:
        """Why the tier is not ok: its injected faults, else what its medium said ("" if ok)."""
        faults = self.faults()
        if faults:
            return "injected fault: " + ", ".join(str(f.kind) for f in faults)
        return "" if self.health is Health.OK else self._medium_reason

    def faults(self) -> list[Fault]:
        self._expire_faults()
        return list(self._faults.values())

    def inject_fault(
        self, kind: FaultKind | str, duration_s: float | None = None, delay_s: float = 0.01
    ) -> None:
        """Make the store misbehave on purpose for ``duration_s`` seconds (None: until cleared)."""
        kind = FaultKind(kind)
        if duration_s is not None and duration_s <= 0:
            raise ValueError(f"fault duration must be > 0 s, got {duration_s}")
        until = None if duration_s is None else time.monotonic() + duration_s
        self._faults[kind] = Fault(kind, until, delay_s if kind is FaultKind.SLOW else 0.0)
        self._report_health(f"fault injected: {kind}")

    def clear_faults(self) -> None:
        self._faults.clear()
        self._report_health("faults cleared")

    def set_medium_health(self, health: Health, reason: str) -> None:
        """For subclasses: the medium itself changed state (server gone, disk full, recovered)."""
        self._medium_health = health
        self._medium_reason = reason
        self._report_health(reason)

    def _report_health(self, reason: str) -> None:
        current = self.health
        previous, self._reported_health = self._reported_health, current
        if current is not previous and self.health_listener is not None:
            self.health_listener(self, previous, current, reason)

    def _expire_faults(self) -> None:
        if not self._faults:
            return
        now = time.monotonic()
        expired = [kind for kind, fault in self._faults.items() if fault.expired(now)]
        for kind in expired:
            del self._faults[kind]
        if expired:
            self._report_health("fault expired: " + ", ".join(expired))

    def _check_faults(self, *, is_put: bool) -> None:
        if not self._faults:
            return
        self._expire_faults()
        faults = self._faults
        if FaultKind.DOWN in faults:
            self.stats.errors += 1
            raise StoreUnavailable(f"tier {self.name!r} is down (injected fault)")
        slow = faults.get(FaultKind.SLOW)
        if slow is not None:
            time.sleep(slow.delay_s)
        if is_put and FaultKind.FULL in faults:
            self.stats.errors += 1
            raise StoreFull(f"tier {self.name!r} is full (injected fault)")


def _severity(health: Health) -> int:
    return (Health.OK, Health.DEGRADED, Health.DOWN).index(health)


def _corrupted_copy(block: Block) -> Block:
    data = bytearray(block.view())
    if data:
        data[len(data) // 2] ^= 0xFF
    return Block(block.key, block.header, data)


def copy_into(out: Buffer | None, source: Buffer) -> Buffer:
    """Copy ``source`` bytes into ``out`` (or a new array) and return the destination."""
    src = np.frombuffer(byte_view(source), dtype=np.uint8)
    if out is None:
        return src.copy()
    dst = np.frombuffer(byte_view(out), dtype=np.uint8)
    if dst.nbytes != src.nbytes:
        raise ValueError(f"output buffer holds {dst.nbytes} B, block has {src.nbytes} B")
    np.copyto(dst, src)
    return out
