"""DiskStore against real files: round trips, reopen, corruption, full disks, fsync policies."""

from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tiertop.tiers.block import Block, BlockHash
from tiertop.tiers.errors import BlockCorrupt, StoreFull, StoreUnavailable
from tiertop.tiers.health import Health
from tiertop.tiers.store import Buffer, TierStore
from tiertop.tiers.stores import disk as disk_module
from tiertop.tiers.stores.disk import DATA_NAME, SLOT_BYTES, DiskStore
from tiertop.tiers.stores.disk_format import record_span

from tests.tiers.conftest import DictStore

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


def span_of(nbytes: int) -> int:
    return record_span(nbytes) * SLOT_BYTES


def file_size(store: DiskStore) -> int:
    return store.data_path.stat().st_size


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def header_offset(store: DiskStore, key: BlockHash) -> int:
    where = store.locate(key)
    assert where is not None
    return where.offset


def payload_offset(store: DiskStore, key: BlockHash) -> int:
    where = store.locate(key)
    assert where is not None
    return where.payload_offset


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
    assert file_size(store) == span_of(expected.nbytes)  # a header slot, then the payload
    where = store.locate(7)
    assert where is not None and where.path == store.data_path
    assert (where.offset, where.payload_offset, where.nbytes) == (0, SLOT_BYTES, expected.nbytes)

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


def test_blocks_share_one_file_in_aligned_disjoint_runs(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    blocks = [make_block(key, (key * 100,), "float32") for key in range(1, 40)]
    for block in blocks:
        store.put(block)
    assert sorted(p.name for p in store.directory.iterdir()) == [".lock", DATA_NAME]
    runs = sorted((header_offset(store, b.key), span_of(b.header.nbytes)) for b in blocks)
    assert all(offset % SLOT_BYTES == 0 for offset, _ in runs)
    assert all(a + span == b for (a, span), (b, _) in itertools.pairwise(runs))
    assert file_size(store) == sum(span for _, span in runs)
    for block in blocks:
        got = store.get(block.key)
        assert got is not None and got.to_array().tobytes() == block.to_array().tobytes()


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


def test_a_header_the_format_cannot_hold_is_refused_before_any_write(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    with pytest.raises(ValueError, match="9 dimensions"):
        store.put(Block.from_array(1, np.zeros((1,) * 9, dtype=np.uint8)))
    assert store.num_blocks == 0 and file_size(store) == 0


# ------------------------------------------------------------------------ reopen


def test_reopen_finds_blocks_with_the_same_contents(open_store: Callable[..., DiskStore]) -> None:
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
    scan = again.scan
    assert scan.corrupt_removed == scan.torn_removed == scan.stale_removed == scan.foreign == 0
    for key, block in blocks.items():
        got = again.get(key)
        assert got is not None
        assert got.header == block.header
        assert got.to_array().tobytes() == block.to_array().tobytes()


def test_reopen_adopts_oldest_first(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    for key in (1, 2, 3):
        store.put(make_block(key))
    store.put(make_block(2, (4,), "float64"))  # put again: now the newest
    store.close()
    assert open_store().keys() == [1, 3, 2]


def test_deleted_blocks_stay_deleted_after_reopen(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    for key in (1, 2, 3):
        store.put(make_block(key))
    store.delete(2)
    store.close()
    again = open_store()
    assert again.keys() == [1, 3]
    assert again.fragmentation().free_extents == 1  # 2's run, found free
    assert again.scan.corrupt_removed == 0


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
    store.close()
    before = store.data_path.read_bytes()

    with pytest.raises(ValueError, match=r"holds 4 blocks of 4096 B .*capacity of 3100 B"):
        open_store(capacity=3100)
    assert store.data_path.read_bytes() == before  # refusing changed nothing

    trimmed = open_store(capacity=3100, on_excess="drop_oldest")
    assert trimmed.keys() == [2, 3, 4]  # the oldest went
    assert trimmed.scan.dropped == 1 and trimmed.scan.dropped_bytes == 1024
    assert trimmed.used_bytes == 3072 <= trimmed.capacity_bytes
    trimmed.close()
    assert open_store(capacity=3100).keys() == [2, 3, 4]  # dropped for good


def test_other_files_in_the_directory_are_left_alone(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(1))
    root = store.directory
    store.close()
    (root / "notes.txt").write_text("not a block")
    (root / "ab").mkdir()  # e.g. a format-1 fan-out directory
    newer = root / "blocks.v9.slab"
    newer.write_bytes(b"a future format")
    again = open_store()
    assert again.keys() == [1]
    assert again.scan.foreign == 2 and again.scan.unsupported == 1
    assert newer.read_bytes() == b"a future format" and (root / "notes.txt").exists()


# ------------------------------------------------------------------------ slots and space


def test_a_deleted_blocks_run_is_reused_by_a_block_of_its_size(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    for key in (1, 2, 3):
        store.put(make_block(key, (1000,), "float32"))
    size, freed = file_size(store), header_offset(store, 2)
    store.delete(2)
    assert store.fragmentation().free_bytes == span_of(4000)
    store.put(make_block(9, (1000,), "float32"))
    assert header_offset(store, 9) == freed and file_size(store) == size
    assert store.fragmentation().free_bytes == 0
    store.close()
    again = open_store()
    assert sorted(again.keys()) == [1, 3, 9] and again.scan.corrupt_removed == 0
    got = again.get(9)
    expected = make_block(9, (1000,), "float32").to_array()
    assert got is not None and got.to_array().tobytes() == expected.tobytes()


def test_holes_of_other_sizes_are_reported_and_compacted_away(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    blocks = {key: make_block(key, (key * 1500,), "uint8") for key in range(1, 9)}
    for block in blocks.values():
        store.put(block)
    for key in (2, 5, 6):
        store.delete(key)
    frag = store.fragmentation()
    live = [k for k in blocks if k in store]
    assert frag.free_extents == 3 and frag.free_bytes == sum(span_of(k * 1500) for k in (2, 5, 6))
    assert frag.payload_bytes == sum(k * 1500 for k in live) == store.used_bytes
    assert frag.allocated_bytes == sum(span_of(k * 1500) for k in live)
    assert frag.internal_bytes == frag.allocated_bytes - frag.payload_bytes
    assert frag.arena_bytes == file_size(store) == frag.allocated_bytes + frag.free_bytes
    assert "external" in store.describe()

    store.compact()
    assert store.compactions == 1
    assert file_size(store) == store.fragmentation().allocated_bytes
    assert store.fragmentation().free_bytes == 0
    for key in live:
        got = store.get(key)
        assert got is not None and got.to_array().tobytes() == blocks[key].to_array().tobytes()
    store.close()
    again = open_store()
    assert again.keys() == live and again.scan.stale_removed == 0


def test_the_file_is_compacted_rather_than_grown_when_holes_could_hold_the_block(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    for key in range(1, 5):
        store.put(make_block(key, (8 * SLOT_BYTES,), "uint8"))  # 9 slots each
    store.delete(1)
    store.delete(3)  # two 9-slot holes: half the file
    store.put(make_block(10, (4 * SLOT_BYTES,), "uint8"))  # no hole of its size
    assert store.compactions == 1
    assert file_size(store) == 2 * span_of(8 * SLOT_BYTES) + span_of(4 * SLOT_BYTES)
    assert store.fragmentation().free_bytes == 0
    for key in (2, 4, 10):
        got = store.get(key)
        assert got is not None and got.verify()


def test_a_compaction_that_fails_half_way_keeps_every_block(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    blocks = {key: make_block(key, (3 * SLOT_BYTES,), "uint8") for key in (1, 2, 3, 4)}
    for block in blocks.values():
        store.put(block)
    span = span_of(3 * SLOT_BYTES)
    store.delete(2)
    real_pwrite = os.pwrite
    calls: list[int] = []

    def fails_on_the_second_move(fd: int, data: memoryview, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 3:  # 3 moved down into 2's run; 4's payload write fails
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(disk_module.os, "pwrite", fails_on_the_second_move)
    with pytest.raises(StoreUnavailable, match="compacting"):
        store.compact()
    monkeypatch.undo()
    assert [header_offset(store, k) for k in (1, 3, 4)] == [0, span, 3 * span]
    assert store.fragmentation().free_extents == 1  # where 3 was: marked free again
    for key in (1, 3, 4):
        got = store.get(key)
        assert got is not None and got.to_array().tobytes() == blocks[key].to_array().tobytes()
    store.put(make_block(9, (3 * SLOT_BYTES,), "uint8"))
    assert header_offset(store, 9) == 2 * span
    store.close()
    again = open_store()
    assert sorted(again.keys()) == [1, 3, 4, 9]
    assert again.scan.corrupt_removed == again.scan.stale_removed == 0


def test_a_filesystem_without_fallocate_grows_the_file_by_writing(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    calls: list[int] = []

    def unsupported(fd: int, offset: int, length: int) -> None:
        calls.append(offset)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(disk_module.os, "posix_fallocate", unsupported)
    for key in (1, 2):
        store.put(make_block(key))
    assert calls == [0]  # tried once, then left alone
    assert file_size(store) == 2 * span_of(make_block(1).header.nbytes)  # whole runs, sparse
    for key in (1, 2):
        got = store.get(key)
        assert got is not None and got.verify()
    store.close()
    again = open_store()
    assert again.keys() == [1, 2] and again.scan.torn_removed == 0


def test_the_file_is_emptied_when_the_last_block_goes(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(1))
    store.put(make_block(2))
    store.delete(1)
    assert file_size(store) == span_of(make_block(2).header.nbytes) * 2
    store.delete(2)
    assert file_size(store) == 0 and store.fragmentation().free_bytes == 0


# ------------------------------------------------------------------------ corruption


def test_flipped_payload_byte_is_counted_once_removed_and_then_a_plain_miss(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(1, (64,), "float32"))
    store.put(make_block(2, (64,), "float32"))
    flip(store.data_path, payload_offset(store, 1) + 100)

    with pytest.raises(BlockCorrupt, match="checksum mismatch"):
        store.get(1)
    assert store.stats.corrupt == 1 and store.stats.misses == 1 and store.stats.hits == 0
    assert 1 not in store and store.locate(1) is None and store.used_bytes == 256
    assert store.get(1) is None  # now simply absent
    assert store.stats.misses == 2 and store.stats.corrupt == 1
    assert store.get(2) is not None  # its neighbour is fine
    store.close()
    again = open_store()  # the damaged record's run was marked free
    assert again.keys() == [2] and again.scan.corrupt_removed == 0


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (0, "bad magic"),
        (20, "header checksum mismatch"),  # inside the key
        (40, "header checksum mismatch"),  # inside the generation
        (70, "header checksum mismatch"),  # inside the dtype name
        (175, "header checksum mismatch"),  # the header checksum itself
    ],
)
def test_garbled_header_is_block_corrupt(
    open_store: Callable[..., DiskStore], offset: int, reason: str
) -> None:
    store = open_store()
    store.put(make_block(3, (32,), "float16"))
    flip(store.data_path, header_offset(store, 3) + offset, 0x40)
    with pytest.raises(BlockCorrupt, match=reason):
        store.get(3)
    assert store.stats.corrupt == 1 and store.stats.misses == 1
    assert 3 not in store and store.used_bytes == 0
    assert store.get(3) is None


def test_garbled_header_found_at_reopen_is_counted_and_repaired(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    for key in (1, 2, 3):
        store.put(make_block(key, (2000,), "float32"))
    flip(store.data_path, header_offset(store, 2), 0xFF)  # its magic
    store.close()
    again = open_store()
    assert again.keys() == [1, 3]
    assert again.scan.corrupt_removed == 1 and again.stats.corrupt == 1
    assert again.fragmentation().free_bytes == span_of(8000)  # 2's run is free now
    for key in (1, 3):
        got = again.get(key)
        assert got is not None and got.verify()
    again.close()
    assert open_store().scan.corrupt_removed == 0  # said once


def test_record_cut_short_by_the_end_of_the_file_is_block_corrupt(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(4, (32,), "float32"))
    os.truncate(store.data_path, SLOT_BYTES + 10)
    with pytest.raises(BlockCorrupt, match="cut short by the end of the file"):
        store.get(4)
    assert store.stats.corrupt == 1 and 4 not in store


def test_record_past_the_end_of_the_file_is_lost_not_corrupt(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    for key in (1, 2):
        store.put(make_block(key))
    os.truncate(store.data_path, header_offset(store, 2))  # the file was cut behind our back
    assert store.get(2) is None
    assert 2 not in store and store.stats.misses == 1 and store.stats.corrupt == 0
    got = store.get(1)
    assert got is not None and got.verify()


def test_slot_holding_another_blocks_record_is_block_corrupt(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(0x101, (16,), "float32"))
    store.put(make_block(0x202, (16,), "float32"))
    span = span_of(64)
    with store.data_path.open("r+b") as f:
        f.seek(header_offset(store, 0x101))
        record = f.read(span)
        f.seek(header_offset(store, 0x202))
        f.write(record)
    with pytest.raises(BlockCorrupt, match="slot holds block 0x0000000000000101"):
        store.get(0x202)
    got = store.get(0x101)
    assert got is not None and got.verify()


def test_torn_append_at_the_end_is_cut_off_at_reopen(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    for key in (1, 2, 3):
        store.put(make_block(key, (3000,), "float32"))
    end_of_two = header_offset(store, 3)
    store.close()
    os.truncate(store.data_path, end_of_two + SLOT_BYTES + 5000)  # 3's payload cut mid-way
    again = open_store()
    assert again.keys() == [1, 2]
    assert again.scan.torn_removed == 1 and again.scan.corrupt_removed == 0
    assert again.stats.corrupt == 0 and file_size(again) == end_of_two


def test_an_older_record_of_a_key_is_stale_at_reopen(open_store: Callable[..., DiskStore]) -> None:
    store = open_store()
    store.put(make_block(1, (100,), "float32"))
    store.put(make_block(2, (100,), "float32"))
    old_offset = header_offset(store, 1)
    old_record = store.data_path.read_bytes()[old_offset : old_offset + span_of(400)]
    newer = make_block(1, (2000,), "float32")
    store.put(newer)  # its old run is marked free; the new record (larger) goes elsewhere
    store.close()
    with store.data_path.open("r+b") as f:  # as if the free header had never reached the disk
        f.seek(old_offset)
        f.write(old_record)
    again = open_store()
    assert sorted(again.keys()) == [1, 2] and again.scan.stale_removed == 1
    got = again.get(1)
    assert got is not None and got.to_array().tobytes() == newer.to_array().tobytes()


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
    size = file_size(store)

    real_pwrite = os.pwrite
    calls: list[int] = []

    def pwrite_then_full(fd: int, data: memoryview, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 1:  # the kernel takes part of the payload, then the disk is full
            return real_pwrite(fd, memoryview(data)[:1000], offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk_module.os, "pwrite", pwrite_then_full)
    with pytest.raises(StoreFull, match="disk full: writing block 0x0000000000000003"):
        store.put(make_block(3, (1024,), "float32"))
    assert len(calls) == 2  # the short write was continued, and that hit ENOSPC
    assert store.health is Health.DEGRADED
    assert log.changes[-1][:2] == (Health.OK, Health.DEGRADED)
    assert store.stats.errors == 1 and store.enospc_count == 1
    assert 3 not in store and file_size(store) == size  # the half record was cut off
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


def test_enospc_while_growing_writes_nothing(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    store.put(make_block(1))
    size = file_size(store)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk_module.os, "posix_fallocate", full)
    with pytest.raises(StoreFull, match=rf"disk full: growing {re.escape(DATA_NAME)}"):
        store.put(make_block(2))
    assert file_size(store) == size and store.keys() == [1]
    store.delete(1)  # deleting needs no space
    assert store.num_blocks == 0


def test_full_medium_with_enough_room_in_holes_compacts_and_succeeds(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    for key in range(1, 11):
        store.put(make_block(key, (4 * SLOT_BYTES,), "uint8"))  # 5 slots each
    for key in (2, 5):
        store.delete(key)  # two 5-slot holes: a fifth of the file, too little to compact for
    limit = file_size(store)  # the medium holds no more than this
    real_fallocate = os.posix_fallocate

    def medium_of(fd: int, offset: int, length: int) -> None:
        if offset + length > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(disk_module.os, "posix_fallocate", medium_of)
    store.put(make_block(20, (7 * SLOT_BYTES,), "uint8"))  # 8 slots: no hole fits, the disk is full
    assert store.compactions == 1 and store.health is Health.OK
    assert file_size(store) <= limit
    for key in (1, 3, 4, 6, 7, 8, 9, 10, 20):
        got = store.get(key)
        assert got is not None and got.verify()
    with pytest.raises(StoreFull, match="disk full"):  # now really full: refused, nothing lost
        store.put(make_block(21, (7 * SLOT_BYTES,), "uint8"))
    assert store.compactions == 1 and store.num_blocks == 9


def test_edquot_at_fsync_fails_cleanly(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(fsync="always")
    store.put(make_block(1))
    size = file_size(store)

    def quota_exceeded(fd: int) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(disk_module.os, "fsync", quota_exceeded)
    with pytest.raises(StoreFull, match="disk full"):
        store.put(make_block(2))
    assert store.health is Health.DEGRADED
    assert store.keys() == [1] and file_size(store) == size
    monkeypatch.undo()
    store.put(make_block(2))
    assert store.health is Health.OK and store.keys() == [1, 2]


def test_failed_fsync_of_a_reused_run_leaves_it_free(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(fsync="always")
    for key in (1, 2, 3):
        store.put(make_block(key))
    store.delete(2)

    def io_error(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(disk_module.os, "fsync", io_error)
    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        store.put(make_block(4))  # goes into 2's run; its header is written, then fsync fails
    monkeypatch.undo()
    store.close()
    again = open_store()  # the failed record was marked free again: not adopted
    assert again.keys() == [1, 3] and again.fragmentation().free_extents == 1


def test_other_io_errors_are_store_unavailable(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()

    def io_error(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(disk_module.os, "pwrite", io_error)
    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        store.put(make_block(1))
    assert store.health is Health.DEGRADED and file_size(store) == 0
    monkeypatch.undo()
    store.put(make_block(1))
    assert store.health is Health.OK


def test_a_delete_that_cannot_mark_its_run_free_still_deletes(
    open_store: Callable[..., DiskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    for key in (1, 2):
        store.put(make_block(key))

    def io_error(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(disk_module.os, "pwrite", io_error)
    assert store.delete(1) is True
    assert 1 not in store and store.health is Health.DEGRADED
    assert "marking a deleted block's slot free" in store.health_reason
    monkeypatch.undo()
    store.put(make_block(3))  # reuses 1's run, and the medium is fine again
    assert store.health is Health.OK and header_offset(store, 3) == 0


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
    assert len(stored) == 7  # 2 MiB holds seven 260 KiB records (the lock file takes a page)
    assert store.health is Health.DEGRADED and store.enospc_count == 1
    assert file_size(store) == 7 * span_of(256 * 1024)
    assert store.keys() == [b.key for b in stored]
    for block in stored:
        got = store.get(block.key)
        assert got is not None and got.to_array().tobytes() == block.to_array().tobytes()

    store.delete(stored[0].key)
    store.delete(stored[1].key)
    store.put(make_block(500, (64 * 1024,), "float32"))  # into a freed run: no new space needed
    assert store.health is Health.OK
    store.close()
    reopened = open_store(small_tmpfs / "kv", capacity=64 * MiB)
    assert sorted(reopened.keys()) == sorted([b.key for b in stored[2:]] + [500])
    assert reopened.scan.corrupt_removed == 0 and reopened.scan.torn_removed == 0


# ------------------------------------------------------------------------ delete, clear, capacity


def test_delete_clear_and_capacity(open_store: Callable[..., DiskStore]) -> None:
    store = open_store(capacity=3500)
    for key in (1, 2, 3):
        store.put(make_block(key, (256,), "float32"))  # 1 KiB each
    assert store.used_bytes == 3072

    assert store.delete(2) is True and store.delete(2) is False
    assert store.locate(2) is None and store.used_bytes == 2048

    store.put(make_block(4, (256,), "float32"))
    with pytest.raises(StoreFull, match="does not fit"):
        store.put(make_block(5, (256,), "float32"))
    assert store.locate(5) is None
    assert store.health is Health.OK  # the tier's own capacity is not a sick medium

    assert store.clear() == 3072
    assert store.num_blocks == 0 and store.used_bytes == 0
    assert file_size(store) == 0
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


@pytest.mark.parametrize(("policy", "per_put"), [("never", 0), ("always", 1)])
def test_fsync_never_and_always(
    open_store: Callable[..., DiskStore], fsync_calls: list[int], policy: str, per_put: int
) -> None:
    store = open_store(fsync=policy)
    assert store.describe().endswith(f"fsync {policy}")
    opened = len(fsync_calls)  # "always" also makes the new file's name durable
    for key in range(1, 6):
        store.put(make_block(key))
    assert len(fsync_calls) - opened == 5 * per_put
    for key in range(1, 6):
        got = store.get(key)
        assert got is not None and got.verify()


def test_fsync_batch_every_n_puts_and_at_close(
    open_store: Callable[..., DiskStore], fsync_calls: list[int]
) -> None:
    store = open_store(fsync="batch", fsync_every=3, fsync_interval_s=3600)
    assert "fsync batch (every 3 puts or 3600 s)" in store.describe()
    opened = len(fsync_calls)
    for key in range(1, 8):  # flushes after puts 3 and 6; put 7 stays pending
        store.put(make_block(key))
    assert store.flushes == 2 and len(fsync_calls) - opened == 2  # one fsync covers a batch
    got = store.get(7)  # a pending block is readable at once
    assert got is not None and got.verify()
    store.delete(5)
    store.close()
    assert store.flushes == 3 and len(fsync_calls) - opened == 3
    assert sorted(open_store().keys()) == [1, 2, 3, 4, 6, 7]


def test_fsync_batch_by_time(open_store: Callable[..., DiskStore], fsync_calls: list[int]) -> None:
    store = open_store(fsync="batch", fsync_every=1000, fsync_interval_s=1e-9)
    opened = len(fsync_calls)
    for key in range(1, 4):
        store.put(make_block(key))
    assert store.flushes == 3 and len(fsync_calls) - opened == 3
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
    assert store.fragmentation().free_extents == 3
    monkeypatch.undo()
    store.put(make_block(6))
    assert store.health is Health.OK
    store.close()
    assert open_store().keys() == [1, 2, 3, 6]


def test_describe_names_path_filesystem_free_space_and_the_slab_file(
    open_store: Callable[..., DiskStore],
) -> None:
    store = open_store()
    store.put(make_block(1, (1024,), "float32"))
    text = store.describe()
    assert re.fullmatch(
        rf"disk: {re.escape(str(store.directory))} \([\w.-]+, [\d.]+ (B|KiB|MiB|GiB|TiB) free\), "
        r"slab file 8 KiB in 4 KiB slots, 1 block, fragmentation internal 50\.0%, external 0\.0%, "
        r"fsync never",
        text,
    ), text
    if os.path.exists("/proc/self/mountinfo"):
        assert "unknown fs" not in text


# ------------------------------------------------------------------------ corrupt accounting


class RaisingStore(DictStore):
    """A medium that finds damage itself, before any checksum: its ``_get`` raises."""

    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        raise BlockCorrupt(key, "damaged on the medium")


def test_block_corrupt_raised_by_a_medium_is_counted_removed_and_forgotten() -> None:
    store = RaisingStore("t", 1 << 20)
    store.put(make_block(1))
    with pytest.raises(BlockCorrupt, match="damaged on the medium"):
        store.get(1)
    assert store.stats.corrupt == 1 and store.stats.misses == 1 and store.stats.hits == 0
    assert 1 not in store and 1 not in store._blocks and store.used_bytes == 0
    assert store.stats.latency["get"].total == 1
    assert store.get(1) is None and store.stats.corrupt == 1
