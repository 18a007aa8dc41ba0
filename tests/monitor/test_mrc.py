"""Miss-ratio curves: SHARDS against exact references, the fixed-size bound, mini-simulation,
the block-event mapping, and the cost budget."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
from tiertop.monitor.mrc import (
    DEFAULT_MAX_KEYS,
    MissRatioCurve,
    MrcSink,
    MrcTracker,
    TierCapacity,
    as_keys,
    hash64,
    hash64_array,
)
from tiertop.monitor.protocol import Hello, TierInfo, TierSample, TierStats, Topology
from tiertop.monitor.vllm_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEventBatch,
)
from tiertop.tiers.events import EventKind, TierEvent
from tiertop.tiers.hierarchy import Hierarchy, TierConfig
from tiertop.tiers.policies.base import eviction_policy

from tests.monitor.event_collector import EventCollector

# ------------------------------------------------------------------------- exact references


def lru_hit_ratio(keys: list[int], size: int) -> float:
    """Plain LRU simulation of one cache size (the obviously-right reference)."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for k in keys:
        if k in cache:
            cache.move_to_end(k)
            hits += 1
        else:
            cache[k] = None
            if len(cache) > size:
                cache.popitem(last=False)
    return hits / len(keys)


def exact_stack_distances(keys: np.ndarray) -> np.ndarray:
    """Exact LRU stack distance of every access (-1 for first uses), vectorised.

    distance(i) = #{j in (p, i) : next(j) > i}, p the previous access of key i: the distinct
    keys accessed in between are those whose access in (p, i) is their last before i. Counted
    with a merge-sort tree over next(): per level, nodes hold next() of 2**level consecutive
    accesses, sorted; a range splits into O(log n) nodes (bottom-up segment-tree walk, done for
    all queries at once) and each node's count is one searchsorted on the level's array made
    globally sorted by a per-node offset.
    """
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    same = ordered[1:] == ordered[:-1]
    prev = np.full(n, -1, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    nxt = np.full(n, n, dtype=np.int64)
    nxt[order[:-1][same]] = order[1:][same]
    queries = np.flatnonzero(prev >= 0)
    threshold = queries  # count next(j) > i
    lo = prev[queries] + 1
    hi = queries  # range [lo, hi)
    size = 1 << max(1, int(np.ceil(np.log2(n))))
    level_values = np.full(size, -1, dtype=np.int64)
    level_values[:n] = nxt
    span = n + 2
    left = lo + size
    right = hi + size
    counts = np.zeros(len(queries), dtype=np.int64)
    block = 1
    while block <= size:
        nodes_base = size // block  # node ids at this level: nodes_base .. 2*nodes_base - 1
        keyed = np.arange(size // block).repeat(block) * span + (level_values + 1)

        def count(nodes: np.ndarray, thr: np.ndarray, keyed: np.ndarray = keyed,
                  block: int = block, nodes_base: int = nodes_base) -> np.ndarray:
            row = nodes - nodes_base
            pos = np.searchsorted(keyed, row * span + thr + 1, side="right")
            return (row + 1) * block - pos

        active = left < right
        use_left = active & (left & 1 == 1)
        if use_left.any():
            counts[use_left] += count(left[use_left], threshold[use_left])
            left = left + use_left
        active = left < right
        use_right = active & (right & 1 == 1)
        if use_right.any():
            right = right - use_right
            counts[use_right] += count(right[use_right], threshold[use_right])
        left >>= 1
        right >>= 1
        block *= 2
        if block <= size:  # next level: merge sorted pairs (linear for a stable sort)
            level_values = np.sort(level_values.reshape(-1, block), axis=1,
                                   kind="stable").reshape(-1)
    out = np.full(n, -1, dtype=np.int64)
    out[queries] = counts
    return out


def exact_curve(keys: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    d = exact_stack_distances(keys)
    reuse = np.sort(d[d >= 0])
    return np.searchsorted(reuse, sizes, side="left") / len(keys)


# --------------------------------------------------------------------------------- traces


def block_hashes(ids: np.ndarray) -> np.ndarray:
    """Block ids -> random-looking 64-bit hashes, like the xxh3 digests real blocks have
    (splitmix64's finaliser: a bijection, so distinct ids stay distinct)."""
    z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def zipf_trace(n_keys: int, n: int, alpha: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.arange(1, n_keys + 1, dtype=np.float64) ** -alpha
    p /= p.sum()
    ids = rng.choice(n_keys, size=n, p=p)
    return block_hashes(rng.permutation(n_keys))[ids]


def prefix_trace(n_requests: int, seed: int, *, n_system: int = 50, system_blocks: int = 16,
                 n_conv: int = 20000) -> np.ndarray:
    """KV-cache-like: each request reads its system prompt's blocks and its conversation's
    history, then appends a few new blocks; conversations end after ~20 turns."""
    rng = np.random.default_rng(seed)
    sys_pop = 1.0 / np.arange(1, n_system + 1)
    sys_pop /= sys_pop.sum()
    conv_pop = 1.0 / np.arange(1, n_conv + 1) ** 0.6
    conv_pop /= conv_pop.sum()
    convs = rng.choice(n_conv, size=n_requests, p=conv_pop)
    system_of = rng.choice(n_system, size=n_conv, p=sys_pop)
    new_blocks = rng.integers(2, 10, size=n_requests)
    history_start = np.zeros(n_conv, dtype=np.int64)
    history_len = np.zeros(n_conv, dtype=np.int64)
    next_id = 1 << 40
    pieces = []
    for conv, k in zip(convs.tolist(), new_blocks.tolist(), strict=True):
        s = int(system_of[conv])
        pieces.append(np.arange(system_blocks, dtype=np.int64) + ((s + 1) << 20))
        if history_len[conv] > 120:
            history_len[conv] = 0
        if history_len[conv] == 0:
            history_start[conv] = next_id
            next_id += 1 << 10
        start = history_start[conv]
        pieces.append(np.arange(start, start + history_len[conv] + k, dtype=np.int64))
        history_len[conv] += k
    return block_hashes(np.concatenate(pieces))


def loop_scan_trace(n: int, seed: int, loop: int = 60000) -> np.ndarray:
    """Windows of a large loop interleaved with one-off scans."""
    rng = np.random.default_rng(seed)
    pieces = []
    total = 0
    scan = 1 << 50
    while total < n:
        if rng.random() < 0.25:
            piece = np.arange(scan, scan + 3000)
            scan += 3000
        else:
            start = int(rng.integers(0, loop - 2000))
            piece = np.arange(start, start + 2000)
        pieces.append(piece)
        total += len(piece)
    return block_hashes(np.concatenate(pieces)[:n])


# ------------------------------------------------------------------------------ the tests


def test_exact_reference_agrees_with_plain_lru() -> None:
    keys = zipf_trace(800, 6000, 0.9, 7)
    sizes = np.array([1, 2, 7, 50, 300, 900])
    got = exact_curve(keys, sizes)
    want = [lru_hit_ratio(keys.tolist(), int(s)) for s in sizes]
    assert got == pytest.approx(want, abs=1e-12)


def test_rate_one_is_exact_lru() -> None:
    keys = zipf_trace(3000, 30000, 0.8, 1)
    sizes = np.array([1, 3, 10, 64, 500, 2000, 3000])
    mrc = MissRatioCurve(rate=1.0, max_keys=None)
    mrc.access_many(keys[:17000])
    for k in keys[17000:].tolist():  # the scalar path too
        mrc.access(k)
    assert mrc.curve(sizes) == pytest.approx(exact_curve(keys, sizes), abs=1e-12)
    assert mrc.accesses == mrc.sampled == len(keys)


def test_hash_scalar_and_vector_agree() -> None:
    keys = np.array([0, 1, 2**63, 2**64 - 1, 12345678901234567], dtype=np.uint64)
    for seed in (0, 3):
        assert hash64_array(keys, seed).tolist() == [hash64(int(k), seed) for k in keys]


def shifting_zipf_trace(n_keys: int, n: int, alpha: float, phases: int, seed: int) -> np.ndarray:
    """Zipf popularity dealt out to the blocks anew in each of ``phases`` parts: blocks turn hot
    mid-stream."""
    return np.concatenate([zipf_trace(n_keys, n // phases, alpha, seed * 100 + phase)
                           for phase in range(phases)])


TRACES = {
    "prefix-sharing": lambda: prefix_trace(26000, 11),
    "zipf-0.8": lambda: zipf_trace(300_000, 800_000, 0.8, 12),
    "zipf-1.1": lambda: zipf_trace(2_000_000, 800_000, 1.1, 14),
    "zipf-1.1-shifting": lambda: shifting_zipf_trace(300_000, 800_000, 1.1, 8, 15),
    "loop-and-scan": lambda: loop_scan_trace(800_000, 13),
}


def exact_reference(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cache sizes from 10,000 blocks to the distinct blocks (24, geometric) and the exact
    curve there."""
    sizes = np.unique(np.geomspace(10_000, len(np.unique(keys)), 24).astype(np.int64))
    exact = exact_curve(keys, sizes)
    assert exact.max() - exact.min() > 0.05  # the curve has something to get wrong
    return sizes, exact


def sampled_errors(keys: np.ndarray, reference: tuple[np.ndarray, np.ndarray], seed: int,
                   corrections: tuple[str, ...] = ("stratified",)) -> dict[str, float]:
    """Largest error of the default estimator against the reference, per normalisation of the
    same sample."""
    sizes, exact = reference
    mrc = MissRatioCurve(seed=seed)
    for i in range(0, len(keys), 4096):
        mrc.access_many(keys[i:i + 4096])
    assert mrc.tracked_keys <= DEFAULT_MAX_KEYS
    out = {}
    for correction in corrections:
        mrc.correction = correction
        out[correction] = float(np.abs(mrc.curve(sizes) - exact).max())
    return out


@pytest.mark.parametrize("name", list(TRACES))
def test_sampled_curve_within_002_of_exact(name: str) -> None:
    """The issue's accuracy bound, at the default rate (whose cost `benchmarks.mrc` measures), for
    cache sizes of at least 10,000 blocks, three sampling seeds per trace (``python -m
    benchmarks.mrc`` reports twenty, on traces drawn differently)."""
    keys = TRACES[name]()
    reference = exact_reference(keys)
    for seed in range(3):
        err = sampled_errors(keys, reference, seed)["stratified"]
        assert err <= 0.02, f"{name} seed {seed}: max error {err:.4f}"


def test_hot_blocks_decide_the_plain_ratio_not_the_stratified_one() -> None:
    """In this Zipf(1.1) trace the hottest block carries 12 % of the accesses; seed 2's sample
    misses every hot block (it holds 1 % of the accesses, not 2 %), seed 20's holds the hottest.
    Either way SHARDS' plain ratio is far off and the recency classes are not."""
    keys = TRACES["zipf-1.1"]()
    reference = exact_reference(keys)
    for seed in (2, 20):
        errors = sampled_errors(keys, reference, seed, ("stratified", "sampled"))
        assert errors["sampled"] > 0.1, (seed, errors)
        assert errors["stratified"] <= 0.02, (seed, errors)


def test_recency_classes_do_not_depend_on_batching() -> None:
    keys = zipf_trace(5000, 30_000, 0.9, 4)
    whole = MissRatioCurve(rate=0.2)
    whole.access_many(keys)
    pieces = MissRatioCurve(rate=0.2)
    for i in range(0, len(keys), 777):
        pieces.access_many(keys[i:i + 777])
    one_by_one = MissRatioCurve(rate=0.2)
    for k in keys.tolist():
        one_by_one.access(k)
    sizes = [10, 100, 1000, 5000]
    for other in (pieces, one_by_one):
        assert other.class_totals == whole.class_totals
        assert other.curve(sizes).tolist() == whole.curve(sizes).tolist()
    assert sum(whole.class_totals) == len(keys)


def test_recency_classes_count_every_access() -> None:
    """One block over and over: after the first chunk (a class of its own) every access was
    last offered one chunk before."""
    mrc = MissRatioCurve(rate=1.0, max_keys=None)
    mrc.access_many(np.full(10_000, 7, dtype=np.uint64))
    totals = mrc.class_totals
    assert totals[0] == 10_000 - 2048 and totals[-1] == 2048 and sum(totals) == 10_000
    assert mrc.hit_ratio(1) == pytest.approx(9999 / 10_000)


def test_fixed_size_bounds_memory_and_lowers_the_rate() -> None:
    keys = zipf_trace(200_000, 300_000, 0.6, 3)
    mrc = MissRatioCurve(rate=0.5, max_keys=2000)
    mrc.access_many(keys)
    assert mrc.tracked_keys <= 2000
    assert mrc.rate < 0.5
    # every tracked block is below the threshold and every sampled-away one is gone
    tracked = [k for k in keys.tolist() if k in mrc]
    assert all(hash64(k) < mrc.threshold for k in tracked)
    assert not any(k in mrc for k in keys.tolist() if hash64(k) >= mrc.threshold)
    before = mrc.memory_bytes()
    mrc.access_many(zipf_trace(200_000, 200_000, 0.6, 4))
    assert mrc.tracked_keys <= 2000
    assert mrc.memory_bytes() <= before * 1.1


def test_fixed_size_accuracy() -> None:
    keys = zipf_trace(200_000, 500_000, 0.8, 21)
    sizes = np.unique(np.geomspace(20_000, 180_000, 12).astype(np.int64))
    mrc = MissRatioCurve(rate=0.2, max_keys=8000)
    mrc.access_many(keys)
    assert mrc.rate < 0.2
    assert np.abs(mrc.curve(sizes) - exact_curve(keys, sizes)).max() <= 0.03


@pytest.mark.parametrize("policy", ["fifo", "s3fifo", "arc"])
def test_mini_simulation_tracks_full_simulation(policy: str) -> None:
    keys = zipf_trace(40_000, 150_000, 0.8, 5)
    sizes = [3000, 8000, 20000]
    mrc = MissRatioCurve(rate=0.05, max_keys=None, policies={policy: sizes})
    mrc.access_many(keys)
    for size, got in zip(sizes, mrc.curve(sizes, policy), strict=True):
        p = eviction_policy(policy, size)
        hits = 0
        for k in keys.tolist():
            if k in p:
                p.touch(k)
                hits += 1
            else:
                while len(p) >= size:
                    p.victim(k)
                p.insert(k)
        assert got == pytest.approx(hits / len(keys), abs=0.03), (policy, size)


def test_policy_errors() -> None:
    with pytest.raises(ValueError, match="SHARDS"):
        MissRatioCurve(policies={"lru": [10]})
    with pytest.raises(ValueError, match="future"):
        MissRatioCurve(policies={"belady": [10]})
    with pytest.raises(ValueError, match="no curve for policy 'fifo'"):
        MissRatioCurve().curve([10], "fifo")
    with pytest.raises(ValueError, match="rate"):
        MissRatioCurve(rate=0)


def test_what_if_reads_the_curve() -> None:
    loop = np.tile(np.arange(1000, dtype=np.uint64), 50)  # hits only with >= 1000 blocks
    mrc = MissRatioCurve(rate=1.0, max_keys=None)
    mrc.access_many(loop)
    w = mrc.what_if(600, 2.0, tier="dram")
    assert (w.hit_ratio, w.new_capacity_blocks) == (0.0, 1200)
    assert w.new_hit_ratio == pytest.approx(49 / 50)
    assert w.text() == ("if dram were twice as large (600 -> 1,200 blocks), its hit ratio "
                        "would go from 0.00 to 0.98")
    below = mrc.what_if(400, 2.0, above_blocks=500, tier="cxl")
    assert below.cumulative == 0.0 and below.new_cumulative == pytest.approx(0.98)
    assert "all tiers down to it: 0.00 -> 0.98" in below.text()


def test_sink_counts_every_lookup() -> None:
    mrc = MissRatioCurve(rate=1.0, max_keys=None)
    h = Hierarchy([TierConfig("dram", 64)], block_bytes=1, sink=MrcSink(mrc))
    keys = zipf_trace(200, 3000, 0.9, 2).tolist()
    h.run_trace(keys)
    assert mrc.accesses == h.lookups == len(keys)
    assert mrc.hit_ratio(64) == pytest.approx(lru_hit_ratio(keys, 64))
    sink = MrcSink(mrc)
    sink.emit(TierEvent(EventKind.PUT, 0.0, 5, "dram"))  # a put is not a lookup
    assert mrc.accesses == len(keys)


# ------------------------------------------------------------------- from telemetry events


def _batches(events: list[object], size: int) -> list[KvEventBatch]:
    out = []
    for i in range(0, len(events), size):
        chunk = events[i:i + size]
        tiers = ["*" if isinstance(e, AllBlocksCleared) else e.medium for e in chunk]  # type: ignore[attr-defined]
        out.append(KvEventBatch(topic="kv-events", seq=i, ts=0.0, events=chunk, tiers=tiers))
    return out


def published_run(keys: list[int], tiers: list[TierConfig]) -> tuple[list[object], np.ndarray]:
    """Run ``keys`` through a hierarchy whose events go out as tiertop's runtime publishes them;
    returns those block events and the lookups that missed the top tier (in order)."""
    from tiertop.runtime.telemetry import TelemetrySink

    pub = EventCollector()
    top = tiers[0].name
    missed: list[int] = []

    class Recorder:
        forward = TelemetrySink(pub)  # type: ignore[arg-type]

        def emit(self, event: TierEvent) -> None:
            if event.kind is EventKind.MISS or (event.kind is EventKind.HIT
                                                 and event.tier != top):
                assert event.key is not None
                missed.append(event.key)
            self.forward.emit(event)

    h = Hierarchy(tiers, block_bytes=1, sink=Recorder())
    h.run_trace(keys)
    assert len(missed) == h.lookups - h.tiers[0].counters.hits
    return pub.events, np.array(missed, dtype=np.uint64)


def test_tracker_reveals_the_top_tiers_misses_exactly() -> None:
    """Folded from the events tiertop's runtime publishes, the accesses are exactly the lookups
    that missed the top tier (new blocks and promotions), whatever the batch boundaries."""
    events, missed = published_run(zipf_trace(4000, 20000, 0.8, 9).tolist(),
                                   [TierConfig("gpu", 300), TierConfig("dram", 1200)])
    for size in (3, 333):
        tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None), tier_order=["gpu", "dram"])
        tracker.fold_many(_batches(events, size))
        assert tracker.accesses_seen == len(missed)
        sizes = np.array([10, 100, 1000])
        assert tracker.curve.curve(sizes) == pytest.approx(exact_curve(missed, sizes), abs=1e-12)


def test_tracker_keeps_the_hot_block_correction() -> None:
    """Sampled at 5 %, the curve folded from block events stays near the exact curve of the
    accesses they reveal, and nearer than SHARDS' plain ratio: every stored hash is offered to
    the recency classes, and the sample gives each class's share of accesses."""
    tiers = [TierConfig("gpu", 300), TierConfig("dram", 3000), TierConfig("disk", 100_000)]
    events, missed = published_run(zipf_trace(20_000, 120_000, 1.0, 9).tolist(), tiers)
    sizes = np.unique(np.geomspace(2000, len(np.unique(missed)), 12).astype(np.int64))
    exact = exact_curve(missed, sizes)
    batches = _batches(events, 500)
    errors: dict[str, list[float]] = {"stratified": [], "sampled": []}
    for seed in range(4):
        tracker = MrcTracker(MissRatioCurve(rate=0.05, seed=seed),
                             tier_order=[t.name for t in tiers])
        tracker.fold_many(batches)
        curve = tracker.curve
        assert curve.correction == "stratified"
        estimated = curve.summary()["estimated_accesses"]
        assert estimated == pytest.approx(len(missed), rel=0.03)
        for correction in errors:
            curve.correction = correction
            errors[correction].append(float(np.abs(curve.curve(sizes) - exact).max()))
    assert max(errors["stratified"]) <= 0.02, errors
    assert sum(errors["stratified"]) < sum(errors["sampled"]) / 2, errors


def test_accesses_fed_through_a_tracker_keep_the_correction() -> None:
    """`tiertop plan` feeds a file of accesses to its tracker's curve: the same curve as
    feeding a bare estimator."""
    keys = zipf_trace(50_000, 100_000, 1.0, 6)
    bare = MissRatioCurve(rate=0.05)
    bare.access_many(keys)
    tracker = MrcTracker(MissRatioCurve(rate=0.05))
    tracker.curve.access_many(keys)
    sizes = [1000, 10_000, 40_000]
    assert tracker.curve.correction == bare.correction == "stratified"
    assert tracker.curve.curve(sizes).tolist() == bare.curve(sizes).tolist()


def _stored(h: int, tier: str) -> BlockStored:
    return BlockStored([h], None, [], 0, None, tier, None)


def test_tracker_mapping_rules() -> None:
    tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None))  # canonical order: gpu, cpu
    events = [
        _stored(1, "gpu"),  # new: access
        _stored(1, "cpu"),  # copy into a slower tier (vLLM offload): no access
        BlockRemoved([1], "gpu"),  # evicted from the gpu, still on the cpu
        _stored(1, "gpu"),  # loaded back up from the cpu: a hit below, access
        BlockRemoved([1], "gpu"),
        _stored(1, "disk"),  # removed then stored lower: demotion, no access
        _stored(1, "disk"),  # re-store where it is: a reported hit, access
        BlockRemoved([1], "cpu"),
        BlockRemoved([], "disk"),  # tier-wide clear of disk: held nowhere now
        _stored(1, "disk"),  # new again: access
        AllBlocksCleared(),
        _stored(1, "cpu"),  # after a reset: new, access
    ]
    tracker.fold(_batches(events, 100)[0])
    assert tracker.accesses_seen == 5
    assert tracker.curve.sampled == 5


def test_tracker_learns_tiers_and_answers_what_if() -> None:
    tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None))
    tracker.fold(Hello(topology=Topology(tier_order=["gpu", "dram"], block_bytes=100),
                       tiers=[TierInfo(name="gpu", capacity_bytes=50_000),
                              TierInfo(name="dram", capacity_bytes=100_000)]))
    tracker.fold(TierStats(tiers=[
        TierSample(name="gpu", capacity_bytes=50_000, high_watermark=1.0, low_watermark=1.0,
                   hits=0, misses=0),
        TierSample(name="dram", capacity_bytes=100_000, high_watermark=0.9,
                   low_watermark=0.7, hits=0, misses=0),
    ]))
    assert tracker.tiers == [TierCapacity("gpu", 500, 1.0, 1.0),
                             TierCapacity("dram", 1000, 0.9, 0.7)]
    events = [_stored(k, "gpu") for k in range(2000)] * 3
    tracker.fold_many(_batches(events, 500))
    w = tracker.what_if("dram", 1.5)  # dram's effective size: 1000 x (0.9 + 0.7) / 2
    assert (w.above_blocks, w.capacity_blocks, w.new_capacity_blocks) == (500, 800, 1200)
    assert (w.cumulative, w.new_cumulative) == (0.0, 0.0)  # a 2000-block loop needs 2000
    assert tracker.what_if("dram", 2.0).new_cumulative == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unknown tier 'disk'"):
        tracker.what_if("disk", 2.0)


def test_tracker_is_bounded_and_deterministic() -> None:
    events = [_stored(int(k), "gpu") for k in zipf_trace(100_000, 60_000, 0.5, 1)]
    a = MrcTracker(MissRatioCurve(rate=0.5, max_keys=500))
    b = MrcTracker(MissRatioCurve(rate=0.5, max_keys=500))
    a.fold_many(_batches(events, 256))
    b.fold_many(_batches(events, 1000))
    assert len(a._where) <= 2 * 500 + 256
    assert a.curve.summary() == b.curve.summary()
    sizes = [10, 1000, 50000]
    assert a.curve.curve(sizes).tolist() == b.curve.curve(sizes).tolist()


class PerEventTracker(MrcTracker):
    """The tracker as it folded block events before the vectorised scan (its code, kept as the
    reference): every event walked in Python, batch by batch, one curve call per sampled
    access."""

    def _on_batches(self, batches: list[KvEventBatch]) -> None:
        for batch in batches:
            self._on_batch(batch)

    def _on_batch(self, batch: KvEventBatch) -> None:
        events = batch.events
        if not events:
            return
        self.batches += 1
        self.events += len(events)
        flat: list[Any] = []  # every hash in stream order, None for a clear
        owners: list[int] = []  # the event of each
        stores: list[bool] = []  # per event: a BlockStored
        clears = False
        for i, event in enumerate(events):
            stored = type(event) is BlockStored
            stores.append(stored)
            hashes = () if isinstance(event, AllBlocksCleared) else event.block_hashes
            if len(hashes) == 1:
                flat.append(hashes[0])
                owners.append(i)
            elif hashes:
                flat.extend(hashes)
                owners.extend([i] * len(hashes))
            elif not stored:  # a clear must apply in order: a marker position
                flat.append(None)
                owners.append(i)
                clears = True
        base = self._position
        self._position += len(flat)
        present = [p for p, k in enumerate(flat) if k is not None] if clears else None
        keys = as_keys(flat if present is None else [flat[p] for p in present])
        curve = self.curve
        hv = hash64_array(keys, curve.seed)
        owner = np.array(owners if present is None else [owners[p] for p in present],
                         dtype=np.intp)
        is_store = np.array(stores, dtype=bool)[owner]
        classes = np.full(keys.size, -1, dtype=np.intp)
        classes[is_store] = curve.offer_items(hv[is_store])
        if present is None:
            picked = np.flatnonzero(hv < np.uint64(min(curve.threshold, (1 << 64) - 1)))
            self._walk(events, batch.tiers, owners, base, picked.tolist(),
                       keys[picked].tolist(), hv[picked].tolist(), classes[picked].tolist())
            return
        full_keys: list[int | None] = [None] * len(flat)
        full_hv = [0] * len(flat)
        full_classes = [-1] * len(flat)
        for n, p in enumerate(present):
            full_keys[p] = int(keys[n])
            full_hv[p] = int(hv[n])
            full_classes[p] = int(classes[n])
        self._walk(events, batch.tiers, owners, base, range(len(flat)), full_keys, full_hv,
                   full_classes)

    def _walk(self, events: list[Any], tiers: list[str], owners: list[int], base: int,
              positions: Any, keys: Any, hashes: Any, classes: Any) -> None:
        curve = self.curve
        where = self._where
        for n, p in enumerate(positions):
            event = events[owners[p]]
            tier = tiers[owners[p]] if owners[p] < len(tiers) else str(event.medium)
            key = keys[n]
            if key is None:
                if type(event) is AllBlocksCleared:
                    where.clear()
                else:  # BlockRemoved with no hashes: the whole tier is cleared
                    for holders in where.values():
                        holders.discard(tier)
                continue
            hv = hashes[n]
            if hv >= curve.threshold:
                continue
            position = base + p
            if type(event) is BlockRemoved:
                was = where.get(key)
                if was is not None:
                    was.discard(tier)
                    if not was:
                        del where[key]
                self._last_removed = (key, tier, position)
                continue
            held = where.get(key)
            previous: set[str] = set(held) if held else set()
            last = self._last_removed
            if last is not None and last[0] == key and last[2] == position - 1:
                previous.add(last[1])
            if not previous or tier in previous:
                is_access = True
            else:
                rank = self._tier_rank(tier)
                is_access = all(rank < self._tier_rank(t) for t in previous)
            if held is None:
                where[key] = {tier}
            else:
                held.add(tier)
            if is_access:
                self.accesses_seen += 1
            curve.sampled_item(key, hv, classes[n], is_access)
        if curve.max_keys is not None and len(where) > 2 * curve.max_keys:
            for key in [k for k in where if k not in curve]:
                del where[key]


def busy_stream(n: int, blocks: int, seed: int, clears: float) -> list[Any]:
    """Block events of every kind: stores and removes across tiers, moves up and down, events
    with several hashes or none, a few bytes digests, and ``clears`` of them clears (of a tier
    or of everything)."""
    rng = np.random.default_rng(seed)
    tiers = ["gpu", "cpu", "disk", "remote"]
    events: list[Any] = []
    while len(events) < n:
        key = int(rng.zipf(1.2)) % blocks if rng.random() < 0.7 else int(rng.integers(blocks))
        h: Any = key.to_bytes(8, "little") + b"xx" if rng.random() < 0.02 else key
        tier, other = (str(t) for t in rng.choice(tiers, 2))
        roll = rng.random()
        if roll < clears:
            events.append(BlockRemoved([], tier) if roll < clears * 0.8 else AllBlocksCleared())
        elif roll < 0.45:
            events.append(_stored(h, tier))
        elif roll < 0.75:
            events.append(BlockRemoved([h], tier))
        elif roll < 0.95:  # a move: removed from one tier, stored in another
            events += [BlockRemoved([h], other), _stored(h, tier)]
        else:  # several hashes, or none
            more = [int(k) for k in rng.integers(blocks, size=int(rng.integers(0, 4)))]
            events.append(BlockStored([h, *more][1:] if roll < 0.97 else [h, *more], None, [],
                                      0, None, tier, None) if roll < 0.985
                          else BlockRemoved([h, *more], tier))
    return events


def benchmark_stream(batches: int, batch: int = 512) -> list[KvEventBatch]:
    """The dashboard benchmark's producer: stores and removes alternating over four tiers."""
    tiers = ("gpu", "dram", "numa", "disk")
    events: list[Any] = []
    for i in range(batches * batch):
        if i % 2 == 0:
            events.append(_stored(i % 40_000, tiers[i & 3]))
        else:
            events.append(BlockRemoved([i % 40_000 - 1], tiers[i & 3]))
    return _batches(events, batch)


def assert_same_fold(reference: MrcTracker, tracker: MrcTracker) -> None:
    sizes = [1, 10, 100, 1000, 10_000]
    for attr in ("accesses_seen", "events", "batches", "_where", "_last_removed", "_position"):
        assert getattr(tracker, attr) == getattr(reference, attr), attr
    assert tracker.curve.summary() == reference.curve.summary()
    for policy in ["lru", *reference.curve.policies]:
        assert (tracker.curve.curve(sizes, policy).tolist()
                == reference.curve.curve(sizes, policy).tolist()), policy


@pytest.mark.parametrize(("rate", "max_keys", "policies"), [
    (1.0, 64, None),  # fixed size: the rate drops and blocks are forgotten all along
    (0.3, 16, {"s3fifo": [20, 200]}),  # mini-caches sample blocks the LRU sample does not
    (0.05, DEFAULT_MAX_KEYS, None),
])
def test_scanned_fold_is_the_per_event_fold(rate: float, max_keys: int | None,
                                            policies: dict[str, list[int]] | None) -> None:
    """Folding batches together, hashes scanned with numpy and accesses given in groups, gives
    exactly what walking every event did, whatever the batching."""
    for clears, size, group in ((0.0, 97, 1), (0.0, 700, 9), (0.0, 5000, 3), (0.003, 700, 9)):
        batches = _batches(busy_stream(20_000, 3000, 4, clears), size)
        batches[1] = KvEventBatch(topic="kv-events", seq=1, ts=0.0, events=batches[1].events,
                                  tiers=batches[1].tiers[:5])  # a short tier list: the medium
        reference = PerEventTracker(
            MissRatioCurve(rate=rate, max_keys=max_keys, policies=policies))
        tracker = MrcTracker(MissRatioCurve(rate=rate, max_keys=max_keys, policies=policies))
        for i in range(0, len(batches), group):
            reference.fold_many(batches[i:i + group])
            tracker.fold_many(batches[i:i + group])
        assert_same_fold(reference, tracker)


def test_scanned_fold_of_the_dashboard_benchmark_stream() -> None:
    batches = benchmark_stream(24)
    reference = PerEventTracker(MissRatioCurve(rate=0.02))
    tracker = MrcTracker(MissRatioCurve(rate=0.02))
    reference.fold_many(batches)
    for i in range(0, len(batches), 8):  # as the dashboard's feed folds: 4,096 events a time
        tracker.fold_many(batches[i:i + 8])
    assert tracker.accesses_seen > 0
    assert_same_fold(reference, tracker)


def test_coverage_from_tier_stats() -> None:
    tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None))

    def stats(hits: int, misses: int) -> TierStats:
        return TierStats(tiers=[TierSample(name="gpu", hits=hits, misses=misses)])

    tracker.fold(stats(0, 0))
    tracker.fold_many(_batches([_stored(k, "gpu") for k in range(40)], 40))
    tracker.fold(stats(60, 40))  # 100 lookups, 40 revealed by events
    assert tracker.coverage == pytest.approx(0.4)


def test_view_model_for_the_dashboard() -> None:
    from tiertop.monitor.mrc_view import build_view

    tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None))
    empty = build_view(tracker)
    assert empty.status == "no accesses yet" and empty.what_ifs == ()
    tracker.set_tiers([TierCapacity("gpu", 500), TierCapacity("dram", 1000, 0.9, 0.7)])
    tracker.curve.access_many(np.tile(np.arange(2000, dtype=np.uint64), 4))
    view = build_view(tracker, points=32)
    assert [(m.name, m.effective_blocks, m.cumulative_blocks) for m in view.marks] == [
        ("gpu", 500, 500), ("dram", 800, 1300)]
    assert [m.cumulative_hit_ratio for m in view.marks] == [0.0, 0.0]
    assert view.points[0].blocks == 1 and view.points[-1].blocks >= 2600
    ratios = [p.hit_ratio for p in view.points]
    assert ratios == sorted(ratios) and ratios[-1] == pytest.approx(0.75)
    assert view.what_ifs == (
        "if gpu were twice as large (500 -> 1,000 blocks), its hit ratio would go from 0.00 "
        "to 0.00",
        "if dram were twice as large (800 -> 1,600 blocks), its hit ratio would go from 0.00 "
        "to 0.75 (all tiers down to it: 0.00 -> 0.75)",
    )
    assert view.as_dict()["marks"][1]["name"] == "dram"


def test_headless_modules_do_not_import_textual() -> None:
    import subprocess
    import sys

    code = ("import sys, tiertop.monitor.mrc, tiertop.monitor.mrc_view, "
            "tiertop.planner.plan_cli, tiertop.planner.capacity, tiertop.planner.calibrate; "
            "assert not any(m.split('.')[0] == 'textual' for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
