"""The disk tier: one file per block under a directory, written atomically, checked on the way out.

Layout::

    <directory>/.lock                 flock held while a DiskStore has the directory open
    <directory>/<xx>/<key:016x>.kvb   one block; <xx> = the last two hex digits of the key
    <directory>/<xx>/.<key>.<n>.tmp   a block being written (removed when found at open)

The 256 subdirectories keep any one directory small (a million blocks is ~4k files each). The last
two hex digits are used rather than the first so that keys which are not hashes (sequential ids in
tests and tools) spread as well as real chained hashes do.

Every block file is a fixed 160-byte little-endian header followed by the payload bytes::

    magic "TTKVBLK\\0" | version u16 | ndim u8 | flags u8 | header size u32 | key u64 | nbytes u64 |
    payload checksum u64 | dtype 32s | codec 16s | shape 8 x u64 | header checksum u64

Both checksums are xxh3-64 (``tiers.block.checksum``). A put writes header and payload with one
``writev`` into a temporary file in the block's subdirectory, then ``os.replace`` gives it its real
name, so a crash never leaves a half-written block under a block's name. A get reads header, payload
and one probe byte with one ``readv`` straight into the destination buffer (the caller's ``out`` or
a fresh array), then the base class verifies the payload checksum (``verify_on_get``). A file whose
header is bad, whose size does not match its header, or whose payload fails its checksum is counted
in ``stats.corrupt``, removed, and raised as :class:`BlockCorrupt`; the next get is a plain miss.

Reopening a directory scans every block header (not payloads: those are checked on each get),
adopts the valid blocks oldest first, removes temporary leftovers and corrupt block files, and
leaves files it does not recognise alone (counted in :attr:`DiskStore.scan`). If the blocks found
hold more bytes than the capacity, opening fails with a message saying so, unless
``on_excess="drop_oldest"`` asks to remove the oldest blocks until they fit.

Durability (``fsync``):

- ``"never"`` (default): data goes to the page cache; the kernel writes it back when it likes. A
  crash or power loss can lose recent blocks or leave them zero-filled/truncated; the checksums turn
  such blocks into misses, never wrong bytes. Right for a cache that is rebuilt anyway.
- ``"always"``: each put fsyncs the block file before renaming it and the subdirectory after, so a
  put that returned survives power loss. Costs one or two device flushes per put.
- ``"batch"``: puts are renamed into place at once and their files kept open; every
  ``fsync_every`` puts, or at the first put at least ``fsync_interval_s`` seconds after the last
  flush, all pending files and their subdirectories are fsynced (also on :meth:`DiskStore.flush`
  and :meth:`DiskStore.close`). There is no background thread: an idle store flushes at its next
  put or at close. A crash loses at most the unflushed batch. A block whose fsync fails is removed
  (its bytes may never reach the disk) and forgotten.

A full medium (ENOSPC or EDQUOT while creating, writing, fsyncing or closing) removes the temporary
file, marks the tier ``degraded`` and makes the put raise :class:`StoreFull`; blocks already stored
are untouched. The next successful put sets the tier back to ``ok``. Other I/O errors raise
:class:`StoreUnavailable` (also marking the tier degraded).

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
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, NoReturn

import numpy as np

from ..block import Block, BlockHash, BlockHeader, checksum
from ..errors import BlockCorrupt, StoreFull, StoreUnavailable
from ..health import Health
from ..store import Buffer, TierStore
from ..units import format_bytes

FsyncPolicy = Literal["never", "always", "batch"]
ExcessPolicy = Literal["error", "drop_oldest"]

MAGIC = b"TTKVBLK\x00"
FORMAT_VERSION = 1
MAX_NDIM = 8
_HEADER = struct.Struct("<8sHBBIQQQ32s16s8QQ")
HEADER_SIZE = _HEADER.size  # 160
_HEADER_CHECKED = HEADER_SIZE - 8  # the header checksum covers everything before it
_DTYPE_LEN = 32
_CODEC_LEN = 16
SUFFIX = ".kvb"
LOCK_NAME = ".lock"
_BLOCK_NAME = re.compile(r"[0-9a-f]{16}\.kvb")
_TEMP_NAME = re.compile(r"\.[0-9a-f]{16}\.[0-9]+\.tmp")
_SUBDIR_NAME = re.compile(r"[0-9a-f]{2}")
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FSYNC_POLICIES = ("never", "always", "batch")
_EXCESS_POLICIES = ("error", "drop_oldest")


class _BadBlockFile(Exception):
    """A block file whose header or size is not what this format writes."""


class _UnsupportedVersion(Exception):
    """A block file from another format version (left alone, not treated as corrupt)."""


@dataclass(slots=True)
class DiskScan:
    """What opening the directory found."""

    blocks: int = 0  # valid blocks adopted
    bytes: int = 0  # their payload bytes
    temp_removed: int = 0  # leftovers of interrupted writes, removed
    corrupt_removed: int = 0  # block files with a bad header or size, removed
    dropped: int = 0  # valid blocks removed to fit the capacity (on_excess="drop_oldest")
    dropped_bytes: int = 0
    foreign: int = 0  # files or directories this store did not write (left alone)
    unsupported: int = 0  # block files of another format version (left alone)
    seconds: float = 0.0


@dataclass(slots=True)
class _Found:
    key: BlockHash
    nbytes: int
    mtime_ns: int
    path: str


class DiskStore(TierStore):
    """KV blocks as files under ``directory``, one per block, with checksummed headers.

    Args:
        name: The tier's name.
        capacity_bytes: Payload bytes the tier may hold (headers and filesystem rounding excluded).
        directory: Where the blocks live; created if missing. Blocks already there are adopted.
        fsync: Durability policy, ``"never"`` (default), ``"always"`` or ``"batch"`` (module
            docstring).
        fsync_every: With ``fsync="batch"``, flush after this many puts.
        fsync_interval_s: With ``fsync="batch"``, flush at the first put this long after the
            last flush.
        on_excess: When the blocks found at open exceed the capacity: ``"error"`` (raise
            ValueError, nothing removed) or ``"drop_oldest"`` (remove the oldest until they fit).

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
        self._root = str(self.directory)
        self._subdirs: set[str] = set()
        self._pending: dict[BlockHash, tuple[int, str]] = {}  # batch: key -> (open fd, subdir)
        self._last_flush = time.monotonic()
        self._temp_seq = 0
        self._closed = False
        self._medium_failed = False  # an I/O failure of ours set the medium health to degraded
        self.enospc_count = 0  # puts refused because the medium was full
        self.flushes = 0  # batch flushes done
        try:
            os.makedirs(self._root, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"tier {name!r}: cannot create {self._root}: {exc}") from exc
        self._lock_fd = _lock_directory(name, self._root)
        try:
            self._fs_type = _filesystem_type(self._root)
            self.scan = self._scan(on_excess)
            self._make_subdirs()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ---------------------------------------------------------------- paths

    @staticmethod
    def _names(key: BlockHash) -> tuple[str, str]:
        hexkey = f"{key:016x}"
        return hexkey[-2:], hexkey + SUFFIX

    def path_of(self, key: BlockHash) -> Path:
        """Where the block with this key lives (or would live)."""
        sub, fname = self._names(key)
        return self.directory / sub / fname

    def _make_subdirs(self) -> None:
        """Create the 256 fan-out directories up front (a few ms once) so puts never mkdir."""
        for i in range(256):
            sub = f"{i:02x}"
            if sub not in self._subdirs:
                try:
                    os.mkdir(os.path.join(self._root, sub))
                except FileExistsError:
                    pass
                except OSError:
                    return  # e.g. a full disk: puts create what is missing (and report why)
                self._subdirs.add(sub)

    # ---------------------------------------------------------------- open: scan what is there

    def _scan(self, on_excess: ExcessPolicy) -> DiskScan:
        started = time.perf_counter()
        scan = DiskScan()
        found: list[_Found] = []
        with os.scandir(self._root) as entries:
            top = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for entry_name, is_dir in sorted(top):
            if entry_name == LOCK_NAME:
                continue
            if not (is_dir and _SUBDIR_NAME.fullmatch(entry_name)):
                scan.foreign += 1
                continue
            self._subdirs.add(entry_name)
            self._scan_subdir(entry_name, scan, found)
        found.sort(key=lambda f: (f.mtime_ns, f.key))
        total = sum(f.nbytes for f in found)
        if total > self._capacity:
            if on_excess == "error":
                raise ValueError(
                    f"tier {self.name!r}: {self._root} holds {len(found)} blocks of "
                    f"{total} B ({format_bytes(total)}), more than the capacity of "
                    f"{self._capacity} B ({format_bytes(self._capacity)}); open it with a capacity "
                    f"of at least {total} B, or with on_excess='drop_oldest' to remove the "
                    "oldest blocks"
                )
            while found and total > self._capacity:
                oldest = found.pop(0)
                _unlink_quietly(oldest.path)
                total -= oldest.nbytes
                scan.dropped += 1
                scan.dropped_bytes += oldest.nbytes
        for f in found:
            self._adopt(f.key, f.nbytes)
        scan.blocks = len(found)
        scan.bytes = total
        self.stats.corrupt += scan.corrupt_removed
        scan.seconds = time.perf_counter() - started
        return scan

    def _scan_subdir(self, sub: str, scan: DiskScan, found: list[_Found]) -> None:
        subpath = os.path.join(self._root, sub)
        with os.scandir(subpath) as entries:
            names = [e.name for e in entries]
        for fname in names:
            path = os.path.join(subpath, fname)
            if _TEMP_NAME.fullmatch(fname):
                _unlink_quietly(path)
                scan.temp_removed += 1
                continue
            if not _BLOCK_NAME.fullmatch(fname) or not fname.endswith(sub + SUFFIX):
                scan.foreign += 1
                continue
            try:
                key, nbytes, mtime_ns = _read_block_header(path, int(fname[:16], 16))
            except _UnsupportedVersion:
                scan.unsupported += 1
            except (_BadBlockFile, OSError):
                _unlink_quietly(path)
                scan.corrupt_removed += 1
            else:
                found.append(_Found(key, nbytes, mtime_ns, path))

    # ---------------------------------------------------------------- the medium operations

    def _put(self, block: Block) -> None:
        self._check_open()
        key = block.key
        payload = block.view()
        header = _pack_header(key, block.header)
        if payload.nbytes != block.header.nbytes:
            raise ValueError(
                f"block {key:#018x}: payload holds {payload.nbytes} B, header says "
                f"{block.header.nbytes} B"
            )
        sub, fname = self._names(key)
        subpath = os.path.join(self._root, sub)
        final = os.path.join(subpath, fname)
        self._temp_seq += 1
        temp = os.path.join(subpath, f".{fname[:16]}.{self._temp_seq}.tmp")
        policy = self.fsync
        fd = -1
        placed = False
        try:
            fd = self._create(sub, temp)
            _write_all(fd, [header, payload])
            if policy == "always":
                os.fsync(fd)
            if policy != "batch":
                closing, fd = fd, -1
                os.close(closing)
            os.replace(temp, final)
            placed = True
            if policy == "always":
                _fsync_dir(subpath)
        except OSError as exc:
            if fd >= 0:
                _close_quietly(fd)
            _unlink_quietly(final if placed else temp)
            self._io_failed(exc, f"writing block {key:#018x}")
        if self._medium_failed:
            self._medium_failed = False
            self.set_medium_health(Health.OK, f"disk writes succeed again on {self._root}")
        if policy == "batch":
            self._pending[key] = (fd, sub)
            if (
                len(self._pending) >= self.fsync_every
                or time.monotonic() - self._last_flush >= self.fsync_interval_s
            ):
                self._flush(current=key)

    def _create(self, sub: str, temp: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        if sub not in self._subdirs:
            os.makedirs(os.path.join(self._root, sub), exist_ok=True)
            self._subdirs.add(sub)
        try:
            return os.open(temp, flags, 0o644)
        except FileNotFoundError:  # the subdirectory was removed behind our back
            os.makedirs(os.path.join(self._root, sub), exist_ok=True)
            return os.open(temp, flags, 0o644)

    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        self._check_open()
        nbytes = self._sizes[key]
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
        head = bytearray(HEADER_SIZE)
        probe = bytearray(1)  # catches a file longer than its header says
        sub, fname = self._names(key)
        path = os.path.join(self._root, sub, fname)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # removed behind our back: the base counts a miss and forgets it
        except OSError as exc:
            self._io_failed(exc, f"opening block {key:#018x}")
        try:
            got = _read_all(fd, [head, view, probe])
        except OSError as exc:
            self._io_failed(exc, f"reading block {key:#018x}")
        finally:
            os.close(fd)
        try:
            header_key, header = _parse_header(head, got)
        except (_BadBlockFile, _UnsupportedVersion) as bad:
            self._corrupt_on_get(key, str(bad) or type(bad).__name__)
        if header_key != key:
            self._corrupt_on_get(key, f"file holds block {header_key:#018x}")
        if header.nbytes != nbytes:
            self._corrupt_on_get(key, f"header says {header.nbytes} B, stored {nbytes} B")
        if got != HEADER_SIZE + nbytes:
            what = "truncated" if got < HEADER_SIZE + nbytes else "longer than its header says"
            self._corrupt_on_get(key, f"block file is {what}")
        return Block(key, header, dest)

    def _corrupt_on_get(self, key: BlockHash, reason: str) -> NoReturn:
        # The same bookkeeping TierStore.get does for a checksum mismatch, for damage found before
        # the payload can be checked (bad header, wrong size).
        self.stats.corrupt += 1
        self.stats.misses += 1
        self._delete(key)
        self._forget(key)
        raise BlockCorrupt(key, f"{reason} in tier {self.name!r}")

    def _delete(self, key: BlockHash) -> None:
        self._check_open()
        pending = self._pending.pop(key, None)
        if pending is not None:
            _close_quietly(pending[0])
        sub, fname = self._names(key)
        try:
            os.unlink(os.path.join(self._root, sub, fname))
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._io_failed(exc, f"removing block {key:#018x}")

    def _clear(self) -> None:
        self._check_open()
        for fd, _sub in self._pending.values():
            _close_quietly(fd)
        self._pending.clear()
        for key in list(self._sizes):
            sub, fname = self._names(key)
            _unlink_quietly(os.path.join(self._root, sub, fname))

    # ---------------------------------------------------------------- durability

    def flush(self) -> None:
        """Make every block put so far durable (only does anything with ``fsync="batch"``).

        Raises:
            StoreFull, StoreUnavailable: An fsync failed; the blocks it covered were removed.
        """
        self._check_open()
        if self._pending:
            self._flush(current=None)

    def _flush(self, current: BlockHash | None) -> None:
        pending, self._pending = self._pending, {}
        self._last_flush = time.monotonic()
        self.flushes += 1
        failed: list[tuple[BlockHash, OSError]] = []
        subdirs: set[str] = set()
        for key, (fd, sub) in pending.items():
            try:
                os.fsync(fd)
            except OSError as exc:
                failed.append((key, exc))
            else:
                subdirs.add(sub)
            finally:
                _close_quietly(fd)
        for sub in sorted(subdirs):
            try:
                _fsync_dir(os.path.join(self._root, sub))
            except OSError as exc:  # the names in it may not survive a crash: treat as failed
                failed.extend((k, exc) for k, (_fd, s) in pending.items() if s == sub)
        if not failed:
            return
        for key, _exc in failed:
            sub, fname = self._names(key)
            _unlink_quietly(os.path.join(self._root, sub, fname))
            if key in self._sizes:
                self._forget(key)
                self.stats.errors += 1
        what = f"fsync of {len(failed)} block(s), removed"
        first = failed[0][1]
        if current is None or any(key == current for key, _exc in failed):
            self._io_failed(first, what)  # raises: the current put (or flush) did not succeed
        # The current put is durable; earlier blocks of the batch were lost: say so, no raise.
        if first.errno in _FULL_ERRNOS:
            self.enospc_count += 1
        self._medium_failed = True
        self.set_medium_health(Health.DEGRADED, f"disk: {what} in {self._root}: {first}")

    # ---------------------------------------------------------------- errors and health

    def _io_failed(self, exc: OSError, what: str) -> NoReturn:
        if exc.errno in _FULL_ERRNOS:
            self.enospc_count += 1
            self._medium_failed = True
            reason = f"disk full: {what} in {self._root}: {exc.strerror}"
            self.set_medium_health(Health.DEGRADED, reason)
            raise StoreFull(f"tier {self.name!r}: {reason}") from exc
        self._medium_failed = True
        reason = f"disk I/O error: {what} in {self._root}: {exc}"
        self.set_medium_health(Health.DEGRADED, reason)
        raise StoreUnavailable(f"tier {self.name!r}: {reason}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"tier {self.name!r} is closed")

    # ---------------------------------------------------------------- description and lifetime

    def free_bytes(self) -> int:
        """Bytes still free on the filesystem for an unprivileged writer."""
        st = os.statvfs(self._root)
        return st.f_bavail * st.f_frsize

    def max_capacity(self) -> int | None:
        """What is stored plus what the filesystem still has free (headers not counted)."""
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
        return f"disk: {self._root} ({self._fs_type}, {free}), {policy}"

    def close(self) -> None:
        """Flush pending batch fsyncs and release the directory. Idempotent."""
        if self._closed:
            return
        try:
            if self._pending:
                self._flush(current=None)
        except (StoreFull, StoreUnavailable):
            pass  # the failed blocks were removed and the health says why
        finally:
            self._closed = True
            os.close(self._lock_fd)


# -------------------------------------------------------------------- file format


def _pack_header(key: BlockHash, header: BlockHeader) -> bytearray:
    ndim = len(header.shape)
    if ndim > MAX_NDIM:
        raise ValueError(f"block {key:#018x}: {ndim} dimensions, the disk format holds {MAX_NDIM}")
    dtype = header.dtype.encode("ascii")
    codec = header.codec.encode("ascii")
    if len(dtype) > _DTYPE_LEN or len(codec) > _CODEC_LEN:
        raise ValueError(f"block {key:#018x}: dtype or codec name too long for the disk format")
    shape = (*header.shape, *(0,) * (MAX_NDIM - ndim))
    buf = bytearray(HEADER_SIZE)
    _HEADER.pack_into(
        buf, 0, MAGIC, FORMAT_VERSION, ndim, 0, HEADER_SIZE, key, header.nbytes,
        header.checksum, dtype, codec, *shape, 0,
    )  # fmt: skip
    struct.pack_into("<Q", buf, _HEADER_CHECKED, checksum(memoryview(buf)[:_HEADER_CHECKED]))
    return buf


def _parse_header(buf: bytes | bytearray, got: int) -> tuple[BlockHash, BlockHeader]:
    """The key and header in ``buf``; ``got`` is how many bytes of the file were read."""
    if got < HEADER_SIZE:
        raise _BadBlockFile(f"truncated header ({got} of {HEADER_SIZE} B)")
    fields = _HEADER.unpack_from(buf)
    magic, version, ndim, _flags, size, key, nbytes, payload_sum = fields[:8]
    dtype_b, codec_b = fields[8], fields[9]
    shape, header_sum = fields[10 : 10 + MAX_NDIM], fields[10 + MAX_NDIM]
    if magic != MAGIC:
        raise _BadBlockFile("bad magic")
    if version != FORMAT_VERSION:
        raise _UnsupportedVersion(f"format version {version}, this reads {FORMAT_VERSION}")
    if header_sum != checksum(memoryview(buf)[:_HEADER_CHECKED]):
        raise _BadBlockFile("header checksum mismatch")
    if size != HEADER_SIZE or ndim > MAX_NDIM or any(shape[ndim:]):
        raise _BadBlockFile("inconsistent header")
    try:
        dtype = dtype_b.rstrip(b"\0").decode("ascii")
        codec = codec_b.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError as exc:
        raise _BadBlockFile("undecodable dtype or codec") from exc
    header = BlockHeader(
        shape=tuple(int(d) for d in shape[:ndim]),
        dtype=dtype,
        nbytes=int(nbytes),
        checksum=int(payload_sum),
        codec=codec,
    )
    return int(key), header


def _read_block_header(path: str, name_key: BlockHash) -> tuple[BlockHash, int, int]:
    """(key, payload bytes, mtime) of a block file, checked against its name and size."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.read(fd, HEADER_SIZE)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    key, header = _parse_header(head, len(head))
    if key != name_key:
        raise _BadBlockFile(f"file named {name_key:#018x} holds block {key:#018x}")
    if st.st_size != HEADER_SIZE + header.nbytes:
        raise _BadBlockFile(f"size {st.st_size} B, header says {HEADER_SIZE + header.nbytes} B")
    return key, header.nbytes, st.st_mtime_ns


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


def _write_all(fd: int, views: Sequence[memoryview | bytearray]) -> None:
    """Write every byte of ``views`` (one writev unless the kernel writes short)."""
    total = sum(memoryview(v).nbytes for v in views)
    written = os.writev(fd, views)
    while written < total:
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        views = _advance(views, written)
        total -= written
        written = os.writev(fd, views)


def _read_all(fd: int, views: Sequence[memoryview | bytearray]) -> int:
    """Fill ``views`` from ``fd`` until they are full or the file ends; the bytes read."""
    total = sum(memoryview(v).nbytes for v in views)
    got = os.readv(fd, views)
    done = got
    while got > 0 and done < total:
        got = os.readv(fd, _advance(views, done))
        done += got
    return done


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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
