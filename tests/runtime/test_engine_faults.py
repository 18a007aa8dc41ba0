"""Faults never give wrong tokens: a damaged block or a dead tier is a miss, and the engine
recomputes from there, producing exactly the no-cache output, in bounded time."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from tiertop.runtime.engine import ModelEngine
from tiertop.runtime.model import LoadedModel, load_model
from tiertop.tiers.health import Health
from tiertop.tiers.hierarchy import Hierarchy, TierConfig
from tiertop.tiers.store import TierStore
from tiertop.tiers.stores.disk import BlockLocation, DiskStore
from tiertop.tiers.stores.dram import DramStore
from tiertop.tiers.stores.remote import RemoteStore, spawn_memserver

BLOCK = 16
MiB = 1 << 20
NEW = 12


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model("tiny", seed=0)


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n)]


def one_tier(store: TierStore) -> Hierarchy:
    return Hierarchy([TierConfig(store.name, store.capacity_bytes, store=store)])


def no_cache_output(model: LoadedModel, context: list[int]) -> list[int]:
    engine = ModelEngine(model, one_tier(DramStore("empty", MiB)), store_blocks=False)
    result = engine.serve(context, NEW)
    assert result.restored_tokens == 0
    return list(result.output_ids)


def located(disk: DiskStore, key: int) -> BlockLocation:
    where = disk.locate(key)
    assert where is not None, f"block {key:#x} is not on disk"
    return where


def flip_byte(path: Path, offset: int, mask: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def test_flipped_byte_in_a_disk_block_is_a_miss(model: LoadedModel, tmp_path: Path) -> None:
    directory = tmp_path / "disk"
    disk = DiskStore("disk", 8 * MiB, directory)
    engine = ModelEngine(model, one_tier(disk), block_size=BLOCK)
    context = tokens(170, seed=1)  # 10 full blocks + 10 tokens
    expected = no_cache_output(model, context)
    assert engine.serve(context, NEW).output_ids == expected
    hashes = engine.hashes(context)
    assert all(key in disk for key in hashes)

    damaged = 4
    where = located(disk, hashes[damaged])
    flip_byte(where.path, where.payload_offset + 1000, 0x01)  # one bit of one K value of block 4

    result = engine.serve(context, NEW)
    assert result.prefix_tokens_restored == {"disk": damaged * BLOCK}
    assert result.recomputed_tokens == 170 - damaged * BLOCK
    assert result.output_ids == expected
    assert disk.stats.corrupt == 1
    assert hashes[damaged] in disk  # removed, then replaced by the recomputed copy
    # the recomputed block was put back; the next request restores the whole prefix again
    again = engine.serve(context, NEW)
    assert again.prefix_tokens_restored == {"disk": 10 * BLOCK}
    assert again.output_ids == expected
    restored, n = engine.logits_with_restore(context)
    assert n == 10 * BLOCK
    assert float((restored - engine.recompute_logits(context)).abs().max()) <= 1e-5
    disk.close()


def test_damaged_header_is_a_miss_too(model: LoadedModel, tmp_path: Path) -> None:
    directory = tmp_path / "disk"
    disk = DiskStore("disk", 8 * MiB, directory)
    engine = ModelEngine(model, one_tier(disk), block_size=BLOCK)
    context = tokens(100, seed=2)
    expected = no_cache_output(model, context)
    engine.serve(context, NEW)
    where = located(disk, engine.hashes(context)[0])
    flip_byte(where.path, where.offset + 20, 0xFF)  # inside the header
    result = engine.serve(context, NEW)
    assert result.restored_tokens == 0
    assert result.output_ids == expected
    disk.close()


@pytest.mark.timeout(60)
def test_memory_server_killed_requests_still_served(model: LoadedModel) -> None:
    server = spawn_memserver("16MiB")
    # a generous deadline while the server is healthy (this may run on a busy machine); the
    # deadline that bounds the failure is set just before the kill
    remote = RemoteStore(
        "remote",
        server.address,
        8 * MiB,
        timeout_s=10.0,
        retry_interval_s=30.0,
        max_retry_interval_s=30.0,
    )
    block_bytes = model.block_bytes(BLOCK)
    dram = DramStore("dram", 3 * block_bytes)
    hierarchy = Hierarchy(
        [
            TierConfig("dram", 3 * block_bytes, high=1.0, low=1.0, store=dram),
            TierConfig("remote", 8 * MiB, store=remote),
        ],
        promotion="never",
    )
    engine = ModelEngine(model, hierarchy, block_size=BLOCK)
    # 10 full context blocks; with the output, 11 are stored: the last 3 stay in DRAM, the
    # first 8 are demoted to the memory server
    context = tokens(170, seed=3)
    expected = no_cache_output(model, context)
    try:
        assert engine.serve(context, NEW).output_ids == expected
        warm = engine.serve(context, NEW)
        assert warm.prefix_tokens_restored == {"dram": 2 * BLOCK, "remote": 8 * BLOCK}
        assert warm.output_ids == expected

        deadline = 1.0
        remote.timeout_s = deadline
        server.kill()  # SIGKILL: no goodbye, the blocks die with it
        assert not server.alive

        started = time.perf_counter()
        hit = engine.serve(context, NEW)
        elapsed = time.perf_counter() - started
        assert hit.output_ids == expected
        # the prefix starts on the dead server: the first get failed (within one deadline), so
        # everything was recomputed
        assert hit.restored_tokens == 0 and hit.recomputed_tokens == 170
        assert hit.restore_s < deadline + 1.5  # at most one deadline (less if ZeroMQ saw the drop)
        assert elapsed < 15.0
        assert hierarchy.tier("remote").health is Health.DOWN

        # while the tier is down, requests fail over at once, without waiting for a deadline
        other = tokens(40, seed=4)  # 2 full blocks; 3 with the output
        result = engine.serve(other, NEW)
        assert result.output_ids == no_cache_output(model, other)
        assert result.restore_s < deadline / 2
        # new blocks still land in the DRAM tier and serve the next request
        assert dram.num_blocks == 3
        again = engine.serve(other, NEW)
        assert again.prefix_tokens_restored == {"dram": 2 * BLOCK, "remote": 0}
        assert again.output_ids == result.output_ids
    finally:
        server.kill()
        remote.close()


def test_injected_faults_are_misses(model: LoadedModel) -> None:
    dram = DramStore("dram", 4 * MiB)
    engine = ModelEngine(model, one_tier(dram), block_size=BLOCK)
    context = tokens(90, seed=5)
    expected = no_cache_output(model, context)
    engine.serve(context, NEW)

    dram.inject_fault("corrupt")
    corrupt = engine.serve(context, NEW)
    assert corrupt.restored_tokens == 0 and corrupt.output_ids == expected
    assert dram.stats.corrupt == 1  # the first block failed its check; the rest were not read
    assert corrupt.blocks_stored == 1  # the recomputed first block was put back
    dram.clear_faults()
    assert engine.serve(context, NEW).restored_tokens == 5 * BLOCK

    dram.inject_fault("down")
    down = engine.serve(context, NEW)
    assert down.restored_tokens == 0 and down.output_ids == expected
    # the hierarchy gives up blocks it cannot reach when they are put again, and no tier could
    # take the fresh copies
    assert down.blocks_rejected == 6  # 5 context blocks + 1 with output tokens
    dram.clear_faults()
    assert engine.serve(context, NEW).restored_tokens == 0
    assert engine.serve(context, NEW).restored_tokens == 5 * BLOCK


def test_block_lost_by_its_medium_is_a_miss(model: LoadedModel, tmp_path: Path) -> None:
    directory = tmp_path / "disk"
    disk = DiskStore("disk", 8 * MiB, directory)
    engine = ModelEngine(model, one_tier(disk), block_size=BLOCK)
    context = tokens(100, seed=6)
    expected = no_cache_output(model, context)
    engine.serve(context, NEW)
    where = located(disk, engine.hashes(context)[2])
    os.truncate(where.path, where.offset)  # the medium lost block 2 and everything after it
    result = engine.serve(context, NEW)
    assert result.restored_tokens == 2 * BLOCK
    assert result.output_ids == expected
    disk.close()


def test_requests_the_model_cannot_take_are_refused(model: LoadedModel) -> None:
    engine = ModelEngine(model, one_tier(DramStore("dram", MiB)))
    with pytest.raises(ValueError, match="at least one"):
        engine.serve([], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.serve([1, 2, 3], 0)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.serve([1, 1000], 4)
    with pytest.raises(ValueError, match="positions"):
        engine.serve([1] * 2040, 10)
    assert engine.serve([1] * 2040, 9).output_tokens == 9  # 2048 positions fed exactly


def test_queueing_delay_counts_in_ttft(model: LoadedModel) -> None:
    engine = ModelEngine(model, one_tier(DramStore("dram", MiB)))
    arrival = time.perf_counter() - 0.25
    result = engine.serve(tokens(20, seed=7), 3, arrival_time=arrival)
    assert 0.25 <= result.queue_s < 1.0
    assert result.ttft_s >= result.queue_s + result.prefill_s
    assert result.e2e_s >= result.ttft_s + result.decode_s - 1e-9
    assert result.tpot_s == pytest.approx(result.decode_s / 2)


def test_block_size_must_match_the_hierarchy(model: LoadedModel) -> None:
    hierarchy = Hierarchy([TierConfig("d", MiB, store=DramStore("d", MiB))], block_bytes=1234)
    with pytest.raises(ValueError, match="1234 B"):
        ModelEngine(model, hierarchy)
    with pytest.raises(ValueError, match="accounting-only"):
        ModelEngine(model, Hierarchy([TierConfig("sim", MiB)]))
