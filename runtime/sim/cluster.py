"""The simulated cluster: a discrete-event core on a virtual clock over the tier library.

State
=====

Every GPU that prefills owns one accounting-only :class:`~tiertop.tiers.hierarchy.Hierarchy`
(``TierConfig(store=None)``) with its own tiers, fastest first: ``hbm`` (its KV cache), ``dram``
and ``ssd`` (its shares of the node's), running the tier library's own placement, promotion,
watermark and eviction code. Each rack's shared pool is a one-tier hierarchy of its own, and so
is the optional cluster-wide remote tier.

Why not one hierarchy spanning GPU and pool: a hierarchy is exclusive (a block lives in exactly
one of its tiers) and belongs to one owner, while a rack pool is shared by 64 GPUs that may each
hold the same prefix. So the pool is an **inclusive, shared, write-through** cache beside the
GPUs' exclusive hierarchies: a block computed on a GPU is placed in that GPU's hierarchy (HBM,
cascading to DRAM and SSD under its watermarks) *and* written to the rack pool (and to the
remote tier, if any); a GPU that misses a block looks in its rack's pool, then the remote tier,
before computing it; a block found there is copied into the GPU's hierarchy and stays in the
pool. Each pool evicts with its own policy. (A victim-only pool would need the hierarchy to
report blocks it drops: see the report this module came with.)

A GPU of a separated prefill/decode cluster that only decodes has no cache hierarchy: its HBM
holds the KV of the requests it is decoding.

Time
====

Arrivals come from the workload generator or a trace player in virtual time; everything else is
an event on one heap: a prefill ending, a decode batch reaching its next completion, a KV
transfer ending, a fault expiring. Per GPU:

- prefill runs one request at a time, FIFO, and starts only when the GPU's running-request
  memory (the part of HBM outside the cache) can hold the request's KV (prompt + output tokens);
  its blocks are looked up when it starts: hits are fetched (link latency + bytes / bandwidth,
  per tier), the rest computed (``Profile.prefill_s_per_token``);
- decode is continuous batching: every step advances all running requests by one token; the
  step time follows the batch (``Profile.decode_step_s``). A per-GPU token clock makes this
  exact with one event per batch change, whatever the batch size. While a colocated GPU
  prefills, every decode step also computes one prefill chunk (chunked prefill), so steps are
  longer and the prefill pays for the decode steps it shares;
- with prefill/decode separation, the prefill GPU keeps the prompt's KV until it has moved to the
  decode GPU over RDMA (intra- or cross-rack). ``push`` reserves decode memory when the prefill
  starts and streams the KV from the first finished chunk on (pipelined); ``pull`` starts when
  the prefill is done and the decode GPU has room.

TTFT = queueing + prefill (fetch + compute) + transfer + the first decode step. Memory limits hold
in every tier (the hierarchies evict), in running-request memory (admission waits) and in the
decode batch size.

Counting
========

Each block of a request's prompt is one lookup, served by exactly one tier kind (the fastest
holding it: ``hbm``, ``dram``, ``pool``, ``ssd``, ``remote``) or missed; per-kind hits over lookups
sum to the overall hit rate. The first ``warmup`` requests (by arrival) are left out of the
summary's lookups, hits and latencies; its evictions, promotions and demotions are counted from
the moment the first counted request looks its blocks up.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from array import array
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import numpy as np
from tiertop.tiers.hierarchy import Hierarchy, TierConfig
from tiertop.tiers.policies.oracle import FutureOracle
from tiertop.tiers.stats import N_BUCKETS

from ..traces import TracePlayer, TraceRequest, TraceTokens
from ..workload import Request, WorkloadGenerator
from .profile import Link, Profile, SimConfigError
from .router import Router
from .topology import GPU_KINDS, KINDS, Topology

__all__ = [
    "COUNTER_FIELDS",
    "Cluster",
    "GeneratedSource",
    "Gpu",
    "RequestSource",
    "Shared",
    "SimRequest",
    "TraceSource",
]

EV_PREFILL_DONE = 1
EV_DECODE = 2
EV_TRANSFER_DONE = 3
EV_FAULT_END = 4

_HBM, _DRAM, _POOL, _SSD, _REMOTE = range(5)
_SLOT = {kind: i for i, kind in enumerate(KINDS)}
_EPS = 1e-6

#: Per tier, what telemetry sums: occupancy and cumulative counters of the tier library.
COUNTER_FIELDS: tuple[str, ...] = (
    "used", "blocks", "capacity", "puts", "promotions", "demotions", "drops", "evictions",
    "deletes", "bytes_in", "bytes_out",
)
_N_FIELDS = len(COUNTER_FIELDS)
_EVICTIONS = COUNTER_FIELDS.index("evictions")


def _tier_counters(tier: Any) -> tuple[int, ...]:
    c = tier.counters
    return (
        tier.used, tier.blocks, tier.capacity, c.placed + c.promotions_in + c.demotions_in,
        c.promotions_out, c.demotions_out, c.drops, c.evictions, c.deletes, c.bytes_in,
        c.bytes_out,
    )


# ------------------------------------------------------------------------------ requests


class SimRequest:
    """One request in flight (one object per request; everything else is counters)."""

    __slots__ = (
        "arrival",
        "conv",
        "counted",
        "dgpu",
        "fetch",
        "gpu",
        "index",
        "keys",
        "kind_hits",
        "need",
        "output",
        "prompt",
        "restored",
        "rid",
        "sampled",
        "source",
        "t_first",
        "t_join",
        "t_prefill",
        "t_ready",
        "t_start",
    )

    def __init__(
        self, index: int, rid: int, conv: Hashable | None, arrival: float, prompt: int,
        output: int, keys: list[int], source: Any,
    ) -> None:
        self.index = index
        self.rid = rid
        self.conv = conv
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.keys = keys
        self.source = source
        self.need = 0
        self.gpu: Gpu | None = None
        self.dgpu: Gpu | None = None
        self.counted = False
        self.sampled = 0  # 0: no RequestDone; N: one stands for N requests
        self.t_start = 0.0
        self.t_prefill = 0.0
        self.t_ready = 0.0
        self.t_join = 0.0
        self.t_first: float | None = None
        self.restored = 0
        self.kind_hits: list[int] | None = None
        self.fetch: list[float] | None = None


class RequestSource(Protocol):
    """Where requests come from (the workload generator or a trace)."""

    @property
    def next_arrival_s(self) -> float: ...

    def take(self, now: float) -> SimRequest | None:
        """The next request arrived by ``now`` (index left for the cluster to set)."""

    def complete(self, request: SimRequest) -> list[int] | None:
        """The request finished: the keys of the new full blocks its output added (None)."""

    def abandon(self, request: SimRequest) -> None: ...


class GeneratedSource:
    """Requests from a :class:`WorkloadGenerator` (closed loop: a conversation's next turn waits
    for the reply, whose blocks are then cached like the prompt's)."""

    def __init__(self, generator: WorkloadGenerator, block_tokens: int) -> None:
        self.generator = generator
        self.block_tokens = block_tokens

    @property
    def next_arrival_s(self) -> float:
        return self.generator.next_arrival_s

    def take(self, now: float) -> SimRequest | None:
        r = self.generator.next_request(now)
        if r is None:
            return None
        keys = self.generator.context_block_hashes(r, self.block_tokens)
        return SimRequest(0, r.request_id, r.conversation_id, r.arrival_s,
                          len(r.context_tokens), r.max_new_tokens, keys, r)

    def complete(self, request: SimRequest) -> list[int] | None:
        gen = self.generator
        r: Request = request.source
        reply = gen.synthetic_reply(r)
        if not gen.complete(r, reply):
            return None
        full = np.concatenate((r.context_tokens, reply))
        whole = Request(r.request_id, r.conversation_id, r.turn, r.arrival_s, full, 0, 0)
        keys = gen.context_block_hashes(whole, self.block_tokens)
        return keys[len(request.keys):]

    def abandon(self, request: SimRequest) -> None:
        self.generator.abandon(request.source)


class TraceSource:
    """Requests from a trace (open loop: arrivals as recorded, nothing to complete)."""

    def __init__(self, requests: list[TraceRequest] | TracePlayer, block_tokens: int,
                 tokens: TraceTokens | None = None) -> None:
        self.player = requests if isinstance(requests, TracePlayer) else TracePlayer(requests)
        self.tokens = tokens or TraceTokens(block_tokens)
        self._count = 0

    @property
    def next_arrival_s(self) -> float:
        return self.player.next_arrival_s

    def take(self, now: float) -> SimRequest | None:
        tr = self.player.next_request(now)
        if tr is None:
            return None
        rid = self._count
        self._count += 1
        keys = self.tokens.block_keys(tr)
        return SimRequest(0, rid, tr.conversation_id, tr.arrival_s, max(1, tr.input_tokens),
                          max(1, tr.output_tokens), keys, None)

    def complete(self, request: SimRequest) -> list[int] | None:
        return None

    def abandon(self, request: SimRequest) -> None:
        pass


# ---------------------------------------------------------------------------------- GPUs


class Gpu:
    """One GPU: its hierarchy (None on a decode-only GPU), queues and decode batch."""

    __slots__ = (
        "admit", "busy", "dec_clock", "dec_heap", "dec_kv", "dec_n", "dec_step", "dec_t",
        "dec_ver", "dec_wait", "first_heap", "h", "hits", "id", "kind_slots", "lookups",
        "node", "prefilling", "prev", "queue", "queued_tokens", "rack", "role", "running",
        "work_cap", "work_used",
    )

    def __init__(self, gid: int, rack: int, node: int, role: str, h: Hierarchy | None,
                 work_cap: int) -> None:
        self.id = gid
        self.rack = rack
        self.node = node
        self.role = role
        self.h = h
        self.kind_slots: tuple[int, ...] = tuple(
            _SLOT[t.kind] for t in h.tiers) if h is not None else ()
        self.prev: list[tuple[int, ...]] = [
            (0,) * _N_FIELDS for _ in (h.tiers if h is not None else ())]
        self.queue: deque[SimRequest] = deque()
        self.queued_tokens = 0
        self.busy: SimRequest | None = None
        self.work_cap = work_cap
        self.work_used = 0
        self.admit: deque[SimRequest] = deque()  # decode GPUs: waiting for memory
        self.running = 0
        self.prefilling = False
        self.dec_n = 0
        self.dec_kv = 0
        self.dec_clock = 0.0
        self.dec_t = 0.0
        self.dec_step = 0.0
        self.dec_ver = 0
        self.dec_heap: list[tuple[float, int, SimRequest]] = []
        self.first_heap: list[tuple[float, int, SimRequest]] = []
        self.dec_wait: deque[SimRequest] = deque()
        self.hits = 0
        self.lookups = 0

    @property
    def load(self) -> float:
        return self.work_used / self.work_cap if self.work_cap else 0.0


class Shared:
    """A shared tier: one rack's pool (``rack`` >= 0) or the cluster's remote tier (-1)."""

    __slots__ = (
        "corrupt",
        "faults",
        "h",
        "kind",
        "name",
        "prev",
        "rack",
        "slow_s",
        "usable",
        "writable",
    )

    def __init__(self, name: str, kind: str, rack: int, h: Hierarchy) -> None:
        self.name = name
        self.kind = kind
        self.rack = rack
        self.h = h
        self.prev: tuple[int, ...] = (0,) * _N_FIELDS
        self.faults: dict[str, tuple[float | None, float, int]] = {}  # kind: (until, delay, id)
        self.usable = True
        self.writable = True
        self.corrupt = False
        self.slow_s = 0.0

    def refresh(self) -> None:
        faults = self.faults
        self.usable = "down" not in faults
        self.writable = self.usable and "full" not in faults
        self.corrupt = "corrupt" in faults
        slow = faults.get("slow")
        self.slow_s = slow[1] if slow is not None else 0.0

    @property
    def health(self) -> str:
        if not self.usable:
            return "down"
        return "degraded" if self.faults else "ok"


DoneHook = Callable[[SimRequest, float, str], None]
FaultHook = Callable[[str, str, str, str, str, float, float | None], None]


# -------------------------------------------------------------------------------- cluster


class Cluster:
    """The whole simulated cluster (see the module docstring).

    Args:
        topology: what it is made of.
        profile: what things cost.
        source: where requests come from.
        seed: seeds the router's sampling.
        warmup: requests (by arrival) left out of the summary.
        oracle: the future access sequence, for ``belady`` (a single GPU only).
    """

    def __init__(
        self,
        topology: Topology,
        profile: Profile,
        source: RequestSource,
        *,
        seed: int = 0,
        warmup: int = 0,
        oracle: FutureOracle | None = None,
    ) -> None:
        topology.validate()
        self.topology = topology
        self.profile = profile
        self.source = source
        self.warmup = warmup
        self.now = 0.0
        self.arrivals_open = True
        self.block_tokens = topology.block_tokens
        self.kv_per_token = profile.kv_bytes_per_token
        self.block_bytes = self.block_tokens * self.kv_per_token
        self.t_token = profile.prefill_s_per_token
        self.chunk_tokens = profile.scheduler.prefill_chunk_tokens
        self.chunk_s = self.chunk_tokens * self.t_token
        self.max_batch = profile.scheduler.max_decode_batch
        self.pd = topology.pd.enabled
        self.push = topology.pd.transfer == "push"
        self.links: list[Link | None] = [
            None, profile.pcie, profile.rdma.link(True), profile.nvme, profile.rdma.link(False)]
        if oracle is not None and topology.gpus != 1:
            raise ValueError("belady needs the whole access sequence: a single GPU only")
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        self._build(oracle)
        self.router = Router(self, random.Random(seed))
        self.kinds = [k for k in KINDS if self._kind_present(k)]
        # Counters: telemetry (everything) ...
        self.arrived = 0
        self.completed = 0
        self.failed = 0
        self.lookups = 0
        self.kind_hits = [0] * len(KINDS)
        self.errors = [0] * len(KINDS)
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0
        self.output_tokens = 0
        self.transfers = 0
        self.transfer_bytes = 0
        self.rack_hits = [0] * topology.racks
        self.rack_lookups = [0] * topology.racks
        # Per rack: requests waiting (GPU queues, decode admission), in service, and the
        # running-request memory in use and in all.
        self.rack_waiting = [0] * topology.racks
        self.rack_running = [0] * topology.racks
        self.rack_work = [0] * topology.racks
        self.rack_work_cap = [0] * topology.racks
        for g in self.gpus:
            self.rack_work_cap[g.rack] += g.work_cap
        # ... and the summary (counted requests only).
        self.sum_lookups = 0
        self.sum_kind_hits = [0] * len(KINDS)
        self.sum_completed = 0
        self.sum_failed = 0
        self.ttft = array("d")
        self.tpot = array("d")
        self.e2e = array("d")
        self.queue_s = array("d")
        self._baseline: dict[str, list[int]] | None = None if warmup else self._totals_by_kind()
        # Telemetry totals, kept up to date for dirty owners only.
        self.kind_totals: dict[str, list[int]] = {k: [0] * _N_FIELDS for k in KINDS}
        self.rack_used: dict[str, list[int]] = {k: [0] * topology.racks for k in KINDS}
        self.rack_capacity: dict[str, list[int]] = {k: [0] * topology.racks for k in KINDS}
        self.rack_evictions = [0] * topology.racks
        self._dirty_gpus: set[int] = {g.id for g in self.gpus if g.h is not None}
        self._dirty_shared: set[Shared] = set(self.pools) | (
            {self.remote} if self.remote is not None else set())
        self.refresh_totals()
        # Hooks for the live service.
        self.on_done: DoneHook | None = None
        self.on_fault: FaultHook | None = None
        self.sample_every = 1
        self._fault_ids = 0
        # Per-kind histograms of each request's fetch time from that kind (service telemetry).
        self.record_fetch = False
        self.fetch_hist = [[0] * N_BUCKETS for _ in KINDS]
        self.fetch_sum_ns = [0] * len(KINDS)

    # ------------------------------------------------------------------------- building

    def _tier_config(self, kind: str, capacity: int) -> TierConfig:
        config = self.topology.kind(kind)
        return TierConfig(kind, capacity, high=config.high, low=config.low,
                          eviction=config.eviction, kind=kind)

    def _build(self, oracle: FutureOracle | None) -> None:
        topo = self.topology
        bb = self.block_bytes
        cache = (topo.hbm_cache_blocks * bb if topo.hbm_cache_blocks is not None
                 else int(topo.hbm.bytes * topo.hbm_cache_fraction))
        work_colocated = topo.hbm.bytes - int(topo.hbm.bytes * topo.hbm_cache_fraction)
        per_gpu = {
            "hbm": cache,
            "dram": topo.dram.bytes // topo.gpus_per_node,
            "ssd": topo.ssd.bytes // topo.gpus_per_node,
        }
        configs = [self._tier_config(k, per_gpu[k]) for k in GPU_KINDS if per_gpu[k] >= bb]
        if not configs or configs[0].name != "hbm":
            raise SimConfigError(
                "hbm.bytes_per_gpu",
                f"each GPU's HBM cache ({per_gpu['hbm']} B) must hold at least one block "
                f"({bb} B of {topo.block_tokens} tokens)",
            )
        self.gpu_capacity = {c.name: c.capacity_bytes for c in configs}
        prefill_per_rack = max(1, min(topo.gpus_per_rack - 1,
                                      round(topo.gpus_per_rack * topo.pd.prefill_share)))
        self.gpus: list[Gpu] = []
        for gid in range(topo.gpus):
            rack, local = divmod(gid, topo.gpus_per_rack)
            role = "colocated"
            if topo.pd.enabled:
                role = "prefill" if local < prefill_per_rack else "decode"
            h: Hierarchy | None = None
            work = work_colocated
            if role == "decode":
                work = topo.hbm.bytes
            elif configs:
                h = Hierarchy(configs, block_bytes=bb, placement=topo.placement,
                              promotion=topo.promotion, oracle=oracle)
            self.gpus.append(Gpu(gid, rack, gid // topo.gpus_per_node, role, h, work))
        self.pools: list[Shared] = []
        if topo.pool.bytes >= bb:
            for rack in range(topo.racks):
                h = Hierarchy([self._tier_config("pool", topo.pool.bytes)], block_bytes=bb)
                self.pools.append(Shared(f"pool@{rack}", "pool", rack, h))
        self.remote: Shared | None = None
        if topo.remote.bytes >= bb:
            h = Hierarchy([self._tier_config("remote", topo.remote.bytes)], block_bytes=bb)
            self.remote = Shared("remote", "remote", -1, h)
        self.has_shared = bool(self.pools) or self.remote is not None

    def _kind_present(self, kind: str) -> bool:
        if kind == "pool":
            return bool(self.pools)
        if kind == "remote":
            return self.remote is not None
        return kind in self.gpu_capacity

    def hierarchies(self, kind: str, rack: int | None = None) -> list[Hierarchy]:
        """Every hierarchy holding a tier of ``kind`` (one rack's pool with ``rack``)."""
        if kind == "pool":
            pools = self.pools if rack is None else [self.pools[rack]]
            return [p.h for p in pools]
        if kind == "remote":
            return [self.remote.h] if self.remote is not None else []
        return [g.h for g in self.gpus if g.h is not None and kind in self.gpu_capacity]

    def first_hierarchy(self, kind: str) -> Hierarchy:
        """One hierarchy with a tier of ``kind`` (they share settings unless a rack's pool was
        changed alone)."""
        if kind == "pool":
            return self.pools[0].h
        if kind == "remote" and self.remote is not None:
            return self.remote.h
        for g in self.gpus:
            if g.h is not None:
                return g.h
        raise ValueError(f"no tier of kind {kind!r} here")

    def mark_all_dirty(self) -> None:
        self._dirty_gpus.update(g.id for g in self.gpus if g.h is not None)
        self._dirty_shared.update(self.pools)
        if self.remote is not None:
            self._dirty_shared.add(self.remote)

    # --------------------------------------------------------------------------- the loop

    def _push(self, t: float, code: int, a: Any, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, code, a, b))

    @property
    def next_event_s(self) -> float:
        """Virtual time of the next thing that will happen (inf: nothing scheduled)."""
        t = self._heap[0][0] if self._heap else math.inf
        if self.arrivals_open:
            t = min(t, self.source.next_arrival_s)
        return t

    @property
    def idle(self) -> bool:
        """Nothing in flight and no more arrivals."""
        return not self._heap and (
            not self.arrivals_open or self.source.next_arrival_s == math.inf)

    def run_until(self, t_stop: float, wall_deadline: float | None = None) -> bool:
        """Process everything up to virtual time ``t_stop``; True when done, False when the
        wall-clock ``wall_deadline`` (``time.perf_counter()``) came first."""
        heap = self._heap
        source = self.source
        pop = heapq.heappop
        perf = time.perf_counter
        steps = 0
        while True:
            t_event = heap[0][0] if heap else math.inf
            t_arrival = source.next_arrival_s if self.arrivals_open else math.inf
            if t_arrival <= t_event:
                if t_arrival > t_stop or t_arrival == math.inf:
                    break
                self.now = t_arrival
                req = source.take(t_arrival)
                if req is not None:
                    self._arrive(req)
            else:
                if t_event > t_stop:
                    break
                t, _, code, a, b = pop(heap)
                if code == EV_DECODE:
                    if b == a.dec_ver:  # else superseded by a later reschedule: no time passes
                        self.now = t
                        self._decode_step(a)
                elif code == EV_PREFILL_DONE:
                    self.now = t
                    self._prefill_done(a)
                elif code == EV_TRANSFER_DONE:
                    self.now = t
                    self._transfer_done(a)
                else:
                    self.now = t
                    self._fault_end(a, b)
            steps += 1
            if wall_deadline is not None and not steps & 63 and perf() >= wall_deadline:
                return False
        if t_stop != math.inf and t_stop > self.now:
            self.now = t_stop
        return True

    def close_arrivals(self) -> None:
        """No more requests: what is in flight still finishes (``run_until(inf)`` drains)."""
        self.arrivals_open = False

    # ------------------------------------------------------------------------- arrivals

    def _arrive(self, req: SimRequest) -> None:
        index = self.arrived
        self.arrived = index + 1
        req.index = index
        req.counted = index >= self.warmup
        every = self.sample_every
        req.sampled = every if self.on_done is not None and index % every == 0 else 0
        kv = self.kv_per_token
        req.need = (req.prompt + req.output) * kv
        g = self.router.choose(req)
        req.gpu = g
        first_need = req.prompt * kv if self.pd else req.need
        if first_need > g.work_cap or (self.pd and req.need > self.topology.hbm.bytes):
            self._fail(req, f"request KV ({req.need} B) exceeds a GPU's running-request memory")
            return
        g.queue.append(req)
        g.queued_tokens += req.prompt
        self.rack_waiting[g.rack] += 1
        self._try_start(g)

    def _fail(self, req: SimRequest, why: str) -> None:
        self.failed += 1
        if req.counted:
            self.sum_failed += 1
        self.source.abandon(req)
        if self.on_done is not None and req.sampled:
            self.on_done(req, self.now, why)

    # -------------------------------------------------------------------------- prefill

    def _try_start(self, g: Gpu) -> None:
        queue = g.queue
        kv = self.kv_per_token
        pd = self.pd
        while g.busy is None and queue:
            req = queue[0]
            reserve = req.prompt * kv if pd else req.need
            if g.work_used + reserve > g.work_cap:
                return
            queue.popleft()
            g.queued_tokens -= req.prompt
            g.work_used += reserve
            g.running += 1
            rack = g.rack
            self.rack_waiting[rack] -= 1
            self.rack_work[rack] += reserve
            self.rack_running[rack] += 1
            self._start_prefill(g, req)

    def _start_prefill(self, g: Gpu, req: SimRequest) -> None:
        now = self.now
        req.t_start = now
        fetch_s, restored = self._lookup(g, req)
        computed = req.prompt - restored
        compute_s = computed * self.t_token
        if g.role == "colocated":
            self._advance(g, now)
            if g.dec_n:  # chunked prefill: each chunk shares a decode step of the batch
                compute_s += -(-computed // self.chunk_tokens) * self._base_step(g)
            g.prefilling = True
            self._set_step(g)
            self._reschedule(g)
        done = now + fetch_s + compute_s
        g.busy = req
        req.t_prefill = done
        req.t_ready = now + fetch_s + min(computed, self.chunk_tokens) * self.t_token
        self._push(done, EV_PREFILL_DONE, req)
        if self.pd and self.push:
            d = self.router.choose_decode(req, g)
            req.dgpu = d
            d.admit.append(req)
            self.rack_waiting[d.rack] += 1
            self._try_admit(d)

    def _lookup(self, g: Gpu, req: SimRequest) -> tuple[float, int]:
        """Look up the prompt's blocks on ``g``: (fetch seconds, restored tokens)."""
        if req.counted and self._baseline is None:
            self._baseline = self._totals_by_kind()
        h = g.h
        assert h is not None
        keys = req.keys
        n = len(keys)
        counts = [0, 0, 0, 0, 0]
        slow = 0.0
        if not self.has_shared:
            tiers = h.tiers
            before = [t.counters.hits for t in tiers]
            h.run_trace(keys, self.block_bytes)
            slots = g.kind_slots
            for i, tier in enumerate(tiers):
                counts[slots[i]] += tier.counters.hits - before[i]
        else:
            counts, slow = self._lookup_shared(g, keys)
        hits = sum(counts)
        restored = hits * self.block_tokens
        if restored >= req.prompt:
            restored = req.prompt - 1  # the last token is always computed
        req.restored = restored
        fetch = 0.0
        times: list[float] | None = [0.0] * 5 if req.sampled else None
        hist = self.fetch_hist if self.record_fetch else None
        if hist is not None and counts[_HBM]:
            hist[_HBM][0] += 1  # served in place
        links = self.links
        bb = self.block_bytes
        for slot in (_DRAM, _POOL, _SSD, _REMOTE):
            count = counts[slot]
            if count:
                link = links[slot]
                assert link is not None
                seconds = link.latency + count * bb / link.bandwidth
                fetch += seconds
                if times is not None:
                    times[slot] = seconds
                if hist is not None:
                    ns = int(seconds * 1e9)
                    bucket = ns.bit_length()
                    hist[slot][bucket if bucket < N_BUCKETS else N_BUCKETS - 1] += 1
                    self.fetch_sum_ns[slot] += ns
        fetch += slow
        # counters
        self.lookups += n
        kind_hits = self.kind_hits
        for slot in range(5):
            kind_hits[slot] += counts[slot]
        g.lookups += n
        g.hits += hits
        self.rack_lookups[g.rack] += n
        self.rack_hits[g.rack] += hits
        self.prefix_query_tokens += req.prompt
        self.prefix_hit_tokens += restored
        if req.counted:
            self.sum_lookups += n
            sums = self.sum_kind_hits
            for slot in range(5):
                sums[slot] += counts[slot]
        self._dirty_gpus.add(g.id)
        if times is not None:
            req.kind_hits = counts
            req.fetch = times
        return fetch, restored

    def _lookup_shared(self, g: Gpu, keys: list[int]) -> tuple[list[int], float]:
        h = g.h
        assert h is not None
        access = h.access
        bb = self.block_bytes
        slots = g.kind_slots
        pool = self.pools[g.rack] if self.pools else None
        if pool is not None and not pool.usable:
            pool = None
        remote = self.remote if self.remote is not None and self.remote.usable else None
        counts = [0, 0, 0, 0, 0]
        slow = 0.0
        for key in keys:
            index = access(key, bb)
            if index >= 0:
                slot = slots[index]
                if slot == _SSD and pool is not None and pool.h.locate(key) is not None \
                        and not pool.corrupt:
                    pool.h.access(key, bb)  # the pool is faster than the SSD: serve from it
                    counts[_POOL] += 1
                    slow += pool.slow_s
                    self._dirty_shared.add(pool)
                else:
                    counts[slot] += 1
                continue
            # A miss on the GPU (the block is now placed in its hierarchy, as new).
            if pool is not None and self._shared_lookup(pool, key):
                counts[_POOL] += 1
                slow += pool.slow_s
                continue
            if remote is not None and self._shared_lookup(remote, key):
                counts[_REMOTE] += 1
                slow += remote.slow_s
        return counts, slow

    def _shared_lookup(self, shared: Shared, key: int) -> bool:
        """True when ``shared`` serves ``key``; a miss writes it through when it can."""
        h = shared.h
        self._dirty_shared.add(shared)
        if h.locate(key) is not None:
            if shared.corrupt:  # the copy fails its check: dropped, and the block recomputed
                h.delete(key)
                self.errors[_SLOT[shared.kind]] += 1
                if shared.writable:
                    h.access(key, self.block_bytes)
                return False
            h.access(key, self.block_bytes)
            return True
        if shared.writable:
            h.access(key, self.block_bytes)
        return False

    def _prefill_done(self, req: SimRequest) -> None:
        g = req.gpu
        assert g is not None
        g.busy = None
        if g.role == "colocated":
            self._advance(g, self.now)
            g.prefilling = False
            self._join(g, req)
            self._set_step(g)
            self._reschedule(g)
        elif not self.push:
            d = self.router.choose_decode(req, g)
            req.dgpu = d
            d.admit.append(req)
            self.rack_waiting[d.rack] += 1
            self._try_admit(d)
        self._try_start(g)

    # ------------------------------------------------------------------------- transfer

    def _try_admit(self, d: Gpu) -> None:
        admit = d.admit
        while admit:
            req = admit[0]
            if d.work_used + req.need > d.work_cap:
                return
            admit.popleft()
            d.work_used += req.need
            d.running += 1
            rack = d.rack
            self.rack_waiting[rack] -= 1
            self.rack_work[rack] += req.need
            self.rack_running[rack] += 1
            self._start_transfer(req, d)

    def _start_transfer(self, req: SimRequest, d: Gpu) -> None:
        now = self.now
        p = req.gpu
        assert p is not None
        link = self.profile.rdma.link(p.rack == d.rack)
        nbytes = req.prompt * self.kv_per_token
        whole = link.latency + nbytes / link.bandwidth
        if self.push and now < req.t_prefill:  # pipelined: the first chunk is already moving
            start = max(now, req.t_ready)
            last = min(req.prompt, self.chunk_tokens) * self.kv_per_token / link.bandwidth
            done = max(start + whole, req.t_prefill + link.latency + last)
        else:
            done = max(now, req.t_prefill) + whole
        self.transfers += 1
        self.transfer_bytes += nbytes
        self._push(done, EV_TRANSFER_DONE, req)

    def _transfer_done(self, req: SimRequest) -> None:
        p, d = req.gpu, req.dgpu
        assert p is not None and d is not None
        released = req.prompt * self.kv_per_token
        p.work_used -= released
        p.running -= 1
        self.rack_work[p.rack] -= released
        self.rack_running[p.rack] -= 1
        self._try_start(p)
        self._advance(d, self.now)
        self._join(d, req)
        self._reschedule(d)

    # --------------------------------------------------------------------------- decode

    def _base_step(self, g: Gpu) -> float:
        return self.profile.decode_step_s(g.dec_n, g.dec_kv) if g.dec_n else 0.0

    def _set_step(self, g: Gpu) -> None:
        step = self._base_step(g)
        if g.prefilling and g.dec_n:
            step += self.chunk_s
        g.dec_step = step

    def _advance(self, g: Gpu, t: float) -> None:
        """Move ``g``'s token clock to time ``t`` (first tokens crossed get their time)."""
        if g.dec_n:
            step = g.dec_step
            clock = g.dec_clock
            new = clock + (t - g.dec_t) / step
            first = g.first_heap
            while first and first[0][0] <= new + _EPS:
                target, _, r = heapq.heappop(first)
                r.t_first = g.dec_t + max(0.0, target - clock) * step
            g.dec_clock = new
        g.dec_t = t

    def _reschedule(self, g: Gpu) -> None:
        """Replace ``g``'s pending batch event by one at its next completion (first tokens
        need no event: the next clock advance dates them exactly)."""
        g.dec_ver += 1
        if g.dec_n:
            ahead = g.dec_heap[0][0] - g.dec_clock
            self._push(g.dec_t + max(0.0, ahead) * g.dec_step, EV_DECODE, g, g.dec_ver)

    def _join(self, g: Gpu, req: SimRequest) -> None:
        """``req`` (its KV resident on ``g``, clock advanced to now) starts decoding; the
        caller reschedules ``g``'s batch event."""
        if g.dec_n >= self.max_batch:
            g.dec_wait.append(req)
            return
        g.dec_n += 1
        g.dec_kv += req.prompt + req.output
        self._set_step(g)
        clock = g.dec_clock
        heapq.heappush(g.dec_heap, (clock + req.output, req.index, req))
        heapq.heappush(g.first_heap, (clock + 1.0, req.index, req))
        req.t_join = self.now

    def _decode_step(self, g: Gpu) -> None:
        now = self.now
        self._advance(g, now)
        heap = g.dec_heap
        limit = g.dec_clock + _EPS
        finished: list[SimRequest] = []
        while heap and heap[0][0] <= limit:
            r = heapq.heappop(heap)[2]
            g.dec_n -= 1
            g.dec_kv -= r.prompt + r.output
            finished.append(r)
        if g.dec_n == 0:
            g.dec_clock = 0.0
            g.first_heap.clear()
        for r in finished:
            self._finish(r, g)
        wait = g.dec_wait
        while wait and g.dec_n < self.max_batch:
            self._join(g, wait.popleft())
        self._set_step(g)
        self._reschedule(g)
        if g.role == "decode":
            self._try_admit(g)
        else:
            self._try_start(g)

    def _finish(self, req: SimRequest, g: Gpu) -> None:
        now = self.now
        g.work_used -= req.need
        g.running -= 1
        self.rack_work[g.rack] -= req.need
        self.rack_running[g.rack] -= 1
        self.completed += 1
        self.output_tokens += req.output
        first = req.t_first if req.t_first is not None else now
        req.t_first = first
        if req.counted:
            self.sum_completed += 1
            self.ttft.append(first - req.arrival)
            self.tpot.append((now - first) / (req.output - 1) if req.output > 1 else 0.0)
            self.e2e.append(now - req.arrival)
            self.queue_s.append(req.t_start - req.arrival)
        new_keys = self.source.complete(req)
        if new_keys:
            self._cache_output(g, new_keys)
        if self.on_done is not None and req.sampled:
            self.on_done(req, now, "")

    def _cache_output(self, g: Gpu, keys: list[int]) -> None:
        """The reply's full blocks stay cached: in the GPU's hierarchy and its rack's pool."""
        bb = self.block_bytes
        if g.h is not None:
            access = g.h.access
            for key in keys:
                access(key, bb)
            self._dirty_gpus.add(g.id)
        shared = [s for s in (self.pools[g.rack] if self.pools else None, self.remote)
                  if s is not None and s.writable]
        for s in shared:
            access = s.h.access
            locate = s.h.locate
            for key in keys:
                if locate(key) is None:
                    access(key, bb)
            self._dirty_shared.add(s)

    # --------------------------------------------------------------------------- faults

    def shared_tiers(self, kind: str, rack: int | None = None) -> list[Shared]:
        if kind == "pool":
            return list(self.pools) if rack is None else [self.pools[rack]]
        if kind == "remote" and self.remote is not None:
            return [self.remote]
        return []

    def inject_fault(self, shared: list[Shared], fault: str, duration_s: float | None,
                     delay_s: float) -> None:
        for s in shared:
            self._fault_ids += 1
            until = None if duration_s is None else self.now + duration_s
            was = fault in s.faults
            s.faults[fault] = (until, delay_s, self._fault_ids)
            s.refresh()
            if until is not None:
                self._push(until, EV_FAULT_END, s, (fault, self._fault_ids))
            if self.on_fault is not None:
                self.on_fault(s.name, fault, "active" if was else "inactive", "active",
                              "injected", delay_s, duration_s)

    def clear_faults(self, shared: list[Shared]) -> None:
        for s in shared:
            for fault in sorted(s.faults):
                del s.faults[fault]
                if self.on_fault is not None:
                    self.on_fault(s.name, fault, "active", "inactive", "cleared", 0.0, None)
            s.refresh()

    def _fault_end(self, shared: Shared, what: tuple[str, int]) -> None:
        fault, fid = what
        current = shared.faults.get(fault)
        if current is None or current[2] != fid:
            return  # cleared or replaced meanwhile
        del shared.faults[fault]
        shared.refresh()
        if self.on_fault is not None:
            self.on_fault(shared.name, fault, "active", "inactive", "expired", 0.0, None)

    # -------------------------------------------------------------------------- counters

    def refresh_totals(self) -> None:
        """Fold the counters of every hierarchy touched since the last call into the
        per-kind and per-rack totals (cost proportional to activity, not to cluster size)."""
        totals = self.kind_totals
        rack_used = self.rack_used
        rack_capacity = self.rack_capacity
        rack_evictions = self.rack_evictions
        gpus = self.gpus
        for gid in self._dirty_gpus:
            g = gpus[gid]
            h = g.h
            if h is None:
                continue
            rack = g.rack
            prev = g.prev
            for i, tier in enumerate(h.tiers):
                now = _tier_counters(tier)
                old = prev[i]
                if now == old:
                    continue
                kind = tier.kind
                total = totals[kind]
                for j in range(_N_FIELDS):
                    total[j] += now[j] - old[j]
                rack_used[kind][rack] += now[0] - old[0]
                rack_capacity[kind][rack] += now[2] - old[2]
                rack_evictions[rack] += now[_EVICTIONS] - old[_EVICTIONS]
                prev[i] = now
        self._dirty_gpus.clear()
        for s in self._dirty_shared:
            tier = s.h.tiers[0]
            now = _tier_counters(tier)
            old = s.prev
            if now == old:
                continue
            total = totals[s.kind]
            for j in range(_N_FIELDS):
                total[j] += now[j] - old[j]
            if s.rack >= 0:
                rack_used[s.kind][s.rack] += now[0] - old[0]
                rack_capacity[s.kind][s.rack] += now[2] - old[2]
                rack_evictions[s.rack] += now[_EVICTIONS] - old[_EVICTIONS]
            s.prev = now
        self._dirty_shared.clear()

    def gpu_evictions(self, g: Gpu) -> int:
        return sum(t.counters.evictions for t in g.h.tiers) if g.h is not None else 0

    def _totals_by_kind(self) -> dict[str, list[int]]:
        """Every hierarchy's counters summed by kind, read afresh (summary baselines)."""
        out = {k: [0] * _N_FIELDS for k in KINDS}
        owners: list[Hierarchy] = [g.h for g in self.gpus if g.h is not None]
        owners += [p.h for p in self.pools]
        if self.remote is not None:
            owners.append(self.remote.h)
        for h in owners:
            for tier in h.tiers:
                total = out[tier.kind]
                for j, value in enumerate(_tier_counters(tier)):
                    total[j] += value
        return out

    # -------------------------------------------------------------------------- routing

    def estimate_ttft(self, g: Gpu, req: SimRequest) -> tuple[float, int]:
        """The router's score of ``g`` for ``req``: (estimated seconds, leading blocks found)."""
        counts = [0, 0, 0, 0, 0]
        h = g.h
        pool = self.pools[g.rack] if self.pools else None
        pool_locate = pool.h.locate if pool is not None and pool.usable else None
        found = 0
        if h is not None:
            locate = h.locate
            slots = g.kind_slots
            for key in req.keys:
                index = locate(key)
                if index is not None:
                    counts[slots[index]] += 1
                elif pool_locate is not None and pool_locate(key) is not None:
                    counts[_POOL] += 1
                else:
                    break
                found += 1
        restored = min(found * self.block_tokens, req.prompt - 1)
        t_token = self.t_token
        score = (g.queued_tokens + req.prompt - restored) * t_token
        busy = g.busy
        if busy is not None:
            score += max(0.0, busy.t_prefill - self.now)
        bb = self.block_bytes
        links = self.links
        for slot in (_DRAM, _POOL, _SSD):
            count = counts[slot]
            if count:
                link = links[slot]
                assert link is not None
                score += link.latency + count * bb / link.bandwidth
        need = req.prompt * self.kv_per_token if self.pd else req.need
        if g.work_used + need > g.work_cap:
            score += self.router.memory_penalty_s
        return score, found

    def check_invariants(self) -> None:
        """Raise AssertionError when a memory limit is broken anywhere (tests call this)."""
        for g in self.gpus:
            assert 0 <= g.work_used <= g.work_cap, (g.id, g.work_used, g.work_cap)
            assert 0 <= g.dec_n <= self.max_batch, (g.id, g.dec_n)
            assert g.running >= 0 and g.queued_tokens >= 0, g.id
            if g.h is not None:
                for tier in g.h.tiers:
                    assert 0 <= tier.used <= tier.capacity, (g.id, tier)
        for s in [*self.pools, *([self.remote] if self.remote is not None else [])]:
            tier = s.h.tiers[0]
            assert 0 <= tier.used <= tier.capacity, (s.name, tier)
        racks = self.topology.racks
        waiting, running, work = [0] * racks, [0] * racks, [0] * racks
        for g in self.gpus:
            waiting[g.rack] += len(g.queue) + len(g.admit)
            running[g.rack] += g.running
            work[g.rack] += g.work_used
        assert waiting == self.rack_waiting and running == self.rack_running
        assert work == self.rack_work

    # --------------------------------------------------------------------------- summary

    def summary(self) -> dict[str, Any]:
        """Counted requests' figures as plain data (see the module docstring)."""
        self.refresh_totals()
        final = self._totals_by_kind()
        base = self._baseline or {k: [0] * _N_FIELDS for k in KINDS}
        lookups = self.sum_lookups
        hits = sum(self.sum_kind_hits)
        fields = {name: COUNTER_FIELDS.index(name)
                  for name in ("puts", "promotions", "demotions", "drops", "evictions")}
        tiers: dict[str, Any] = {}
        totals = dict.fromkeys(fields, 0)
        for kind in self.kinds:
            slot = _SLOT[kind]
            entry: dict[str, Any] = {
                "hits": self.sum_kind_hits[slot],
                "hit_rate": self.sum_kind_hits[slot] / lookups if lookups else None,
            }
            for name, j in fields.items():
                value = final[kind][j] - base[kind][j]
                entry[name] = value
                totals[name] += value
            entry["capacity_bytes"] = final[kind][COUNTER_FIELDS.index("capacity")]
            entry["used_bytes"] = final[kind][0]
            tiers[kind] = entry
        return {
            "preset": self.topology.name,
            "gpus": self.topology.gpus,
            "racks": self.topology.racks,
            "mode": "prefill/decode " + self.topology.pd.transfer if self.pd else "colocated",
            "block_tokens": self.block_tokens,
            "block_bytes": self.block_bytes,
            "virtual_s": self.now,
            "requests": {
                "arrived": self.arrived,
                "completed": self.completed,
                "failed": self.failed,
                "warmup": min(self.warmup, self.arrived),
                "counted_completed": self.sum_completed,
                "counted_failed": self.sum_failed,
            },
            "lookups": lookups,
            "hits": hits,
            "misses": lookups - hits,
            "hit_rate": hits / lookups if lookups else None,
            "tiers": tiers,
            "evictions": totals["evictions"],
            "promotions": totals["promotions"],
            "demotions": totals["demotions"],
            "latency_s": {
                "ttft": _percentiles(self.ttft),
                "tpot": _percentiles(self.tpot),
                "e2e": _percentiles(self.e2e),
                "queue": _percentiles(self.queue_s),
            },
            "router": {
                "routed": self.router.routed,
                "round_robin": self.router.round_robin,
                "affine": self.router.affine,
            },
            "transfers": {"count": self.transfers, "bytes": self.transfer_bytes},
        }


def _percentiles(values: array[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None}
    data = np.frombuffer(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {"count": len(values), "mean": float(data.mean()), "p50": float(p50),
            "p90": float(p90), "p99": float(p99)}
