"""Where new blocks go, where evicted ones go next, and which hits move up.

Placement and promotion are separate, small interfaces so that users can combine them, and the
strategies people compare are named presets of the two:

==============  ===========================  ==========  ==========================================
strategy        placement                    promotion   behaviour
==============  ===========================  ==========  ==========================================
local-only      only the first DRAM tier      never       one tier; its victims are dropped
remote-only     only the first remote tier    never       one tier (numa or remote server)
disk-only       only the first disk tier      never       one tier
naive-spill     first tier with room          never       fill the top, then the next; never move up
lru-tiering     top tier, victims cascade     on-hit      the classic inclusive-free LRU hierarchy
==============  ===========================  ==========  ==========================================

``selective-write`` (only the first N blocks of a prefix go to the top tier) and
``session-prefetch`` (a hit also brings the block's successors up) combine with any of these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol


class TierView(Protocol):
    """What placement decisions may look at: a tier's identity and fill level."""

    name: str
    kind: str

    def has_room_for(self, nbytes: int) -> bool: ...

    def is_usable(self) -> bool: ...


class PlacementPolicy(ABC):
    name: ClassVar[str]

    @abstractmethod
    def target(self, tiers: Sequence[TierView], position: int, nbytes: int) -> int:
        """Index of the tier a new block goes to; ``position`` is its index within its prefix."""

    def fixed_target(self, tiers: Sequence[TierView]) -> int | None:
        """The tier every new block goes to when that never varies (None: ask ``target``)."""
        return None

    def demote_to(self, tiers: Sequence[TierView], source: int) -> int | None:
        """Index of the tier that takes ``source``'s victims, or None to drop them."""
        return source + 1 if source + 1 < len(tiers) else None

    def promote_to(self, tiers: Sequence[TierView], source: int) -> int | None:
        """Index of the tier a promoted block moves to (None: stay where it is)."""
        return 0 if source > 0 else None

    def describe(self) -> str:
        return self.name


class TopPlacement(PlacementPolicy):
    """New blocks enter the top tier; victims cascade one tier down; the last tier drops."""

    name = "top"

    def target(self, tiers: Sequence[TierView], position: int, nbytes: int) -> int:
        return 0

    def fixed_target(self, tiers: Sequence[TierView]) -> int | None:
        return 0


class SpillPlacement(PlacementPolicy):
    """New blocks go to the first tier that still has room under its high watermark."""

    name = "spill"

    def target(self, tiers: Sequence[TierView], position: int, nbytes: int) -> int:
        for index, tier in enumerate(tiers):
            if tier.is_usable() and tier.has_room_for(nbytes):
                return index
        return len(tiers) - 1

    def promote_to(self, tiers: Sequence[TierView], source: int) -> int | None:
        return None


class SelectiveWritePlacement(PlacementPolicy):
    """Only the first ``top_blocks`` blocks of each prefix enter the top tier; the rest start one
    tier down (long tails of a prompt are less likely to be reused than its head)."""

    name = "selective-write"

    def __init__(self, top_blocks: int = 8) -> None:
        if top_blocks < 0:
            raise ValueError(f"selective-write needs top_blocks >= 0, got {top_blocks}")
        self.top_blocks = top_blocks

    def target(self, tiers: Sequence[TierView], position: int, nbytes: int) -> int:
        return 0 if position < self.top_blocks or len(tiers) == 1 else 1

    def describe(self) -> str:
        return f"{self.name}(top_blocks={self.top_blocks})"


class OnlyPlacement(PlacementPolicy):
    """Every block goes to one tier and its victims are dropped: the single-tier baselines."""

    name = "only"

    def __init__(self, tier: str) -> None:
        self.tier = tier

    def _index(self, tiers: Sequence[TierView]) -> int:
        for index, tier in enumerate(tiers):
            if tier.name == self.tier:
                return index
        raise ValueError(f"placement 'only' names tier {self.tier!r}, which is not configured")

    def target(self, tiers: Sequence[TierView], position: int, nbytes: int) -> int:
        return self._index(tiers)

    def fixed_target(self, tiers: Sequence[TierView]) -> int | None:
        return self._index(tiers)

    def demote_to(self, tiers: Sequence[TierView], source: int) -> int | None:
        return None

    def promote_to(self, tiers: Sequence[TierView], source: int) -> int | None:
        return None

    def describe(self) -> str:
        return f"only({self.tier})"


@dataclass(frozen=True, slots=True)
class PromotionPolicy:
    """Which hits move up. ``prefetch_depth`` > 0 also moves the hit block's successors up."""

    name: str
    on_hit: bool
    prefetch_depth: int = 0


PROMOTION_POLICIES: dict[str, PromotionPolicy] = {
    "never": PromotionPolicy("never", on_hit=False),
    "on-hit": PromotionPolicy("on-hit", on_hit=True),
    "session-prefetch": PromotionPolicy("session-prefetch", on_hit=True, prefetch_depth=4),
}

STRATEGIES: tuple[str, ...] = (
    "local-only",
    "remote-only",
    "disk-only",
    "naive-spill",
    "lru-tiering",
)

_STRATEGY_KIND = {
    "local-only": ("dram",),
    "remote-only": ("remote", "numa"),
    "disk-only": ("disk",),
}


def placement_policy(name: str, tiers: Sequence[TierView] = ()) -> PlacementPolicy:
    """Build a placement policy from its name: ``top``, ``spill``, ``selective-write[:N]``,
    ``only:TIER``."""
    base, _, arg = name.partition(":")
    if base == "top" and not arg:
        return TopPlacement()
    if base == "spill" and not arg:
        return SpillPlacement()
    if base == "selective-write":
        try:
            return SelectiveWritePlacement(int(arg) if arg else 8)
        except ValueError as exc:
            raise ValueError(f"bad placement {name!r}: {exc}") from None
    if base == "only" and arg:
        policy = OnlyPlacement(arg)
        if tiers:
            policy._index(tiers)
        return policy
    raise ValueError(
        f"unknown placement policy {name!r}; "
        "known: top, spill, selective-write[:N], only:TIER"
    )


def promotion_policy(name: str) -> PromotionPolicy:
    try:
        return PROMOTION_POLICIES[name]
    except KeyError:
        known = ", ".join(PROMOTION_POLICIES)
        raise ValueError(f"unknown promotion policy {name!r}; known: {known}") from None


def strategy(name: str, tiers: Sequence[TierView]) -> tuple[PlacementPolicy, PromotionPolicy]:
    """The (placement, promotion) pair of a named strategy for these tiers."""
    if name == "naive-spill":
        return SpillPlacement(), PROMOTION_POLICIES["never"]
    if name == "lru-tiering":
        return TopPlacement(), PROMOTION_POLICIES["on-hit"]
    kinds = _STRATEGY_KIND.get(name)
    if kinds is None:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    for tier in tiers:
        if tier.kind in kinds:
            return OnlyPlacement(tier.name), PROMOTION_POLICIES["never"]
    raise ValueError(
        f"strategy {name!r} needs a tier of kind {' or '.join(kinds)}; configured: "
        + ", ".join(f"{t.name} ({t.kind})" for t in tiers)
    )
