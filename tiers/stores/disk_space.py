"""Where block records go in the slab file: a freed run of exactly their size, else the file's end.

Exact fit, not best fit: a freed run is only reused by a record of the same span, so runs are
never split and every free run on disk keeps the one header that describes it (the free header
written when its block was deleted). KV blocks of one model all have one size, so in the steady
state every put reuses the slot of a deleted block, the most recently freed first (its pages are
the likeliest to be cached). Blocks of other sizes leave holes that the store compacts away (see
``DiskStore.compact``); :meth:`SlabSpace.fragmentation` says how much they cost.
"""

from __future__ import annotations

from .arena import Fragmentation
from .disk_format import SLOT_BYTES


class SlabSpace:
    """Free runs by span, and the end of the file; offsets and sizes are in bytes."""

    __slots__ = ("_free", "end", "hole_bytes", "largest_span", "used_bytes")

    def __init__(self) -> None:
        self._free: dict[int, list[int]] = {}  # span bytes -> offsets, most recently freed last
        self.end = 0  # the slab file's size: every run lies below it
        self.used_bytes = 0  # bytes of the live records' runs
        self.hole_bytes = 0  # bytes of the free runs below ``end``
        self.largest_span = 0  # largest record span placed since the file was last empty

    def reset(self, end: int = 0) -> None:
        """Everything below ``end`` is live records (after a compaction; 0: the file is empty)."""
        self._free.clear()
        self.end = end
        self.hole_bytes = 0
        if end == 0:
            self.used_bytes = 0
            self.largest_span = 0

    def take(self, span: int) -> int | None:
        """The offset of a free run of exactly ``span`` bytes, now in use; None if there is none."""
        offsets = self._free.get(span)
        if not offsets:
            return None
        offset = offsets.pop()
        self.hole_bytes -= span
        self.used_bytes += span
        return offset

    def append(self, span: int) -> int:
        """The offset of a new run of ``span`` bytes at the end of the file (the file grows)."""
        offset = self.end
        self.end += span
        self.used_bytes += span
        self.largest_span = max(self.largest_span, span)
        return offset

    def add_record(self, span: int) -> None:
        """A live record found on disk at open (its run lies below ``end``)."""
        self.used_bytes += span
        self.largest_span = max(self.largest_span, span)

    def unappend(self, offset: int, span: int) -> None:
        """Undo the ``append`` that returned ``offset`` (the file was cut back to it)."""
        self.end = offset
        self.used_bytes -= span

    def release(self, offset: int, span: int) -> None:
        """A record's run is free again."""
        self.used_bytes -= span
        self.add_hole(offset, span)

    def add_hole(self, offset: int, span: int) -> None:
        """A free run found on disk (at open) or freed."""
        self._free.setdefault(span, []).append(offset)
        self.hole_bytes += span

    def forget_run(self, span: int) -> None:
        """A live record's run that can no longer be reached (the file was cut below it)."""
        self.used_bytes -= span

    def rebuild(self, live: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Make the holes the gaps between the live runs ``(offset, span)`` (sorted by offset)
        below ``end``, and return them: the bookkeeping after a compaction that stopped half way."""
        self._free.clear()
        self.hole_bytes = 0
        gaps: list[tuple[int, int]] = []
        cursor = 0
        for offset, span in live:
            if offset > cursor:
                gaps.append((cursor, offset - cursor))
            cursor = offset + span
        if cursor < self.end:
            gaps.append((cursor, self.end - cursor))
        for offset, span in gaps:
            self.add_hole(offset, span)
        return gaps

    def fragmentation(self, blocks: int, payload_bytes: int) -> Fragmentation:
        """How the file's bytes are used: ``arena_bytes`` is the file size, ``free_bytes`` its
        holes; a hole is unusable for the largest block class unless it has exactly its span."""
        spans = [(span, len(offsets)) for span, offsets in self._free.items() if offsets]
        largest = self.largest_span
        return Fragmentation(
            arena_bytes=self.end,
            slot_bytes=SLOT_BYTES,
            blocks=blocks,
            payload_bytes=payload_bytes,
            allocated_bytes=self.used_bytes,
            free_bytes=self.hole_bytes,
            free_extents=sum(count for _, count in spans),
            largest_free_bytes=max((span for span, _ in spans), default=0),
            largest_block_bytes=largest,
            unusable_free_bytes=sum(span * count for span, count in spans if span != largest),
        )
