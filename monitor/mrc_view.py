"""A renderer-agnostic view of the live miss-ratio curve, for the dashboard (or any other UI).

:func:`build_view` turns an :class:`~tiertop.monitor.mrc.MrcTracker` into plain data: the curve
as (blocks, hit ratio) points on a geometric size axis, each tier's mark on it (its cumulative
effective size and the hit ratio there), and the what-if sentences ("if dram were twice as
large, its hit ratio would go from 0.41 to 0.63"). It is cheap (a few hundred numpy operations)
and pure: a dashboard calls it on its render timer under the lock it folds under. Never imports
Textual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .mrc import MrcTracker

__all__ = ["CurvePoint", "MrcView", "TierMark", "build_view"]


@dataclass(frozen=True)
class CurvePoint:
    blocks: int
    hit_ratio: float


@dataclass(frozen=True)
class TierMark:
    """Where one tier sits on the curve (tiers stack: fastest first)."""

    name: str
    capacity_blocks: int
    effective_blocks: int  # capacity x (high + low) / 2
    cumulative_blocks: int  # effective blocks of this tier and every faster one
    hit_ratio: float  # this tier's share of all accesses
    cumulative_hit_ratio: float  # the curve at cumulative_blocks


@dataclass(frozen=True)
class MrcView:
    policy: str
    points: tuple[CurvePoint, ...]
    marks: tuple[TierMark, ...]
    what_ifs: tuple[str, ...]
    max_hit_ratio: float
    sampled: int
    estimated_accesses: int
    rate: float
    tracked_blocks: int
    coverage: float | None
    status: str
    low_confidence_below: int  # sizes below this are shaky: fewer than ~100 sampled blocks
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "points": [[p.blocks, p.hit_ratio] for p in self.points],
            "marks": [m.__dict__ for m in self.marks],
            "what_ifs": list(self.what_ifs),
            "max_hit_ratio": self.max_hit_ratio,
            "sampled": self.sampled,
            "estimated_accesses": self.estimated_accesses,
            "rate": self.rate,
            "tracked_blocks": self.tracked_blocks,
            "coverage": self.coverage,
            "status": self.status,
            "low_confidence_below": self.low_confidence_below,
        }


def build_view(
    tracker: MrcTracker,
    *,
    policy: str = "lru",
    points: int = 64,
    factors: Sequence[float] = (2.0,),
    min_sampled: int = 200,
) -> MrcView:
    """The view of ``tracker``'s curve now.

    Args:
        tracker: What the stream was folded into.
        policy: Which curve (``lru``, or a mini-simulated policy).
        points: Points on the size axis (geometric from 1 block to beyond the largest of: the
            biggest reuse distance seen, twice the tiers' total).
        factors: Capacity multipliers for the what-if sentences, per tier.
        min_sampled: Sampled accesses before the curve is called more than "warming up".
    """
    curve = tracker.curve
    summary = curve.summary()
    tiers = tracker.tiers
    marks = []
    cumulative = 0
    for t in tiers:
        before = cumulative
        cumulative += t.effective_blocks
        h0, h1 = curve.curve([before, cumulative], policy)
        marks.append(TierMark(t.name, t.capacity_blocks, t.effective_blocks, cumulative,
                              float(h1 - h0), float(h1)))
    top = max(curve.max_distance * 1.1, cumulative * 2.0, 16.0)
    sizes = np.unique(np.geomspace(1.0, top, max(points, 2)).astype(np.int64))
    values = curve.curve(sizes, policy) if curve.sampled else np.zeros(len(sizes))
    what_ifs = tuple(
        tracker.what_if(t.name, f, policy).text()
        for t in tiers if t.capacity_blocks > 0 and curve.sampled for f in factors
    )
    if curve.sampled == 0:
        status = "no accesses yet"
    elif curve.sampled < min_sampled:
        status = f"warming up: {curve.sampled} sampled accesses"
    else:
        status = (f"{summary['estimated_accesses']:,} accesses, {curve.sampled:,} sampled at "
                  f"{curve.rate:.3g}")
    coverage = tracker.coverage
    if coverage is not None and coverage < 0.99:
        status += f"; events revealed {coverage:.0%} of lookups"
    return MrcView(
        policy=policy,
        points=tuple(CurvePoint(int(s), float(v)) for s, v in zip(sizes, values, strict=True)),
        marks=tuple(marks),
        what_ifs=what_ifs,
        max_hit_ratio=curve.max_hit_ratio() if policy == "lru" else float(values[-1]),
        sampled=curve.sampled,
        estimated_accesses=int(summary["estimated_accesses"]),
        rate=curve.rate,
        tracked_blocks=curve.tracked_keys,
        coverage=coverage,
        status=status,
        low_confidence_below=int(100 / curve.rate) if curve.rate else 0,
    )
