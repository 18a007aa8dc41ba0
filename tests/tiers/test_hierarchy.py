"""Behaviour of the hierarchy: watermarks, cascades, promotion, strategies, live changes."""

from __future__ import annotations

import numpy as np
import pytest
from tiertop.tiers.events import EventKind, ListSink
from tiertop.tiers.hierarchy import Hierarchy, TierConfig
from tiertop.tiers.policies.oracle import FutureOracle
from tiertop.tiers.store import FaultKind

from tests.tiers.conftest import DictStore, payload_block

B = 64  # bytes per block in these tests


def three_tiers(sink: ListSink | None = None, **kwargs: object) -> Hierarchy:
    configs = [
        TierConfig("dram", 10 * B, high=0.8, low=0.5, store=DictStore("dram", 0, "dram")),
        TierConfig("remote", 10 * B, high=1.0, low=1.0, store=DictStore("remote", 0, "remote")),
        TierConfig("disk", 10 * B, high=1.0, low=1.0, store=DictStore("disk", 0, "disk")),
    ]
    return Hierarchy(configs, block_bytes=B, sink=sink, **kwargs)  # type: ignore[arg-type]


def occupancy(h: Hierarchy) -> list[int]:
    return [t.blocks for t in h.tiers]


def test_high_watermark_demotes_down_to_low_in_lru_order() -> None:
    h = three_tiers()
    for key in range(8):
        assert h.put(payload_block(key, B)) == 0
    assert occupancy(h) == [8, 0, 0]  # at the high watermark, not past it
    h.put(payload_block(8, B))  # 9 > 8: demote the least recently used down to 5
    assert occupancy(h) == [5, 4, 0]
    assert sorted(h.tier("remote").policy) == [0, 1, 2, 3]
    assert all(h.locate(k) == 0 for k in range(4, 9))


def test_get_returns_exact_bytes_from_any_tier_and_promotes_on_hit() -> None:
    h = three_tiers()
    for key in range(9):
        h.put(payload_block(key, B))
    assert h.locate(0) == 1
    found = h.get(0)
    assert found is not None
    block, served_by = found
    assert served_by == 1
    assert bytes(block.view()) == bytes(payload_block(0, B).view())
    assert h.locate(0) == 0  # promoted
    assert h.tier("remote").counters.promotions_out == 1


def test_last_tier_drops_and_counters_conserve() -> None:
    sink = ListSink()
    h = three_tiers(sink)
    for key in range(40):
        h.put(payload_block(key, B))
    assert h.drops > 0
    assert h.puts == len(h) + h.drops + h.deletes
    drops = sink.of_kind(EventKind.DROP)
    assert len(drops) == h.drops and all(e.tier == "disk" for e in drops)
    assert h.get(0) is None  # dropped long ago: a miss, never wrong bytes


def test_demotion_lands_in_next_tier_every_time() -> None:
    sink = ListSink()
    h = three_tiers(sink)
    for key in range(30):
        h.put(payload_block(key, B))
    order = [t.name for t in h.tiers]
    for event in sink.of_kind(EventKind.DEMOTE):
        assert event.to_tier is not None and event.tier is not None
        assert order.index(event.to_tier) == order.index(event.tier) + 1


def test_naive_spill_fills_top_then_next_and_never_promotes() -> None:
    h = three_tiers(strategy_name="naive-spill")
    for key in range(12):
        h.put(payload_block(key, B))
    assert occupancy(h) == [8, 4, 0]
    h.get(10)
    assert h.locate(10) == 1  # stays where it was put


def test_local_only_drops_its_victims() -> None:
    h = three_tiers(strategy_name="local-only")
    for key in range(12):
        h.put(payload_block(key, B))
    assert occupancy(h)[1:] == [0, 0]
    assert h.drops == 12 - h.tiers[0].blocks


def test_remote_only_and_disk_only_pick_tiers_by_kind() -> None:
    h = three_tiers(strategy_name="remote-only")
    h.put(payload_block(1, B))
    assert h.locate(1) == 1
    h.set_strategy("disk-only")
    h.put(payload_block(2, B))
    assert h.locate(2) == 2


def test_selective_write_sends_prefix_tail_one_tier_down() -> None:
    h = three_tiers(placement="selective-write:2")
    for position in range(4):
        h.put(payload_block(100 + position, B), position=position)
    assert [h.locate(100 + p) for p in range(4)] == [0, 0, 1, 1]


def test_session_prefetch_brings_successors_up() -> None:
    h = three_tiers(promotion="session-prefetch")
    parent = None
    for key in range(20, 29):
        h.put(payload_block(key, B), parent=parent)
        parent = key
    assert h.locate(20) == 1 and h.locate(21) == 1
    h.get(20)
    assert h.locate(20) == 0
    assert h.locate(21) == 0 and h.locate(22) == 0  # prefetched with it


def test_live_watermark_change_evicts_at_once() -> None:
    sink = ListSink()
    h = three_tiers(sink)
    for key in range(8):
        h.put(payload_block(key, B))
    old = h.set_watermarks("dram", 0.4, 0.2)
    assert old == (0.8, 0.5)
    assert h.tiers[0].blocks == 2
    assert any(e.kind is EventKind.CONFIG for e in sink.events)
    with pytest.raises(ValueError, match=r"high watermark 1.2 for tier dram is outside 0..1"):
        h.set_watermarks("dram", 1.2, 0.5)
    with pytest.raises(ValueError, match="unknown tier 'hbm'"):
        h.set_watermarks("hbm", 0.5, 0.4)
    assert (h.tiers[0].high, h.tiers[0].low) == (0.4, 0.2)  # refused changes change nothing


def test_capacity_shrink_evicts_to_fit_and_grow_allows_more() -> None:
    h = three_tiers()
    for key in range(8):
        h.put(payload_block(key, B))
    h.set_capacity("dram", 4 * B)
    assert h.tiers[0].used <= 4 * B * 0.8
    assert h.tiers[0].store is not None and h.tiers[0].store.capacity_bytes == 4 * B
    assert len(h) == 8  # nothing lost: moved down
    h.set_capacity("dram", 20 * B)
    for key in range(100, 110):
        h.put(payload_block(key, B))
    assert h.tiers[0].blocks == 12  # 2 left after the shrink, + 10, under 16 (high)


def test_policy_switch_starts_from_resident_blocks() -> None:
    h = three_tiers()
    for key in range(6):
        h.put(payload_block(key, B))
    h.set_eviction_policy("dram", "fifo")
    assert sorted(h.tiers[0].policy) == list(range(6))
    assert h.tiers[0].policy.name == "fifo"
    with pytest.raises(ValueError, match="unknown eviction policy 'lruu'; known: "):
        h.set_eviction_policy("dram", "lruu")
    assert h.tiers[0].policy.name == "fifo"


def test_clear_one_tier_and_all() -> None:
    h = three_tiers()
    for key in range(12):
        h.put(payload_block(key, B))
    removed = h.clear("remote")
    assert removed == 4 and h.tiers[1].blocks == 0
    assert h.tiers[1].store is not None and h.tiers[1].store.num_blocks == 0
    h.clear()
    assert len(h) == 0 and h.puts == h.drops + h.deletes


def test_down_tier_turns_gets_into_misses_and_puts_fall_through() -> None:
    sink = ListSink()
    h = three_tiers(sink)
    for key in range(12):
        h.put(payload_block(key, B))
    remote = h.tiers[1].store
    assert remote is not None
    remote.inject_fault(FaultKind.DOWN, duration_s=60)
    in_remote = [k for k in range(12) if h.locate(k) == 1]
    assert in_remote and h.get(in_remote[0]) is None  # a miss, no exception
    assert any(e.kind is EventKind.HEALTH for e in sink.events)
    for key in range(100, 110):
        h.put(payload_block(key, B))  # victims of dram skip the down tier
    assert all(h.locate(k) != 1 for k in range(100, 110))
    remote.clear_faults()
    found = h.get(in_remote[-1])
    assert found is not None
    assert bytes(found[0].view()) == bytes(payload_block(in_remote[-1], B).view())


def test_corrupt_block_is_a_miss_and_counted_as_drop() -> None:
    h = three_tiers()
    for key in range(9):
        h.put(payload_block(key, B))
    assert h.tiers[1].store is not None
    h.tiers[1].store.inject_fault(FaultKind.CORRUPT)
    assert h.get(0) is None
    assert 0 not in h and h.drops == 1
    assert h.puts == len(h) + h.drops + h.deletes


def test_accounting_mode_runs_same_policies_without_bytes() -> None:
    h = Hierarchy(
        [TierConfig("hbm", 4, high=1.0, low=1.0), TierConfig("dram", 8, high=1.0, low=1.0)],
        block_bytes=1,
    )
    keys = [1, 2, 3, 4, 5, 1, 2, 9, 1]
    hits = h.run_trace(keys)
    assert hits == 3
    assert h.tiers[0].kind == "accounting"
    assert "accounting only" in h.tiers[0].describe()


def test_textbook_single_tier_lru_with_belady_bound() -> None:
    rng = np.random.default_rng(7)
    keys = (rng.zipf(1.3, 5000) % 300).tolist()
    results = {}
    for policy in ("lru", "belady"):
        oracle = FutureOracle(keys) if policy == "belady" else None
        h = Hierarchy([TierConfig("only", 50, high=1.0, low=1.0, eviction=policy)],
                      block_bytes=1, oracle=oracle)
        results[policy] = h.run_trace(keys)
    # a bare reference LRU over the same stream
    from collections import OrderedDict
    ref: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for k in keys:
        if k in ref:
            ref.move_to_end(k)
            hits += 1
        else:
            if len(ref) == 50:
                ref.popitem(last=False)
            ref[k] = None
    assert results["lru"] == hits
    assert results["belady"] >= results["lru"]


def test_oversized_block_is_rejected_cleanly() -> None:
    h = three_tiers()
    assert h.put(payload_block(1, 11 * B)) is None
    assert h.rejected == 1 and len(h) == 0


def test_reput_of_a_block_stranded_in_a_down_tier_keeps_the_medium_consistent() -> None:
    """The old copy stays on the down medium: once the tier is back, that copy is deleted before
    anything new is put there, so the medium has the room ``used`` says it has."""
    sink = ListSink()
    stores = [DictStore("dram", 0, "dram"), DictStore("disk", 0, "disk")]
    h = Hierarchy([TierConfig(s.name, 4 * B, high=1.0, low=1.0, store=s) for s in stores],
                  block_bytes=B, sink=sink)
    for key in (1, 2, 3):
        assert h.put(payload_block(key, B)) == 0
    stores[0].inject_fault(FaultKind.DOWN)
    assert h.put(payload_block(1, B)) == 1  # unreachable in dram: put again, lands in disk
    dram = h.tiers[0]
    assert dram.pending_deletes == {1} and stores[0].used_bytes == dram.used + B
    dropped = sink.of_kind(EventKind.DROP)
    assert [(e.key, e.tier, e.nbytes) for e in dropped] == [(1, "dram", B)]
    assert h.puts == len(h) + h.drops + h.deletes
    stores[0].clear_faults()
    assert h.put(payload_block(4, B)) == 0
    assert h.put(payload_block(5, B)) == 0  # dram's last free block, by its count and the medium's
    assert dram.counters.errors == 1  # the unreachable copy; no put was refused
    assert not dram.pending_deletes and stores[0].used_bytes == dram.used == 4 * B
    assert sorted(stores[0].keys()) == sorted(dram.policy) == [2, 3, 4, 5]
    assert h.puts == len(h) + h.drops + h.deletes


def test_adopted_blocks_are_located_served_and_evicted_like_any_other() -> None:
    h = three_tiers()
    disk = h.tiers[2].store
    assert disk is not None
    for key in (7, 8):
        disk.put(payload_block(key, B))  # on the medium before the hierarchy knew them
    assert h.adopt_resident("disk") == 2
    assert h.locate(7) == 2 and len(h) == 2 and sorted(h.tiers[2].policy) == [7, 8]
    h.set_promotion("never")
    found = h.get(8)
    assert found is not None and bytes(found[0].view()) == bytes(payload_block(8, B).view())
    h.set_capacity("disk", B)  # room for one: the least recently used adopted block goes
    assert h.locate(7) is None and h.locate(8) == 2 and disk.num_blocks == 1
