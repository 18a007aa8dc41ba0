"""Miss-ratio-curve estimation: accuracy against the exact curve, and cost against the tiers.

Run ``python -m benchmarks.mrc`` for a table or ``--json`` for one JSON object (``--quick``:
smaller traces, fewer seeds).

**Accuracy.** Five generated block-access traces, their keys passed through a 64-bit mixer like
real block hashes are: KV-style prefix sharing; Zipf(0.8) and Zipf(1.1) popularity (in the
latter the hottest block carries 12 % of the accesses); Zipf(1.1) whose popularity is
reshuffled eight times (blocks turn hot mid-stream); and windows of a large loop mixed with
one-off scans. The exact LRU curve of each comes from the estimator at rate 1 (exact: the tests
check it against an independent reference), the sampled curve from the default estimator
(``rate`` 0.02, at most 16,384 blocks tracked) with ``--seeds`` different sampling hashes. The
error is the largest absolute hit-ratio difference over cache sizes from 10,000 blocks to the
trace's distinct blocks (24 sizes, geometric). ``max_abs_error`` is the worst over traces and
seeds (target <= 0.02), ``max_abs_error_<trace>`` the worst per trace, ``mean_max_abs_error``
the mean of the per-(trace, seed) maxima. The same samples are also normalised as SHARDS-adj
and as SHARDS' plain ratio (``correction="adjusted"`` / ``"sampled"``), for comparison.

**Cost.** ``overhead_vs_hierarchy``: CPU time of the estimator fed every access of the
prefix-sharing trace (``access_many`` in batches of 1,024, as the runtime would hand them) over
the CPU time of the tier hierarchy serving the same accesses in accounting mode (the runtime's
default three tiers and lru-tiering strategy), best of ``--repeats`` interleaved rounds of each
(target <= 0.05). ``overhead_vs_hierarchy_one_tier`` is the same against a single-tier
hierarchy (the cheapest block operation there is), reported without a target.
``tracker_us_per_event`` is the cost of folding the same stream as vLLM-shaped block events
(the monitor side), per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tiertop.monitor.mrc import DEFAULT_MAX_KEYS, DEFAULT_RATE, MissRatioCurve, MrcTracker
from tiertop.monitor.vllm_events import BlockRemoved, BlockStored, KvEventBatch
from tiertop.tiers.events import TierEvent
from tiertop.tiers.hierarchy import Hierarchy, TierConfig

from benchmarks.common import Figure, parser, report

TARGET_ERROR = 0.02
TARGET_OVERHEAD = 0.05
MIN_SIZE = 10_000
CORRECTIONS = ("stratified", "adjusted", "sampled")  # the default first


def block_hashes(ids: np.ndarray) -> np.ndarray:
    """Ids -> random-looking 64-bit keys (splitmix64's finaliser, a bijection)."""
    z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def prefix_trace(n_requests: int, seed: int) -> np.ndarray:
    """Each request reads its system prompt (16 blocks, 50 prompts, popularity 1/rank) and its
    conversation's history, then appends 2-9 blocks; conversations restart after ~20 turns."""
    rng = np.random.default_rng(seed)
    n_system, n_conv = 50, 20000
    sys_pop = 1.0 / np.arange(1, n_system + 1)
    conv_pop = 1.0 / np.arange(1, n_conv + 1) ** 0.6
    convs = rng.choice(n_conv, size=n_requests, p=conv_pop / conv_pop.sum())
    system_of = rng.choice(n_system, size=n_conv, p=sys_pop / sys_pop.sum())
    new_blocks = rng.integers(2, 10, size=n_requests)
    start = np.zeros(n_conv, dtype=np.int64)
    length = np.zeros(n_conv, dtype=np.int64)
    next_id = 1 << 40
    pieces = []
    for conv, k in zip(convs.tolist(), new_blocks.tolist(), strict=True):
        pieces.append(np.arange(16, dtype=np.int64) + ((int(system_of[conv]) + 1) << 20))
        if length[conv] > 120:
            length[conv] = 0
        if length[conv] == 0:
            start[conv] = next_id
            next_id += 1 << 10
        pieces.append(np.arange(start[conv], start[conv] + length[conv] + k, dtype=np.int64))
        length[conv] += k
    return block_hashes(np.concatenate(pieces))


def zipf_trace(n_keys: int, n: int, seed: int, alpha: float = 0.8, phases: int = 1) -> np.ndarray:
    """``n`` accesses with popularity ``rank ** -alpha``; ``phases > 1`` deals the ranks out to
    the blocks anew for each of that many equal parts (blocks turn hot and cold)."""
    rng = np.random.default_rng(seed)
    p = np.arange(1, n_keys + 1, dtype=np.float64) ** -alpha
    p /= p.sum()
    parts = [block_hashes(rng.permutation(n_keys))[rng.choice(n_keys, size=n // phases, p=p)]
             for _ in range(phases)]
    return np.concatenate(parts)


def loop_scan_trace(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pieces, total, scan = [], 0, 1 << 50
    while total < n:
        if rng.random() < 0.25:
            piece = np.arange(scan, scan + 3000)
            scan += 3000
        else:
            first = int(rng.integers(0, 58000))
            piece = np.arange(first, first + 2000)
        pieces.append(piece)
        total += len(piece)
    return block_hashes(np.concatenate(pieces)[:n])


def accuracy(traces: dict[str, np.ndarray], seeds: int) -> dict[str, Any]:
    """Per trace: the exact curve's range and, per normalisation, each seed's largest error."""
    out: dict[str, Any] = {}
    for name, keys in traces.items():
        exact_est = MissRatioCurve(rate=1.0, max_keys=None)
        exact_est.access_many(keys)
        sizes = np.unique(np.geomspace(MIN_SIZE, len(np.unique(keys)), 24).astype(np.int64))
        exact = exact_est.curve(sizes)
        errors: dict[str, list[float]] = {c: [] for c in CORRECTIONS}
        tracked = []
        for seed in range(seeds):
            est = MissRatioCurve(seed=seed)
            for i in range(0, len(keys), 4096):
                est.access_many(keys[i:i + 4096])
            for correction in CORRECTIONS:
                est.correction = correction
                errors[correction].append(float(np.abs(est.curve(sizes) - exact).max()))
            tracked.append(est.tracked_keys)
        out[name] = {"accesses": len(keys), "distinct_blocks": len(np.unique(keys)),
                     "max_abs_error_per_seed": {c: [round(e, 4) for e in v]
                                                for c, v in errors.items()},
                     "tracked_blocks": max(tracked),
                     "exact_hit_ratio_range": [round(float(exact.min()), 3),
                                               round(float(exact.max()), 3)]}
    return out


def _cpu(fn: Callable[[], object]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


class _Collect:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: TierEvent) -> None:  # the telemetry sink's mapping, kept minimal
        key = event.key
        if key is None:
            return
        kind = str(event.kind)
        if kind in ("put", "promote", "demote"):
            if event.to_tier is not None and event.tier is not None:
                self.events.append(BlockRemoved([key], event.tier))
            dest = event.to_tier or event.tier
            self.events.append(BlockStored([key], None, [], 0, None, dest, None))
        elif kind in ("drop", "delete") and event.tier is not None:
            self.events.append(BlockRemoved([key], event.tier))


def cost(keys: np.ndarray, repeats: int) -> dict[str, float]:
    keys_list = keys.tolist()
    batches = [keys[i:i + 1024] for i in range(0, len(keys), 1024)]

    def three_tiers() -> Hierarchy:
        return Hierarchy([TierConfig("dram", 4096), TierConfig("remote", 8192),
                          TierConfig("disk", 32768)], block_bytes=1,
                         strategy_name="lru-tiering")

    def feed() -> MissRatioCurve:
        est = MissRatioCurve(rate=DEFAULT_RATE, max_keys=DEFAULT_MAX_KEYS)
        for b in batches:
            est.access_many(b)
        est.flush()  # what it still holds (a read would do it too)
        return est

    h3, h1, m = [], [], []
    for _ in range(repeats):
        h3.append(_cpu(lambda: three_tiers().run_trace(keys_list)))
        m.append(_cpu(feed))
        h1.append(_cpu(lambda: Hierarchy([TierConfig("dram", 4096)],
                                          block_bytes=1).run_trace(keys_list)))
    collect = _Collect()
    h = three_tiers()
    h.sink = collect
    h.run_trace(keys_list)
    events = collect.events
    tiers = [e.medium for e in events]
    msgs = [KvEventBatch(topic="kv-events", seq=i, ts=0.0, events=events[i:i + 512],
                         tiers=tiers[i:i + 512]) for i in range(0, len(events), 512)]
    t = []
    for _ in range(repeats):
        tracker = MrcTracker(MissRatioCurve(rate=DEFAULT_RATE, max_keys=DEFAULT_MAX_KEYS),
                             tier_order=["dram", "remote", "disk"])
        t.append(_cpu(lambda tracker=tracker: tracker.fold_many(msgs)))
    est = feed()
    return {
        "hierarchy_us_per_access": min(h3) / len(keys) * 1e6,
        "hierarchy_one_tier_us_per_access": min(h1) / len(keys) * 1e6,
        "mrc_us_per_access": min(m) / len(keys) * 1e6,
        "overhead_vs_hierarchy": min(m) / min(h3),
        "overhead_vs_hierarchy_one_tier": min(m) / min(h1),
        "tracker_us_per_event": min(t) / len(events) * 1e6,
        "sampled_fraction": est.sampled / est.accesses,
        "memory_bytes": est.memory_bytes(),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="sampling seeds per trace")
    p.add_argument("--repeats", type=int, default=9, help="interleaved cost rounds")
    args = p.parse_args()
    quick = args.quick
    seeds = min(args.seeds, 3) if quick else args.seeds
    n = 300_000 if quick else 800_000
    traces = {
        "prefix-sharing": prefix_trace(8000 if quick else 26000, 11),
        "zipf-0.8": zipf_trace(300_000, n, 12),
        "zipf-1.1": zipf_trace(2_000_000, n, 14, alpha=1.1),
        "zipf-1.1-shifting": zipf_trace(300_000, n, 15, alpha=1.1, phases=8),
        "loop-and-scan": loop_scan_trace(n, 13),
    }
    acc = accuracy(traces, seeds)

    def maxima(correction: str, trace: str | None = None) -> list[float]:
        return [e for name, t in acc.items() if trace in (None, name)
                for e in t["max_abs_error_per_seed"][correction]]

    worst = maxima("stratified")
    c = cost(prefix_trace(3000 if quick else 6000, 5), args.repeats)
    figures = [
        Figure("max_abs_error", max(worst), "", f"<= {TARGET_ERROR}",
               f"worst of {len(traces)} traces x {seeds} seeds, sizes >= {MIN_SIZE:,} blocks"),
        *(Figure(f"max_abs_error_{name}", max(maxima("stratified", name)), "",
                 f"<= {TARGET_ERROR}") for name in traces),
        Figure("mean_max_abs_error", float(np.mean(worst)), ""),
        Figure("within_target", sum(e <= TARGET_ERROR for e in worst) / len(worst), "share",
               note="(trace, seed) pairs within the target"),
        Figure("max_abs_error_shards_adj", max(maxima("adjusted")), "",
               note="the same samples normalised as SHARDS-adj"),
        Figure("max_abs_error_plain_shards", max(maxima("sampled")), "",
               note="the same samples, SHARDS' plain ratio"),
        Figure("overhead_vs_hierarchy", c["overhead_vs_hierarchy"], "ratio",
               f"<= {TARGET_OVERHEAD}", "vs 3 tiers, lru-tiering, accounting mode (CPU time)"),
        Figure("overhead_vs_hierarchy_one_tier", c["overhead_vs_hierarchy_one_tier"], "ratio",
               note="vs a single-tier hierarchy"),
        Figure("mrc_ns_per_access", c["mrc_us_per_access"] * 1e3, "ns"),
        Figure("hierarchy_ns_per_access", c["hierarchy_us_per_access"] * 1e3, "ns"),
        Figure("tracker_us_per_event", c["tracker_us_per_event"], "us",
               note="folding vLLM-shaped block events (monitor side)"),
        Figure("memory_bytes", c["memory_bytes"], "B", note="estimator after the cost stream"),
        Figure("sampling_rate", DEFAULT_RATE, "", note=f"max {DEFAULT_MAX_KEYS:,} blocks"),
    ]
    report("MRC estimation (SHARDS, stratified by recency): accuracy and cost", figures,
           args.json, {"accuracy": acc, "cost": c, "seeds": seeds})


if __name__ == "__main__":
    main()
