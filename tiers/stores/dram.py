"""Host DRAM tier: blocks copied into one preallocated numpy arena.

The arena is allocated once (or supplied, e.g. by a NUMA allocator) and carved into slots by
:class:`~tiertop.tiers.stores.arena.SpanAllocator`; a put is one copy into the arena and a get one
copy out, into the caller's buffer or a fresh array, never a view of the arena (a later put could
overwrite a view).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..block import Block, BlockHash
from ..errors import StoreUnavailable
from ..store import Buffer
from .arena import DEFAULT_SLOT_BYTES, ArenaStore, round_up

Bytes = npt.NDArray[np.uint8]
U8 = np.dtype(np.uint8)


def as_byte_array(payload: Buffer) -> Bytes:
    """The payload's bytes as a flat uint8 array, without a copy when it is C-contiguous."""
    try:
        return np.frombuffer(payload, dtype=U8)  # any C-contiguous buffer, ndarrays included
    except ValueError:  # a strided or Fortran-ordered array
        return np.frombuffer(np.ascontiguousarray(payload), dtype=U8)


def writable_bytes(out: Buffer) -> Bytes:
    """A flat uint8 view of an output buffer; ValueError unless it is C-contiguous (a read-only
    buffer gives a read-only view: writing to it raises ValueError)."""
    try:
        return np.frombuffer(out, dtype=U8)
    except ValueError as exc:
        raise ValueError(f"output buffer must be C-contiguous: {exc}") from None


class DramStore(ArenaStore[npt.NDArray[np.uint8]]):
    """Blocks in a host-memory arena.

    Args:
        name: the tier's name.
        capacity_bytes: payload bytes the tier may hold; can later be lowered, and raised up to the
            arena size (``max_capacity()``).
        slot_bytes: allocation granule (default 256 B); a block takes whole slots.
        arena_bytes: arena size (default: ``capacity_bytes``), rounded up to whole slots. Make it
            larger than the capacity to leave room to raise the capacity later, or to absorb the
            slot rounding of many small blocks.
        buffer: a writable, C-contiguous numpy uint8 array to use as the arena instead of
            allocating one (e.g. memory bound to a NUMA node); its size rounded down to whole slots
            is the arena size, and it must stay alive as long as the store.
        prefault: touch every page of a new arena up front, so the first puts take no page faults.
        medium: how ``describe()`` names the memory ("host DRAM" by default).
    """

    kind = "dram"

    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        slot_bytes: int | None = None,
        *,
        arena_bytes: int | None = None,
        buffer: npt.NDArray[np.uint8] | None = None,
        prefault: bool = False,
        medium: str = "host DRAM",
    ) -> None:
        slot = DEFAULT_SLOT_BYTES if slot_bytes is None else int(slot_bytes)
        if slot <= 0:
            raise ValueError(f"slot size of tier {name!r} must be > 0 B, got {slot}")
        arena: Bytes
        if buffer is not None:
            if (
                not isinstance(buffer, np.ndarray)
                or buffer.dtype != np.uint8
                or buffer.ndim != 1
                or not buffer.flags.c_contiguous
                or not buffer.flags.writeable
            ):
                raise ValueError("an arena buffer must be a writable 1-D C-contiguous uint8 array")
            if arena_bytes is not None:
                raise ValueError("give either arena_bytes or buffer, not both")
            size = buffer.nbytes // slot * slot
            arena = buffer[:size]
        else:
            size = round_up(max(int(capacity_bytes), int(arena_bytes or 0)), slot)
            arena = np.empty(size, dtype=np.uint8)
            if prefault:
                arena.fill(0)
        super().__init__(name, capacity_bytes, arena_bytes=size, slot_bytes=slot)
        self._arena: Bytes | None = arena
        self.medium = medium

    # ---------------------------------------------------------------- TierStore

    def _put(self, block: Block) -> None:
        # The hot path: ``ArenaStore._claim`` and ``as_byte_array`` inlined (each call costs).
        arena = self._arena
        if arena is None:
            raise StoreUnavailable(f"tier {self.name!r} is closed")
        nbytes = block.header.nbytes
        try:
            src = np.frombuffer(block.payload, dtype=U8)
        except ValueError:  # a strided or Fortran-ordered array
            src = np.frombuffer(np.ascontiguousarray(block.payload), dtype=U8)
        if src.size != nbytes:
            raise ValueError(
                f"block {block.key:#018x}: payload has {src.size} B, header says {nbytes} B"
            )
        pending = self._pending
        if pending is not None and pending[1] == nbytes:
            self._pending = None
            offset, dst = pending[0], pending[3]
        else:
            offset, dst = self._claim(nbytes)
        dst[...] = src
        self._index[block.key] = (offset, nbytes, block.header, dst)

    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        entry = self._index.get(key)
        if entry is None:
            self._check_open()
            return None
        if out is None:
            return Block(key, entry[2], entry[3].copy())
        try:
            dst = np.frombuffer(out, dtype=U8)
        except ValueError as exc:
            raise ValueError(f"output buffer must be C-contiguous: {exc}") from None
        if dst.size != entry[1]:
            raise ValueError(f"output buffer holds {dst.size} B, block has {entry[1]} B")
        dst[...] = entry[3]  # a read-only ``out`` raises ValueError here
        return Block(key, entry[2], out)

    def _view(self, offset: int, nbytes: int) -> Bytes:
        assert self._arena is not None
        return self._arena[offset : offset + nbytes]

    def _move(self, src: int, dst: int, nbytes: int) -> None:
        assert self._arena is not None
        arena = self._arena
        # numpy detects the overlap of the two slices and copies through a temporary if needed
        np.copyto(arena[dst : dst + nbytes], arena[src : src + nbytes])

    def _release(self) -> None:
        self._arena = None

    def describe(self) -> str:
        return f"{self.name}: {self.medium}, {self.layout()}"
