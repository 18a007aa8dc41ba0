"""The tier half of the control protocol, applied to one Hierarchy.

Shared by every runtime that owns a hierarchy. Each method validates every named tier before it
changes any, so a refused command changes nothing (the ControlTarget contract).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tiertop.monitor.commands import ErrorCode
from tiertop.tiers.health import Health
from tiertop.tiers.hierarchy import Hierarchy, validate_watermarks
from tiertop.tiers.policies.base import known_eviction_policies
from tiertop.tiers.policies.placement import PROMOTION_POLICIES, STRATEGIES
from tiertop.tiers.store import FaultKind

from .control_target import Change, ControlError, PolicyRole, TierInfo

PLACEMENTS = ("top", "spill", "selective-write", *STRATEGIES)


class TierControl:
    """Applies tier commands to ``self.hierarchy`` (set by the runtime that mixes this in)."""

    hierarchy: Hierarchy

    def describe_tiers(self) -> Sequence[TierInfo]:
        return [TierInfo(t.name, t.kind) for t in self.hierarchy.tiers]

    def known_policies(self) -> Mapping[PolicyRole, Sequence[str]]:
        return {
            "eviction": known_eviction_policies(),
            "placement": list(PLACEMENTS) + [f"only:{t.name}" for t in self.hierarchy.tiers],
            "promotion": list(PROMOTION_POLICIES),
        }

    def set_watermarks(self, tiers: Sequence[str], high: float, low: float) -> Change:
        h = self.hierarchy
        for name in tiers:
            _refuse_value_error(lambda n=name: validate_watermarks(n, high, low))
        old = {n: {"high": h.tier(n).high, "low": h.tier(n).low} for n in tiers}
        for name in tiers:
            h.set_watermarks(name, high, low)
        return old, {n: {"high": high, "low": low} for n in tiers}

    def set_capacity(self, tiers: Sequence[str], nbytes: int) -> Change:
        h = self.hierarchy
        for name in tiers:
            tier = h.tier(name)
            store = tier.store
            if store is None:
                continue
            if store.health is Health.DOWN:
                raise ControlError(ErrorCode.CONFLICT,
                                   f"tier {name} is down; its capacity can change once it is back")
            limit = store.max_capacity()
            if limit is not None and nbytes > limit:
                raise ControlError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"capacity {nbytes} B for tier {name} exceeds its medium ({limit} B)",
                )
        old = {n: h.tier(n).capacity for n in tiers}
        for name in tiers:
            _refuse_value_error(lambda n=name: h.set_capacity(n, nbytes))
        return old, {n: nbytes for n in tiers}

    def set_eviction_policy(
        self, tiers: Sequence[str], policy: str, options: Mapping[str, Any]
    ) -> Change:
        h = self.hierarchy
        if policy == "belady" and h.oracle is None:
            raise ControlError(ErrorCode.UNSUPPORTED,
                               "belady needs the future access sequence: only offline trace "
                               "replay can use it")
        if policy not in known_eviction_policies():
            known = ", ".join(known_eviction_policies())
            raise ControlError(ErrorCode.UNKNOWN_POLICY,
                               f"unknown eviction policy {policy!r}; known: {known}")
        old = {n: h.tier(n).policy.name for n in tiers}
        for name in tiers:
            _refuse_value_error(lambda n=name: h.set_eviction_policy(n, policy, **dict(options)))
        return old, {n: policy for n in tiers}

    def set_placement_policy(self, policy: str, options: Mapping[str, Any]) -> Change:
        h = self.hierarchy
        old = h.strategy_name or h.placement.describe()
        if policy in STRATEGIES:
            _refuse_value_error(lambda: h.set_strategy(policy))
        else:
            _refuse_value_error(lambda: h.set_placement(policy))
        return old, policy

    def set_promotion_policy(self, policy: str, options: Mapping[str, Any]) -> Change:
        h = self.hierarchy
        old = h.promotion.name
        _refuse_value_error(lambda: h.set_promotion(policy))
        return old, policy

    def clear_tiers(self, tiers: Sequence[str]) -> Change:
        h = self.hierarchy
        old = {n: h.tier(n).blocks for n in tiers}
        if len(tiers) == len(h.tiers):
            h.clear()
        else:
            for name in tiers:
                h.clear(name)
        return old, {n: 0 for n in tiers}

    def inject_fault(
        self, tiers: Sequence[str], kind: str, duration_s: float | None, delay_s: float | None
    ) -> Change:
        h = self.hierarchy
        fault = FaultKind(kind)
        stores = []
        for name in tiers:
            store = h.tier(name).store
            if store is None:
                raise ControlError(ErrorCode.UNSUPPORTED,
                                   f"tier {name} is accounting-only: it has no medium to fault")
            stores.append(store)
        old = {n: [str(f.kind) for f in s.faults()] for n, s in zip(tiers, stores, strict=True)}
        for store in stores:
            store.inject_fault(fault, duration_s, delay_s if delay_s is not None else 0.01)
        new = {n: [str(f.kind) for f in s.faults()] for n, s in zip(tiers, stores, strict=True)}
        return old, new

    def clear_faults(self, tiers: Sequence[str]) -> Change:
        h = self.hierarchy
        old: dict[str, list[str]] = {}
        for name in tiers:
            store = h.tier(name).store
            if store is not None:
                old[name] = [str(f.kind) for f in store.faults()]
                store.clear_faults()
        return old, {n: [] for n in old}


def _refuse_value_error(action: Any) -> Any:
    """Run ``action``; a ValueError (the hierarchy's refusal) becomes a ControlError."""
    try:
        return action()
    except ValueError as exc:
        message = str(exc)
        code = ErrorCode.UNKNOWN_POLICY if "unknown" in message and "polic" in message \
            else ErrorCode.INVALID_ARGUMENT
        raise ControlError(code, message) from None
