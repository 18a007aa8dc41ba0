"""The emulation wrapper: stated delays really applied, bytes and bookkeeping intact."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tiertop.tiers.block import Block
from tiertop.tiers.errors import BlockCorrupt, StoreFull, StoreUnavailable
from tiertop.tiers.health import Health
from tiertop.tiers.store import FaultKind, TierStore
from tiertop.tiers.stores.dram import DramStore
from tiertop.tiers.stores.emulated import EmulatedStore, format_latency, format_rate, wait

KIB = 1024
MIB = 1024 * KIB


def make_block(key: int, nbytes: int) -> Block:
    rng = np.random.default_rng(key)
    return Block.from_array(key, rng.integers(0, 256, nbytes, dtype=np.uint8))


def timed(fn: object, *args: object) -> tuple[object, float]:
    started = time.perf_counter()
    result = fn(*args)  # type: ignore[operator]
    return result, time.perf_counter() - started


def test_latency_and_bandwidth_delays_are_applied() -> None:
    latency, bandwidth = 2e-3, 1e9  # 2 ms per op; 1 MiB takes a further ~1.05 ms
    store = EmulatedStore(DramStore("dram", 4 * MIB), latency, bandwidth, label="emulated slow")
    block = make_block(1, 1 * MIB)
    expected = latency + MIB / bandwidth
    _, put_s = timed(store.put, block)
    got, get_s = timed(store.get, 1)
    _, miss_s = timed(store.get, 2)
    _, delete_s = timed(store.delete, 1)
    assert put_s >= expected
    assert get_s >= expected
    assert miss_s >= latency
    assert delete_s >= latency
    assert isinstance(got, Block) and got.verify()
    # the wrapper's own histogram is what the hierarchy sees, and it includes the delay
    assert store.stats.latency["put"].mean_s() >= expected


def test_sub_millisecond_latency_is_busy_waited() -> None:
    store = EmulatedStore(DramStore("dram", 64 * KIB), 150e-6, None)
    block = make_block(1, 4 * KIB)
    store.put(block)
    times = []
    for _ in range(20):
        _, took = timed(store.get, 1)
        times.append(took)
    assert min(times) >= 150e-6
    assert store.delay_s(4 * KIB) == pytest.approx(150e-6)


def test_wait_sleeps_long_delays_and_spins_short_ones() -> None:
    for seconds in (30e-6, 5e-3):
        started = time.perf_counter()
        wait(seconds)
        assert time.perf_counter() - started >= seconds
    wait(0)
    wait(-1)


def test_bytes_and_bookkeeping_stay_consistent_with_the_inner_store() -> None:
    inner = DramStore("dram", 64 * KIB)
    store = EmulatedStore(inner, 1e-6, 64e9, label="emulated CXL", name="rack pool")
    blocks = [make_block(key, 3 * KIB + key) for key in range(1, 6)]
    for block in blocks:
        store.put(block)
    store.put(blocks[0])  # replacing a block keeps both ledgers at one copy
    store.delete(3)
    assert store.keys() == [2, 4, 5, 1]
    assert sorted(store.keys()) == sorted(inner.keys())
    assert (
        store.used_bytes == inner.used_bytes == sum(b.header.nbytes for b in blocks if b.key != 3)
    )
    for block in blocks:
        got = store.get(block.key)
        if block.key == 3:
            assert got is None
        else:
            assert got is not None and bytes(got.view()) == bytes(block.view())
    out = np.empty(blocks[1].header.nbytes, dtype=np.uint8)
    got = store.get(2, out)
    assert got is not None and got.payload is out and bytes(out) == bytes(blocks[1].view())
    assert store.stats.puts == 6 and store.stats.hits == 5 and store.stats.misses == 1
    held = store.used_bytes
    assert store.clear() == held > 0
    assert inner.used_bytes == store.used_bytes == 0 and store.num_blocks == inner.num_blocks == 0


def test_capacity_is_the_inner_stores() -> None:
    inner = DramStore("dram", 8 * KIB, arena_bytes=16 * KIB)
    store = EmulatedStore(inner, 0.0, 100e9)
    assert store.capacity_bytes == 8 * KIB and store.max_capacity() == 16 * KIB
    store.set_capacity(12 * KIB)
    assert inner.capacity_bytes == store.capacity_bytes == 12 * KIB
    with pytest.raises(ValueError):
        store.set_capacity(32 * KIB)
    store.put(make_block(1, 12 * KIB))
    with pytest.raises(StoreFull):
        store.put(make_block(2, 1))
    assert store.used_bytes == inner.used_bytes == 12 * KIB


def test_inner_store_full_is_reported_by_the_wrapper_without_recording_the_block() -> None:
    inner = DramStore("dram", 8 * KIB)
    store = EmulatedStore(inner, 0.0, None)
    inner.inject_fault(FaultKind.FULL)
    with pytest.raises(StoreFull):
        store.put(make_block(1, 1 * KIB))
    assert 1 not in store and store.used_bytes == 0 and store.stats.errors == 1


def test_corruption_found_by_the_inner_store_removes_the_block_from_both() -> None:
    inner = DramStore("dram", 8 * KIB)
    store = EmulatedStore(inner, 0.0, None)
    store.put(make_block(1, 1 * KIB))
    inner.inject_fault(FaultKind.CORRUPT)
    with pytest.raises(BlockCorrupt):
        store.get(1)
    assert 1 not in store and 1 not in inner
    assert store.used_bytes == inner.used_bytes == 0
    assert store.stats.corrupt == 1


def test_inner_health_is_the_wrappers_and_is_forwarded() -> None:
    inner = DramStore("dram", 8 * KIB)
    store = EmulatedStore(inner, 0.0, None)
    seen: list[tuple[Health, Health]] = []

    def listener(_s: TierStore, previous: Health, current: Health, _reason: str) -> None:
        seen.append((previous, current))

    store.health_listener = listener
    inner.inject_fault(FaultKind.DOWN)
    assert store.health is Health.DOWN
    assert seen == [(Health.OK, Health.DOWN)]
    with pytest.raises(StoreUnavailable):
        store.put(make_block(1, 10))
    inner.clear_faults()
    assert store.health is Health.OK and seen[-1] == (Health.DOWN, Health.OK)


def test_wrapping_a_store_that_already_holds_blocks_adopts_them() -> None:
    inner = DramStore("dram", 8 * KIB)
    inner.put(make_block(1, 1 * KIB))
    store = EmulatedStore(inner, 0.0, None)
    assert 1 in store and store.used_bytes == 1 * KIB
    got = store.get(1)
    assert got is not None and got.verify()


def test_describe_states_the_emulated_figures() -> None:
    store = EmulatedStore(
        DramStore("dram", 64 * MIB), 0.3e-6, 64e9, label="emulated CXL", name="rack pool"
    )
    text = store.describe()
    assert text.startswith("rack pool: emulated CXL, +0.3 µs/op, 64 GB/s over dram: host DRAM")
    assert EmulatedStore.kind == "emulated"
    assert store.emulated and store.fallback_reason == "emulated CXL, +0.3 µs/op, 64 GB/s"
    assert format_latency(2e-6) == "+2.0 µs/op"
    assert format_latency(1.5e-3) == "+1.5 ms/op"
    assert format_rate(12.5e9) == "12.5 GB/s" and format_rate(800e6) == "800 MB/s"
    assert format_rate(None) == "unlimited bandwidth"


@pytest.mark.parametrize(("latency", "bandwidth"), [(-1e-6, 1e9), (0.0, 0.0), (0.0, -5.0)])
def test_nonsense_figures_are_refused(latency: float, bandwidth: float) -> None:
    with pytest.raises(ValueError):
        EmulatedStore(DramStore("dram", KIB), latency, bandwidth)
