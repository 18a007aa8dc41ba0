"""`Hierarchy.run_trace` takes short paths; they must leave exactly the state and counters that
calling `access()` key by key leaves."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from tiertop.tiers.hierarchy import Hierarchy, TierConfig
from tiertop.tiers.policies.oracle import FutureOracle

POLICIES = ["lru", "fifo", "lfu", "arc", "s3fifo", "random", "belady"]


def trace(seed: int, n: int = 6000, universe: int = 400) -> list[int]:
    rng = np.random.default_rng(seed)
    hot = rng.zipf(1.3, n) % universe
    scan = np.arange(n) % (universe * 2) + universe  # a scan that defeats recency
    mixed = np.where(rng.random(n) < 0.8, hot, scan)
    return [int(k) for k in mixed]


def build(configs: list[dict[str, object]], policy: str, keys: list[int], **kwargs: object
          ) -> Hierarchy:
    oracle = FutureOracle(keys) if policy == "belady" else None
    tiers = [TierConfig(eviction=policy, **c) for c in configs]  # type: ignore[arg-type]
    return Hierarchy(tiers, block_bytes=1, oracle=oracle, **kwargs)  # type: ignore[arg-type]


def state(h: Hierarchy) -> tuple[object, ...]:
    tiers = tuple(
        (t.used, t.blocks, sorted(t.policy), asdict(t.counters)) for t in h.tiers
    )
    return (tiers, h.lookups, h.hits, h.misses, h.puts, h.drops, h.rejected)


SHAPES = {
    "one tier, textbook": [dict(name="t0", capacity_bytes=50, high=1.0, low=1.0)],
    "one tier, watermarks": [dict(name="t0", capacity_bytes=50, high=0.8, low=0.5)],
    "two tiers": [dict(name="t0", capacity_bytes=30, high=0.9, low=0.7),
                  dict(name="t1", capacity_bytes=60, high=1.0, low=1.0)],
    "three tiers": [dict(name="t0", capacity_bytes=20, high=1.0, low=1.0),
                    dict(name="t1", capacity_bytes=30, high=0.9, low=0.6),
                    dict(name="t2", capacity_bytes=40, high=1.0, low=1.0)],
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("strategy", [None, "local-only", "naive-spill"])
def test_run_trace_equals_access_loop(policy: str, shape: str, strategy: str | None) -> None:
    keys = trace(len(shape) + len(policy))
    kwargs = {"strategy_name": strategy} if strategy else {}
    if strategy == "local-only":
        kwargs["strategy_name"] = "local-only"
        configs = [dict(c, kind="dram") if i == 0 else c for i, c in enumerate(SHAPES[shape])]
    else:
        configs = SHAPES[shape]
    fast = build(configs, policy, keys, **kwargs)
    slow = build(configs, policy, keys, **kwargs)
    hits = fast.run_trace(keys)
    for key in keys:
        slow.access(key)
    assert hits == slow.hits
    assert state(fast) == state(slow)
    assert fast.hits > 0 and fast.drops > 0  # the trace exercised hits and evictions
