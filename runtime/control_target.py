"""What a runtime implements so the control server can steer it.

The control server (``control_server.py``) decodes, validates and deduplicates requests; on the
runtime's own thread it resolves tier selectors and policy names against what the target
describes, then calls one method of :class:`ControlTarget`. A method either applies the change
and returns ``(old, new)`` or raises :class:`ControlError` having changed nothing.

Contract of every mutating method:

- it runs on the runtime's thread (the one that calls ``ControlServer.apply_pending``), so it
  may touch the hierarchy without locks;
- it is atomic: when it raises, nothing changed. Per-tier methods receive every tier a selector
  matched (existing names, at least one) and must change all of them or none;
- ``old`` and ``new`` are plain data (None, bool, int, float, str, lists, str-keyed dicts) that
  say what changed; per-tier methods return dicts keyed by tier name, e.g.
  ``({"dram": {"high": 0.9, "low": 0.7}}, {"dram": {"high": 0.8, "low": 0.6}})``.

Optional: a target may define ``resolve_tier_selector(selector) -> list[str]`` to resolve tier
selectors itself (the cluster simulator accepts ``pool@3``, the pool of rack 3, besides the
names :meth:`ControlTarget.describe_tiers` lists); without it :func:`resolve_tiers` is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from tiertop.monitor.commands import ErrorCode, TierSelector

__all__ = [
    "Change",
    "ControlError",
    "ControlTarget",
    "PolicyRole",
    "TierInfo",
    "refuse_drill_down",
    "resolve_tiers",
]

#: ``(old, new)`` as returned by every mutating method.
Change = tuple[Any, Any]
PolicyRole = Literal["eviction", "placement", "promotion"]


class ControlError(Exception):
    """The target refuses a command; nothing changed. ``code`` is an :class:`ErrorCode` value
    (or a runtime's own), ``message`` a sentence naming the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class TierInfo:
    """One tier as the control server needs to know it: its name and its kind
    (``hbm``, ``dram``, ``numa``, ``remote``, ``disk``, ...)."""

    name: str
    kind: str


@runtime_checkable
class ControlTarget(Protocol):
    """The runtime side of the control protocol: one method per command family."""

    def describe_tiers(self) -> Sequence[TierInfo]:
        """The tiers commands may address, top (fastest) first."""

    def known_policies(self) -> Mapping[PolicyRole, Sequence[str]]:
        """Selectable policy names by role; a role left out has no selectable policies."""

    def set_watermarks(self, tiers: Sequence[str], high: float, low: float) -> Change: ...

    def set_capacity(self, tiers: Sequence[str], nbytes: int) -> Change: ...

    def set_eviction_policy(
        self, tiers: Sequence[str], policy: str, options: Mapping[str, Any]
    ) -> Change: ...

    def set_placement_policy(self, policy: str, options: Mapping[str, Any]) -> Change: ...

    def set_promotion_policy(self, policy: str, options: Mapping[str, Any]) -> Change: ...

    def set_workload(self, changes: Mapping[str, float | int]) -> Change:
        """``changes`` holds only the fields the command set (see ``SetWorkload``)."""

    def set_paused(self, paused: bool) -> Change: ...

    def clear_tiers(self, tiers: Sequence[str]) -> Change: ...

    def inject_fault(
        self, tiers: Sequence[str], kind: str, duration_s: float | None, delay_s: float | None
    ) -> Change: ...

    def clear_faults(self, tiers: Sequence[str]) -> Change: ...

    def set_sim_speed(self, factor: float) -> Change:
        """A wall-clock runtime raises ``ControlError(ErrorCode.UNSUPPORTED, ...)``."""

    def set_drill_down(self, racks: Sequence[int]) -> Change:
        """Publish per-GPU detail for these racks (``SetDrillDown``). Only a cluster has racks:
        any other runtime raises ``ControlError(ErrorCode.UNSUPPORTED, ...)``, which
        :func:`refuse_drill_down` does for it."""

    def snapshot(self) -> Any:
        """Publish a full snapshot on the telemetry stream; return what identifies it (e.g.
        its sequence number)."""


def refuse_drill_down(racks: Sequence[int]) -> Change:
    """``set_drill_down`` of a runtime that is not a cluster: always refused, nothing changes."""
    raise ControlError(
        ErrorCode.UNSUPPORTED,
        "SetDrillDown needs the cluster simulator (tiertop sim); this runtime has no racks",
    )


def resolve_tiers(selector: str, tiers: Sequence[TierInfo]) -> list[str]:
    """The names of the tiers ``selector`` matches, or ControlError naming what exists.

    ``selector`` has already passed ``TierSelector.parse`` (the command was validated).
    """
    parsed = TierSelector.parse(selector)
    if parsed.name is not None:
        if any(tier.name == parsed.name for tier in tiers):
            return [parsed.name]
        known = ", ".join(sorted(tier.name for tier in tiers)) or "none"
        raise ControlError(ErrorCode.UNKNOWN_TIER, f"unknown tier {parsed.name!r}; known: {known}")
    if parsed.kind is not None:
        matched = [tier.name for tier in tiers if tier.kind == parsed.kind]
        if matched:
            return matched
        kinds = ", ".join(sorted({tier.kind for tier in tiers})) or "none"
        raise ControlError(
            ErrorCode.UNKNOWN_TIER, f"no tier of kind {parsed.kind!r}; kinds here: {kinds}"
        )
    if not tiers:
        raise ControlError(ErrorCode.UNKNOWN_TIER, "this runtime has no tiers")
    return [tier.name for tier in tiers]
