"""Reading a slab file at open: which records are there, which runs are free, what is damaged.

The walk reads one header per run (never a payload: payloads are checked by every get). Where a
slot boundary holds no valid header, it steps one slot at a time until one does: the slots in
between are a damaged run. A damaged run that reaches the end of the file is an append that never
finished (a crash while the file grew: the payload goes in before its header), so it is *torn*;
one followed by valid runs is *corrupt* (a header that rotted or was overwritten).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..block import BlockHash
from .disk_format import HEADER_BYTES, SLOT_BYTES, BadSlot, parse_header


@dataclass(slots=True)
class DiskScan:
    """What opening the directory found (runs and records are counted once, when repaired)."""

    blocks: int = 0  # valid blocks adopted
    bytes: int = 0  # their payload bytes
    torn_removed: int = 0  # unfinished appends at the end of the file, cut off
    corrupt_removed: int = 0  # damaged runs inside the file, marked free
    stale_removed: int = 0  # older records of a key found again later, marked free
    dropped: int = 0  # valid blocks removed to fit the capacity (on_excess="drop_oldest")
    dropped_bytes: int = 0
    foreign: int = 0  # files or directories this store did not write (left alone)
    unsupported: int = 0  # slab files of another format version (left alone)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class FoundRecord:
    key: BlockHash
    offset: int
    span: int  # bytes
    nbytes: int
    generation: int


@dataclass(slots=True)
class SlabWalk:
    """The runs of a slab file, in file order; offsets and spans in bytes."""

    size: int
    records: list[FoundRecord] = field(default_factory=list)
    free: list[tuple[int, int]] = field(default_factory=list)
    damaged: list[tuple[int, int]] = field(default_factory=list)
    torn_at: int | None = None  # where a damaged run reaching the end of the file starts


def walk_slab(fd: int) -> SlabWalk:
    """Walk the slab file open on ``fd`` from offset 0 (reads only)."""
    size = os.fstat(fd).st_size
    walk = SlabWalk(size)
    pos = 0
    damaged_from: int | None = None
    while pos < size:
        if pos + SLOT_BYTES > size:  # a partial slot: the file grew by less than a run
            damaged_from = pos if damaged_from is None else damaged_from
            break
        try:
            slot = parse_header(os.pread(fd, HEADER_BYTES, pos))
            span = slot.span * SLOT_BYTES
            if pos + span > size:
                raise BadSlot("run goes past the end of the file")
        except BadSlot:
            damaged_from = pos if damaged_from is None else damaged_from
            pos += SLOT_BYTES
            continue
        if damaged_from is not None:
            walk.damaged.append((damaged_from, pos - damaged_from))
            damaged_from = None
        if slot.block is None:
            walk.free.append((pos, span))
        else:
            walk.records.append(
                FoundRecord(slot.key, pos, span, slot.block.nbytes, slot.generation)
            )
        pos += span
    walk.torn_at = damaged_from
    return walk


def newest_per_key(records: list[FoundRecord]) -> tuple[list[FoundRecord], list[FoundRecord]]:
    """(the newest record of each key, oldest first; the older ones). Of two records of one
    generation (a block moved by a compaction that did not finish), the lower one is kept."""
    best: dict[BlockHash, FoundRecord] = {}
    stale: list[FoundRecord] = []
    for record in records:
        seen = best.get(record.key)
        if seen is None:
            best[record.key] = record
        elif (record.generation, -record.offset) > (seen.generation, -seen.offset):
            stale.append(seen)
            best[record.key] = record
        else:
            stale.append(record)
    kept = sorted(best.values(), key=lambda r: (r.generation, r.offset))
    return kept, stale
