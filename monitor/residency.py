"""Which KV blocks each tier holds, folded from vLLM-shaped block events.

:class:`BlockResidency` keeps one table of resident block hashes per tier, up to a cap; past the
cap a tier's count becomes an estimate (stored minus removed), because a real engine can hold
millions of blocks and the reader must stay bounded. :meth:`BlockResidency.fold` folds a run of
consecutive :class:`~tiertop.monitor.vllm_events.KvEventBatch` es into a :class:`BlockDigest`:
the counts a dashboard shows, without the hashes. The state model folds every batch through
this path (a run of one), and a process that folds block events for a dashboard sends it the
digests instead of the batches (see :mod:`tiertop.monitor.ingest_process`), so both show the
same.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from .protocol import ResidentSummary
from .vllm_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    ExternalBlockHash,
    KvEventBatch,
)

__all__ = ["DEFAULT_MAX_TRACKED_BLOCKS", "BlockDigest", "BlockResidency"]

#: Most block hashes tracked per tier by default (about 20 MB of dict per tier at the cap).
DEFAULT_MAX_TRACKED_BLOCKS = 250_000


class _Tally:
    """One tier's part of a run: blocks stored, blocks removed, and its table (None while it
    is estimated), looked up once per event."""

    __slots__ = ("batch", "removed", "sample_n", "sample_sum", "stored", "table")

    def __init__(self, table: dict[ExternalBlockHash, None] | None) -> None:
        self.stored = 0
        self.removed = 0
        self.table = table
        self.batch = -1  # the last batch of the run that touched the tier
        self.sample_sum = 0  # its resident count after each batch that touched it, summed
        self.sample_n = 0


class BlockDigest(msgspec.Struct, gc=False, kw_only=True):
    """What a run of consecutive block-event batches did, in counts.

    Attributes:
        ts: The last batch's timestamp.
        batches: Batches in the run.
        events: Events in them.
        stored: Blocks stored per tier (tiers with none left out).
        removed: Blocks removed per tier (tiers with none left out).
        resident: Resident blocks after the run of every tier an event named (every tier the
            residency knows when the run cleared): exact where tracked, else an estimate.
        samples: Per tier of ``resident``: its resident count after each batch that touched
            it, summed, and the number of such batches (the series' mean of resident blocks
            comes out as if each batch had been folded on its own).
        untracked: Tiers whose count is an estimate now (over the tracking cap, or loaded from a
            snapshot without hashes).
        cleared: An ``AllBlocksCleared`` was in the run.
    """

    ts: float
    batches: int
    events: int
    stored: dict[str, int] = msgspec.field(default_factory=dict)
    removed: dict[str, int] = msgspec.field(default_factory=dict)
    resident: dict[str, int] = msgspec.field(default_factory=dict)
    samples: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)
    untracked: list[str] = msgspec.field(default_factory=list)
    cleared: bool = False


class BlockResidency:
    """Resident block hashes per tier, capped, folded from block events.

    Args:
        max_tracked_blocks: Most hashes tracked per tier; a tier that ends a batch with more
            is counted (stored minus removed, never below 0) from then on, until a clear, a
            reset or a snapshot with its hashes makes it exact again.
    """

    __slots__ = ("_estimates", "_tables", "max_tracked_blocks")

    def __init__(self, max_tracked_blocks: int = DEFAULT_MAX_TRACKED_BLOCKS) -> None:
        self.max_tracked_blocks = max_tracked_blocks
        # Dicts, not sets: a dict of ints (or bytes) is not tracked by the garbage collector, so
        # hundreds of thousands of resident hashes cost a full collection nothing (a set: ~30 ms).
        self._tables: dict[str, dict[ExternalBlockHash, None]] = {}
        self._estimates: dict[str, int] = {}  # tiers over the cap: their estimated count

    # ------------------------------------------------------------------------------ queries

    def blocks(self, tier: str) -> int:
        """Resident blocks of ``tier`` (0 when unknown)."""
        table = self._tables.get(tier)
        return len(table) if table is not None else self._estimates.get(tier, 0)

    def state(self, ts: float) -> BlockDigest:
        """A digest of no batches that carries every known tier's count and exactness (after a
        snapshot, for a reader that folds digests and never saw the hashes)."""
        names = [*self._tables, *self._estimates]
        return BlockDigest(ts=ts, batches=0, events=0,
                           resident={name: self.blocks(name) for name in names},
                           untracked=list(self._estimates))

    def tracked(self, tier: str) -> bool:
        """Whether :meth:`blocks` of ``tier`` is exact (a tier not seen yet is: it holds none)."""
        return tier not in self._estimates

    # ------------------------------------------------------------------------------ folding

    def reset(self) -> None:
        """The runtime restarted: nothing is resident, every tier is tracked again."""
        self._tables.clear()
        self._estimates.clear()

    def load(self, resident: Sequence[ResidentSummary]) -> None:
        """Take what a :class:`~tiertop.monitor.protocol.Snapshot` says the tiers hold (tiers
        it does not name keep what they had)."""
        for summary in resident:
            hashes = summary.block_hashes
            if hashes is not None and len(hashes) <= self.max_tracked_blocks:
                self._tables[summary.tier] = dict.fromkeys(hashes)
                self._estimates.pop(summary.tier, None)
            else:
                self._tables.pop(summary.tier, None)
                self._estimates[summary.tier] = summary.blocks

    def fold(self, batches: Sequence[KvEventBatch]) -> BlockDigest | None:
        """Fold a run of consecutive batches, oldest first; what they did (None: no batches).

        The cap is checked at the end of every batch, so a run folds exactly as its batches
        one by one would. A digest ends with the first batch that clears every tier (the
        reader gives every tier it knows a sample then, tiers the residency never saw
        included): ``digest.batches`` says how many were taken; fold the rest next. Events are
        matched by exact type, as the decoder makes them.
        """
        if not batches:
            return None
        run: dict[str, _Tally] = {}  # first touch first
        estimates = self._estimates
        enter = self._enter  # a local: this is the hot loop
        cleared = False
        events = 0
        taken = 0
        for k, batch in enumerate(batches):
            if cleared:
                break
            taken += 1
            batch_events = batch.events
            events += len(batch_events)
            for event, name in zip(batch_events, batch.tiers, strict=False):
                if type(event) is BlockStored:
                    tally = run.get(name) or enter(run, name)
                    tally.batch = k
                    hashes = event.block_hashes
                    tally.stored += len(hashes)
                    table = tally.table
                    if table is not None:
                        for key in hashes:
                            table[key] = None
                    else:
                        estimates[name] += len(hashes)
                elif type(event) is BlockRemoved:
                    tally = run.get(name) or enter(run, name)
                    tally.batch = k
                    hashes = event.block_hashes
                    tally.removed += len(hashes)
                    table = tally.table
                    if table is not None:
                        for key in hashes:
                            table.pop(key, None)
                    else:
                        estimates[name] = max(0, estimates[name] - len(hashes))
                elif type(event) is AllBlocksCleared:
                    cleared = True
                    self._clear(run, k)
            self._end_batch(run, k)
        return BlockDigest(
            ts=batches[taken - 1].ts,
            batches=taken,
            events=events,
            stored={name: t.stored for name, t in run.items() if t.stored},
            removed={name: t.removed for name, t in run.items() if t.removed},
            resident={
                name: len(t.table) if t.table is not None else estimates[name]
                for name, t in run.items()
            },
            samples={name: (t.sample_sum, t.sample_n) for name, t in run.items() if t.sample_n},
            untracked=list(estimates),
            cleared=cleared,
        )

    def _enter(self, run: dict[str, _Tally], name: str) -> _Tally:
        """The run's first event on ``name``: start its tally (and its table if it is new)."""
        table = self._tables.get(name)
        if table is None and name not in self._estimates:
            table = self._tables[name] = {}
        tally = run[name] = _Tally(table)
        return tally

    def _clear(self, run: dict[str, _Tally], batch: int) -> None:
        """Every tier holds nothing and is tracked again; all of them count as touched."""
        for table in self._tables.values():
            table.clear()
        for name in self._estimates:
            self._tables[name] = {}
        self._estimates.clear()
        for name, table in self._tables.items():
            tally = run.get(name)
            if tally is None:
                tally = run[name] = _Tally(table)
            else:
                tally.table = table
            tally.batch = batch

    def _end_batch(self, run: dict[str, _Tally], batch: int) -> None:
        """After each batch: tiers now over the cap are estimated from here on; those it
        touched take a sample of their count."""
        cap = self.max_tracked_blocks
        estimates = self._estimates
        for name, tally in run.items():
            table = tally.table
            if table is not None and len(table) > cap:
                estimates[name] = len(table)
                del self._tables[name]
                tally.table = None
            if tally.batch == batch:
                current = tally.table
                tally.sample_sum += len(current) if current is not None else estimates[name]
                tally.sample_n += 1
