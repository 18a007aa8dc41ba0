"""Tier capacities and watermarks from a miss-ratio curve whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiertop.monitor.mrc import MissRatioCurve, MrcTracker, TierCapacity
from tiertop.planner.capacity import advise, parse_tiers, smallest_size_for


def loop_tracker(blocks: int = 5000, rounds: int = 20) -> MrcTracker:
    """A loop over ``blocks`` blocks: hit ratio 0 below ``blocks``, (rounds - 1) / rounds at it."""
    tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None))
    tracker.curve.access_many(np.tile(np.arange(blocks, dtype=np.uint64), rounds))
    return tracker


def test_smallest_size_for() -> None:
    curve = loop_tracker().curve
    assert smallest_size_for(curve, 0.9) == 5000
    assert smallest_size_for(curve, 0.96) is None  # best reachable: 19/20


def test_second_tier_sized_to_the_working_set_and_band_closed_at_a_cliff() -> None:
    tracker = loop_tracker()
    tracker.set_tiers([TierCapacity("gpu", 1000), TierCapacity("dram", 2000, 0.9, 0.8)])
    advice = advise(tracker)
    assert advice.max_hit_ratio == pytest.approx(0.95)
    assert advice.target_hit_ratio == pytest.approx(0.94)
    assert advice.needed_blocks == 5000
    gpu, dram = advice.tiers
    assert gpu.recommended_blocks == 1000 and gpu.reason.startswith("the fastest tier keeps")
    cap, g_low, d_low = dram.recommended_blocks, gpu.recommended_low, dram.recommended_low
    # at their mean fill the two tiers hold the 5000-block working set...
    assert 1000 * (1.0 + g_low) / 2 + cap * (0.9 + d_low) / 2 >= 5000
    assert cap == math.ceil((5000 - 1000 * (1.0 + g_low) / 2) / ((0.9 + d_low) / 2))
    # ...and still do with either at its low point (the other full): at a cliff any eviction
    # below the working set would lose every hit, so the bands stay narrow
    assert 1000 * g_low + cap * 0.9 >= 5000 and 1000 + cap * d_low >= 5000
    assert g_low >= 0.85 and d_low >= 0.85
    assert (dram.hit_ratio, dram.recommended_cumulative) == (0.0, pytest.approx(0.95))
    assert any(w.startswith("if dram were twice as large (1,700 -> 3,400 blocks)")
               for w in advice.what_ifs)
    text = "\n".join(advice.lines())
    assert f"dram: 2,000 -> {cap:,} blocks; watermarks high 0.90, low 0.80 -> {d_low:.2f}" in text


def test_flat_curve_widens_the_band_and_shrinks_an_oversized_tier() -> None:
    """Uniform random accesses over 10,000 blocks: the curve is a straight line, so the low
    watermark can drop until it costs the tolerance; dram is far larger than needed."""
    tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None))
    rng = np.random.default_rng(0)
    tracker.curve.access_many(rng.integers(0, 10_000, 200_000).astype(np.uint64))
    tracker.set_tiers([TierCapacity("dram", 20_000, 0.95, 0.95)])
    advice = advise(tracker, target=0.5, tolerance=0.02)
    (dram,) = advice.tiers
    needed = advice.needed_blocks
    assert needed is not None
    curve = tracker.curve
    assert curve.hit_ratio(needed - 1) < 0.5 <= curve.hit_ratio(needed)
    assert 4500 < needed < 5500  # about half the blocks
    cap = dram.recommended_blocks
    low = dram.recommended_low
    assert cap == math.ceil(needed / ((0.95 + low) / 2))  # its mean fill holds `needed`
    assert dram.recommended_cumulative >= 0.5
    assert dram.reason.startswith("could shrink")
    # 0.02 of hit ratio is ~200 blocks of a ~5,300-block tier: low ~ 0.95 - 0.04
    assert 0.89 <= low <= 0.93
    assert curve.hit_ratio(low * cap) >= curve.hit_ratio(0.95 * cap) - 0.02
    assert curve.hit_ratio((low - 0.01) * cap) < curve.hit_ratio(0.95 * cap) - 0.02


def test_notes_when_tiers_are_unknown_or_the_target_unreachable() -> None:
    advice = advise(loop_tracker(), target=0.99)
    assert advice.tiers == ()
    assert any("no tier capacities known" in n for n in advice.notes)
    assert any("above the best reachable" in n for n in advice.notes)
    with pytest.raises(ValueError, match="no sampled access"):
        advise(MrcTracker())


def test_parse_tiers() -> None:
    assert parse_tiers("gpu=100, dram=400:0.9:0.7") == [
        TierCapacity("gpu", 100, 1.0, 1.0), TierCapacity("dram", 400, 0.9, 0.7)]
    for bad in ("gpu", "gpu=x", "gpu=10:0.5:0.9", "=4", ""):
        with pytest.raises(ValueError):
            parse_tiers(bad)
