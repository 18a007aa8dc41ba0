"""DiskStore against real files: round trips, reopen, corruption, full disks, fsync policies."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tiertop.tiers.block import Block
from tiertop.tiers.errors import BlockCorrupt, StoreFull, StoreUnavailable
from tiertop.tiers.health import Health
from tiertop.tiers.store import TierStore
from tiertop.tiers.stores import disk as disk_module
from tiertop.tiers.stores.disk import HEADER_SIZE, DiskStore

MiB = 1 << 20


def make_block(key: int, shape: tuple[int, ...] = (2, 4, 8), dtype: str = "float16") -> Block:
    rng = np.random.default_rng(key)
    raw = rng.integers(0, 256, int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    return Block.from_array(key, raw.view(dtype).reshape(shape))


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Callable[..., DiskStore]]:
    """Opens DiskStores (default directory tmp_path/'kv', 64 MiB) and closes them all after."""
    opened: list[DiskStore] = []

    def _open(
        directory: Path | None = None, capacity: int = 64 * MiB, **kwargs: object
    ) -> DiskStore:
        where = directory or tmp_path / "kv"
        store = DiskStore("disk", capacity, where, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


def files_under(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return files_under(root, "*.tmp")


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((2, 4, 16, 8), "float16"),
        ((3, 5), "float32"),
        ((1000,), "int8"),
        ((2, 2, 3, 7, 11), "float64"),
        ((4, 3), "complex64"),
        ((0,), "uint8"),
        ((2, 1, 2, 1, 2, 1, 2, 3), "int32"),
    ],
)
def test_round_trip_exact_bytes(
    open_store: Callable[..., DiskStore], shape: tuple[int, ...], dtype: str
) -> None:
    store = open_store()
    block = make_block(7, shape, dtype)
    expected = block.to_array().copy()
    store.put(block)
    assert store.path_of(7).stat().st_size == HEADER_SIZE + expected.nbytes

    got = store.get(7)
    assert got is not None
    assert got.header == block.header
    array = got.to_array()
    assert array.dtype == expected.dtype and array.shape == expected.shape
    assert array.tobytes() == expected.tobytes()

    out = np.zeros(shape, dtype=dtype)  # the caller's buffer is filled in place and returned
    got_into = store.get(7, out)
    assert got_into is not None and got_into.payload is out
    assert out.tobytes() == expected.tobytes()
    assert store.stats.hits == 2 and store.stats.corrupt == 0


def test_many_blocks_fan_out_into_subdirectories(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    for key in range(1, 40):
        store.put(make_block(key, (8,), "float32"))
    dirs = {p.parent.name for p in files_under(store.directory, "*.kvb")}
    assert len(dirs) == 39  # keys 1..39 all differ in their last two hex digits
    assert all(re.fullmatch(r"[0-9a-f]{2}", d) for d in dirs)
    assert store.path_of(0xABCDEF0123456789).parent.name == "89"
    for key in range(1, 40):
        got = store.get(key)
        assert got is not None
        assert got.to_array().tobytes() == make_block(key, (8,), "float32").to_array().tobytes()


def test_get_into_wrong_buffer_is_rejected(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    store.put(make_block(1, (16,), "float32"))
    with pytest.raises(ValueError, match="holds 32 B, block has 64 B"):
        store.get(1, np.empty(8, dtype=np.float32))
    with pytest.raises(ValueError, match="read-only"):
        store.get(1, bytes(64))
    got = store.get(1)  # the block is still there and whole
    assert got is not None and got.verify()


def test_put_replaces_a_block_with_the_same_key(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    store.put(make_block(5, (4, 4), "float32"))
    newer = Block.from_array(5, np.arange(10, dtype=np.int64))
    store.put(newer)
    assert store.used_bytes == 80 and store.num_blocks == 1
    got = store.get(5)
    assert got is not None and np.array_equal(got.to_array(), np.arange(10))


# ------------------------------------------------------------------------ reopen


def test_reopen_finds_blocks_with_the_same_contents(
    open_store: Callable[..., DiskStore], tmp_path: Path
) -> None:
    first = open_store()
    blocks = {
        k: make_block(k, (3, 4 + k % 7), "float16") for k in (11, 0xFFFF_FFFF_FFFF_FFFF, 2**40)
    }
    for block in blocks.values():
        first.put(block)
    used = first.used_bytes
    first.close()

    again = open_store()
    assert sorted(again.keys()) == sorted(blocks)
    assert again.used_bytes == used
    assert again.scan.blocks == 3 and again.scan.bytes == used
    assert again.scan.corrupt_removed == again.scan.temp_removed == again.scan.foreign == 0
    for key, block in blocks.items():
        got = again.get(key)
        assert got is not None
        assert got.header == block.header
        assert got.to_array().tobytes() == block.to_array().tobytes()


def test_reopen_adopts_oldest_first(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    for key in (1, 2, 3):
        store.put(make_block(key))
    for age, key in enumerate((2, 3, 1)):  # 2 is the oldest file, 1 the newest
        os.utime(store.path_of(key), ns=(10**18 + age * 10**9, 10**18 + age * 10**9))
    store.close()
    assert open_store().keys() == [2, 3, 1]


def test_directory_in_use_is_refused_until_closed(open_store: Callable[..., DiskStore]) -> None:
    first = open_store()
    with pytest.raises(
        StoreUnavailable, match=f"already open in another DiskStore \\(pid {os.getpid()}"
    ):
        open_store()
    first.close()
    assert open_store().num_blocks == 0


def test_closed_store_refuses_operations(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    store.put(make_block(1))
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreUnavailable, match="closed"):
        store.put(make_block(2))
    with pytest.raises(StoreUnavailable, match="closed"):
        store.get(1)


def test_more_on_disk_than_capacity_is_refused_or_trimmed(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    for key in (1, 2, 3, 4):
        store.put(make_block(key, (256,), "float32"))  # 1 KiB each
        os.utime(store.path_of(key), ns=(10**18 + key, 10**18 + key))
    store.close()

    with pytest.raises(ValueError, match=r"holds 4 blocks of 4096 B .*capacity of 3100 B"):
        open_store(capacity=3100)
    assert len(files_under(store.directory, "*.kvb")) == 4  # refusing removed nothing

    trimmed = open_store(capacity=3100, on_excess="drop_oldest")
    assert trimmed.keys() == [2, 3, 4]  # the oldest went
    assert trimmed.scan.dropped == 1 and trimmed.scan.dropped_bytes == 1024
    assert trimmed.used_bytes == 3072 <= trimmed.capacity_bytes
    assert not store.path_of(1).exists()


# ------------------------------------------------------------------------ corruption


def test_flipped_payload_byte_is_counted_removed_and_then_a_plain_miss(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(1, (64,), "float32"))
    store.put(make_block(2, (64,), "float32"))
    path = store.path_of(1)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 100] ^= 0x01
    path.write_bytes(data)

    with pytest.raises(BlockCorrupt, match="checksum mismatch"):
        store.get(1)
    assert store.stats.corrupt == 1 and store.stats.misses == 1 and store.stats.hits == 0
    assert not path.exists() and 1 not in store and store.used_bytes == 256
    assert store.get(1) is None  # now simply absent
    assert store.stats.misses == 2 and store.stats.corrupt == 1
    assert store.get(2) is not None  # its neighbour is fine


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (0, "bad magic"),
        (40, "header checksum mismatch"),  # inside the payload checksum field
        (60, "header checksum mismatch"),  # inside the dtype name
        (HEADER_SIZE - 1, "header checksum mismatch"),  # the header checksum itself
    ],
)
def test_garbled_header_is_block_corrupt(
    open_store: Callable[..., DiskStore], offset: int, reason: str
) -> None:
    store = open_store()
    store.put(make_block(3, (32,), "float16"))
    path = store.path_of(3)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(data)
    with pytest.raises(BlockCorrupt, match=reason):
        store.get(3)
    assert store.stats.corrupt == 1 and store.stats.misses == 1
    assert not path.exists() and 3 not in store and store.used_bytes == 0
    assert store.get(3) is None


@pytest.mark.parametrize(
    ("keep", "reason"),
    [
        (HEADER_SIZE + 10, "truncated"),
        (HEADER_SIZE, "truncated"),
        (50, "truncated header"),
        (0, r"truncated header \(0 of"),
    ],
)
def test_truncated_file_is_block_corrupt(
    open_store: Callable[..., DiskStore], keep: int, reason: str
) -> None:
    store = open_store()
    store.put(make_block(4, (32,), "float32"))
    path = store.path_of(4)
    os.truncate(path, keep)
    with pytest.raises(BlockCorrupt, match=reason):
        store.get(4)
    assert store.stats.corrupt == 1 and not path.exists() and 4 not in store
    assert store.get(4) is None


def test_file_longer_than_its_header_is_block_corrupt(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    store.put(make_block(6, (32,), "float32"))
    with store.path_of(6).open("ab") as f:
        f.write(b"tail")
    with pytest.raises(BlockCorrupt, match="longer than its header says"):
        store.get(6)
    assert store.stats.corrupt == 1 and not store.path_of(6).exists()


def test_block_file_under_another_keys_name_is_block_corrupt(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(0x101, (16,), "float32"))
    store.put(make_block(0x202, (16,), "float32"))
    shutil.copyfile(store.path_of(0x101), store.path_of(0x202))
    with pytest.raises(BlockCorrupt, match="file holds block 0x0000000000000101"):
        store.get(0x202)
    got = store.get(0x101)
    assert got is not None and got.verify()


def test_file_removed_behind_the_stores_back_is_a_miss(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(9))
    store.path_of(9).unlink()
    assert store.get(9) is None
    assert 9 not in store and store.used_bytes == 0 and store.stats.misses == 1
    assert store.stats.corrupt == 0


def test_open_cleans_temp_leftovers_and_corrupt_files_and_ignores_foreign_ones(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    for key in (0x10, 0x20, 0x30):
        store.put(make_block(key, (64,), "float16"))
    root = store.directory
    store.close()

    (root / "notes.txt").write_text("not a block")  # foreign: left alone
    (root / "zz").mkdir()  # foreign directory: not scanned
    (root / "zz" / "0000000000000040.kvb").write_bytes(b"x" * 500)
    (root / "30" / "readme").write_text("also foreign")
    garbage = root / "50" / "0000000000000050.kvb"  # garbage under a block's name
    garbage.write_bytes(os.urandom(400))
    (root / "40" / ".0000000000000040.7.tmp").write_bytes(b"half a block")  # an interrupted put
    truncated = root / "20" / "0000000000000020.kvb"
    os.truncate(truncated, HEADER_SIZE + 3)
    wrong_name = root / "60" / "0000000000000060.kvb"  # a whole block under another key's name
    shutil.copyfile(root / "10" / "0000000000000010.kvb", wrong_name)

    again = open_store()
    assert again.keys() == [0x10, 0x30]
    assert again.scan.temp_removed == 1
    assert again.scan.corrupt_removed == 3 and again.stats.corrupt == 3
    assert again.scan.foreign == 3
    assert (root / "notes.txt").exists() and (root / "30" / "readme").exists()
    assert (root / "zz" / "0000000000000040.kvb").exists()
    assert not truncated.exists() and not wrong_name.exists() and not temp_files(root)
    assert not garbage.exists()
    got = again.get(0x30)
    assert got is not None and got.verify()


def test_newer_format_version_is_left_alone(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    store.put(make_block(1))
    path = store.path_of(1)
    store.close()
    data = bytearray(path.read_bytes())
    data[8] = 99  # format version
    path.write_bytes(data)
    again = open_store()
    assert again.num_blocks == 0 and again.scan.unsupported == 1 and path.exists()


# ------------------------------------------------------------------------ full disk


class HealthLog:
    def __init__(self) -> None:
        self.changes: list[tuple[Health, Health, str]] = []

    def __call__(self, store: TierStore, old: Health, new: Health, reason: str) -> None:
        self.changes.append((old, new, reason))


def test_enospc_mid_write_fails_cleanly_and_recovers(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    log = HealthLog()
    store.health_listener = log
    earlier = [make_block(k, (1024,), "float32") for k in (1, 2)]
    for block in earlier:
        store.put(block)

    real_writev = os.writev
    calls: list[int] = []

    def writev_then_full(fd: int, buffers: list[memoryview]) -> int:
        calls.append(fd)
        if len(calls) == 1:  # the kernel takes part of the block, then the disk is full
            return real_writev(fd, [memoryview(buffers[0]), memoryview(buffers[1])[:1000]])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk_module.os, "writev", writev_then_full)
    with pytest.raises(StoreFull, match="disk full: writing block 0x0000000000000003"):
        store.put(make_block(3, (1024,), "float32"))
    assert len(calls) == 2  # the short write was continued, and that hit ENOSPC
    assert store.health is Health.DEGRADED
    assert log.changes[-1][:2] == (Health.OK, Health.DEGRADED)
    assert store.stats.errors == 1 and store.enospc_count == 1
    assert 3 not in store and not store.path_of(3).exists() and not temp_files(store.directory)
    assert store.keys() == [1, 2] and store.used_bytes == 8192
    for block in earlier:
        got = store.get(block.key)
        assert got is not None and got.to_array().tobytes() == block.to_array().tobytes()

    monkeypatch.undo()
    store.put(make_block(3, (1024,), "float32"))
    assert store.health is Health.OK
    assert log.changes[-1][:2] == (Health.DEGRADED, Health.OK)
    got = store.get(3)
    assert got is not None and got.verify()


def test_edquot_at_fsync_fails_cleanly(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(fsync="always")
    store.put(make_block(1))

    def quota_exceeded(fd: int) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(disk_module.os, "fsync", quota_exceeded)
    with pytest.raises(StoreFull, match="disk full"):
        store.put(make_block(2))
    assert store.health is Health.DEGRADED
    assert store.keys() == [1] and not store.path_of(2).exists()
    assert not temp_files(store.directory)
    monkeypatch.undo()
    store.put(make_block(2))
    assert store.health is Health.OK and store.keys() == [1, 2]


def test_other_io_errors_are_store_unavailable(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()

    def io_error(fd: int, buffers: list[memoryview]) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(disk_module.os, "writev", io_error)
    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        store.put(make_block(1))
    assert store.health is Health.DEGRADED and not temp_files(store.directory)
    monkeypatch.undo()
    store.put(make_block(1))
    assert store.health is Health.OK


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs), unmounted afterwards; skipped where mounting is refused."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MiB tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount not installed")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
        if os.path.ismount(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_really_full_filesystem(open_store: Callable[..., DiskStore], small_tmpfs: Path) -> None:
    store = open_store(small_tmpfs / "kv", capacity=64 * MiB)  # far more than the medium holds
    assert "tmpfs" in store.describe()
    stored: list[Block] = []
    with pytest.raises(StoreFull, match="disk full"):
        for key in range(1, 100):
            block = make_block(key, (64 * 1024,), "float32")  # 256 KiB
            store.put(block)
            stored.append(block)
    assert 4 <= len(stored) < 8  # 2 MiB holds at most seven 256 KiB blocks and their headers
    assert store.health is Health.DEGRADED and store.enospc_count == 1
    assert not temp_files(store.directory)
    assert store.keys() == [b.key for b in stored]
    for block in stored:
        got = store.get(block.key)
        assert got is not None and got.to_array().tobytes() == block.to_array().tobytes()

    store.delete(stored[0].key)
    store.delete(stored[1].key)
    store.put(make_block(500, (64 * 1024,), "float32"))
    assert store.health is Health.OK
    store.close()
    reopened = open_store(small_tmpfs / "kv", capacity=64 * MiB)
    assert sorted(reopened.keys()) == sorted([b.key for b in stored[2:]] + [500])
    assert reopened.scan.corrupt_removed == 0 and reopened.scan.temp_removed == 0


# ------------------------------------------------------------------------ delete, clear, capacity


def test_delete_clear_and_capacity(open_store: Callable[..., DiskStore]) -> None:
    store = open_store(capacity=3500)
    for key in (1, 2, 3):
        store.put(make_block(key, (256,), "float32"))  # 1 KiB each
    assert store.used_bytes == 3072

    assert store.delete(2) is True and store.delete(2) is False
    assert not store.path_of(2).exists() and store.used_bytes == 2048

    store.put(make_block(4, (256,), "float32"))
    with pytest.raises(StoreFull, match="does not fit"):
        store.put(make_block(5, (256,), "float32"))
    assert not store.path_of(5).exists()
    assert store.health is Health.OK  # the tier's own capacity is not a sick medium

    assert store.clear() == 3072
    assert store.num_blocks == 0 and store.used_bytes == 0
    assert files_under(store.directory, "*.kvb") == []
    store.put(make_block(5, (256,), "float32"))
    assert store.keys() == [5]


def test_max_capacity_is_what_the_filesystem_can_take(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    store.put(make_block(1, (256,), "float32"))
    limit = store.max_capacity()
    assert limit is not None
    free = store.free_bytes()
    assert abs(limit - (1024 + free)) < 64 * MiB  # free space moves as others write
    with pytest.raises(ValueError, match="exceeds what its medium holds"):
        store.set_capacity(limit + (1 << 50))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync must be one of"):
        DiskStore("d", MiB, tmp_path, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_excess"):
        DiskStore("d", MiB, tmp_path, on_excess="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fsync_every"):
        DiskStore("d", MiB, tmp_path, fsync="batch", fsync_every=0)


# ------------------------------------------------------------------------ fsync policies


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(disk_module.os, "fsync", counting_fsync)
    return calls


@pytest.mark.parametrize(("policy", "per_put"), [("never", 0), ("always", 2)])
def test_fsync_never_and_always(
    open_store: Callable[..., DiskStore], fsync_calls: list[int], policy: str, per_put: int
) -> None:
    store = open_store(fsync=policy)
    assert store.describe().endswith(f"fsync {policy}")
    for key in range(1, 6):
        store.put(make_block(key))
    assert len(fsync_calls) == 5 * per_put  # the file, then its directory
    for key in range(1, 6):
        got = store.get(key)
        assert got is not None and got.verify()


def test_fsync_batch_every_n_puts_and_at_close(
    open_store: Callable[..., DiskStore], fsync_calls: list[int]
) -> None:
    store = open_store(fsync="batch", fsync_every=3, fsync_interval_s=3600)
    assert "fsync batch (every 3 puts or 3600 s)" in store.describe()
    for key in range(1, 8):  # flushes after puts 3 and 6; put 7 stays pending
        store.put(make_block(key))
    assert store.flushes == 2
    assert len(fsync_calls) == 6 + 6  # six files and each file's own subdirectory (keys differ)
    got = store.get(7)  # a pending block is readable at once
    assert got is not None and got.verify()
    store.delete(5)
    store.close()
    assert store.flushes == 3 and len(fsync_calls) == 14
    assert sorted(open_store().keys()) == [1, 2, 3, 4, 6, 7]


def test_fsync_batch_by_time(open_store: Callable[..., DiskStore], fsync_calls: list[int]) -> None:
    store = open_store(fsync="batch", fsync_every=1000, fsync_interval_s=1e-9)
    for key in range(1, 4):
        store.put(make_block(key))
    assert store.flushes == 3 and len(fsync_calls) == 6
    store.flush()  # nothing pending: a no-op
    assert store.flushes == 3


def test_fsync_batch_failure_removes_the_batch(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(fsync="batch", fsync_every=3, fsync_interval_s=3600)
    for key in (1, 2, 3):  # flushed fine
        store.put(make_block(key))
    store.put(make_block(4))
    store.put(make_block(5))

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk_module.os, "fsync", full)
    with pytest.raises(StoreFull, match=r"fsync of 3 block\(s\), removed"):
        store.put(make_block(6))  # the flush of 4, 5, 6 fails: none of them may be trusted
    assert store.keys() == [1, 2, 3] and store.health is Health.DEGRADED
    assert store.stats.errors == 3  # 4 and 5 lost, 6 refused
    assert sorted(int(p.stem, 16) for p in files_under(store.directory, "*.kvb")) == [1, 2, 3]
    monkeypatch.undo()
    store.put(make_block(6))
    assert store.health is Health.OK


def test_describe_names_path_filesystem_and_free_space(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    text = store.describe()
    assert re.fullmatch(
        rf"disk: {re.escape(str(store.directory))} \([\w.-]+, [\d.]+ (B|KiB|MiB|GiB|TiB) free\), "
        r"fsync never",
        text,
    ), text
    if os.path.exists("/proc/self/mountinfo"):
        assert "unknown fs" not in text
