"""The state model, fed hand-built messages (no sockets)."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from tiertop.monitor.protocol import (
    ControlChange,
    FaultEvent,
    HealthChange,
    Heartbeat,
    Hello,
    RequestDone,
    ResidentSummary,
    Snapshot,
    TierInfo,
    TierMove,
    TierMoves,
    TierSample,
    TierStats,
)
from tiertop.monitor.state import (
    RECOMPUTE,
    SERVICE_METRICS,
    TIER_METRICS,
    StateModel,
    percentiles_of_rows,
    request_bucket,
)
from tiertop.monitor.subscriber import SubscriberCounters
from tiertop.monitor.vllm_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEvent,
    KvEventBatch,
)
from tiertop.tiers.stats import N_BUCKETS, bucket_mid_s, percentile_of_counts

TIERS = ("dram", "disk")


def hello(epoch: int = 1, clock: float = 0.0, mode: str = "sim") -> Hello:
    return Hello(
        epoch=epoch,
        source="rt:1",
        clock=clock,
        mode=mode,
        tiers=[
            TierInfo(name="dram", kind="dram", capacity_bytes=1000),
            TierInfo(name="disk", kind="disk", capacity_bytes=10_000, emulated=True),
        ],
    )


def sample(name: str, i: int, **fields: Any) -> TierSample:
    """Tier ``name`` at tick ``i`` with a steady workload: per tick 9 hits, 1 miss, 2 evictions,
    1 promotion, 100 bytes in (unless fields say otherwise)."""
    values: dict[str, Any] = {
        "hits": 9 * i,
        "misses": i,
        "evictions": 2 * i,
        "promotions": i,
        "bytes_in": 100 * i,
        "used_bytes": 10 * i,
        "capacity_bytes": 1000,
        "eviction_policy": "lru",
    }
    values.update(fields)
    return TierSample(name=name, **values)


def tick(
    i: int,
    clock: float | None = None,
    epoch: int = 1,
    samples: list[TierSample] | None = None,
    **fields: Any,
) -> TierStats:
    return TierStats(
        epoch=epoch,
        source="rt:1",
        tick=i,
        seq=i,
        clock=float(i) if clock is None else clock,
        interval_s=1.0,
        tiers=samples if samples is not None else [sample(n, i) for n in TIERS],
        **fields,
    )


def fed(messages: list[Any], **kwargs: Any) -> StateModel:
    model = StateModel(**kwargs)
    model.fold_many(messages)
    return model


def hist(**counts: int) -> list[int]:
    h = [0] * N_BUCKETS
    for key, n in counts.items():
        h[int(key[1:])] = n
    return h


# ------------------------------------------------------------------------------ rates, ratios


def test_rates_and_hit_ratio_come_from_counter_differences() -> None:
    model = fed([hello(), *(tick(i) for i in range(11))])
    w = model.tier_window("dram", 5.0)
    assert w["hit_ratio"] == pytest.approx(0.9)
    assert w["hits_per_s"] == pytest.approx(9.0)
    assert w["evictions_per_s"] == pytest.approx(2.0)
    assert w["promotions_per_s"] == pytest.approx(1.0)
    assert w["demotions_per_s"] == 0.0
    assert w["bytes_in_per_s"] == pytest.approx(100.0)
    assert w["used_bytes"] == pytest.approx(np.mean([60, 70, 80, 90, 100]))
    times, rates = model.series("dram", "evictions_per_s", 60.0)
    assert times.tolist() == [float(i) for i in range(11)]
    assert math.isnan(rates[0])  # the first tick has no baseline
    assert rates[1:].tolist() == [2.0] * 10
    _t_occ, occ = model.series("dram", "occupancy", 60.0)
    assert occ.tolist() == pytest.approx([i / 100 for i in range(11)])
    assert model.tier_names() == ["dram", "disk"]
    tier = model.tier("dram")
    assert tier is not None and tier.kind == "dram" and tier.used_bytes == 100


def test_rates_use_the_message_clock_not_the_tick_count() -> None:
    # Ticks every 0.25 s of message clock: per-second rates are 4x the per-tick deltas.
    model = fed([hello(), *(tick(i, clock=100.0 + 0.25 * i) for i in range(20))])
    assert model.tier_window("dram", 2.0)["evictions_per_s"] == pytest.approx(8.0)
    assert model.resolution_for(60.0) == 1.0
    _times, values = model.series("dram", "evictions_per_s", 3.0)
    assert values[-1] == pytest.approx(8.0)


def test_a_lost_tick_loses_resolution_not_totals() -> None:
    evictions = [0, 3, 4, 10, 11, 30, 31, 33, 40, 41, 50]
    messages = [
        tick(i, samples=[sample("dram", i, evictions=evictions[i])]) for i in range(11)
    ]
    full = fed([hello(), *messages])
    lossy = fed([hello(), *(m for m in messages if m.tick != 5)])
    for model in (full, lossy):
        assert model.tier_window("dram", 60.0)["evictions_per_s"] == pytest.approx(5.0)
    # The tick after the lost one spans both intervals: (31 - 11) / 2 s.
    _t_full, v_full = full.series("dram", "evictions_per_s", 60.0)
    t_lossy, v_lossy = lossy.series("dram", "evictions_per_s", 60.0)
    assert 5.0 not in t_lossy.tolist()
    assert v_full[5] == 19.0 and v_full[6] == 1.0
    assert v_lossy[t_lossy.tolist().index(6.0)] == pytest.approx(10.0)
    assert full.tier_view("dram")["counters"]["evictions"] == 50
    assert lossy.tier_view("dram")["counters"]["evictions"] == 50


def test_a_duplicate_tick_is_folded_once() -> None:
    messages = [hello(), *(tick(i) for i in range(5))]
    once = fed(messages)
    twice = fed([*messages, tick(4), tick(3)])
    assert twice.tier_window("dram", 10.0) == once.tier_window("dram", 10.0)
    assert twice.series("dram", "hits_per_s", 10.0)[1].tolist()[1:] == [9.0] * 4


def test_counters_going_backwards_reset_baselines_as_a_restart() -> None:
    before = [tick(i) for i in range(6)]
    # Same epoch, counters start again from zero (a runtime that keeps its epoch).
    after = [tick(j, clock=6.0 + j) for j in range(5)]
    model = fed([hello(), *before, *after])
    assert model.restarts == 1
    assert [e.kind for e in model.events(kinds="restart")] == ["restart"]
    _, rates = model.series("dram", "evictions_per_s", 60.0)
    finite = rates[~np.isnan(rates)]
    assert (finite >= 0).all() and finite.tolist() == [2.0] * len(finite)
    assert math.isnan(rates[6])  # the restart tick is the new baseline
    assert model.tier_window("dram", 3.0)["evictions_per_s"] == pytest.approx(2.0)


def test_a_new_epoch_resets_baselines_and_keeps_the_timeline_going() -> None:
    # A simulator restarts: new epoch, counters and its virtual clock start again at 0.
    first = [hello(epoch=1), *(tick(i, epoch=1) for i in range(10))]
    second = [hello(epoch=2), *(tick(j, epoch=2) for j in range(6))]
    model = fed([*first, *second])
    assert model.restarts == 1
    assert model.epoch == 2
    times, rates = model.series("dram", "evictions_per_s", None)
    assert np.all(np.diff(times) > 0)  # the timeline continues after the restart
    assert times[-1] == pytest.approx(9.0 + 5.0)
    finite = rates[~np.isnan(rates)]
    assert finite.tolist() == [2.0] * len(finite)
    assert model.tier_window("dram", 3.0)["hit_ratio"] == pytest.approx(0.9)


def test_model_mode_wall_clock_restart_keeps_clock_times() -> None:
    base = 1.7e9
    model = fed(
        [
            hello(epoch=1, clock=base, mode="model"),
            *(tick(i, clock=base + i, epoch=1) for i in range(5)),
            hello(epoch=2, clock=base + 10, mode="model"),
            *(tick(j, clock=base + 10 + j, epoch=2) for j in range(5)),
        ]
    )
    times, _ = model.series("dram", "hits_per_s", None)
    assert times[-1] == base + 14  # no offset: the wall clock moved on by itself


# ------------------------------------------------------------------------------------ latency


def test_latency_percentiles_come_from_the_summed_deltas_of_the_window() -> None:
    deltas = [hist(b10=90, b20=10), hist(b10=50), hist(b12=10, b30=1), hist(b11=5)]
    messages = [hello()]
    for i, h in enumerate(deltas):
        messages.append(
            tick(i, samples=[sample("dram", i, latency={"get": h},
                                    latency_sum_ns={"get": 1000 * sum(h)})])
        )
    model = fed(messages)
    summed = [sum(col) for col in zip(*deltas, strict=True)]
    w = model.tier_window("dram", 60.0)
    assert w["get_p50_s"] == percentile_of_counts(summed, 0.5)
    assert w["get_p99_s"] == percentile_of_counts(summed, 0.99)
    assert w["get_mean_s"] == pytest.approx(1e-6)
    # A window of the last two ticks only sums their deltas.
    last_two = [a + b for a, b in zip(deltas[2], deltas[3], strict=True)]
    w2 = model.tier_window("dram", 2.0)
    assert w2["get_p99_s"] == percentile_of_counts(last_two, 0.99) == bucket_mid_s(30)
    assert w2["get_p50_s"] == percentile_of_counts(last_two, 0.5)
    _, p99 = model.series("dram", "get_p99_s", 60.0)
    assert p99.tolist() == [percentile_of_counts(h, 0.99) for h in deltas]
    # A tier without samples has no percentile.
    assert model.tier_window("disk", 60.0)["get_p50_s"] is None


def test_percentiles_of_rows_read_like_percentile_of_counts() -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 5, size=(50, N_BUCKETS)) * (rng.random((50, N_BUCKETS)) < 0.2)
    mids = np.array([bucket_mid_s(i) for i in range(N_BUCKETS)])
    for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0):
        got = percentiles_of_rows(rows.astype(np.float64), q, mids)
        for row, value in zip(rows, got, strict=True):
            expected = percentile_of_counts(row.tolist(), q)
            if row.sum() == 0:
                assert math.isnan(value)
            else:
                assert value == expected


def test_a_histogram_of_another_length_is_folded_not_refused() -> None:
    long = [0] * (N_BUCKETS + 4)
    long[3] = 1
    long[-1] = 2
    model = fed([tick(0, samples=[sample("dram", 0, latency={"get": long})])])
    assert model.tier_window("dram", 5.0)["get_p99_s"] == bucket_mid_s(N_BUCKETS - 1)


# ----------------------------------------------------------------------------------- service


def request(i: int, clock: float, **fields: Any) -> RequestDone:
    values: dict[str, Any] = {
        "request_id": f"r{i}",
        "conversation_id": f"c{i % 3}",
        "ttft_s": 0.05,
        "tpot_s": 0.004,
        "e2e_s": 0.5,
        "prompt_tokens": 100,
        "output_tokens": 25,
        "prefix_tokens": {"dram": 60, "disk": 20},
        "recomputed_tokens": 20,
    }
    values.update(fields)
    return RequestDone(epoch=1, seq=i, clock=clock, **values)


def test_service_figures_come_from_request_done_weighted_by_sample_rate() -> None:
    messages: list[Any] = [hello()]
    for i in range(40):  # 4 per second for 10 s, each standing for 2
        messages.append(
            request(i, clock=0.25 * (i + 1), sample_rate=0.5, ttft_s=0.01 * (1 + i % 10))
        )
    for i in range(11):
        messages.append(
            tick(i, queue_depth=i, prefix_query_tokens=100 * i, prefix_hit_tokens=80 * i)
        )
    model = fed(messages)
    w = model.service_window(10.0)
    assert w["request_rate"] == pytest.approx(8.0)
    assert w["tokens_per_s"] == pytest.approx(200.0)
    assert w["prompt_tokens_per_s"] == pytest.approx(800.0)
    ttfts = sorted(0.01 * (1 + i % 10) for i in range(40))
    # The first bucket that holds the 50th percentile's rank: the 20th of 40 values.
    assert w["ttft_p50_s"] == pytest.approx(ttfts[19], rel=0.1)
    assert w["ttft_p99_s"] == pytest.approx(0.1, rel=0.1)
    assert w["tpot_p50_s"] == pytest.approx(0.004, rel=0.1)
    assert w["ttft_mean_s"] == pytest.approx(float(np.mean(ttfts)))
    assert w["restored_share"] == pytest.approx(0.8)
    assert w["recomputed_share"] == pytest.approx(0.2)
    assert w["restored_share_by_tier"] == pytest.approx({"dram": 0.6, "disk": 0.2})
    assert w["prefix_hit_ratio"] == pytest.approx(0.8)
    assert w["queue_depth"] == pytest.approx(np.mean(range(11)))  # ticks in the window
    assert w["requests"] == pytest.approx(80.0)
    assert model.tier_window("dram", 10.0)["restored_tokens_per_s"] == pytest.approx(480.0)
    assert model.service_view()["latest"]["queue_depth"] == 10
    _, rate = model.series(None, "request_rate", 10.0)
    assert rate.tolist() == pytest.approx([8.0] * 10)


def test_failed_requests_count_but_carry_no_latency() -> None:
    model = fed(
        [
            request(0, 1.0, ttft_s=0.5),
            request(1, 1.5, error="tier down", ttft_s=99.0, output_tokens=0),
        ]
    )
    w = model.service_window(10.0)
    assert w["requests"] == 2.0
    assert w["error_rate"] == pytest.approx(w["request_rate"] / 2)
    assert w["ttft_p99_s"] == pytest.approx(0.5, rel=0.1)


def test_request_buckets_cover_a_wide_range_monotonically() -> None:
    values = [0.0, 1e-7, 6e-5, 1e-3, 0.02, 0.5, 3.0, 100.0, 5000.0, float("inf")]
    buckets = [request_bucket(v) for v in values]
    assert buckets == sorted(buckets)
    assert buckets[0] == 0 and buckets[-1] == buckets[-2]
    assert request_bucket(float("nan")) == 0


# ---------------------------------------------------------------------------------- requests


def test_requests_table_is_bounded_and_updated_in_place() -> None:
    model = StateModel(max_requests=5)
    for i in range(12):
        model.fold(request(i, clock=float(i)))
    rows = model.requests()
    assert [r.request_id for r in rows] == [f"r{i}" for i in range(7, 12)]
    assert rows[0].served_by == "dram" and rows[0].restored_tokens == 80
    # The same request again (e.g. re-sent after a resync): the row changes, no new row.
    model.fold(request(8, clock=20.0, ttft_s=1.25, prefix_tokens={}, recomputed_tokens=100))
    rows = model.requests()
    assert len(rows) == 5
    assert rows[-1].request_id == "r8"
    assert rows[-1].ttft_s == 1.25 and rows[-1].served_by == RECOMPUTE
    assert [r.request_id for r in rows[:-1]] == ["r7", "r9", "r10", "r11"]


def test_served_by_is_the_tier_that_restored_most_and_ties_go_to_the_fastest() -> None:
    model = fed([hello()])
    model.fold(request(0, 1.0, prefix_tokens={"disk": 50, "dram": 10}))
    model.fold(request(1, 2.0, prefix_tokens={"disk": 30, "dram": 30}))
    model.fold(request(2, 3.0, prefix_tokens={"dram": 0}))
    assert [r.served_by for r in model.requests()] == ["disk", "dram", RECOMPUTE]


# ------------------------------------------------------------------------------------ events


def moves_message(n: int, clock: float, sample_rate: float = 1.0) -> TierMoves:
    kinds = ("promote", "demote", "drop")
    return TierMoves(
        epoch=1,
        clock=clock,
        sample_rate=sample_rate,
        moves=[
            TierMove(
                kinds[k % 3], k, "dram" if k % 3 != 0 else "disk",
                "" if k % 3 == 2 else ("dram" if k % 3 == 0 else "disk"),
                4096, 0.001, "watermark" if k % 2 else "policy", clock,
            )
            for k in range(n)
        ],
    )


def test_event_log_is_bounded_and_filterable() -> None:
    model = StateModel(max_events=50)
    model.fold(hello())
    model.fold(moves_message(10_000, clock=1.0, sample_rate=0.1))
    assert len(model.events()) == 50
    assert model.events()[-1].item.key == 9999  # the newest are kept
    model.fold(ControlChange(epoch=1, clock=2.0, command="set_watermarks", target="dram",
                             old=[0.9, 0.7], new=[0.8, 0.6], by="alice"))
    model.fold(FaultEvent(epoch=1, clock=3.0, tier="disk", fault="slow", old="inactive",
                          new="active", reason="injected", delay_s=0.02))
    model.fold(HealthChange(epoch=1, clock=4.0, tier="disk", old="ok", new="degraded",
                            reason="slow fault"))
    events = model.events()
    assert len(events) == 50
    assert [e.kind for e in events[-3:]] == ["control", "fault", "health"]
    assert [e.kind for e in model.events(kinds="control")] == ["control"]
    assert {e.kind for e in model.events(kinds=["fault", "health"])} == {"fault", "health"}
    disk = model.events(tier="disk")
    assert disk and all("disk" in (e.tier, e.to_tier) for e in disk)
    assert [e.kind for e in model.events(text="ALICE")] == ["control"]
    assert "set_watermarks dram" in model.events(kinds="control")[0].text
    sampled = model.events(kinds="promote", limit=2)
    assert len(sampled) == 2 and "[1 in 10]" in sampled[0].text
    assert model.events(limit=0) == []
    # Fault and health messages change the tier between ticks.
    tier = model.tier("disk")
    assert tier is not None and tier.faults == ["slow"] and tier.health == "degraded"
    model.fold(FaultEvent(epoch=1, clock=5.0, tier="disk", fault="slow", old="active",
                          new="inactive", reason="cleared"))
    assert tier.faults == []
    indexes = [e.index for e in model.events()]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)


def test_move_rate_is_weighted_by_sample_rate() -> None:
    model = fed([moves_message(50, clock=float(c), sample_rate=0.5) for c in range(1, 11)])
    # The last 5 s hold 5 messages of 50 moves, each move standing for 2.
    assert model.service_window(5.0)["moves_per_s"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------ block events


def kv(ts: float, events: list[KvEvent], tiers: list[str]) -> KvEventBatch:
    return KvEventBatch(topic="kv-events", seq=0, ts=ts, events=events, tiers=tiers)


def stored(hashes: list[int], tier: str) -> BlockStored:
    return BlockStored(hashes, None, [], 0, None, tier, None)


def test_block_events_track_residency_per_tier() -> None:
    model = fed([hello(clock=0.5)])  # watching since 0.5 s
    model.fold(kv(1.0, [stored([1, 2, 3], "dram"), stored([3, 4], "disk")], ["dram", "disk"]))
    model.fold(kv(1.5, [BlockRemoved([1, 99], "dram"), stored([2], "dram")], ["dram", "dram"]))
    dram, disk = model.tier("dram"), model.tier("disk")
    assert dram is not None and disk is not None
    assert dram.resident_blocks == 2 and disk.resident_blocks == 2
    w = model.tier_window("dram", 5.0)
    assert w["blocks_stored_per_s"] == pytest.approx(4 / 1.0)  # 4 blocks in 0.5..1.5 s
    assert w["resident_blocks"] == pytest.approx(2.5)  # mean of 3 and 2
    model.fold(kv(2.0, [AllBlocksCleared()], ["*"]))
    assert dram.resident_blocks == 0 and disk.resident_blocks == 0
    assert model.service_window(5.0)["block_events_per_s"] == pytest.approx(5 / 1.5)
    assert "*" not in model.tier_names()


def test_residency_beyond_the_cap_becomes_an_estimate() -> None:
    model = StateModel(max_tracked_blocks=100)
    model.fold(kv(1.0, [stored(list(range(150)), "gpu")], ["gpu"]))
    gpu = model.tier("gpu")
    assert gpu is not None and not gpu.blocks_exact and gpu.resident_blocks == 150
    assert not model.residency.tracked("gpu")
    model.fold(kv(2.0, [BlockRemoved(list(range(50)), "gpu")], ["gpu"]))
    assert gpu.resident_blocks == 100
    # Hashes it never stored still count against the estimate.
    model.fold(kv(3.0, [BlockRemoved([10_000] * 3, "gpu")], ["gpu"]))
    assert gpu.resident_blocks == 97
    assert model.tier_view("gpu")["blocks_exact"] is False
    # A clear makes it exact again.
    model.fold(kv(4.0, [AllBlocksCleared(), stored([1, 2], "gpu")], ["*", "gpu"]))
    assert gpu.resident_blocks == 2 and model.tier_view("gpu")["blocks_exact"] is True


def test_many_tiers_grow_the_series() -> None:
    names = [f"t{i}" for i in range(11)]
    model = fed([tick(i, samples=[sample(n, i) for n in names]) for i in range(4)])
    assert model.tier_names() == names
    for n in names:
        assert model.tier_window(n, 10.0)["hits_per_s"] == pytest.approx(9.0)


# ---------------------------------------------------------------------------------- snapshot


def session(n: int = 30) -> list[Any]:
    messages: list[Any] = [hello()]
    for i in range(n):
        messages.append(tick(i, samples=[
            sample("dram", i, latency={"get": hist(b10=i + 1)}),
            sample("disk", i, health="degraded" if i > 20 else "ok"),
        ]))
        messages.append(request(i, clock=i + 0.5))
        messages.append(kv(i + 0.6, [stored([i], "dram")], ["dram"]))
        if i % 7 == 0:
            messages.append(moves_message(3, clock=i + 0.7))
        if i == 12:
            messages.append(ControlChange(epoch=1, clock=12.8, command="set_capacity",
                                          target="dram", old=1000, new=2000))
        messages.append(Heartbeat(epoch=1, clock=i + 0.9))
    return messages


def test_identical_sequences_give_equal_snapshots() -> None:
    messages = session()
    a, b = fed(messages), StateModel()
    for k, m in enumerate(messages):
        b.fold(m, received_at=1000.0 + k)  # receive times only touch the connection part
    snap_a, snap_b = a.snapshot(), b.snapshot()
    assert snap_a["connection"] != snap_b["connection"]
    for key in ("source", "service", "tiers", "events", "requests", "series"):
        assert snap_a[key] == snap_b[key], key
    assert fed(messages).snapshot(now=5.0) == a.snapshot(now=5.0)
    # One different counter shows.
    changed = session()
    changed[-2] = tick(29, samples=[sample("dram", 29, hits=1000), sample("disk", 29)])
    other = fed(changed).snapshot()
    assert other["tiers"] != snap_a["tiers"]
    assert other["series"] != snap_a["series"]


def test_snapshot_is_plain_data_without_nan() -> None:
    snap = fed(session()).snapshot(now=40.0)

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                assert isinstance(k, str)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or isinstance(x, str | int | float | bool), type(x)
            if isinstance(x, float):
                assert math.isfinite(x)

    walk(snap)
    assert [t["name"] for t in snap["tiers"]] == ["dram", "disk"]
    assert snap["tiers"][1]["health"] == "degraded"
    assert snap["source"]["messages"]["TierStats"] == 30
    assert len(snap["requests"]) == 30
    # One 1 s row per second closed (the last request and block events opened a 31st).
    assert snap["series"]["tiers"][0]["rows"] == 30


def test_a_snapshot_message_sets_baselines_on_join() -> None:
    model = StateModel()
    model.fold(Snapshot(epoch=1, source="rt:1", clock=10.2, hello=hello(), stats=tick(10),
                        settings={"dram.watermarks": [0.9, 0.7]},
                        resident=[ResidentSummary(tier="dram", blocks=3, bytes=300,
                                                  block_hashes=[1, 2, 3]),
                                  ResidentSummary(tier="disk", blocks=7, bytes=700)]))
    assert model.tier_window("dram", 5.0)["evictions_per_s"] is None  # a baseline only
    model.fold_many(tick(i) for i in range(11, 15))
    assert model.tier_window("dram", 3.0)["evictions_per_s"] == pytest.approx(2.0)
    dram, disk = model.tier("dram"), model.tier("disk")
    assert dram is not None and dram.blocks_exact and dram.resident_blocks == 3
    assert disk is not None and not disk.blocks_exact and disk.resident_blocks == 7
    # The snapshot's hashes are the table: removing one of them counts.
    model.fold(kv(15.0, [BlockRemoved([2, 99], "dram"), BlockRemoved([5], "disk")],
                  ["dram", "disk"]))
    assert dram.resident_blocks == 2 and disk.resident_blocks == 6
    assert model.settings == {"dram.watermarks": [0.9, 0.7]}
    assert model.snapshots_applied == 1
    assert model.events(kinds="resync")


def test_a_snapshot_after_lost_ticks_keeps_totals() -> None:
    model = fed([hello(), *(tick(i) for i in range(5))])
    # Ticks 5..8 lost; the resync snapshot carries tick 8 (then live resumes at 9).
    model.fold(Snapshot(epoch=1, clock=8.1, hello=hello(), stats=tick(8)))
    model.fold_many(tick(i) for i in range(9, 12))
    assert model.tier_window("dram", 60.0)["evictions_per_s"] == pytest.approx(2.0)
    _, rates = model.series("dram", "evictions_per_s", 60.0)
    assert rates[~np.isnan(rates)].tolist() == [2.0] * (len(rates) - 1)
    # A snapshot repeating the last tick changes nothing.
    before = model.snapshot()
    model.fold(Snapshot(epoch=1, clock=11.5, hello=hello(), stats=tick(11)))
    after = model.snapshot()
    assert after["tiers"] == before["tiers"] and after["series"] == before["series"]


# -------------------------------------------------------------------------- source, health


def test_source_health_reports_age_gaps_drops_and_rtt() -> None:
    model = StateModel()
    assert model.source_health(now=5.0)["age_s"] is None
    model.fold(hello(), received_at=100.0)
    model.fold(tick(0, dropped_messages=4, dropped_events=900, dropped_queue_items=3),
               received_at=101.0)
    model.update_connection(SubscriberCounters(gaps=7, recovered=5, unrecovered=2, restarts=1))
    model.set_control_rtt(0.0025, at=101.5)
    h = model.source_health(now=102.5)
    assert h["source"] == "rt:1" and h["mode"] == "sim" and h["epoch"] == 1
    assert h["age_s"] == pytest.approx(1.5)
    assert h["stale"] is False
    assert (h["gaps"], h["recovered"], h["unrecovered"]) == (7, 5, 2)
    assert h["subscriber_restarts"] == 1
    assert (h["dropped_messages"], h["dropped_events"], h["dropped_queue_items"]) == (4, 900, 3)
    assert h["control_rtt_s"] == 0.0025
    assert h["messages"] == 2
    model.update_connection({"gaps": 9})
    later = model.source_health(now=110.0)
    assert later["stale"] is True and later["gaps"] == 9
    model.update_connection(None, stale=False)
    assert model.source_health(now=110.0)["stale"] is False


def test_series_queries_refuse_unknown_metrics_and_tolerate_unknown_tiers() -> None:
    model = fed([hello(), tick(0), tick(1)])
    with pytest.raises(KeyError):
        model.series("dram", "no_such_metric", 60.0)
    times, values = model.series("nope", "hits_per_s", 60.0)
    assert len(times) == len(values) == 0
    for metric in TIER_METRICS:
        t, v = model.series("dram", metric, 60.0)
        assert len(t) == len(v) == 2
    for metric in SERVICE_METRICS:
        t, v = model.series(None, metric, 60.0)
        assert len(t) == len(v)
    assert model.tier_window("nope") == dict.fromkeys(TIER_METRICS)
    empty = StateModel().service_window()
    assert empty["request_rate"] is None and empty["restored_share_by_tier"] == {}


# ------------------------------------------------------------------------------------ bounds


def test_days_of_accelerated_ticks_stay_bounded() -> None:
    model = StateModel(max_events=100, max_requests=20)
    model.fold(hello())
    memory = model.memory_bytes()
    step = 30.0  # three days of a tick every 30 s
    n = int(3 * 86400 / step)
    for i in range(n):
        c = i * step
        model.fold(tick(i, clock=c))
        if i % 10 == 0:
            model.fold(request(i, clock=c + 1))
            model.fold(moves_message(5, clock=c + 2))
    assert model.memory_bytes() == memory
    assert len(model.requests()) == 20
    assert len(model.events()) == 100
    # (Buckets holding only a request have no rate: NaN.)
    t1, v1 = model.series("dram", "evictions_per_s", 600.0)
    assert len(t1) <= 900 and np.allclose(v1[~np.isnan(v1)], 2 / step)
    assert np.isnan(v1).sum() == 2
    t2, v2 = model.series("dram", "evictions_per_s", 3 * 3600.0)
    assert model.resolution_for(3 * 3600.0) == 10.0
    assert len(t2) <= 1081 and np.allclose(v2[~np.isnan(v2)], 2 / step)
    t3, v3 = model.series("dram", "hit_ratio", None)
    assert model.resolution_for(None) == 60.0
    assert len(t3) == 2881  # 2880 rows kept + the one in progress
    assert t3[-1] - t3[0] <= 2 * 86400
    assert np.allclose(v3[~np.isnan(v3)], 0.9)
    # 60 s points aggregate two ticks each: the rate is still exact.
    _, ev60 = model.series("dram", "evictions_per_s", None)
    assert np.allclose(ev60[~np.isnan(ev60)], 2 / step)
    _, req60 = model.series(None, "request_rate", None)
    assert np.nansum(req60 * 60.0) == pytest.approx(2880 * 60.0 / (10 * step), rel=0.01)


def test_monitor_modules_never_import_textual() -> None:
    code = (
        "import sys\n"
        "import tiertop.monitor.state, tiertop.monitor.series\n"
        "import tiertop.monitor.render_text, tiertop.monitor.watch_cli\n"
        "import tiertop.monitor.subscriber, tiertop.monitor.protocol\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'textual')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_a_tick_s_description_replaces_the_hello_s() -> None:
    """The Hello is sent once; what a store says of itself (block count, fragmentation, a
    restarted memory server's pid) moves with the ticks; a tick that says nothing (an older
    runtime) leaves the Hello's."""
    model = StateModel()
    info = hello()
    info.tiers[0].description = "dram: 1 MiB arena, 0 blocks"
    model.fold(info)
    assert model.tier_view("dram")["description"] == "dram: 1 MiB arena, 0 blocks"
    model.fold(tick(1, samples=[sample("dram", 1, description="dram: 1 MiB arena, 55 blocks")]))
    assert model.tier_view("dram")["description"] == "dram: 1 MiB arena, 55 blocks"
    model.fold(tick(2, samples=[sample("dram", 2)]))  # an older runtime: no description
    assert model.tier_view("dram")["description"] == "dram: 1 MiB arena, 0 blocks"
