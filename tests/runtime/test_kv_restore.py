"""Restored prefix KV gives the logits of full recomputation, from every kind of tier.

Tiny model in float32. For each tier (host DRAM arena, disk files, a real memory-server process on
loopback with codecs raw/zstd/lz4) the logits of the last position with the prefix restored must
equal full recomputation within 1e-5. The lossy fp16 codec states its error: nonzero, and below
``FP16_LOGITS_BOUND``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tiertop.runtime.engine import ModelEngine
from tiertop.runtime.kv_blocks import (
    RestoreBuffer,
    blocks_to_kv,
    cache_from_blocks,
    cache_from_kv,
    kv_to_blocks,
)
from tiertop.runtime.model import LoadedModel, load_model
from tiertop.tiers.block import prefix_hashes
from tiertop.tiers.hierarchy import Hierarchy, TierConfig
from tiertop.tiers.store import TierStore
from tiertop.tiers.stores.disk import DiskStore
from tiertop.tiers.stores.dram import DramStore
from tiertop.tiers.stores.remote import MemServerProcess, RemoteStore, spawn_memserver

BLOCK = 16
ATOL = 1e-5
#: Largest |logit| error allowed when the prefix KV went through float16 (measured 1.7e-4 on the
#: tiny model with logits up to ~3: fp16 keeps 11 significant bits, a relative error of at most
#: 2**-11 per K/V value).
FP16_LOGITS_BOUND = 2e-3
MiB = 1 << 20


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model("tiny", seed=0)


@pytest.fixture(scope="module")
def memserver() -> Iterator[MemServerProcess]:
    server = spawn_memserver("32MiB")
    try:
        yield server
    finally:
        server.stop()


def tokens(n: int, seed: int = 0, vocab: int = 1000) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(n)]


def one_tier(store: TierStore) -> Hierarchy:
    return Hierarchy([TierConfig(store.name, store.capacity_bytes, store=store)])


def make_store(kind: str, tmp_path: Path, memserver: MemServerProcess) -> TierStore:
    if kind == "dram":
        return DramStore("dram", 8 * MiB)
    if kind == "disk":
        return DiskStore("disk", 8 * MiB, tmp_path / "blocks")
    codec = kind.removeprefix("remote-")
    return RemoteStore("remote", memserver.address, 8 * MiB, codec=codec, timeout_s=5.0)


def check_restore_matches_recompute(model: LoadedModel, store: TierStore) -> float:
    """Serve a context (storing its blocks), then compare restored against recomputed logits;
    returns the largest logits difference."""
    engine = ModelEngine(model, one_tier(store), block_size=BLOCK)
    context = tokens(150, seed=1)  # 9 full blocks + 6 tokens
    first = engine.serve(context, max_new_tokens=4)
    assert first.restored_tokens == 0 and first.recomputed_tokens == 150
    assert first.blocks_stored == 9  # 153 tokens of KV: 9 full blocks
    assert store.num_blocks == 9
    restored, n = engine.logits_with_restore(context)
    assert n == 9 * BLOCK
    recomputed = engine.recompute_logits(context)
    # the restored prefix is really used: it serves the next request from this tier
    again = engine.serve(context, max_new_tokens=4)
    assert again.prefix_tokens_restored == {store.name: 9 * BLOCK}
    assert again.recomputed_tokens == 150 - 9 * BLOCK
    assert again.bytes_fetched[store.name] == 9 * model.block_bytes(BLOCK)
    assert again.fetch_latency_s[store.name] > 0
    assert again.output_ids == first.output_ids
    return float((restored - recomputed).abs().max())


@pytest.mark.parametrize("kind", ["dram", "disk", "remote-raw", "remote-zstd", "remote-lz4"])
def test_restored_logits_equal_recompute(
    kind: str, model: LoadedModel, tmp_path: Path, memserver: MemServerProcess
) -> None:
    store = make_store(kind, tmp_path, memserver)
    try:
        error = check_restore_matches_recompute(model, store)
    finally:
        store.clear()
        store.close()
    assert error <= ATOL, f"{kind}: max |logits difference| {error:.3g}"


def test_fp16_codec_error_is_stated_and_bounded(
    model: LoadedModel, memserver: MemServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RemoteStore("remote", memserver.address, 8 * MiB, codec="fp16", timeout_s=5.0)
    engine = ModelEngine(model, one_tier(store), block_size=BLOCK)
    context = tokens(150, seed=2)
    try:
        engine.serve(context, max_new_tokens=1)
        restored, n = engine.logits_with_restore(context)
    finally:
        store.clear()
        store.close()
    recomputed = engine.recompute_logits(context)
    assert n == 9 * BLOCK
    error = float((restored - recomputed).abs().max())
    scale = float(recomputed.abs().max())
    with capsys.disabled():
        print(
            f"\n[fp16 codec] max |logits error| {error:.3g} (logits up to {scale:.3g}), "
            f"bound {FP16_LOGITS_BOUND}"
        )
    assert 0.0 < error < FP16_LOGITS_BOUND


def test_prefix_from_two_tiers(model: LoadedModel, tmp_path: Path) -> None:
    """A small DRAM tier over disk: the oldest blocks are demoted to disk; a restore takes the
    prefix from both tiers and still equals recomputation."""
    block_bytes = model.block_bytes(BLOCK)
    dram = DramStore("dram", 4 * block_bytes)
    disk = DiskStore("disk", 64 * block_bytes, tmp_path / "disk")
    hierarchy = Hierarchy(
        [
            TierConfig("dram", 4 * block_bytes, high=1.0, low=1.0, store=dram),
            TierConfig("disk", 64 * block_bytes, store=disk),
        ],
        promotion="never",
    )
    engine = ModelEngine(model, hierarchy, block_size=BLOCK)
    context = tokens(200, seed=3)  # 12 full blocks
    engine.serve(context, max_new_tokens=1)
    assert dram.num_blocks == 4 and disk.num_blocks == 8
    result = engine.serve(context, max_new_tokens=3)
    assert result.prefix_tokens_restored == {"dram": 4 * BLOCK, "disk": 8 * BLOCK}
    assert result.bytes_fetched["disk"] == 8 * block_bytes
    restored, n = engine.logits_with_restore(context)
    assert n == 12 * BLOCK
    assert float((restored - engine.recompute_logits(context)).abs().max()) <= ATOL
    disk.close()


def test_multi_turn_conversation_reuses_output_blocks(model: LoadedModel) -> None:
    dram = DramStore("dram", 8 * MiB)
    engine = ModelEngine(model, one_tier(dram), block_size=BLOCK)
    baseline = ModelEngine(model, one_tier(DramStore("none", 8 * MiB)), store_blocks=False)
    turn1 = tokens(40, seed=4)
    r1 = engine.serve(turn1, max_new_tokens=30)
    turn2 = r1.continuation(turn1, tokens(10, seed=5))
    assert len(turn2) == 80
    r2 = engine.serve(turn2, max_new_tokens=5)
    # KV of 40 + 29 tokens was held after turn 1: 4 full blocks, covering context and output
    assert r2.restored_tokens == 4 * BLOCK
    assert r2.output_ids == baseline.serve(turn2, max_new_tokens=5).output_ids


def test_tiers_cleared_between_decode_steps_leave_the_request_whole(model: LoadedModel) -> None:
    """The runtime applies control commands between decode steps: a clear of every tier there
    neither changes the tokens generated nor loses the request's own blocks."""
    dram = DramStore("dram", 8 * MiB)
    hierarchy = one_tier(dram)
    engine = ModelEngine(model, hierarchy, block_size=BLOCK)
    baseline = ModelEngine(model, one_tier(DramStore("none", 8 * MiB)), store_blocks=False)
    context = tokens(40, seed=6)
    engine.serve(context, max_new_tokens=1)  # its prefix is now in dram
    steps: list[int] = []

    def clear_between_steps() -> None:
        steps.append(len(dram))
        hierarchy.clear()

    result = engine.serve(context, max_new_tokens=6, between_steps=clear_between_steps)
    # after the prefill's token, before each of the other five: the prefix was there, then not
    assert steps[0] > 0 and steps[1:] == [0, 0, 0, 0]
    assert result.restored_tokens == 2 * BLOCK  # restored before the first clear
    assert result.output_ids == baseline.serve(context, max_new_tokens=6).output_ids
    assert len(dram) == result.blocks_stored > 0  # stored after the last clear


def test_reused_restore_buffers_never_leak_between_requests(model: LoadedModel) -> None:
    """Long, short, then long again: each restore (through the engine's reused buffers) still
    equals recomputation, and a request's output does not depend on what was restored before."""
    engine = ModelEngine(model, one_tier(DramStore("dram", 8 * MiB)), block_size=BLOCK)
    long_ctx, short_ctx = tokens(300, seed=8), tokens(40, seed=9)
    first = engine.serve(long_ctx, max_new_tokens=3)
    engine.serve(short_ctx, max_new_tokens=3)
    for context, blocks in ((long_ctx, 18), (short_ctx, 2), (long_ctx, 18)):
        restored, n = engine.logits_with_restore(context)
        assert n == blocks * BLOCK
        assert float((restored - engine.recompute_logits(context)).abs().max()) <= ATOL
    assert engine.serve(long_ctx, max_new_tokens=3).output_ids == first.output_ids


def test_cache_block_round_trip_is_exact(model: LoadedModel) -> None:
    info = model.info
    ids = torch.tensor([tokens(70, seed=6)])
    with torch.inference_mode():
        cache = model.model(input_ids=ids, use_cache=True).past_key_values
        hashes = prefix_hashes(ids[0].tolist(), BLOCK)  # 4 full blocks
        blocks = kv_to_blocks(cache, info, hashes[1:], 1, BLOCK)
        assert [b.key for b in blocks] == hashes[1:]
        for i, block in enumerate(blocks, start=1):
            assert block.header.shape == (2, 2, 4, BLOCK, 16)
            assert block.header.dtype == "float32"
            assert block.verify()
            array = block.to_array()
            layer = cache.layers[1]
            expect_v = layer.values[0, :, i * BLOCK : (i + 1) * BLOCK].numpy()
            assert np.array_equal(array[1, 1], expect_v)
        all_blocks = kv_to_blocks(cache, info, hashes, 0, BLOCK)
        rebuilt = cache_from_blocks(all_blocks, info)
    assert rebuilt.get_seq_length() == 4 * BLOCK
    for old, new in zip(cache.layers, rebuilt.layers, strict=True):
        assert torch.equal(old.keys[:, :, : 4 * BLOCK], new.keys)
        assert torch.equal(old.values[:, :, : 4 * BLOCK], new.values)


def test_rebuilt_cache_continues_the_sequence(model: LoadedModel) -> None:
    """A forward pass over the remaining tokens with a rebuilt cache sees the right positions."""
    context = tokens(64 + 7, seed=7)
    with torch.inference_mode():
        cache = model.model(input_ids=torch.tensor([context[:64]]), use_cache=True).past_key_values
        blocks = kv_to_blocks(cache, model.info, prefix_hashes(context[:64], BLOCK), 0, BLOCK)
        rebuilt = cache_from_blocks(blocks, model.info)
        tail = model.model(input_ids=torch.tensor([context[64:]]), past_key_values=rebuilt)
        full = model.model(input_ids=torch.tensor([context]))
    assert rebuilt.get_seq_length() == 71
    assert torch.allclose(tail.logits[0], full.logits[0, 64:], atol=ATOL)


def test_restore_buffer_is_filled_in_place_and_seen_without_copy(model: LoadedModel) -> None:
    buffer = RestoreBuffer(model.info, BLOCK)
    buffer.reserve(3)
    slot = buffer.slot(1)
    assert slot.flags.c_contiguous and slot.flags.writeable
    assert slot.shape == model.block_shape(BLOCK) and slot.dtype == np.float32
    view = buffer.tensor(3)
    assert view.data_ptr() + model.block_bytes(BLOCK) == torch.from_numpy(slot).data_ptr()
    slot[...] = 2.5
    assert float(view[1].min()) == 2.5
    buffer.reserve(2)  # never shrinks
    assert buffer.capacity_blocks == 3
    with pytest.raises(IndexError):
        buffer.slot(3)


def test_blocks_of_another_shape_are_refused(model: LoadedModel) -> None:
    wrong = torch.zeros((2, 3, 2, 4, BLOCK, 16))
    with pytest.raises(ValueError, match="do not fit"):
        blocks_to_kv(wrong, model.info)
    with pytest.raises(ValueError, match="float64"):
        blocks_to_kv(torch.zeros((1, 2, 2, 4, BLOCK, 16), dtype=torch.float64), model.info)
    kv = blocks_to_kv(torch.zeros((2, 2, 2, 4, BLOCK, 16)), model.info)
    assert [k.shape for k, _ in kv] == [(1, 4, 2 * BLOCK, 16)] * 2
    assert cache_from_kv(kv).get_seq_length() == 2 * BLOCK
    with pytest.raises(ValueError, match="room"):
        blocks_to_kv(torch.zeros((2, 2, 2, 4, BLOCK, 16)), model.info, out=torch.zeros(10))


def test_staging_copy_lands_in_out(model: LoadedModel) -> None:
    stacked = torch.randn((3, 2, 2, 4, BLOCK, 16))
    out = torch.full((2 * 2 * 4 * 3 * BLOCK * 16 + 5,), float("nan"))
    kv = blocks_to_kv(stacked, model.info, out=out)
    fresh = blocks_to_kv(stacked, model.info)
    for (k, v), (fk, fv) in zip(kv, fresh, strict=True):
        assert k.is_contiguous() and torch.equal(k, fk) and torch.equal(v, fv)
        assert out.data_ptr() <= k.data_ptr() < out.data_ptr() + out.numel() * 4
    # block 1 of layer 0's V is tokens 16..31 of the restored V
    assert torch.equal(kv[0][1][0, :, BLOCK : 2 * BLOCK], stacked[1, 0, 1])
