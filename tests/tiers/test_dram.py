"""The host DRAM arena store and the span allocator under it."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from tiertop.tiers.block import Block
from tiertop.tiers.errors import StoreFull, StoreUnavailable
from tiertop.tiers.health import Health
from tiertop.tiers.stores.arena import SpanAllocator
from tiertop.tiers.stores.dram import DramStore
from tiertop.tiers.units import format_bytes

KIB = 1024


def make_block(key: int, nbytes: int, seed: int | None = None) -> Block:
    rng = np.random.default_rng(key if seed is None else seed)
    return Block.from_array(key, rng.integers(0, 256, nbytes, dtype=np.uint8))


def kv_block(key: int, shape: tuple[int, ...] = (2, 2, 16, 4, 8)) -> Block:
    rng = np.random.default_rng(key)
    return Block.from_array(key, rng.standard_normal(shape).astype(np.float16))


# -------------------------------------------------------------------- round trips


def test_round_trip_keeps_bytes_shape_and_dtype() -> None:
    store = DramStore("dram", 64 * KIB)
    block = kv_block(1)
    store.put(block)
    got = store.get(1)
    assert got is not None
    assert got.header == block.header
    assert got.verify()
    np.testing.assert_array_equal(got.to_array(), block.to_array())
    assert got.to_array().dtype == np.float16
    assert store.used_bytes == block.header.nbytes
    assert store.num_blocks == 1


def test_get_returns_a_copy_that_later_puts_cannot_overwrite() -> None:
    store = DramStore("dram", 4 * KIB, slot_bytes=1 * KIB)
    first = make_block(1, 1 * KIB)
    store.put(first)
    got = store.get(1)
    assert got is not None
    snapshot = bytes(got.view())
    # the freed slot is reused by the next block of that size
    store.delete(1)
    store.put(make_block(2, 1 * KIB))
    assert bytes(got.view()) == snapshot == bytes(first.view())
    # and scribbling on what get returned does not reach the store
    np.frombuffer(got.view(), dtype=np.uint8)[:] = 0
    again = store.get(2)
    assert again is not None and again.verify()


def test_put_copies_so_the_caller_may_reuse_its_buffer() -> None:
    store = DramStore("dram", 4 * KIB)
    data = np.arange(256, dtype=np.uint8)
    block = Block.from_array(7, data)
    store.put(block)
    data[:] = 0
    got = store.get(7)
    assert got is not None and got.verify()
    np.testing.assert_array_equal(got.to_array(), np.arange(256, dtype=np.uint8))


def test_get_into_caller_buffers() -> None:
    store = DramStore("dram", 64 * KIB)
    block = kv_block(3)
    store.put(block)
    out = np.empty_like(block.to_array())
    got = store.get(3, out)
    assert got is not None and got.payload is out
    np.testing.assert_array_equal(out, block.to_array())
    raw = bytearray(block.header.nbytes)
    got = store.get(3, raw)
    assert got is not None and bytes(raw) == bytes(block.view())


def test_get_into_wrong_buffers_raises_and_keeps_the_block() -> None:
    store = DramStore("dram", 64 * KIB)
    block = kv_block(4)
    store.put(block)
    with pytest.raises(ValueError, match="holds"):
        store.get(4, np.empty(block.header.nbytes + 1, dtype=np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        store.get(4, np.empty((block.header.nbytes, 2), dtype=np.uint8)[:, 0])
    with pytest.raises(ValueError, match="read-only"):
        store.get(4, bytes(block.header.nbytes))
    got = store.get(4)
    assert got is not None and got.verify()


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "strided", "fortran"])
def test_put_accepts_any_buffer(kind: str) -> None:
    base = np.random.default_rng(5).standard_normal((8, 16)).astype(np.float32)
    header_source = Block.from_array(9, np.ascontiguousarray(base))
    payload: bytes | bytearray | memoryview | np.ndarray
    if kind == "bytes":
        payload = base.tobytes()
    elif kind == "bytearray":
        payload = bytearray(base.tobytes())
    elif kind == "memoryview":
        payload = base.data  # a 2-D float32 memoryview
    elif kind == "strided":
        wide = np.zeros((8, 32), dtype=np.float32)
        wide[:, ::2] = base
        payload = wide[:, ::2]
    else:
        payload = np.asfortranarray(base)
    store = DramStore("dram", 64 * KIB)
    store.put(Block(9, header_source.header, payload))
    got = store.get(9)
    assert got is not None and got.verify()
    np.testing.assert_array_equal(got.to_array(), base)


def test_payload_that_disagrees_with_its_header_is_refused() -> None:
    store = DramStore("dram", 64 * KIB)
    good = kv_block(1)
    bad = Block(2, good.header, np.zeros(10, dtype=np.uint8))
    with pytest.raises(ValueError, match="header says"):
        store.put(bad)
    assert 2 not in store and store.used_bytes == 0
    assert store.fragmentation().allocated_bytes == 0


def test_zero_byte_block() -> None:
    store = DramStore("dram", 1 * KIB)
    store.put(Block.from_array(1, np.zeros(0, dtype=np.float16)))
    got = store.get(1)
    assert got is not None and got.header.nbytes == 0 and got.to_array().shape == (0,)
    assert store.delete(1)
    store.put(Block.from_array(2, np.zeros(0, dtype=np.uint8)))
    store.put(make_block(3, 100))
    store.delete(3)  # the arena is empty of spans again, the 0-byte block is still counted
    assert store.fragmentation().blocks == 1 and store.num_blocks == 1


# -------------------------------------------------------------------- capacity


def test_capacity_is_enforced_and_adjustable_up_to_the_arena() -> None:
    store = DramStore("dram", 8 * KIB, arena_bytes=16 * KIB)
    assert store.max_capacity() == 16 * KIB
    for key in range(8):
        store.put(make_block(key, 1 * KIB))
    with pytest.raises(StoreFull):
        store.put(make_block(100, 1 * KIB))
    assert store.used_bytes == 8 * KIB and store.stats.errors == 1
    store.set_capacity(16 * KIB)
    store.put(make_block(100, 1 * KIB))
    with pytest.raises(ValueError, match="exceeds"):
        store.set_capacity(16 * KIB + 1)
    with pytest.raises(ValueError, match="evict"):
        store.set_capacity(4 * KIB)
    for key in range(6):
        store.delete(key)
    store.set_capacity(4 * KIB)
    assert store.capacity_bytes == 4 * KIB
    for key in (6, 7, 100):
        got = store.get(key)
        assert got is not None and got.verify()


def test_capacity_beyond_the_arena_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds its arena"):
        DramStore("dram", 8 * KIB, buffer=np.zeros(4 * KIB, dtype=np.uint8))


def test_arena_full_from_slot_rounding_raises_store_full_and_changes_nothing() -> None:
    # 1000 B blocks take a 1 KiB slot each: the payload fits the capacity, the arena does not
    store = DramStore("dram", 4 * KIB, slot_bytes=1 * KIB)
    for key in range(4):
        store.put(make_block(key, 1000))
    assert store.used_bytes == 4000
    with pytest.raises(StoreFull, match="arena full"):
        store.put(make_block(9, 64))
    assert store.used_bytes == 4000 and 9 not in store and store.num_blocks == 4
    frag = store.fragmentation()
    assert frag.internal_bytes == 4 * 24 and frag.free_bytes == 0


# -------------------------------------------------------------------- fragmentation and compaction


def test_fragmentation_reports_internal_and_external_waste() -> None:
    store = DramStore("dram", 10 * KIB, slot_bytes=1 * KIB)
    sizes = {1: 2 * KIB, 2: 1 * KIB, 3: 2 * KIB, 4: 1 * KIB, 5: 2 * KIB, 6: 2 * KIB - 100}
    blocks = {key: make_block(key, size) for key, size in sizes.items()}
    for block in blocks.values():
        store.put(block)
    frag = store.fragmentation()
    assert frag.internal_bytes == 100 and frag.free_bytes == 0
    assert frag.internal_ratio == pytest.approx(100 / (10 * KIB))
    # two 1 KiB holes, apart: free 2 KiB, but none of it holds a 2 KiB block (the largest class)
    store.delete(2)
    store.delete(4)
    frag = store.fragmentation()
    assert frag.free_bytes == 2 * KIB and frag.free_extents == 2
    assert frag.largest_block_bytes == 2 * KIB and frag.largest_free_bytes == 1 * KIB
    assert frag.unusable_free_bytes == 2 * KIB and frag.external_ratio == 1.0
    assert "external 100.0%" in store.describe()
    # a 2 KiB put still succeeds: the arena is compacted, and every block survives the move
    blocks[7] = make_block(7, 2 * KIB)
    store.put(blocks[7])
    assert store.compactions == 1
    for key in (1, 3, 5, 6, 7):
        got = store.get(key)
        assert got is not None and got.verify()
        assert bytes(got.view()) == bytes(blocks[key].view())
    assert store.fragmentation().external_ratio == 0.0


def test_neighbouring_holes_merge_without_compaction() -> None:
    store = DramStore("dram", 8 * KIB, slot_bytes=1 * KIB)
    for key in range(8):
        store.put(make_block(key, 1 * KIB))
    store.delete(3)
    store.delete(4)
    store.put(make_block(50, 2 * KIB))
    assert store.compactions == 0
    assert store.fragmentation().free_bytes == 0


def test_rewrites_reuse_their_span_and_deletes_count_at_once() -> None:
    store = DramStore("dram", 8 * KIB, slot_bytes=1 * KIB)
    for key in range(4):
        store.put(make_block(key, 1 * KIB))
    offset = store._index[2][0]
    rewritten = make_block(2, 1 * KIB, seed=99)
    store.put(rewritten)  # same size: the same span, no allocator work
    assert store._index[2][0] == offset
    got = store.get(2)
    assert got is not None and bytes(got.view()) == bytes(rewritten.view())
    store.delete(1)
    frag = store.fragmentation()  # the freed span is counted free straight away
    assert frag.free_bytes == 5 * KIB and frag.blocks == 3
    store.delete(3)
    store.put(make_block(10, 2 * KIB))  # a different size after a delete
    store.put(make_block(11, 3 * KIB))
    frag = store.fragmentation()
    assert frag.free_bytes == 1 * KIB and frag.blocks == 4 and "4 blocks" in store.describe()
    for key in (0, 2, 10, 11):
        got = store.get(key)
        assert got is not None and got.verify()


def test_random_workload_never_overlaps_or_loses_bytes() -> None:
    rnd = random.Random(1234)
    store = DramStore("dram", 256 * KIB, slot_bytes=512)
    live: dict[int, Block] = {}
    next_key = 1
    for step in range(3000):
        if live and (rnd.random() < 0.45 or store.used_bytes > 200 * KIB):
            key = rnd.choice(list(live))
            assert store.delete(key)
            del live[key]
        else:
            size = rnd.choice([700, 4 * KIB, 5 * KIB + 3, 16 * KIB, 33 * KIB])
            block = make_block(next_key, size, seed=step)
            try:
                store.put(block)
            except StoreFull:
                continue
            live[next_key] = block
            next_key += 1
        if step % 250 == 0:
            spans = sorted(
                (offset, offset + -(-nbytes // 512) * 512)
                for offset, nbytes, _, _ in store._index.values()
                if nbytes
            )
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert end <= start, "two live spans overlap"
    assert store.used_bytes == sum(b.header.nbytes for b in live.values())
    for key, block in live.items():
        got = store.get(key)
        assert got is not None and bytes(got.view()) == bytes(block.view())


def test_span_allocator_best_fit_and_reuse() -> None:
    alloc = SpanAllocator(16 * KIB, 1 * KIB)
    a = alloc.alloc(3 * KIB)
    b = alloc.alloc(1 * KIB)
    c = alloc.alloc(1)
    assert (a, b, c) == (0, 3 * KIB, 4 * KIB)
    assert alloc.alloc(12 * KIB) is None  # 11 KiB free
    alloc.free(b, 1 * KIB)
    # best fit: the 1 KiB hole, not the tail
    assert alloc.alloc(1000) == 3 * KIB
    alloc.free(a, 3 * KIB)
    alloc.free(3 * KIB, 1000)
    # best fit takes the tail (11 KiB); the 3 KiB and 1 KiB holes stay as they are
    assert alloc.alloc(4 * KIB) == 5 * KIB
    assert alloc.alloc(7 * KIB) == 9 * KIB
    # no single hole holds 4 KiB, but the two touch: they are merged on demand
    assert alloc.alloc(4 * KIB) == 0
    assert alloc.alloc(1) is None
    frag = alloc.fragmentation()
    assert frag.blocks == 4 and frag.payload_bytes == 15 * KIB + 1
    assert frag.allocated_bytes == 16 * KIB and frag.internal_bytes == KIB - 1
    assert frag.free_bytes == 0


def test_span_allocator_validates_geometry() -> None:
    with pytest.raises(ValueError):
        SpanAllocator(1000, 256)
    with pytest.raises(ValueError):
        SpanAllocator(1024, 0)


# -------------------------------------------------------------------- the rest of the contract


def test_stats_and_describe() -> None:
    store = DramStore("dram", 64 * KIB)
    block = kv_block(1)
    store.put(block)
    assert store.get(1) is not None
    assert store.get(2) is None
    stats = store.stats
    assert (stats.puts, stats.gets, stats.hits, stats.misses) == (1, 2, 1, 1)
    assert stats.bytes_in == stats.bytes_out == block.header.nbytes
    assert stats.latency["put"].total == 1 and stats.latency["get"].total == 2
    text = store.describe()
    assert text.startswith("dram: host DRAM, 64 KiB arena, 256 B slots, 1 block")
    assert "fragmentation internal" in text and "external" in text
    assert DramStore.kind == "dram"


def test_clear_frees_the_whole_arena() -> None:
    store = DramStore("dram", 8 * KIB, slot_bytes=1 * KIB)
    for key in range(8):
        store.put(make_block(key, 1 * KIB))
    assert store.clear() == 8 * KIB
    assert store.used_bytes == 0 and store.fragmentation().free_bytes == 8 * KIB
    store.put(make_block(99, 8 * KIB))
    got = store.get(99)
    assert got is not None and got.verify()


def test_supplied_buffer_is_the_arena() -> None:
    buffer = np.zeros(8 * KIB + 100, dtype=np.uint8)
    store = DramStore("dram", 8 * KIB, slot_bytes=1 * KIB, buffer=buffer)
    assert store.max_capacity() == 8 * KIB
    block = make_block(1, 1 * KIB)
    store.put(block)
    assert bytes(block.view()) in buffer.tobytes()
    with pytest.raises(ValueError):
        DramStore("dram", 1 * KIB, buffer=np.zeros(4 * KIB, dtype=np.float32))


def test_close_makes_the_store_unavailable() -> None:
    store = DramStore("dram", 8 * KIB)
    store.put(make_block(1, 100))
    store.close()
    assert store.health is Health.DOWN
    with pytest.raises(StoreUnavailable):
        store.get(1)
    with pytest.raises(StoreUnavailable):
        store.put(make_block(2, 100))


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(256) == "256 B"
    assert format_bytes(64 * KIB * KIB) == "64 MiB"
    assert format_bytes(1536 * KIB * KIB) == "1.5 GiB"
