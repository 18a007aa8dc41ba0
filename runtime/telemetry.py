"""From the tier library's events and counters to telemetry messages.

``TelemetrySink`` is the hierarchy's event sink: block placements and removals go out as vLLM
``BlockStored``/``BlockRemoved`` events with ``medium`` = tier name, tiertop's own movements as
``TierMoves``, health changes as ``HealthChange``. ``StatsBuilder`` turns the hierarchy's
cumulative counters into one ``TierStats`` per tick (latency histograms as deltas).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil
from tiertop.monitor.protocol import (
    HealthChange,
    Hello,
    TierInfo,
    TierSample,
    TierStats,
    Topology,
)
from tiertop.tiers.events import EventKind, TierEvent
from tiertop.tiers.hierarchy import Hierarchy, Tier
from tiertop.tiers.numa_topology import read_sysfs_nodes
from tiertop.tiers.stats import OPERATIONS

from .publisher import TelemetryPublisher

_ENTERS = (EventKind.PUT, EventKind.PROMOTE, EventKind.DEMOTE)
_MOVES = {EventKind.PROMOTE: "promote", EventKind.DEMOTE: "demote", EventKind.DROP: "drop"}


class TelemetrySink:
    """Forwards hierarchy events to the publisher (never blocks: the publisher only queues)."""

    def __init__(self, publisher: TelemetryPublisher) -> None:
        self.publisher = publisher

    def emit(self, event: TierEvent) -> None:
        kind = event.kind
        pub = self.publisher
        key = event.key
        if key is not None:
            if kind in _ENTERS:
                destination = event.to_tier if event.to_tier is not None else event.tier
                if event.to_tier is not None and event.tier is not None:
                    pub.block_removed([key], event.tier)
                if destination is not None:
                    pub.block_stored([key], destination)
            elif (kind is EventKind.DROP or kind is EventKind.DELETE) and event.tier is not None:
                pub.block_removed([key], event.tier)
            move = _MOVES.get(kind)
            if move is not None and event.tier is not None:
                pub.move(move, key, event.tier, event.to_tier or "", event.nbytes,
                         event.latency_s, event.detail)
        elif kind is EventKind.CLEAR and event.tier is not None:
            pub.block_removed([], event.tier)  # a tier-wide clear; AllBlocksCleared is all tiers
        elif kind is EventKind.HEALTH and event.tier is not None:
            old, _, rest = event.detail.partition(" -> ")
            new, _, reason = rest.partition(": ")
            pub.publish(HealthChange(tier=event.tier, old=old, new=new, reason=reason))


def tier_info(tier: Tier) -> TierInfo:
    store = tier.store
    emulated = bool(getattr(store, "emulated", False)) if store is not None else False
    fallback = getattr(store, "fallback", None) if store is not None else None
    reason = str(getattr(fallback, "reason", "")) if fallback is not None else ""
    if not emulated and reason:
        emulated = True
    return TierInfo(
        name=tier.name,
        kind=tier.kind,
        description=tier.describe(),
        emulated=emulated,
        fallback_reason=reason,
        capacity_bytes=tier.capacity,
        max_capacity_bytes=store.max_capacity() if store is not None else None,
        live_tunable=["watermarks", "capacity", "eviction", "faults", "clear"],
    )


def build_hello(hierarchy: Hierarchy, *, mode: str, model: str, block_size: int,
                capabilities: list[str], addresses: dict[str, str]) -> Hello:
    return Hello(
        mode=mode,
        pid=os.getpid(),
        topology=Topology(
            tier_order=[t.name for t in hierarchy.tiers],
            nodes=1,
            numa_nodes=max(1, len(read_sysfs_nodes())),
            model=model,
            block_size_tokens=block_size,
            block_bytes=hierarchy.block_bytes or 0,
        ),
        tiers=[tier_info(t) for t in hierarchy.tiers],
        capabilities=capabilities,
        addresses=addresses,
    )


class StatsBuilder:
    """Builds one TierStats per tick; keeps the previous histograms to send deltas."""

    def __init__(self, hierarchy: Hierarchy, clock: Callable[[], float]) -> None:
        self.hierarchy = hierarchy
        self.clock = clock
        self.tick = 0
        self._last_clock = clock()
        self._last_latency: dict[str, dict[str, tuple[list[int], int]]] = {}
        self._process = psutil.Process()

    def sample(self, tier: Tier) -> TierSample:
        h = self.hierarchy
        c = tier.counters
        store = tier.store
        sample = TierSample(
            name=tier.name,
            used_bytes=tier.used,
            used_blocks=tier.blocks,
            capacity_bytes=tier.capacity,
            high_watermark=tier.high,
            low_watermark=tier.low,
            eviction_policy=tier.policy.name,
            health=str(tier.health),
            hits=c.hits,
            misses=h.lookups - c.hits,
            puts=c.placed + c.promotions_in + c.demotions_in,
            promotions=c.promotions_out,
            demotions=c.demotions_out,
            drops=c.drops,
            evictions=c.evictions,
            deletes=c.deletes,
            bytes_in=c.bytes_in,
            bytes_out=c.bytes_out,
            errors=c.errors,
        )
        if store is not None:
            sample.health_reason = store.health_reason
            sample.description = tier.describe()
            sample.faults = [str(f.kind) for f in store.faults()]
            sample.corrupt = store.stats.corrupt
            previous = self._last_latency.setdefault(tier.name, {})
            for op in OPERATIONS:
                hist = store.stats.latency[op]
                old_counts, old_sum = previous.get(op, ([0] * len(hist.counts), 0))
                delta = [a - b for a, b in zip(hist.counts, old_counts, strict=True)]
                if any(delta):
                    sample.latency[op] = delta
                    sample.latency_sum_ns[op] = hist.sum_ns - old_sum
                previous[op] = (list(hist.counts), hist.sum_ns)
        return sample

    def build(self, **runtime_fields: object) -> TierStats:
        now = self.clock()
        h = self.hierarchy
        memory = psutil.virtual_memory()
        nodes = read_sysfs_nodes()
        numa_free = {n.id: n.mem_free_bytes for n in nodes} if len(nodes) > 1 else None
        stats = TierStats(
            tick=self.tick,
            interval_s=now - self._last_clock,
            tiers=[self.sample(t) for t in h.tiers],
            placement_policy=h.placement.describe(),
            promotion_policy=h.promotion.name,
            rss_bytes=self._process.memory_info().rss,
            mem_total_bytes=memory.total,
            mem_available_bytes=memory.available,
            numa_free_bytes=numa_free,
            **runtime_fields,  # type: ignore[arg-type]
        )
        stats.clock = now
        self.tick += 1
        self._last_clock = now
        return stats

