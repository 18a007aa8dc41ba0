"""The live simulator: a cluster on a paced virtual clock, publishing and taking commands.

Like the model runtime, one thread does everything that touches the cluster: it applies control
commands, advances the virtual clock, and publishes every tick (``tick_s`` of wall time) a
``TierStats`` (one sample per tier kind, totals across the cluster) and a ``ClusterStats`` (per
rack, plus per GPU for the racks a reader drilled into). The publisher does its socket work on
its own thread; the control server reads its socket on this one. Message clocks are virtual
seconds (``Hello.mode`` is ``"sim"``).

Pacing: at speed ``s`` the virtual clock runs ``s`` times the wall clock; a cluster too big to
keep up runs flat out and the lag is dropped after a second (never an ever-growing backlog).
``inf`` runs as fast as possible, in slices that leave room for commands and ticks.

Control (the ``ControlTarget`` contract: each method changes everything it names or nothing):

- tier names are tier kinds (``hbm``, ``dram``, ``pool``, ``ssd``, ``remote``); a command on a kind
  acts on every tier of that kind in the cluster. ``pool@R`` names rack ``R``'s pool alone.
  ``SetCapacity`` gives the total for the kind (split evenly over its tiers), as TierStats shows;
- faults (``down``, ``slow``, ``full``, ``corrupt``) apply to shared tiers (pools, remote): a down
  pool is bypassed (its contents wait for it), a full one takes no new blocks, a corrupt one
  fails every block it serves (the block is dropped and recomputed), a slow one adds
  ``delay_s`` virtual seconds per block it serves. Durations are virtual seconds;
- ``SetSimSpeed`` sets the pace, ``SetDrillDown`` the racks with per-GPU detail (not a
  mutation: a read-only simulator takes it), ``SetWorkload`` changes the generated workload
  (refused while replaying a trace).

Request completions go out as ``RequestDone`` for one request in ``N`` (by arrival), ``N``
adapted every tick so that at most ``max_request_messages_per_s`` leave per wall second; each
message's ``sample_rate`` is ``1/N``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from tiertop.monitor.commands import FAULT_KINDS, ErrorCode
from tiertop.monitor.protocol import (
    MODE_SIM,
    ClusterStats,
    ControlChange,
    FaultEvent,
    GpuSample,
    HealthChange,
    Hello,
    RackSample,
    RequestDone,
    TierSample,
    TierStats,
)
from tiertop.monitor.protocol import (
    TierInfo as WireTierInfo,
)
from tiertop.monitor.protocol import (
    Topology as WireTopology,
)
from tiertop.monitor.security import ServerCurve
from tiertop.tiers.policies.base import eviction_policy, known_eviction_policies
from tiertop.tiers.policies.placement import (
    PROMOTION_POLICIES,
    STRATEGIES,
    placement_policy,
    promotion_policy,
    strategy,
)
from tiertop.tiers.units import format_bytes

from ..control_server import DEFAULT_CONTROL_ADDRESS, AppliedChange, ControlServer
from ..control_target import Change, ControlError, PolicyRole, TierInfo
from ..publisher import DEFAULT_ENDPOINT, DEFAULT_REPLAY_ENDPOINT, TelemetryPublisher
from ..workload import WorkloadError
from .cluster import COUNTER_FIELDS, Cluster, GeneratedSource, Shared, SimRequest, TraceSource
from .profile import Profile
from .replay import build_cluster, open_trace
from .topology import GPU_KINDS, KINDS, Topology

__all__ = ["CAPABILITIES", "SimConfig", "SimService"]

CAPABILITIES = ["live_tunable", "replay", "snapshot", "pause", "faults", "sim_speed",
                "drill_down"]
_F = {name: i for i, name in enumerate(COUNTER_FIELDS)}
_SLOT = {kind: i for i, kind in enumerate(KINDS)}


@dataclass
class SimConfig:
    """Everything ``tiertop sim`` (live) can be told."""

    topology: Topology
    profile: Profile
    seed: int = 0
    speed: float = 1.0  # virtual seconds per wall second; inf: as fast as possible
    duration_s: float | None = None  # virtual seconds, then stop
    trace: str | Path | None = None
    trace_format: str | None = None
    warmup: int = 0
    publish: str = DEFAULT_ENDPOINT
    replay: str | None = DEFAULT_REPLAY_ENDPOINT
    control: str = DEFAULT_CONTROL_ADDRESS
    read_only: bool = False
    tick_s: float = 0.25
    curve: ServerCurve | None = None
    max_request_messages_per_s: float = 500.0


class SimService:
    """Owns the cluster, the publisher and the control server (see the module docstring)."""

    def __init__(self, config: SimConfig, cluster: Cluster | None = None) -> None:
        if not config.speed > 0:
            raise ValueError(f"speed must be > 0 (inf: as fast as possible), got {config.speed}")
        self.config = config
        self._stop = threading.Event()
        self.publisher: TelemetryPublisher | None = None
        self.control: ControlServer | None = None
        if cluster is None:
            trace = None
            if config.trace is not None:
                trace = open_trace(config.trace, config.trace_format,
                                   config.topology.block_tokens, whole=False)
            cluster = build_cluster(config.topology, config.profile, trace=trace,
                                    seed=config.seed, warmup=config.warmup)
        self.cluster = cluster
        self.topology = cluster.topology
        self._ends_when_idle = isinstance(cluster.source, TraceSource)  # a trace runs out
        self.speed = config.speed
        self.paused = False
        self.drill_racks: list[int] = []
        self.tick = 0
        self._started_at = time.time()
        self._process = psutil.Process()
        self._last_clock = cluster.now
        self._last_completed = 0
        self._last_tokens = 0
        self._last_wall = time.monotonic()
        self._last_hist = [list(h) for h in cluster.fetch_hist]
        self._last_hist_ns = list(cluster.fetch_sum_ns)
        self._health: dict[str, str] = {}
        try:
            self.publisher = TelemetryPublisher(config.publish, config.replay,
                                                clock=self._clock)
            self.control = ControlServer(config.control, read_only=config.read_only,
                                         on_applied=self._on_applied, curve=config.curve)
            self.control.start()
        except BaseException:
            self.close()
            raise
        self.addresses = {"telemetry": self.publisher.address, "control": self.control.address}
        if self.publisher.replay_address:
            self.addresses["replay"] = self.publisher.replay_address
        cluster.on_done = self._on_done
        cluster.on_fault = self._on_fault
        cluster.record_fetch = True
        self.publisher.set_hello(self._hello())
        self._anchor()

    # ------------------------------------------------------------------ clock and loop

    def _clock(self) -> float:
        return self.cluster.now  # a float read: safe from the publisher's thread

    def _anchor(self) -> None:
        self._v0 = self.cluster.now
        self._w0 = time.monotonic()

    def stop(self) -> None:
        """Ask the loop to return (safe from any thread)."""
        self._stop.set()

    def run(self) -> None:
        """Simulate and serve until the duration ends, the trace ends, or ``stop()`` (a
        generated workload never ends by itself: at rate 0 the clock waits for arrivals)."""
        control = self.control
        assert control is not None
        cluster = self.cluster
        tick_s = self.config.tick_s
        end = math.inf if self.config.duration_s is None else self.config.duration_s
        self._anchor()
        next_tick = time.monotonic()
        while not self._stop.is_set():
            control.apply_pending(self)
            now = time.monotonic()
            if not self.paused:
                slice_end = time.perf_counter() + min(0.05, tick_s)
                if self.speed == math.inf:
                    target = end
                else:
                    target = min(end, self._v0 + (now - self._w0) * self.speed)
                finished = cluster.run_until(target, slice_end)
                if not finished and self.speed != math.inf and \
                        target - cluster.now > self.speed * 1.0:
                    self._anchor()  # cannot keep up: drop the backlog, run flat out
            now = time.monotonic()
            if now >= next_tick:
                self.publish_stats()
                next_tick = now + tick_s
            if cluster.now >= end or (self._ends_when_idle and cluster.idle):
                break
            upcoming = cluster.next_event_s
            if self.paused or upcoming == math.inf:  # (a generated workload at rate 0 waits)
                wait = next_tick - now
            elif self.speed == math.inf:
                continue
            else:
                wall_at = self._w0 + (upcoming - self._v0) / self.speed
                wait = min(next_tick, wall_at) - now
            if wait > 0:
                control.wait(min(wait, tick_s))
        self.publish_stats()

    def close(self) -> None:
        """Flush telemetry, stop serving sockets (idempotent)."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.publisher is not None:
            self.publisher.flush(timeout_s=1.0)
            self.publisher.close()
            self.publisher = None

    # ------------------------------------------------------------------------ telemetry

    def _hello(self) -> Hello:
        topo = self.topology
        cluster = self.cluster
        cluster.refresh_totals()
        tiers = []
        for kind in cluster.kinds:
            total = cluster.kind_totals[kind]
            count = len(cluster.hierarchies(kind))
            each = total[_F["capacity"]] // max(1, count)
            where = {"hbm": "GPU", "dram": "GPU (node share)", "ssd": "GPU (node share)",
                     "pool": "rack", "remote": "cluster"}[kind]
            tiers.append(WireTierInfo(
                name=kind, kind=kind,
                description=f"simulated {kind}: {count} x {format_bytes(each)} (one per "
                            f"{where}), accounting only",
                emulated=True, fallback_reason="simulated (tiertop sim)",
                capacity_bytes=total[_F["capacity"]], block_bytes=cluster.block_bytes,
                live_tunable=["watermarks", "capacity", "eviction", "clear"]
                + (["faults"] if kind in ("pool", "remote") else []),
            ))
        capabilities = CAPABILITIES + (["read_only"] if self.config.read_only else [])
        return Hello(
            mode=MODE_SIM,
            speed=0.0 if self.speed == math.inf else self.speed,
            started_at=self._started_at,
            pid=os.getpid(),
            topology=WireTopology(
                tier_order=list(cluster.kinds), nodes=topo.nodes, gpus=topo.gpus,
                racks=topo.racks, model=self.config.profile.model.name,
                block_size_tokens=topo.block_tokens, block_bytes=cluster.block_bytes,
                detail={"preset": topo.name, "router": "affinity + prefix-aware + load",
                        "prefill_decode": topo.describe()["pd"]},
            ),
            tiers=tiers,
            capabilities=capabilities,
            addresses=dict(self.addresses),
        )

    def publish_stats(self) -> None:
        """One TierStats and one ClusterStats for this tick."""
        publisher = self.publisher
        if publisher is None:
            return
        cluster = self.cluster
        cluster.refresh_totals()
        now = cluster.now
        wall = time.monotonic()
        interval = now - self._last_clock
        completed = cluster.completed - self._last_completed
        tokens = cluster.output_tokens - self._last_tokens
        wall_interval = max(1e-9, wall - self._last_wall)
        # RequestDone sampling for the next tick: at most max messages per wall second.
        per_wall_s = completed / wall_interval
        cluster.sample_every = max(
            1, math.ceil(per_wall_s / self.config.max_request_messages_per_s))
        queue = sum(cluster.rack_waiting)
        running = sum(cluster.rack_running)
        memory = psutil.virtual_memory()
        stats = TierStats(
            tick=self.tick, interval_s=interval,
            tiers=[self._tier_sample(kind) for kind in cluster.kinds],
            placement_policy=self._first_gpu_attr("placement"),
            promotion_policy=self._first_gpu_attr("promotion"),
            paused=self.paused, queue_depth=queue, requests_in_flight=running,
            request_rate=completed / interval if interval > 0 else 0.0,
            tokens_per_s=tokens / interval if interval > 0 else 0.0,
            prefix_query_tokens=cluster.prefix_query_tokens,
            prefix_hit_tokens=cluster.prefix_hit_tokens,
            rss_bytes=self._process.memory_info().rss,
            mem_total_bytes=memory.total, mem_available_bytes=memory.available,
        )
        stats.clock = now
        publisher.publish(stats)
        message = self._cluster_stats(interval)
        message.clock = now
        publisher.publish(message)
        self.tick += 1
        self._last_clock = now
        self._last_completed = cluster.completed
        self._last_tokens = cluster.output_tokens
        self._last_wall = wall

    def _first_gpu_attr(self, what: str) -> str:
        for g in self.cluster.gpus:
            if g.h is not None:
                if what == "placement":
                    return g.h.strategy_name or g.h.placement.describe()
                return g.h.promotion.name
        return ""

    def _tier_sample(self, kind: str) -> TierSample:
        cluster = self.cluster
        total = cluster.kind_totals[kind]
        slot = _SLOT[kind]
        first = cluster.first_hierarchy(kind).tier(kind)
        hits = cluster.kind_hits[slot]
        sample = TierSample(
            name=kind, used_bytes=total[_F["used"]], used_blocks=total[_F["blocks"]],
            capacity_bytes=total[_F["capacity"]], high_watermark=first.high,
            low_watermark=first.low, eviction_policy=first.policy.name,
            hits=hits, misses=cluster.lookups - hits, puts=total[_F["puts"]],
            promotions=total[_F["promotions"]], demotions=total[_F["demotions"]],
            drops=total[_F["drops"]], evictions=total[_F["evictions"]],
            deletes=total[_F["deletes"]], bytes_in=total[_F["bytes_in"]],
            bytes_out=total[_F["bytes_out"]], errors=cluster.errors[slot],
        )
        shared = cluster.shared_tiers(kind)
        if shared:
            down = sum(1 for s in shared if not s.usable)
            faulty = [s for s in shared if s.faults]
            sample.health = "down" if down == len(shared) else (
                "degraded" if faulty else "ok")
            sample.faults = sorted({f for s in faulty for f in s.faults})
            if faulty:
                names = ", ".join(s.name for s in faulty[:8])
                sample.health_reason = f"injected fault on {len(faulty)} of {len(shared)}: " \
                    + names + (" ..." if len(faulty) > 8 else "")
        counts = cluster.fetch_hist[slot]
        previous = self._last_hist[slot]
        delta = [a - b for a, b in zip(counts, previous, strict=True)]
        if any(delta):
            sample.latency["get"] = delta
            sample.latency_sum_ns["get"] = cluster.fetch_sum_ns[slot] - self._last_hist_ns[slot]
        self._last_hist[slot] = list(counts)
        self._last_hist_ns[slot] = cluster.fetch_sum_ns[slot]
        return sample

    def _cluster_stats(self, interval: float) -> ClusterStats:
        cluster = self.cluster
        topo = self.topology
        per_rack = topo.gpus_per_rack
        racks: list[RackSample] = []
        gpus = cluster.gpus
        kinds = [k for k in cluster.kinds if k != "remote"]
        for rack in range(topo.racks):
            occupancy: dict[str, float] = {}
            for kind in kinds:
                capacity = cluster.rack_capacity[kind][rack]
                if capacity > 0:
                    occupancy[kind] = cluster.rack_used[kind][rack] / capacity
            pool = cluster.pools[rack] if cluster.pools else None
            racks.append(RackSample(
                rack=rack, gpus=per_rack, occupancy=occupancy, hits=cluster.rack_hits[rack],
                lookups=cluster.rack_lookups[rack], evictions=cluster.rack_evictions[rack],
                load=cluster.rack_work[rack] / cluster.rack_work_cap[rack],
                queue=cluster.rack_waiting[rack], running=cluster.rack_running[rack],
                faults=sorted(pool.faults) if pool is not None else [],
            ))
        detail: list[GpuSample] = []
        for rack in self.drill_racks:
            for g in gpus[rack * per_rack:(rack + 1) * per_rack]:
                occupancy = {}
                if g.h is not None:
                    for tier in g.h.tiers:
                        if tier.capacity > 0:
                            occupancy[tier.kind] = tier.used / tier.capacity
                detail.append(GpuSample(
                    gpu=g.id, rack=g.rack, role=g.role, occupancy=occupancy, hits=g.hits,
                    lookups=g.lookups, evictions=cluster.gpu_evictions(g), load=g.load,
                    queue=len(g.queue) + len(g.admit), running=g.running,
                ))
        every = cluster.sample_every
        note = (f"RequestDone: 1 in {every} requests by arrival (sample_rate {1 / every:g}); "
                + (f"per-GPU detail for racks {', '.join(map(str, self.drill_racks))}"
                   if self.drill_racks else "no per-GPU detail (SetDrillDown to ask)"))
        return ClusterStats(tick=self.tick, interval_s=interval, racks=racks, gpus=detail,
                            drill_racks=list(self.drill_racks), sample_note=note)

    def _on_done(self, req: SimRequest, t: float, error: str) -> None:
        publisher = self.publisher
        if publisher is None:
            return
        bt = self.cluster.block_tokens
        bb = self.cluster.block_bytes
        prefix: dict[str, int] = {}
        fetch_bytes: dict[str, int] = {}
        fetch_s: dict[str, float] = {}
        if req.kind_hits is not None and req.fetch is not None:
            for slot, kind in enumerate(KINDS):
                count = req.kind_hits[slot]
                if count:
                    prefix[kind] = min(count * bt, req.prompt)
                    if kind != "hbm":
                        fetch_bytes[kind] = count * bb
                        fetch_s[kind] = req.fetch[slot]
        first = req.t_first if req.t_first is not None else t
        message = RequestDone(
            request_id=str(req.rid), conversation_id="" if req.conv is None else str(req.conv),
            ttft_s=first - req.arrival if not error else 0.0,
            tpot_s=(t - first) / (req.output - 1) if req.output > 1 and not error else 0.0,
            e2e_s=t - req.arrival, prompt_tokens=req.prompt,
            output_tokens=0 if error else req.output, prefix_tokens=prefix,
            recomputed_tokens=0 if error else req.prompt - req.restored,
            fetch_bytes=fetch_bytes, fetch_latency_s=fetch_s,
            sample_rate=1.0 / max(1, req.sampled), error=error,
        )
        message.clock = t
        publisher.publish(message)

    def _on_fault(self, tier: str, fault: str, old: str, new: str, reason: str,
                  delay_s: float, duration_s: float | None) -> None:
        publisher = self.publisher
        if publisher is None:
            return
        publisher.publish(FaultEvent(tier=tier, fault=fault, old=old, new=new, reason=reason,
                                     delay_s=delay_s, duration_s=duration_s))
        for s in self._shared(tier):
            before = self._health.get(s.name, "ok")
            if s.health != before:
                publisher.publish(HealthChange(tier=s.name, old=before, new=s.health,
                                               reason=f"{fault} {reason}"))
                self._health[s.name] = s.health

    def _on_applied(self, change: AppliedChange) -> None:
        if self.publisher is not None:
            self.publisher.publish(ControlChange(
                command=change.command, target=change.target, old=change.old, new=change.new,
                by=change.client, request_id=change.request_id,
            ))

    # ------------------------------------------------------------------- tier selection

    def describe_tiers(self) -> Sequence[TierInfo]:
        return [TierInfo(kind, kind) for kind in self.cluster.kinds]

    def resolve_tier_selector(self, selector: str) -> list[str]:
        """Kinds by name or ``kind:``, ``*`` for all, ``pool@R`` for one rack's pool."""
        kinds = list(self.cluster.kinds)
        if selector == "*":
            return kinds
        name = selector[len("kind:"):] if selector.startswith("kind:") else selector
        if name in kinds:
            return [name]
        if name.startswith("pool@") and "pool" in kinds and not selector.startswith("kind:"):
            rack = name[len("pool@"):]
            if rack.isdigit() and int(rack) < self.topology.racks:
                return [f"pool@{int(rack)}"]
            raise ControlError(ErrorCode.UNKNOWN_TIER,
                               f"no rack {rack!r}: racks are 0..{self.topology.racks - 1}")
        known = ", ".join(kinds) + (", pool@RACK" if "pool" in kinds else "")
        raise ControlError(ErrorCode.UNKNOWN_TIER,
                           f"unknown tier {selector!r}; known: {known}")

    def _split(self, name: str) -> tuple[str, int | None]:
        if name.startswith("pool@"):
            return "pool", int(name[len("pool@"):])
        return name, None

    def _shared(self, name: str) -> list[Shared]:
        kind, rack = self._split(name)
        return self.cluster.shared_tiers(kind, rack)

    def known_policies(self) -> Mapping[PolicyRole, Sequence[str]]:
        kinds = [k for k in GPU_KINDS if k in self.cluster.kinds]
        return {
            "eviction": known_eviction_policies(),
            "placement": ["top", "spill", "selective-write", *STRATEGIES]
            + [f"only:{k}" for k in kinds],
            "promotion": list(PROMOTION_POLICIES),
        }

    # --------------------------------------------------------------------- tier commands

    def set_watermarks(self, tiers: Sequence[str], high: float, low: float) -> Change:
        cluster = self.cluster
        old: dict[str, Any] = {}
        for name in tiers:
            kind, rack = self._split(name)
            tier = cluster.hierarchies(kind, rack)[0].tier(kind)
            old[name] = {"high": tier.high, "low": tier.low}
        for name in tiers:
            kind, rack = self._split(name)
            for h in cluster.hierarchies(kind, rack):
                h.set_watermarks(kind, high, low)
        cluster.mark_all_dirty()
        return old, {name: {"high": high, "low": low} for name in tiers}

    def set_capacity(self, tiers: Sequence[str], nbytes: int) -> Change:
        cluster = self.cluster
        old: dict[str, int] = {}
        new: dict[str, int] = {}
        for name in tiers:
            kind, rack = self._split(name)
            owners = cluster.hierarchies(kind, rack)
            old[name] = sum(h.tier(kind).capacity for h in owners)
            new[name] = nbytes // len(owners) * len(owners)
        for name in tiers:
            kind, rack = self._split(name)
            owners = cluster.hierarchies(kind, rack)
            each = nbytes // len(owners)
            for h in owners:
                h.set_capacity(kind, each)
        cluster.mark_all_dirty()
        return old, new

    def set_eviction_policy(
        self, tiers: Sequence[str], policy: str, options: Mapping[str, Any]
    ) -> Change:
        if policy == "belady":
            raise ControlError(ErrorCode.UNSUPPORTED,
                               "belady needs the future access sequence: only a headless "
                               "trace replay on one GPU can use it")
        try:
            eviction_policy(policy, 1, **dict(options))
        except (TypeError, ValueError) as exc:
            raise ControlError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None
        cluster = self.cluster
        old = {}
        for name in tiers:
            kind, rack = self._split(name)
            old[name] = cluster.hierarchies(kind, rack)[0].tier(kind).policy.name
        for name in tiers:
            kind, rack = self._split(name)
            for h in cluster.hierarchies(kind, rack):
                h.set_eviction_policy(kind, policy, **dict(options))
        return old, dict.fromkeys(tiers, policy)

    def _gpu_hierarchies(self) -> list[Any]:
        return [g.h for g in self.cluster.gpus if g.h is not None]

    def set_placement_policy(self, policy: str, options: Mapping[str, Any]) -> Change:
        owners = self._gpu_hierarchies()
        if not owners:
            raise ControlError(ErrorCode.UNSUPPORTED, "no GPU here caches blocks")
        first = owners[0]
        old = first.strategy_name or first.placement.describe()
        try:  # validate against the (identical) tiers of every GPU before changing any
            if policy in STRATEGIES:
                strategy(policy, first.tiers)
            else:
                placement_policy(policy, first.tiers)
        except ValueError as exc:
            raise ControlError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None
        for h in owners:
            if policy in STRATEGIES:
                h.set_strategy(policy)
            else:
                h.set_placement(policy)
        return old, policy

    def set_promotion_policy(self, policy: str, options: Mapping[str, Any]) -> Change:
        owners = self._gpu_hierarchies()
        if not owners:
            raise ControlError(ErrorCode.UNSUPPORTED, "no GPU here caches blocks")
        try:
            promotion_policy(policy)
        except ValueError as exc:
            raise ControlError(ErrorCode.UNKNOWN_POLICY, str(exc)) from None
        old = owners[0].promotion.name
        for h in owners:
            h.set_promotion(policy)
        return old, policy

    def clear_tiers(self, tiers: Sequence[str]) -> Change:
        cluster = self.cluster
        old = {}
        for name in tiers:
            kind, rack = self._split(name)
            old[name] = sum(h.tier(kind).blocks for h in cluster.hierarchies(kind, rack))
        for name in tiers:
            kind, rack = self._split(name)
            for h in cluster.hierarchies(kind, rack):
                h.clear(kind)
        cluster.mark_all_dirty()
        return old, dict.fromkeys(tiers, 0)

    def inject_fault(
        self, tiers: Sequence[str], kind: str, duration_s: float | None, delay_s: float | None
    ) -> Change:
        if kind not in FAULT_KINDS:
            raise ControlError(ErrorCode.INVALID_ARGUMENT, f"unknown fault kind {kind!r}")
        targets: dict[str, list[Shared]] = {}
        for name in tiers:
            shared = self._shared(name)
            if not shared:
                raise ControlError(
                    ErrorCode.UNSUPPORTED,
                    f"tier {name} is a GPU's own memory: faults apply to shared tiers only "
                    "(pool, pool@RACK, remote)",
                )
            targets[name] = shared
        old = {name: self._faults_of(s) for name, s in targets.items()}
        for shared in targets.values():
            self.cluster.inject_fault(shared, kind, duration_s,
                                      delay_s if delay_s is not None else 0.001)
        return old, {name: self._faults_of(s) for name, s in targets.items()}

    def clear_faults(self, tiers: Sequence[str]) -> Change:
        targets = {name: self._shared(name) for name in tiers}
        targets = {name: s for name, s in targets.items() if s}
        old = {name: self._faults_of(s) for name, s in targets.items()}
        for shared in targets.values():
            self.cluster.clear_faults(shared)
        return old, {name: [] for name in targets}

    @staticmethod
    def _faults_of(shared: list[Shared]) -> list[str]:
        return sorted({fault for s in shared for fault in s.faults})

    # ------------------------------------------------------------------ other commands

    def set_workload(self, changes: Mapping[str, float | int]) -> Change:
        source = self.cluster.source
        if not isinstance(source, GeneratedSource):
            raise ControlError(ErrorCode.UNSUPPORTED,
                               "replaying a trace: the workload is the trace")
        try:
            return source.generator.apply_set_workload(changes)
        except WorkloadError as exc:
            raise ControlError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None

    def set_paused(self, paused: bool) -> Change:
        old = self.paused
        self.paused = paused
        if old and not paused:
            self._anchor()  # the virtual clock stood still
        return old, paused

    def set_sim_speed(self, factor: float) -> Change:
        old = self.speed
        self.speed = factor
        self._anchor()
        if self.publisher is not None:
            self.publisher.set_hello(self._hello())
        return old, factor  # inf: as fast as possible

    def set_drill_down(self, racks: Sequence[int]) -> Change:
        bad = [r for r in racks if not 0 <= r < self.topology.racks]
        if bad:
            raise ControlError(ErrorCode.INVALID_ARGUMENT,
                               f"no rack {bad[0]}: racks are 0..{self.topology.racks - 1}")
        old = list(self.drill_racks)
        self.drill_racks = list(racks)
        return old, list(racks)

    def snapshot(self) -> Any:
        cluster = self.cluster
        cluster.refresh_totals()
        return {
            "replay": self.addresses.get("replay", ""),
            "clock": cluster.now,
            "tiers": {k: {"blocks": cluster.kind_totals[k][_F["blocks"]],
                          "bytes": cluster.kind_totals[k][_F["used"]]} for k in cluster.kinds},
        }

    def describe(self) -> list[str]:
        topo = self.topology
        lines = [
            f"cluster: {topo.name}: {topo.racks} racks x {topo.gpus_per_rack} GPUs "
            f"({topo.gpus} GPUs, {topo.nodes} nodes), {topo.block_tokens}-token blocks of "
            f"{format_bytes(self.cluster.block_bytes)}, prefill/decode {topo.describe()['pd']}",
            f"tiers: {', '.join(self.cluster.kinds)}",
            f"speed: {'max' if self.speed == math.inf else self.speed}x virtual time",
        ]
        lines += [f"{k}: {v}" for k, v in self.addresses.items()]
        return lines
