"""Tier capacities and watermarks from an observed miss-ratio curve.

The model: the tiers form an exclusive hierarchy that places new blocks on top, demotes victims
one tier down and promotes on hit; with LRU in every tier it behaves as one LRU cache whose size
is the sum of the tiers' (so the hit ratio of the first k tiers together is the curve at their
summed capacity, and a tier's own share is the difference). A tier that evicts from its high
watermark down to its low one holds (high + low) / 2 of its capacity on average: that is its
*effective* size on the curve.

The advice, given the curve ``h``:

1. Target hit ratio: ``--target-hit-ratio``, by default the best reachable (``h`` of an
   unbounded cache: everything but first uses) minus ``tolerance``.
2. Capacity: the smallest total effective size ``C*`` with ``h(C*) >= target``. The fastest tier
   keeps its capacity (it is the scarce one: GPU memory, or local DRAM); the second tier is
   sized so that the effective sizes of the tiers above plus its own make ``C*`` (or shrinks
   when it holds more than needed); slower tiers keep theirs and catch what lies beyond the
   target. With a single tier, that tier is sized.
3. Watermarks: ``high`` stays; each tier's ``low`` is the lowest value (not below 0.5) at which,
   with that tier at its low point and the others full, both the whole hierarchy and the tiers
   down to it (the hits served that fast) stay within ``tolerance`` of their hit ratio with all
   full. Where the curve is flat, a wide band costs
   nothing and buys fewer, larger eviction rounds and headroom for bursts; at a cliff (a working
   set that just fits) the band closes.

Capacity and low watermarks depend on each other (a lower ``low`` needs more capacity for the
same effective size): starting from closed bands (low = high), the bands widen as far as the
rule allows and the capacity follows, until neither changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tiertop.monitor.mrc import MissRatioCurve, MrcTracker, TierCapacity

__all__ = ["CapacityAdvice", "TierAdvice", "advise", "smallest_size_for"]


def smallest_size_for(curve: MissRatioCurve, target: float, *, policy: str = "lru",
                      upper: float | None = None) -> int | None:
    """Smallest cache size (blocks) whose hit ratio reaches ``target`` (None: none does)."""
    top = upper if upper is not None else max(curve.max_distance * 1.05, 1.0)
    if policy != "lru":
        top = max(top, float(max(curve.policies.get(policy, [1]))))
    if curve.hit_ratio(top, policy) < target:
        return None
    lo, hi = 0, math.ceil(top)  # h(lo) < target <= h(hi): integer bisection
    if curve.hit_ratio(0, policy) >= target:
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if curve.hit_ratio(mid, policy) >= target:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class TierAdvice:
    name: str
    capacity_blocks: int
    recommended_blocks: int
    high: float
    low: float
    recommended_low: float
    hit_ratio: float  # the tier's share of all accesses now (effective size)
    recommended_hit_ratio: float
    cumulative: float
    recommended_cumulative: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CapacityAdvice:
    policy: str
    target_hit_ratio: float
    max_hit_ratio: float
    needed_blocks: int | None
    tolerance: float
    tiers: tuple[TierAdvice, ...]
    what_ifs: tuple[str, ...]
    curve: tuple[tuple[int, float], ...]
    estimator: dict[str, Any]
    notes: tuple[str, ...] = field(default=())

    def lines(self) -> list[str]:
        out = [
            f"Miss-ratio curve ({self.policy}) from {self.estimator['estimated_accesses']:,} "
            f"accesses ({self.estimator['sampled']:,} sampled at rate "
            f"{self.estimator['rate']:.4g}, {self.estimator['tracked_keys']:,} blocks tracked).",
            f"Best reachable hit ratio {self.max_hit_ratio:.3f} (the rest are first uses); "
            f"target {self.target_hit_ratio:.3f}.",
        ]
        if self.needed_blocks is None:
            out.append("The target is not reachable at any size on this curve.")
        else:
            out.append(f"The tiers together need {self.needed_blocks:,} blocks (effective) "
                       "for the target.")
        for t in self.tiers:
            size = (f"keep {t.capacity_blocks:,} blocks" if t.recommended_blocks ==
                    t.capacity_blocks else
                    f"{t.capacity_blocks:,} -> {t.recommended_blocks:,} blocks")
            marks = (f"watermarks high {t.high:.2f}, low {t.low:.2f}"
                     + (f" -> {t.recommended_low:.2f}" if t.recommended_low != t.low else ""))
            out.append(f"  {t.name}: {size}; {marks}; its hit ratio {t.hit_ratio:.3f} -> "
                       f"{t.recommended_hit_ratio:.3f} (all tiers down to it "
                       f"{t.cumulative:.3f} -> {t.recommended_cumulative:.3f}). {t.reason}")
        out.extend(f"  {w}" for w in self.what_ifs)
        out.extend(f"Note: {n}" for n in self.notes)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "target_hit_ratio": self.target_hit_ratio,
            "max_hit_ratio": self.max_hit_ratio, "needed_blocks": self.needed_blocks,
            "tolerance": self.tolerance, "tiers": [t.as_dict() for t in self.tiers],
            "what_ifs": list(self.what_ifs),
            "curve": [{"blocks": b, "hit_ratio": h} for b, h in self.curve],
            "estimator": self.estimator, "notes": list(self.notes),
        }


def _effective(cap: int, high: float, low: float) -> float:
    return cap * (high + low) / 2


def _lowest_low(curve: MissRatioCurve, policy: str, caps: list[int], highs: list[float],
                i: int, tolerance: float) -> float:
    """Lowest low watermark of tier ``i`` (not below 0.5) at which that tier at its low point,
    the others full, loses at most ``tolerance`` of hit ratio both for the whole hierarchy and
    for the tiers down to it (the fast hits must not just move to a slower tier)."""
    above = sum(c * h for c, h in zip(caps[:i], highs[:i], strict=True))
    full = sum(c * h for c, h in zip(caps, highs, strict=True))
    mine = caps[i] * highs[i]
    at_full, at_mine = curve.curve([full, above + mine], policy)
    best = highs[i]
    for low in np.arange(highs[i], 0.499, -0.01):
        drop = caps[i] * (highs[i] - float(low))
        whole, down_to = curve.curve([full - drop, above + mine - drop], policy)
        if whole >= at_full - tolerance and down_to >= at_mine - tolerance:
            best = float(low)
        else:
            break
    return round(best, 2)


def advise(
    tracker: MrcTracker,
    *,
    target: float | None = None,
    tolerance: float = 0.01,
    policy: str = "lru",
    points: int = 48,
) -> CapacityAdvice:
    """Capacities and watermarks for the tracker's tiers (see the module docstring)."""
    curve = tracker.curve
    if curve.sampled == 0:
        raise ValueError("no sampled access yet: the curve is empty (feed more accesses or "
                         "raise the sampling rate)")
    notes: list[str] = []
    best = curve.hit_ratio(math.inf, policy) if policy == "lru" else curve.hit_ratio(
        float(max(curve.policies[policy])), policy)
    if target is None:
        goal = max(0.0, best - tolerance)
    else:
        goal = target
        if target > best:
            notes.append(f"target {target:.3f} is above the best reachable {best:.3f}; "
                         f"aiming at {max(0.0, best - tolerance):.3f}")
            goal = max(0.0, best - tolerance)
    needed = smallest_size_for(curve, goal, policy=policy)
    tiers = tracker.tiers
    if not tiers:
        notes.append("no tier capacities known (no Hello/TierStats in the input): pass --tiers "
                     "NAME=BLOCKS,... to get per-tier advice")
    elif any(t.capacity_blocks <= 0 for t in tiers):
        notes.append("a tier has no capacity in blocks (block size unknown?): pass --tiers")
    caps = [t.capacity_blocks for t in tiers]
    highs = [t.high for t in tiers]
    sized = (1 if len(tiers) > 1 else 0) if tiers and needed is not None else None
    reasons = ["the fastest tier keeps its size."] + ["keeps its size."] * (len(tiers) - 1)

    def size_for(lows: list[float]) -> None:
        if sized is None or needed is None:
            return
        above = sum(_effective(caps[j], highs[j], lows[j]) for j in range(sized))
        want = needed - above
        if want <= 0:
            if sized:
                caps[sized] = 0
            reasons[sized] = "the tiers above already reach the target."
            return
        caps[sized] = max(1, math.ceil(want / ((highs[sized] + lows[sized]) / 2)))
        reasons[sized] = ("sized to reach the target." if caps[sized] >
                          tiers[sized].capacity_blocks else
                          "could shrink: it holds more than the target needs.")

    def lowest_lows() -> list[float]:
        return [_lowest_low(curve, policy, caps, highs, i, tolerance) for i in range(len(tiers))]

    # Capacity and low watermarks depend on each other: start from closed bands (low = high)
    # and widen them while the band rule allows, resizing each time.
    lows = list(highs)
    for _ in range(12):
        size_for(lows)
        new_lows = lowest_lows()
        if new_lows == lows:
            break
        lows = new_lows
    else:  # no fixpoint: size for the last lows, then close any band the rule now forbids
        size_for(lows)
        lows = [max(a, b) for a, b in zip(lows, lowest_lows(), strict=True)]
    advice: list[TierAdvice] = []
    above_now = above_rec = 0.0
    for i, t in enumerate(tiers):
        eff_now = _effective(t.capacity_blocks, t.high, t.low)
        eff_rec = _effective(caps[i], highs[i], lows[i])
        h0, h1, h2, h3 = curve.curve([above_now, above_now + eff_now, above_rec,
                                      above_rec + eff_rec], policy)
        advice.append(TierAdvice(
            name=t.name, capacity_blocks=t.capacity_blocks, recommended_blocks=caps[i],
            high=t.high, low=t.low, recommended_low=lows[i],
            hit_ratio=float(h1 - h0), recommended_hit_ratio=float(h3 - h2),
            cumulative=float(h1), recommended_cumulative=float(h3), reason=reasons[i],
        ))
        above_now += eff_now
        above_rec += eff_rec
    what_ifs = []
    for t in tiers:
        if t.capacity_blocks > 0:
            for factor in (2.0, 0.5):
                what_ifs.append(tracker.what_if(t.name, factor, policy).text())
    top = max(curve.max_distance * 1.1, above_now * 2, above_rec * 2, 16.0)
    sizes = np.unique(np.geomspace(1, top, points).astype(np.int64))
    values = curve.curve(sizes, policy)
    summary = curve.summary()
    coverage = tracker.coverage
    if coverage is not None and coverage < 0.99:
        notes.append(f"block events revealed {coverage:.0%} of the lookups the runtime counted "
                     "(hits in the fastest tier move no block, so no event shows them): the "
                     "curve is that of the accesses below the fastest tier")
    if summary["sampled"] < 2000:
        notes.append(f"only {summary['sampled']:,} sampled accesses: the curve is rough "
                     "(record longer or raise the sampling rate)")
    return CapacityAdvice(
        policy=policy, target_hit_ratio=goal, max_hit_ratio=best, needed_blocks=needed,
        tolerance=tolerance, tiers=tuple(advice), what_ifs=tuple(what_ifs),
        curve=tuple((int(s), float(v)) for s, v in zip(sizes, values, strict=True)),
        estimator=summary, notes=tuple(notes),
    )


def parse_tiers(text: str) -> list[TierCapacity]:
    """``gpu=4096,dram=16384:0.9:0.8`` -> tiers (fastest first): NAME=BLOCKS[:HIGH:LOW]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, rest = part.partition("=")
        if not sep or not name:
            raise ValueError(f"tier {part!r}: expected NAME=BLOCKS[:HIGH:LOW]")
        fields = rest.split(":")
        try:
            blocks = int(fields[0])
            high = float(fields[1]) if len(fields) > 1 else 1.0
            low = float(fields[2]) if len(fields) > 2 else high
        except ValueError:
            raise ValueError(f"tier {part!r}: BLOCKS must be an integer, HIGH and LOW "
                             "fractions") from None
        if blocks < 1 or not 0 < low <= high <= 1 or len(fields) > 3:
            raise ValueError(f"tier {part!r}: need BLOCKS >= 1 and 0 < LOW <= HIGH <= 1")
        out.append(TierCapacity(name, blocks, high, low))
    if not out:
        raise ValueError("--tiers names no tier")
    return out
