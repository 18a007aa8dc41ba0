"""A preallocated byte arena carved into fixed slots, with blocks stored in multi-slot spans.

Every arena-backed store (host DRAM, a NUMA-bound arena, GPU HBM) allocates its medium once, up
front, and places blocks in it with :class:`SpanAllocator`: the arena is a row of ``slot_bytes``
slots and a block of ``n`` bytes takes ``ceil(n / slot_bytes)`` consecutive slots. Free space is
kept as extents (runs of free slots) binned by length, merged with their neighbours when an
allocation needs it, so an allocation is a best-fit lookup (a bisect over the distinct free
lengths and a dict pop) and no block ever costs a heap allocation of its own.

The default slot is small (256 B): a block wastes less than one slot, so the arena holds close to
its byte capacity whatever the block size, and the offsets stay aligned for vector copies and DMA.
When free space is enough for a block but split into pieces too small for it, the store compacts
the arena (slides live blocks down, one ``memmove`` each) rather than refuse the put.

Fragmentation is reported two ways (see :class:`Fragmentation`): *internal*, the slot bytes that
the blocks' spans hold beyond their payloads, and *external*, the free bytes that cannot serve a
block of the largest class (the largest span stored since the arena was last emptied).
"""

from __future__ import annotations

from abc import abstractmethod
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..block import BlockHash, BlockHeader
from ..errors import StoreFull, StoreUnavailable
from ..health import Health
from ..store import TierStore
from ..units import format_bytes

DEFAULT_SLOT_BYTES = 256
"""Slot size when a store is given none: small enough that a block wastes < 256 B, aligned for
AVX-512 copies and for CUDA (whose own allocations are 256 B aligned)."""


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True, slots=True)
class Fragmentation:
    """How well an arena's bytes are used, at one moment.

    ``internal_*``: bytes inside the blocks' spans that hold no payload (a span is a whole number
    of slots). ``unusable_free_bytes`` / ``external_ratio``: free bytes that cannot hold a block of
    the largest class (``largest_block_bytes``, the largest span stored since the arena was last
    empty), i.e. the remainders of free extents after carving as many largest-class spans from each
    as fit. 0 when nothing was stored yet.
    """

    arena_bytes: int
    slot_bytes: int
    blocks: int
    payload_bytes: int
    allocated_bytes: int
    free_bytes: int
    free_extents: int
    largest_free_bytes: int
    largest_block_bytes: int
    unusable_free_bytes: int

    @property
    def internal_bytes(self) -> int:
        return self.allocated_bytes - self.payload_bytes

    @property
    def internal_ratio(self) -> float:
        """Share of the allocated slot bytes that hold no payload (0..1)."""
        return self.internal_bytes / self.allocated_bytes if self.allocated_bytes else 0.0

    @property
    def external_ratio(self) -> float:
        """Share of the free bytes that cannot serve a block of the largest class (0..1)."""
        return self.unusable_free_bytes / self.free_bytes if self.free_bytes else 0.0

    def summary(self) -> str:
        return (
            f"fragmentation internal {self.internal_ratio:.1%}, external {self.external_ratio:.1%}"
        )

    def as_dict(self) -> dict[str, int | float]:
        return {
            "arena_bytes": self.arena_bytes,
            "slot_bytes": self.slot_bytes,
            "blocks": self.blocks,
            "payload_bytes": self.payload_bytes,
            "allocated_bytes": self.allocated_bytes,
            "free_bytes": self.free_bytes,
            "free_extents": self.free_extents,
            "largest_free_bytes": self.largest_free_bytes,
            "largest_block_bytes": self.largest_block_bytes,
            "unusable_free_bytes": self.unusable_free_bytes,
            "internal_bytes": self.internal_bytes,
            "internal_ratio": self.internal_ratio,
            "external_ratio": self.external_ratio,
        }


class SpanAllocator:
    """Best-fit allocator of slot spans over ``arena_bytes``; offsets are in bytes.

    Free extents are binned by length (an insertion-ordered set of starts per length, and the
    sorted list of lengths present). ``free`` only files the span in its bin; neighbouring free
    extents are merged lazily, by ``consolidate``, when an allocation finds no extent long enough
    (or the fragmentation is read). With blocks of one size, the steady state never merges: each
    put reuses a freed span of exactly its length, the most recently freed first (cache-warm).

    It keeps no record of live spans (the store does, with each block's offset and size): ``free``
    must be given what ``alloc`` returned and the same ``nbytes``.
    """

    __slots__ = (
        "_bins",
        "_lengths",
        "_unmerged",
        "arena_bytes",
        "blocks",
        "max_span",
        "payload_bytes",
        "slot_bytes",
        "total_slots",
        "used_slots",
    )

    def __init__(self, arena_bytes: int, slot_bytes: int = DEFAULT_SLOT_BYTES) -> None:
        if slot_bytes <= 0:
            raise ValueError(f"slot size must be > 0 B, got {slot_bytes}")
        if arena_bytes < 0 or arena_bytes % slot_bytes:
            raise ValueError(
                f"arena of {arena_bytes} B is not a whole number of {slot_bytes} B slots"
            )
        self.slot_bytes = slot_bytes
        self.arena_bytes = arena_bytes
        self.total_slots = arena_bytes // slot_bytes
        self._bins: dict[int, dict[int, None]] = {}  # length in slots -> start slots
        self._lengths: list[int] = []  # distinct free lengths, sorted
        self._unmerged = False  # a span was freed since the last consolidation
        self.reset()

    def reset(self) -> None:
        """Free everything."""
        self._bins.clear()
        self._lengths.clear()
        self._unmerged = False
        self.used_slots = 0
        self.payload_bytes = 0
        self.blocks = 0
        self.max_span = 0
        if self.total_slots:
            self._bins[self.total_slots] = {0: None}
            self._lengths.append(self.total_slots)

    def span_slots(self, nbytes: int) -> int:
        return -(-nbytes // self.slot_bytes)

    def alloc(self, nbytes: int) -> int | None:
        """Byte offset of a new span for ``nbytes``, or None when no free extent is long enough
        (even after merging neighbours; ``fits_after_compaction`` says whether compacting helps)."""
        need = -(-nbytes // self.slot_bytes)
        if need == 0:
            self.blocks += 1
            return 0
        lengths = self._lengths
        i = bisect_left(lengths, need)
        if i == len(lengths):
            if not self._unmerged:
                return None
            self.consolidate()
            i = bisect_left(lengths, need)
            if i == len(lengths):
                return None
        length = lengths[i]
        bins = self._bins
        bin_ = bins[length]
        start, _ = bin_.popitem()  # the most recently freed extent of that length
        if not bin_:
            del bins[length]
            del lengths[i]
        if length > need:  # the tail stays free
            rest = length - need
            rest_bin = bins.get(rest)
            if rest_bin is None:
                bins[rest] = {start + need: None}
                insort(lengths, rest)
            else:
                rest_bin[start + need] = None
        self.used_slots += need
        self.payload_bytes += nbytes
        self.blocks += 1
        if need > self.max_span:
            self.max_span = need
        return start * self.slot_bytes

    def free(self, offset: int, nbytes: int) -> None:
        """Return the span that ``alloc(nbytes)`` placed at ``offset``."""
        length = -(-nbytes // self.slot_bytes)
        self.blocks -= 1
        if length == 0:
            return
        self.used_slots -= length
        self.payload_bytes -= nbytes
        if self.used_slots == 0:  # empty again (but for 0-byte blocks): one extent
            blocks = self.blocks
            self.reset()
            self.blocks = blocks
            return
        bin_ = self._bins.get(length)
        if bin_ is None:
            self._bins[length] = {offset // self.slot_bytes: None}
            insort(self._lengths, length)
        else:
            bin_[offset // self.slot_bytes] = None
        self._unmerged = True

    def extents(self) -> list[tuple[int, int]]:
        """Free extents as ``(start slot, length in slots)``, by address (after merging)."""
        self.consolidate()
        return sorted((start, length) for length, bin_ in self._bins.items() for start in bin_)

    def consolidate(self) -> None:
        """Merge free extents that touch."""
        if not self._unmerged:
            return
        extents = sorted((start, length) for length, bin_ in self._bins.items() for start in bin_)
        merged: list[list[int]] = []
        for start, length in extents:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1][1] += length
            else:
                merged.append([start, length])
        bins = self._bins  # rebuilt in place: ``alloc`` holds references to both
        bins.clear()
        for start, length in merged:
            bins.setdefault(length, {})[start] = None
        self._lengths[:] = sorted(bins)
        self._unmerged = False

    @property
    def free_bytes(self) -> int:
        return (self.total_slots - self.used_slots) * self.slot_bytes

    @property
    def largest_free_bytes(self) -> int:
        """The longest free extent, in bytes (after merging)."""
        self.consolidate()
        return self._lengths[-1] * self.slot_bytes if self._lengths else 0

    def fits_after_compaction(self, nbytes: int) -> bool:
        return self.span_slots(nbytes) <= self.total_slots - self.used_slots

    def compact(self, live: list[tuple[int, int]]) -> list[int]:
        """Pack the live spans, given as ``(offset, nbytes)`` sorted by offset, to the start of the
        arena; returns their new offsets (each <= the old one, so moving them in order never
        overwrites a span not yet moved). Free space becomes one extent at the end."""
        slot = self.slot_bytes
        new_offsets: list[int] = []
        cursor = 0
        for _offset, nbytes in live:
            new_offsets.append(cursor * slot)
            cursor += -(-nbytes // slot)
        if cursor != self.used_slots:
            raise ValueError(
                f"live spans take {cursor} slots, the allocator counts {self.used_slots}"
            )
        self._bins.clear()
        self._lengths.clear()
        self._unmerged = False
        if cursor < self.total_slots:
            self._bins[self.total_slots - cursor] = {cursor: None}
            self._lengths.append(self.total_slots - cursor)
        return new_offsets

    def fragmentation(self) -> Fragmentation:
        extents = self.extents()
        slot = self.slot_bytes
        span = self.max_span
        unusable = sum(length % span for _, length in extents) if span else 0
        return Fragmentation(
            arena_bytes=self.arena_bytes,
            slot_bytes=slot,
            blocks=self.blocks,
            payload_bytes=self.payload_bytes,
            allocated_bytes=self.used_slots * slot,
            free_bytes=self.free_bytes,
            free_extents=len(extents),
            largest_free_bytes=max((length for _, length in extents), default=0) * slot,
            largest_block_bytes=span * slot,
            unusable_free_bytes=unusable * slot,
        )


View = TypeVar("View")


class ArenaStore(TierStore, Generic[View]):
    """A tier store over one preallocated arena: bookkeeping shared by the host and GPU arenas.

    Subclasses own the medium: ``_put``/``_get`` copy in and out of it, ``_view`` makes the view of
    a block's bytes kept in the index (so a get slices nothing), ``_move`` slides bytes within the
    arena for compaction. They call ``_claim`` for the offset and view of a new block.
    """

    def __init__(
        self, name: str, capacity_bytes: int, *, arena_bytes: int, slot_bytes: int
    ) -> None:
        super().__init__(name, capacity_bytes)
        if capacity_bytes > arena_bytes:
            raise ValueError(
                f"capacity {capacity_bytes} B of tier {name!r} exceeds its arena ({arena_bytes} B)"
            )
        self._alloc = SpanAllocator(arena_bytes, slot_bytes)
        # key -> (offset, nbytes, header, view of the block's bytes in the arena)
        self._index: dict[BlockHash, tuple[int, int, BlockHeader, View]] = {}
        # The entry deleted last, its span not yet handed back to the allocator: the next put of
        # the same size takes it as it is (span and view), with no allocator work. Puts replace a
        # resident key by deleting it first, so a rewritten block never touches the allocator.
        self._pending: tuple[int, int, BlockHeader, View] | None = None
        self._closed = False
        #: How many times the arena was compacted to make room for a block.
        self.compactions = 0

    # ---------------------------------------------------------------- what a subclass provides

    @abstractmethod
    def _view(self, offset: int, nbytes: int) -> View:
        """The arena's bytes ``[offset, offset + nbytes)`` (a view, no copy)."""

    @abstractmethod
    def _move(self, src: int, dst: int, nbytes: int) -> None:
        """Copy ``nbytes`` within the arena from offset ``src`` down to ``dst`` (may overlap)."""

    @abstractmethod
    def _release(self) -> None:
        """Drop the medium (called once, by ``close``)."""

    # ---------------------------------------------------------------- arena

    @property
    def arena_bytes(self) -> int:
        return self._alloc.arena_bytes

    @property
    def slot_bytes(self) -> int:
        return self._alloc.slot_bytes

    def max_capacity(self) -> int:
        return self._alloc.arena_bytes

    def fragmentation(self) -> Fragmentation:
        """Internal and external fragmentation of the arena now."""
        self._flush()
        return self._alloc.fragmentation()

    def layout(self) -> str:
        """'64 MiB arena, 256 B slots, 12 blocks, fragmentation internal 0.1%, external 0.0%'."""
        frag = self.fragmentation()
        return (
            f"{format_bytes(frag.arena_bytes)} arena, {format_bytes(frag.slot_bytes)} slots, "
            f"{frag.blocks} block{'' if frag.blocks == 1 else 's'}, {frag.summary()}"
        )

    def _flush(self) -> None:
        """Hand the pending span back to the allocator."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._alloc.free(pending[0], pending[1])

    def _claim(self, nbytes: int) -> tuple[int, View]:
        """Offset and view for a new block of ``nbytes`` (the pending span when it fits exactly)."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            if pending[1] == nbytes:
                return pending[0], pending[3]
            self._alloc.free(pending[0], pending[1])
        offset = self._alloc.alloc(nbytes)
        if offset is None:
            offset = self._place(nbytes)
        return offset, self._view(offset, nbytes)

    def _place(self, nbytes: int) -> int:
        """Offset for a new block of ``nbytes``; compacts when only fragmentation is in the way."""
        self._flush()
        offset = self._alloc.alloc(nbytes)
        if offset is not None:
            return offset
        self._check_open()
        if not self._alloc.fits_after_compaction(nbytes):
            frag = self._alloc.fragmentation()
            raise StoreFull(
                f"tier {self.name!r}: arena full ({nbytes} B needs "
                f"{format_bytes(self._alloc.span_slots(nbytes) * frag.slot_bytes)}, "
                f"{format_bytes(frag.free_bytes)} free of {format_bytes(frag.arena_bytes)})"
            )
        self._compact()
        offset = self._alloc.alloc(nbytes)
        if offset is None:  # pragma: no cover - compaction leaves one extent of all free slots
            raise StoreFull(f"tier {self.name!r}: arena full after compaction")
        return offset

    def compact(self) -> None:
        """Slide every block to the start of the arena, leaving one free extent."""
        self._check_open()
        self._compact()

    def _compact(self) -> None:
        self._flush()
        live = sorted((entry[0], entry[1], key) for key, entry in self._index.items())
        new_offsets = self._alloc.compact([(offset, nbytes) for offset, nbytes, _ in live])
        index = self._index
        for (old, nbytes, key), new in zip(live, new_offsets, strict=True):
            if new != old:
                if nbytes:
                    self._move(old, new, nbytes)
                index[key] = (new, nbytes, index[key][2], self._view(new, nbytes))
        self.compactions += 1

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"tier {self.name!r} is closed")

    # ---------------------------------------------------------------- TierStore

    def _delete(self, key: BlockHash) -> None:
        entry = self._index.pop(key)
        pending = self._pending
        if pending is not None:
            self._alloc.free(pending[0], pending[1])
        self._pending = entry

    def _clear(self) -> None:
        self._index.clear()
        self._pending = None
        self._alloc.reset()

    def close(self) -> None:
        """Release the arena. Operations afterwards raise StoreUnavailable."""
        if self._closed:
            return
        self._closed = True
        self._index.clear()
        self._pending = None
        self._alloc = SpanAllocator(0, self._alloc.slot_bytes)
        self._release()
        self.set_medium_health(Health.DOWN, "closed")
