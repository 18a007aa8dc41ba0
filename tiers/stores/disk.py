"""The disk tier: KV blocks packed into one slab file under a directory, checked on the way out.

Layout::

    <directory>/.lock             flock held while a DiskStore has the directory open
    <directory>/blocks.v2.slab    every block: 4 KiB-aligned runs of header slot + payload

The format is in ``tiers/stores/disk_format.py`` and ``docs/tiers.md`` (disk section). One file,
not one file per block: creating, renaming and removing a file per block cost more than writing
a 256 KiB block (an inode and two directory updates each time); a slot in an open file costs two
``pwrite`` calls to fill and one ``preadv`` to read.

A put reuses the run of a deleted block of the same size (its pages are likely cached), else
grows the file by the record's span with ``posix_fallocate`` (a full medium says so before any
byte is written). It writes the payload first and the header slot last, so a crash mid-put
leaves either the run's old free header or an unfinished append at the end of the file, never a
header in front of a payload it does not describe. A delete writes a free header over the
record's header slot. A get reads header slot and payload with one ``preadv`` straight into the
destination (the caller's ``out`` or a fresh array); the base class then verifies the payload
checksum (``verify_on_get``). A header that is damaged, free, of another key or size, or a
record cut short by the end of the file, raises :class:`BlockCorrupt`; the base class counts it,
frees the run and forgets the block.

Reopening a directory walks the slab file's headers (payloads are checked on each get; see
``disk_scan.py``), adopts the newest record of every key oldest first, cuts off an unfinished
append at the end, marks damaged runs and stale or dropped records free, and leaves files it does
not recognise alone (all counted in :attr:`DiskStore.scan`). If the blocks found hold more bytes
than the capacity, opening fails with a message saying so, unless ``on_excess="drop_oldest"``
asks to remove the oldest blocks until they fit.

Space: records of one size reuse each other's runs; other sizes leave holes. Before the file grows
while its holes could hold the record and are a quarter of it or more, and when growing fails
for lack of space while they could hold it, the store compacts: it slides every record down over
the holes and cuts the file after the last one. :meth:`DiskStore.fragmentation` reports the
cost (header slots and rounding, holes); the file is emptied when the last block goes.

Durability (``fsync``):

- ``"never"`` (default): data goes to the page cache; the kernel writes it back when it likes. A
  crash or power loss can lose recent blocks, bring back deleted ones (their bytes still checked)
  or leave records with stale payloads; the checksums turn those into misses, never wrong bytes.
  Right for a cache that is rebuilt anyway.
- ``"always"``: each put fsyncs the slab file before it returns, so a put that returned survives
  power loss. Costs one device flush per put. Deletes are not flushed (a crash may bring a
  deleted block back).
- ``"batch"``: every ``fsync_every`` puts, or at the first put at least ``fsync_interval_s``
  seconds after the last flush, the slab file is fsynced once for all puts since the last flush
  (also on :meth:`DiskStore.flush` and :meth:`DiskStore.close`). There is no background thread:
  an idle store flushes at its next put or at close. A crash loses at most the unflushed batch.
  If the fsync fails, every block of the batch is removed (its bytes may never reach the disk),
  and the put or flush that ran it fails.

A full medium (ENOSPC or EDQUOT while growing, writing or fsyncing) undoes the put, marks the tier
``degraded`` and makes the put raise :class:`StoreFull`; blocks already stored are untouched. The
next successful put sets the tier back to ``ok``. Other I/O errors raise :class:`StoreUnavailable`
(also marking the tier degraded).

One process owns a directory at a time (``flock`` on ``.lock``); a second DiskStore on the same
directory fails at construction with StoreUnavailable. Like the other stores, a DiskStore is not
thread-safe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, NoReturn

import numpy as np

from ..block import Block, BlockHash
from ..errors import BlockCorrupt, StoreFull, StoreUnavailable, TierError
from ..health import Health
from ..store import Buffer, TierStore
from ..units import format_bytes
from .arena import Fragmentation
from .disk_format import (
    DATA_NAME,
    SLOT_BYTES,
    BadSlot,
    pack_block_header,
    pack_free_header,
    parse_header,
    record_span,
)
from .disk_scan import DiskScan, FoundRecord, newest_per_key, walk_slab
from .disk_space import SlabSpace

FsyncPolicy = Literal["never", "always", "batch"]
ExcessPolicy = Literal["error", "drop_oldest"]

LOCK_NAME = ".lock"
_OTHER_VERSION = re.compile(r"blocks\.v[0-9]+\.slab")
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_FALLOCATE_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOSYS})
_FSYNC_POLICIES = ("never", "always", "batch")
_EXCESS_POLICIES = ("error", "drop_oldest")

__all__ = ["DATA_NAME", "SLOT_BYTES", "BlockLocation", "DiskScan", "DiskStore"]


@dataclass(frozen=True, slots=True)
class BlockLocation:
    """Where a block's bytes are in the slab file (for tools and tests that inspect the medium)."""

    path: Path
    offset: int  # the record's header slot
    payload_offset: int
    nbytes: int


class DiskStore(TierStore):
    """KV blocks packed into one slab file under ``directory``, with checksummed headers.

    Args:
        name: The tier's name.
        capacity_bytes: Payload bytes the tier may hold (header slots, rounding to 4 KiB and
            holes excluded: see :meth:`fragmentation`).
        directory: Where the blocks live; created if missing. Blocks already there are adopted.
        fsync: Durability policy, ``"never"`` (default), ``"always"`` or ``"batch"`` (module
            docstring).
        fsync_every: With ``fsync="batch"``, flush after this many puts.
        fsync_interval_s: With ``fsync="batch"``, flush at the first put this long after the
            last flush.
        on_excess: When the blocks found at open exceed the capacity: ``"error"`` (raise
            ValueError, nothing changed) or ``"drop_oldest"`` (remove the oldest until they fit).

    Raises:
        ValueError: A bad argument, or more bytes on disk than the capacity with
            ``on_excess="error"``.
        StoreUnavailable: The directory cannot be used (not creatable, or open in another store).
    """

    kind: ClassVar[str] = "disk"
    verify_on_get: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        directory: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "never",
        fsync_every: int = 64,
        fsync_interval_s: float = 1.0,
        on_excess: ExcessPolicy = "error",
    ) -> None:
        super().__init__(name, capacity_bytes)
        if fsync not in _FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {_FSYNC_POLICIES}, got {fsync!r}")
        if on_excess not in _EXCESS_POLICIES:
            raise ValueError(f"on_excess must be one of {_EXCESS_POLICIES}, got {on_excess!r}")
        if fsync_every < 1:
            raise ValueError(f"fsync_every must be >= 1, got {fsync_every}")
        if fsync_interval_s <= 0:
            raise ValueError(f"fsync_interval_s must be > 0, got {fsync_interval_s}")
        self.fsync: FsyncPolicy = fsync
        self.fsync_every = int(fsync_every)
        self.fsync_interval_s = float(fsync_interval_s)
        self.directory = Path(os.path.abspath(directory))
        self.data_path = self.directory / DATA_NAME
        self._root = str(self.directory)
        self._offsets: dict[BlockHash, int] = {}  # key -> offset of the record's header slot
        self._space = SlabSpace()
        self._unflushed: dict[BlockHash, int] = {}  # batch: key -> span, since the last flush
        self._generation = 1  # of the next put
        self._head = bytearray(SLOT_BYTES)  # header slot being written (zero past the header)
        self._free_head = bytearray(SLOT_BYTES)  # free header being written
        self._head_in = bytearray(SLOT_BYTES)  # header slot being read
        self._preallocate = True  # posix_fallocate works on this filesystem
        self._last_flush = time.monotonic()
        self._closed = False
        self._medium_failed = False  # an I/O failure of ours set the medium health to degraded
        self.enospc_count = 0  # puts refused because the medium was full
        self.flushes = 0  # batch flushes done
        self.compactions = 0  # times the slab file was compacted
        try:
            os.makedirs(self._root, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"tier {name!r}: cannot create {self._root}: {exc}") from exc
        self._lock_fd = _lock_directory(name, self._root)
        try:
            self._fs_type = _filesystem_type(self._root)
            self._fd = self._open_data_file()
            try:
                self.scan = self._scan(on_excess)
            except BaseException:
                os.close(self._fd)
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open_data_file(self) -> int:
        path = str(self.data_path)
        created = not os.path.exists(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if created and self.fsync != "never":
                _fsync_dir(self._root)  # the file's name survives a crash too
        except OSError as exc:
            raise StoreUnavailable(f"tier {self.name!r}: cannot open {path}: {exc}") from exc
        return fd

    # ---------------------------------------------------------------- open: adopt what is there

    def _scan(self, on_excess: ExcessPolicy) -> DiskScan:
        started = time.perf_counter()
        scan = DiskScan()
        self._count_other_entries(scan)
        walk = walk_slab(self._fd)
        kept, stale = newest_per_key(walk.records)
        dropped = self._over_capacity(kept, on_excess)  # before any write: refusing changes nothing
        freed = walk.damaged + [(r.offset, r.span) for r in stale + dropped]
        end = walk.size if walk.torn_at is None else walk.torn_at
        if not kept:
            end = 0  # nothing to keep: start the file afresh
        self._repair(freed, end, walk.size)
        space = self._space
        space.end = end
        for offset, span in walk.free + freed:
            if offset < end:
                space.add_hole(offset, span)
        for record in kept:
            space.add_record(record.span)
            self._offsets[record.key] = record.offset
            self._adopt(record.key, record.nbytes)
        self._generation = max((r.generation for r in walk.records), default=0) + 1
        scan.blocks = len(kept)
        scan.bytes = sum(r.nbytes for r in kept)
        scan.torn_removed = int(walk.torn_at is not None)
        scan.corrupt_removed = len(walk.damaged)
        scan.stale_removed = len(stale)
        scan.dropped = len(dropped)
        scan.dropped_bytes = sum(r.nbytes for r in dropped)
        self.stats.corrupt += scan.corrupt_removed
        scan.seconds = time.perf_counter() - started
        return scan

    def _over_capacity(self, kept: list[FoundRecord], on_excess: ExcessPolicy) -> list[FoundRecord]:
        """The oldest of ``kept`` (removed from it) that must go for the rest to fit."""
        total = sum(r.nbytes for r in kept)
        if total <= self._capacity:
            return []
        if on_excess == "error":
            raise ValueError(
                f"tier {self.name!r}: {self._root} holds {len(kept)} blocks of "
                f"{total} B ({format_bytes(total)}), more than the capacity of "
                f"{self._capacity} B ({format_bytes(self._capacity)}); open it with a capacity "
                f"of at least {total} B, or with on_excess='drop_oldest' to remove the "
                "oldest blocks"
            )
        dropped: list[FoundRecord] = []
        while kept and total > self._capacity:
            oldest = kept.pop(0)
            dropped.append(oldest)
            total -= oldest.nbytes
        return dropped

    def _repair(self, freed: list[tuple[int, int]], end: int, size: int) -> None:
        """Mark the ``freed`` runs free on disk and cut the file at ``end``."""
        try:
            for offset, span in freed:
                if offset < end:
                    self._write_free_header(offset, span)
            if end != size:
                os.ftruncate(self._fd, end)
        except OSError as exc:
            raise StoreUnavailable(
                f"tier {self.name!r}: cannot repair {self.data_path}: {exc}"
            ) from exc

    def _count_other_entries(self, scan: DiskScan) -> None:
        with os.scandir(self._root) as entries:
            names = [e.name for e in entries]
        for entry_name in names:
            if entry_name in (LOCK_NAME, DATA_NAME):
                continue
            if _OTHER_VERSION.fullmatch(entry_name):
                scan.unsupported += 1
            else:
                scan.foreign += 1

    # ---------------------------------------------------------------- the medium operations

    def _put(self, block: Block) -> None:
        self._check_open()
        key, header = block.key, block.header
        payload = block.view()
        if payload.nbytes != header.nbytes:
            raise ValueError(
                f"block {key:#018x}: payload holds {payload.nbytes} B, header says "
                f"{header.nbytes} B"
            )
        head = self._head
        pack_block_header(head, key, header, self._generation)
        span = record_span(header.nbytes) * SLOT_BYTES
        offset, appended = self._place(key, span)
        fd = self._fd
        header_written = False
        try:
            if header.nbytes:
                _pwrite_all(fd, payload, offset + SLOT_BYTES)
            _pwrite_all(fd, head, offset)
            header_written = True
            if self.fsync == "always":
                os.fsync(fd)
        except OSError as exc:
            self._unplace(offset, span, appended=appended, header_written=header_written)
            self._io_failed(exc, f"writing block {key:#018x}")
        self._generation += 1
        self._offsets[key] = offset
        if self._medium_failed:
            self._medium_failed = False
            self.set_medium_health(Health.OK, f"disk writes succeed again on {self._root}")
        if self.fsync == "batch":
            self._unflushed[key] = span
            if (
                len(self._unflushed) >= self.fsync_every
                or time.monotonic() - self._last_flush >= self.fsync_interval_s
            ):
                self._flush()

    def _place(self, key: BlockHash, span: int) -> tuple[int, bool]:
        """(offset for a record of ``span`` bytes, whether the file grew for it)."""
        space = self._space
        offset = space.take(span)
        if offset is not None:
            return offset, False
        if space.hole_bytes >= span and 4 * space.hole_bytes >= space.end:
            self._compact()  # the holes could hold it: pack them away rather than grow
        offset = space.append(span)
        try:
            self._grow(offset, span)
        except OSError as exc:
            self._unappend(offset, span)
            if exc.errno not in _FULL_ERRNOS or space.hole_bytes < span:
                self._io_failed(exc, f"growing {DATA_NAME} for block {key:#018x}")
            self._compact()  # full, but the holes hold enough room: pack them and try again
            offset = space.append(span)
            try:
                self._grow(offset, span)
            except OSError as again:
                self._unappend(offset, span)
                self._io_failed(again, f"growing {DATA_NAME} for block {key:#018x}")
        return offset, True

    def _grow(self, offset: int, span: int) -> None:
        """Make the file cover the new run, its blocks allocated where the filesystem can."""
        if self._preallocate:
            try:
                os.posix_fallocate(self._fd, offset, span)
                return
            except OSError as exc:
                if exc.errno not in _NO_FALLOCATE_ERRNOS:
                    raise
                self._preallocate = False
        os.ftruncate(self._fd, offset + span)  # sparse: the writes allocate (and can fail full)

    def _unappend(self, offset: int, span: int) -> None:
        self._space.unappend(offset, span)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, offset)

    def _unplace(self, offset: int, span: int, *, appended: bool, header_written: bool) -> None:
        """Undo a put whose writes failed: the run is free again, and says so on disk."""
        if appended:
            self._unappend(offset, span)
            return
        if header_written:  # the old free header was overwritten by the failed record's
            with contextlib.suppress(OSError):
                self._write_free_header(offset, span)
        self._space.release(offset, span)

    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        self._check_open()
        nbytes = self._sizes[key]
        offset = self._offsets[key]
        dest: Buffer
        if out is None:
            dest = np.empty(nbytes, dtype=np.uint8)
            view = dest.data
        else:
            dest = out
            view = (out.data if isinstance(out, np.ndarray) else memoryview(out)).cast("B")
            if view.readonly:
                raise ValueError("output buffer is read-only")
            if view.nbytes != nbytes:
                raise ValueError(f"output buffer holds {view.nbytes} B, block has {nbytes} B")
        head = self._head_in
        try:
            got = _pread_all(self._fd, [head, view], offset, SLOT_BYTES + nbytes)
        except OSError as exc:
            self._io_failed(exc, f"reading block {key:#018x}")
        if got == 0:  # the file was cut below this record behind our back: the medium lost it
            del self._offsets[key]
            self._space.forget_run(record_span(nbytes) * SLOT_BYTES)
            return None
        try:
            slot = parse_header(memoryview(head)[:got])
        except BadSlot as bad:
            raise BlockCorrupt(key, f"{bad} in tier {self.name!r}") from None
        found = slot.block
        if found is None:
            raise BlockCorrupt(key, f"its slot is marked free in tier {self.name!r}")
        if slot.key != key:
            raise BlockCorrupt(key, f"its slot holds block {slot.key:#018x} in tier {self.name!r}")
        if found.nbytes != nbytes:
            raise BlockCorrupt(
                key, f"header says {found.nbytes} B, stored {nbytes} B in tier {self.name!r}"
            )
        if got < SLOT_BYTES + nbytes:
            raise BlockCorrupt(key, f"record cut short by the end of the file in {self.name!r}")
        return Block(key, found, dest)

    def _delete(self, key: BlockHash) -> None:
        self._check_open()
        offset = self._offsets.pop(key)
        self._unflushed.pop(key, None)
        self._free_run(offset, record_span(self._sizes[key]) * SLOT_BYTES)
        if not self._offsets:
            self._empty_file()

    def _free_run(self, offset: int, span: int) -> None:
        """Mark a record's run free on disk and in the bookkeeping. A failed write is reported,
        not raised: the old header still describes the run, so a reopen would adopt the block
        (its payload still checked) unless a put has reused the run by then."""
        try:
            self._write_free_header(offset, span)
        except OSError as exc:
            self._degrade(exc, "marking a deleted block's slot free")
        self._space.release(offset, span)

    def _empty_file(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            self._space.reset()

    def _clear(self) -> None:
        self._check_open()
        try:
            os.ftruncate(self._fd, 0)
            if self.fsync == "always":
                os.fsync(self._fd)
        except OSError as exc:
            self._io_failed(exc, "clearing")
        self._offsets.clear()
        self._unflushed.clear()
        self._space.reset()

    def _write_free_header(self, offset: int, span: int) -> None:
        head = self._free_head
        pack_free_header(head, span // SLOT_BYTES)
        _pwrite_all(self._fd, head, offset)

    # ---------------------------------------------------------------- space

    def fragmentation(self) -> Fragmentation:
        """How the slab file's bytes are used now: ``arena_bytes`` is its size, ``internal`` the
        header slots and rounding of the records, ``free_bytes`` its holes."""
        return self._space.fragmentation(len(self._offsets), self._used)

    def compact(self) -> None:
        """Slide every record down over the holes and cut the file after the last one."""
        self._check_open()
        self._compact()

    def _compact(self) -> None:
        # Records move down in file order, keeping their generation; a record whose new run
        # overlaps its old one is read whole first. A crash mid-way leaves two equal copies of a
        # moved block (the reopen keeps the lower) or loses the one being moved: never wrong bytes.
        live = sorted((offset, key) for key, offset in self._offsets.items())
        cursor = 0
        try:
            for offset, key in live:
                span = record_span(self._sizes[key]) * SLOT_BYTES
                if offset != cursor:
                    self._move(offset, cursor, span)
                    self._offsets[key] = cursor
                cursor += span
            if self.fsync != "never":
                os.fsync(self._fd)  # the copies are on disk before the file is cut
            os.ftruncate(self._fd, cursor)
        except OSError as exc:
            self._recover_layout()
            self._io_failed(exc, "compacting")
        self._space.reset(cursor)
        self.compactions += 1

    def _move(self, src: int, dst: int, span: int) -> None:
        record = memoryview(os.pread(self._fd, span, src))
        if record.nbytes != span:
            raise OSError(errno.EIO, f"short read of a {span} B record at {src}")
        _pwrite_all(self._fd, record[SLOT_BYTES:], dst + SLOT_BYTES)
        _pwrite_all(self._fd, record[:SLOT_BYTES], dst)

    def _recover_layout(self) -> None:
        """After a failed compaction: the holes are the gaps between the records as they are
        now; each gets a free header (quietly) so that a reopen finds them as free runs."""
        live = sorted(
            (offset, record_span(self._sizes[key]) * SLOT_BYTES)
            for key, offset in self._offsets.items()
        )
        gaps = self._space.rebuild(live)
        for offset, span in gaps:
            with contextlib.suppress(OSError):
                self._write_free_header(offset, span)

    # ---------------------------------------------------------------- durability

    def flush(self) -> None:
        """Make every block put so far durable (only does anything with ``fsync="batch"``).

        Raises:
            StoreFull, StoreUnavailable: The fsync failed; the blocks it covered were removed.
        """
        self._check_open()
        if self._unflushed:
            self._flush()

    def _flush(self) -> None:
        pending, self._unflushed = self._unflushed, {}
        self._last_flush = time.monotonic()
        self.flushes += 1
        try:
            os.fsync(self._fd)
        except OSError as exc:
            for key, span in pending.items():
                offset = self._offsets.pop(key, None)
                if offset is not None:
                    self._free_run(offset, span)
                if key in self._sizes:  # the block being put is not counted yet
                    self._forget(key)
                    self.stats.errors += 1
            self._io_failed(exc, f"fsync of {len(pending)} block(s), removed")

    # ---------------------------------------------------------------- errors and health

    def _degrade(self, exc: OSError, what: str) -> TierError:
        """Mark the medium degraded for this failure; the error a caller should see."""
        self._medium_failed = True
        if exc.errno in _FULL_ERRNOS:
            self.enospc_count += 1
            reason = f"disk full: {what} in {self._root}: {exc.strerror}"
            self.set_medium_health(Health.DEGRADED, reason)
            return StoreFull(f"tier {self.name!r}: {reason}")
        reason = f"disk I/O error: {what} in {self._root}: {exc}"
        self.set_medium_health(Health.DEGRADED, reason)
        return StoreUnavailable(f"tier {self.name!r}: {reason}")

    def _io_failed(self, exc: OSError, what: str) -> NoReturn:
        raise self._degrade(exc, what) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"tier {self.name!r} is closed")

    # ---------------------------------------------------------------- description and lifetime

    def locate(self, key: BlockHash) -> BlockLocation | None:
        """Where the block's record is in the slab file, or None when it is not stored."""
        offset = self._offsets.get(key)
        if offset is None:
            return None
        return BlockLocation(self.data_path, offset, offset + SLOT_BYTES, self._sizes[key])

    def free_bytes(self) -> int:
        """Bytes still free on the filesystem for an unprivileged writer."""
        st = os.statvfs(self._root)
        return st.f_bavail * st.f_frsize

    def max_capacity(self) -> int | None:
        """What is stored plus what the filesystem still has free (header slots not counted)."""
        return self._used + self.free_bytes()

    def describe(self) -> str:
        try:
            free = f"{format_bytes(self.free_bytes())} free"
        except OSError:
            free = "free space unknown"
        if self.fsync == "batch":
            policy = f"fsync batch (every {self.fsync_every} puts or {self.fsync_interval_s:g} s)"
        else:
            policy = f"fsync {self.fsync}"
        frag = self.fragmentation()
        blocks = f"{frag.blocks} block{'' if frag.blocks == 1 else 's'}"
        return (
            f"disk: {self._root} ({self._fs_type}, {free}), slab file "
            f"{format_bytes(frag.arena_bytes)} in {format_bytes(SLOT_BYTES)} slots, {blocks}, "
            f"{frag.summary()}, {policy}"
        )

    def close(self) -> None:
        """Flush a pending batch and release the directory. Idempotent."""
        if self._closed:
            return
        try:
            if self._unflushed:
                self._flush()
        except (StoreFull, StoreUnavailable):
            pass  # the failed blocks were removed and the health says why
        finally:
            self._closed = True
            os.close(self._fd)
            os.close(self._lock_fd)


# -------------------------------------------------------------------- I/O helpers


def _advance(views: Sequence[memoryview | bytearray], done: int) -> list[memoryview]:
    """The part of ``views`` after the first ``done`` bytes."""
    rest: list[memoryview] = []
    for v in views:
        mv = memoryview(v)
        if done >= mv.nbytes:
            done -= mv.nbytes
            continue
        rest.append(mv[done:])
        done = 0
    return rest


def _pwrite_all(fd: int, data: memoryview | bytearray, offset: int) -> None:
    """Write every byte of ``data`` at ``offset`` (one pwrite unless the kernel writes short)."""
    view = memoryview(data)
    written = os.pwrite(fd, view, offset)
    while written < view.nbytes:
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[written:], offset + written
        written = os.pwrite(fd, view, offset)


def _pread_all(fd: int, views: Sequence[memoryview | bytearray], offset: int, total: int) -> int:
    """Fill ``views`` (``total`` bytes) from ``offset`` until they are full or the file ends;
    the bytes read."""
    got = os.preadv(fd, views, offset)
    done = got
    while got > 0 and done < total:
        got = os.preadv(fd, _advance(views, done), offset + done)
        done += got
    return done


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_directory(name: str, root: str) -> int:
    lock_path = os.path.join(root, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreUnavailable(f"tier {name!r}: cannot open {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreUnavailable(
            f"tier {name!r}: {root} is already open in another DiskStore (pid {holder})"
        ) from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message above; a full disk must not stop the open
    return fd


def _filesystem_type(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (Linux mountinfo), else 'unknown fs'."""
    real = os.path.realpath(path)
    best, fs_type = "", "unknown fs"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return fs_type
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fs_type = mount, right.split()[0]
    return fs_type
