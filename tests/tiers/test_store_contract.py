"""Every store keeps the same contract, whatever its medium: the hierarchy relies on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tiertop.tiers.errors import BlockCorrupt, StoreFull, StoreUnavailable
from tiertop.tiers.health import Health
from tiertop.tiers.store import FaultKind, TierStore

from tests.tiers.conftest import payload_block

KIB = 1024
CAPACITY = 256 * KIB
BLOCK = 16 * KIB

StoreFactory = Callable[[], TierStore]


@pytest.fixture(scope="module")
def memserver() -> Iterator[str]:
    from tiertop.tiers.stores.remote import spawn_memserver

    server = spawn_memserver(capacity=4 * CAPACITY)
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture(params=["dram", "disk", "remote", "emulated", "numa"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TierStore]:
    kind = request.param
    made: TierStore
    if kind == "dram":
        from tiertop.tiers.stores.dram import DramStore

        made = DramStore("t", CAPACITY, slot_bytes=BLOCK)
    elif kind == "disk":
        from tiertop.tiers.stores.disk import DiskStore

        made = DiskStore("t", CAPACITY, tmp_path / "blocks")
    elif kind == "remote":
        from tiertop.tiers.stores.remote import RemoteStore

        address = request.getfixturevalue("memserver")
        made = RemoteStore("t", address, CAPACITY, timeout_s=2.0)
        made.clear()
    elif kind == "emulated":
        from tiertop.tiers.stores.dram import DramStore
        from tiertop.tiers.stores.emulated import EmulatedStore

        made = EmulatedStore(DramStore("inner", CAPACITY, slot_bytes=BLOCK),
                             latency_s=1e-6, bandwidth_bytes_per_s=50e9)
    else:
        from tiertop.tiers.stores.numa import NumaStore

        made = NumaStore("t", CAPACITY, slot_bytes=BLOCK)
    try:
        yield made
    finally:
        made.close()


def test_round_trip_exact_bytes_and_into_out(store: TierStore) -> None:
    blocks = [payload_block(k, BLOCK) for k in range(5)]
    for block in blocks:
        store.put(block)
    assert store.num_blocks == 5 and store.used_bytes == 5 * BLOCK
    for block in blocks:
        got = store.get(block.key)
        assert got is not None and bytes(got.view()) == bytes(block.view())
        assert got.header == block.header
    out = np.empty(BLOCK, dtype=np.uint8)
    got = store.get(3, out=out)
    assert got is not None and bytes(out) == bytes(blocks[3].view())
    assert store.get(999) is None
    assert store.stats.puts == 5 and store.stats.hits == 6 and store.stats.misses == 1
    assert store.stats.latency["get"].total == 7


def test_returned_bytes_do_not_change_when_the_slot_is_reused(store: TierStore) -> None:
    store.put(payload_block(1, BLOCK))
    got = store.get(1)
    assert got is not None
    before = bytes(got.view())
    store.delete(1)
    for key in range(2, 10):
        store.put(payload_block(key, BLOCK))
    assert bytes(got.view()) == before


def test_capacity_is_enforced_and_nothing_changes_on_refusal(store: TierStore) -> None:
    for key in range(CAPACITY // BLOCK):
        store.put(payload_block(key, BLOCK))
    used = store.used_bytes
    with pytest.raises(StoreFull):
        store.put(payload_block(1000, BLOCK))
    assert store.used_bytes == used and 1000 not in store
    got = store.get(0)
    assert got is not None and bytes(got.view()) == bytes(payload_block(0, BLOCK).view())


def test_delete_clear_and_shrink(store: TierStore) -> None:
    for key in range(4):
        store.put(payload_block(key, BLOCK))
    assert store.delete(2) and not store.delete(2)
    assert 2 not in store and store.get(2) is None
    with pytest.raises(ValueError):
        store.set_capacity(BLOCK)  # holds 3 blocks: the caller must evict first
    assert store.clear() == 3 * BLOCK
    assert store.num_blocks == 0 and store.used_bytes == 0
    store.set_capacity(BLOCK)
    assert store.capacity_bytes == BLOCK


def test_injected_faults_behave_the_same_everywhere(store: TierStore) -> None:
    changes: list[tuple[Health, Health]] = []
    store.health_listener = lambda _s, old, new, _r: changes.append((old, new))
    store.put(payload_block(1, BLOCK))
    store.inject_fault(FaultKind.DOWN, duration_s=60)
    assert store.health is Health.DOWN
    with pytest.raises(StoreUnavailable):
        store.get(1)
    with pytest.raises(StoreUnavailable):
        store.put(payload_block(2, BLOCK))
    store.clear_faults()
    assert store.health is Health.OK and changes == [(Health.OK, Health.DOWN),
                                                     (Health.DOWN, Health.OK)]
    store.inject_fault(FaultKind.FULL)
    with pytest.raises(StoreFull):
        store.put(payload_block(2, BLOCK))
    assert store.health is Health.DEGRADED
    store.clear_faults()
    store.inject_fault(FaultKind.CORRUPT)
    with pytest.raises(BlockCorrupt):
        store.get(1)
    assert 1 not in store and store.stats.corrupt == 1
    store.clear_faults()
    store.inject_fault(FaultKind.DOWN, duration_s=0.01)
    import time

    time.sleep(0.02)
    assert store.health is Health.OK  # expired by itself


def test_describe_says_what_it_is(store: TierStore) -> None:
    text = store.describe()
    assert (text and store.kind.split("-")[0] in text.lower()) or "emulated" in text.lower()
