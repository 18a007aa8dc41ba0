"""Block residency and its digests: a state model fed digests shows what one fed the batches
shows (the dashboard folds digests made in another process)."""

from __future__ import annotations

import pickle
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiertop.monitor.ingest_process import _Digester
from tiertop.monitor.protocol import (
    Heartbeat,
    Hello,
    ResidentSummary,
    Snapshot,
    TierInfo,
    TierStats,
)
from tiertop.monitor.residency import BlockDigest, BlockResidency
from tiertop.monitor.state import StateModel
from tiertop.monitor.vllm_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEvent,
    KvEventBatch,
)

TIERS = ("gpu", "dram", "disk", "nvme")  # disk and nvme are in no Hello: learned elsewhere
WIDE_S = 10_000.0  # a window holding the whole test stream


def kv(ts: float, *events: tuple[str, KvEvent]) -> KvEventBatch:
    return KvEventBatch(topic="kv-events", seq=0, ts=ts, events=[e for _, e in events],
                        tiers=[t for t, _ in events])


def put(tier: str, *hashes: int) -> tuple[str, KvEvent]:
    return tier, BlockStored(list(hashes), None, [], 0, None, tier, None)


def drop(tier: str, *hashes: int) -> tuple[str, KvEvent]:
    return tier, BlockRemoved(list(hashes), tier)


def clear() -> tuple[str, KvEvent]:
    return "*", AllBlocksCleared()


def hello(epoch: int, clock: float) -> Hello:
    return Hello(epoch=epoch, source="rt:1", clock=clock, mode="sim",
                 tiers=[TierInfo(name=n, kind=n, capacity_bytes=1 << 20) for n in TIERS[:2]])


# ------------------------------------------------------------------------- BlockResidency


def test_a_digest_ends_with_the_batch_that_clears() -> None:
    """Whoever folds the digest samples every tier it knows at a clear, tiers the residency
    never saw too; a tier first named after the clear must not share that digest."""
    residency = BlockResidency()
    run = [kv(1.0, put("dram", 1)), kv(1.1, clear()), kv(1.2, put("gpu", 5))]
    first = residency.fold(run)
    assert first is not None and first.batches == 2 and first.cleared and first.ts == 1.1
    assert first.resident == {"dram": 0}
    second = residency.fold(run[first.batches:])
    assert second is not None and second.batches == 1 and not second.cleared
    assert second.resident == {"gpu": 1} and second.samples == {"gpu": (1, 1)}


def test_fold_counts_stored_removed_and_resident_per_tier() -> None:
    residency = BlockResidency()
    digest = residency.fold([
        kv(1.0, put("dram", 1, 2, 3), put("disk", 7)),
        kv(2.0, drop("dram", 1, 99), put("dram", 2, 4)),
    ])
    assert digest == BlockDigest(ts=2.0, batches=2, events=4,
                                 stored={"dram": 5, "disk": 1}, removed={"dram": 2},
                                 resident={"dram": 3, "disk": 1},
                                 samples={"dram": (3 + 3, 2), "disk": (1, 1)})
    assert residency.blocks("dram") == 3 and residency.blocks("gpu") == 0
    assert residency.tracked("dram") and residency.tracked("gpu")
    assert residency.fold([]) is None


def test_a_run_checks_the_cap_after_each_batch_as_single_batches_do() -> None:
    # Over the cap in the middle of a batch but not at its end: still tracked.
    residency = BlockResidency(max_tracked_blocks=3)
    digest = residency.fold([kv(1.0, put("gpu", 1, 2, 3, 4), drop("gpu", 4))])
    assert digest is not None and digest.untracked == [] and residency.tracked("gpu")
    # Over it at the end of the first batch of a run: estimated from there on, so removing
    # hashes it never held still counts, and the count stops at 0.
    digest = residency.fold([kv(2.0, put("gpu", 5)), kv(3.0, drop("gpu", 100, 101))])
    assert digest is not None and digest.untracked == ["gpu"]
    assert digest.resident == {"gpu": 2} and not residency.tracked("gpu")
    digest = residency.fold([kv(4.0, drop("gpu", *range(10)))])
    assert digest is not None and digest.resident == {"gpu": 0}
    digest = residency.fold([kv(5.0, put("gpu", 1, 1))])
    assert digest is not None and digest.resident == {"gpu": 2}


def test_a_clear_empties_every_tier_it_knows_and_tracks_them_again() -> None:
    residency = BlockResidency(max_tracked_blocks=2)
    residency.fold([kv(1.0, put("gpu", 1, 2, 3), put("dram", 4))])
    assert not residency.tracked("gpu")
    digest = residency.fold([kv(2.0, put("nvme", 5), clear(), put("nvme", 6))])
    assert digest is not None and digest.cleared and digest.untracked == []
    assert digest.resident == {"nvme": 1, "gpu": 0, "dram": 0}
    assert next(iter(digest.resident)) == "nvme"  # tiers in the order events first named them
    assert residency.tracked("gpu") and residency.blocks("gpu") == 0


def test_load_takes_a_snapshot_and_reset_forgets_everything() -> None:
    residency = BlockResidency(max_tracked_blocks=3)
    residency.fold([kv(1.0, put("nvme", 9))])
    residency.load([
        ResidentSummary(tier="gpu", blocks=2, block_hashes=[1, 2]),
        ResidentSummary(tier="dram", blocks=5, block_hashes=[1, 2, 3, 4, 5]),  # over the cap
        ResidentSummary(tier="disk", blocks=40),  # no hashes
    ])
    assert [residency.tracked(t) for t in TIERS] == [True, False, False, True]
    assert [residency.blocks(t) for t in TIERS] == [2, 5, 40, 1]
    digest = residency.fold([kv(2.0, drop("gpu", 2, 3), drop("disk", 1))])
    assert digest is not None and digest.resident == {"gpu": 1, "disk": 39}
    residency.reset()
    assert all(residency.tracked(t) and residency.blocks(t) == 0 for t in TIERS)


def test_a_run_of_batches_without_events_still_says_how_many_there_were() -> None:
    digest = BlockResidency().fold([kv(1.0), kv(2.0)])
    assert digest == BlockDigest(ts=2.0, batches=2, events=0)


def test_a_digest_pickles_and_survives_msgpack() -> None:
    residency = BlockResidency(max_tracked_blocks=1)
    digest = residency.fold([kv(3.5, put("gpu", 1, 2), drop("dram", 3), clear(), put("disk", 4))])
    assert digest is not None and digest.cleared
    assert pickle.loads(pickle.dumps(digest)) == digest
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(digest), type=BlockDigest) == digest


# ------------------------------------------------------------------- digests in the model


def test_a_digest_counts_as_its_batches_and_weighs_residency_by_them() -> None:
    model = StateModel()
    model.fold(hello(1, 0.0))
    model.fold(kv(0.5, put("gpu", 1, 2, 3, 4)))
    residency = BlockResidency()
    residency.fold([kv(0.5, put("gpu", 1, 2, 3, 4))])
    digest = residency.fold([
        kv(0.6, put("gpu", 5)), kv(0.7, put("gpu", 6)), kv(0.9, put("gpu", 7), put("gpu", 8)),
    ])
    assert digest is not None
    model.fold(digest)
    assert model.messages["KvEventBatch"] == 4 and "BlockDigest" not in model.messages
    assert model.latest_time == 0.9 and model.last_clock == 0.9
    gpu = model.tier("gpu")
    assert gpu is not None and gpu.resident_blocks == 8
    window = model.tier_window("gpu", 5.0)
    assert window["resident_blocks"] == pytest.approx((4 + 5 + 6 + 8) / 4)  # one per batch
    assert window["blocks_stored_per_s"] == pytest.approx(8 / 0.9)
    assert model.service_window(5.0)["block_events_per_s"] == pytest.approx(5 / 0.9)


def test_a_snapshot_without_hashes_still_sets_the_counts() -> None:
    model = StateModel()
    model.fold(hello(1, 0.0))
    model.fold(Snapshot(epoch=1, clock=1.0, resident=[
        ResidentSummary(tier="gpu", blocks=12), ResidentSummary(tier="dram", blocks=3)]))
    assert [model.tier_view(t)["resident_blocks"] for t in ("gpu", "dram")] == [12, 3]
    # The process that holds the hashes says they are exact: the next digest tells the model.
    model.fold(BlockDigest(ts=2.0, batches=1, events=1, stored={"gpu": 1},
                           resident={"gpu": 13}))
    assert model.tier_view("gpu")["blocks_exact"] is True
    assert model.tier_view("gpu")["resident_blocks"] == 13


def test_a_cleared_digest_zeroes_tiers_only_the_model_knows() -> None:
    model = StateModel()
    model.fold(hello(1, 0.0))
    model.fold(Snapshot(epoch=1, clock=1.0, resident=[ResidentSummary(tier="disk", blocks=5)]))
    model.fold(BlockDigest(ts=2.0, batches=1, events=2, stored={"gpu": 1},
                           resident={"gpu": 1}, cleared=True))
    assert [model.tier_view(t)["resident_blocks"] for t in ("gpu", "dram", "disk")] == [1, 0, 0]
    assert model.tier_view("disk")["blocks_exact"] is True


# ------------------------------------------------------- batch by batch == digests, any stream

_hashes = st.lists(st.integers(0, 15), max_size=6)
_put = st.builds(lambda tier, hashes: put(tier, *hashes), st.sampled_from(TIERS), _hashes)
_drop = st.builds(lambda tier, hashes: drop(tier, *hashes), st.sampled_from(TIERS), _hashes)
# Clears are rare (one in ten), or no tier would ever grow past a cap.
_event = st.integers(0, 9).flatmap(
    lambda k: _put if k < 5 else _drop if k < 9 else st.just(clear()))
# A step: a batch of events (twice as likely), a restart (new epoch), or a snapshot of some
# tiers (with or without their hashes).
_step = st.one_of(
    st.lists(_event, max_size=6).map(lambda events: ("batch", events)),
    st.lists(_event, max_size=6).map(lambda events: ("batch", events)),
    st.just(("restart", None)),
    st.lists(st.tuples(st.sampled_from(TIERS), st.one_of(
        st.none(), st.lists(st.integers(0, 15), max_size=8, unique=True))), max_size=3).map(
        lambda tiers: ("snapshot", tiers)),
)


def _clock(step: int) -> float:
    """Clock of a step of the stream (rising 0.3 s a step from 1 s)."""
    return 1.0 + 0.3 * step


def _messages(steps: list[tuple[str, Any]]) -> list[Any]:
    """The steps as a stream."""
    epoch, out = 1, []
    for i, (kind, arg) in enumerate(steps):
        clock = _clock(i)
        if kind == "batch":
            out.append(kv(clock, *arg))
        elif kind == "restart":
            epoch += 1
            out.append(Heartbeat(epoch=epoch, clock=clock))
        else:
            out.append(Snapshot(epoch=epoch, clock=clock, resident=[
                ResidentSummary(tier=t, blocks=len(h) if h is not None else 3 * len(t),
                                block_hashes=h) for t, h in arg]))
    return out


def _visible(model: StateModel) -> dict[str, Any]:
    """What must not depend on how the batches came (rates: both windows must end alike, a
    digest's events being at its last batch's time)."""
    tiers = {}
    for name in model.tier_names():
        window = model.tier_window(name, WIDE_S)
        tiers[name] = (model.tier_view(name)["resident_blocks"], window["blocks_stored_per_s"],
                       window["blocks_removed_per_s"], window["resident_blocks"])
    return {"order": model.tier_names(), "tiers": tiers, "messages": model.messages,
            "restarts": model.restarts, "latest_time": model.latest_time,
            "events_per_s": model.service_window(WIDE_S)["block_events_per_s"]}


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_step, max_size=30), cuts=st.lists(st.integers(1, 4), min_size=30,
                                                          max_size=30),
       cap=st.sampled_from([3, 6, 1000]))
def test_digests_of_any_runs_show_what_the_batches_show(
    steps: list[tuple[str, Any]], cuts: list[int], cap: int
) -> None:
    """The ingest process's digester, handed the stream in bundles of any size, against the
    state model folding it message by message."""
    stream = _messages(steps)
    direct = StateModel(max_tracked_blocks=cap)
    digester = _Digester(max_tracked_blocks=cap)
    reader = StateModel(max_tracked_blocks=cap)
    start = [hello(1, 0.0), TierStats(epoch=1, clock=0.0, tick=0)]
    direct.fold_many(start)
    reader.fold_many(digester.digest(start))
    i = 0
    while i < len(stream):
        bundle = stream[i : i + cuts[i % len(cuts)]]
        direct.fold_many(bundle)
        reader.fold_many(digester.digest(bundle))
        i += len(bundle)
        # After every bundle the model knows which counts are exact.
        assert [direct.tier_view(n)["blocks_exact"] for n in direct.tier_names()] == [
            reader.tier_view(n)["blocks_exact"] for n in reader.tier_names()]
        # A tick right after what was folded ends both windows at the same time.
        tick = TierStats(epoch=direct.epoch or 1, clock=_clock(i - 1) + 0.1, tick=i)
        direct.fold(tick)
        reader.fold_many(digester.digest([tick]))
        assert _visible(reader) == _visible(direct)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_step, max_size=25), cap=st.sampled_from([3, 1000]))
def test_digests_of_single_messages_fold_to_the_same_snapshot(
    steps: list[tuple[str, Any]], cap: int
) -> None:
    direct = StateModel(max_tracked_blocks=cap)
    digester = _Digester(max_tracked_blocks=cap)
    reader = StateModel(max_tracked_blocks=cap)
    direct.fold(hello(1, 0.0))
    reader.fold_many(digester.digest([hello(1, 0.0)]))
    for message in _messages(steps):
        direct.fold(message)
        reader.fold_many(digester.digest([message]))
    mine, theirs = direct.snapshot(), reader.snapshot()
    for key in ("source", "service", "tiers", "events", "series"):
        assert mine[key] == theirs[key], key
