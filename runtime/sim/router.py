"""Where each request goes: session affinity, prefix-aware scoring of sampled GPUs, load.

For every request the router scores a few candidate GPUs (``router.candidates``): the GPU that
served the session last (affinity), ``router.rack_candidates`` GPUs drawn from that GPU's rack
(they share its pool), and the rest drawn from the whole cluster. A candidate's score is the
**time to first token it would give**, estimated as

    wait (tokens queued for prefill x seconds per token)
    + compute (prompt tokens not found in any tier x seconds per token)
    + fetch (for each tier kind: its link latency + hit blocks x block bytes / bandwidth)
    + ``memory_penalty_s`` when its running-request memory cannot take the request now,

where hits are the leading blocks of the prompt found, in order, in the candidate's own tiers
(HBM, DRAM, SSD) or in its rack's pool. HBM hits cost nothing to fetch, so they weigh more than
pool hits, which pay the RDMA link; load enters as wait. The lowest estimate wins (ties: the
candidate scored first). When no candidate holds any leading block of the prompt, the request
goes round-robin instead (skipping GPUs with ``router.max_queue`` requests waiting).

With prefill/decode separation the same scoring picks the prefill GPU (among prefill GPUs);
the decode GPU is the least loaded of ``candidates`` decode GPUs, drawn from the prefill GPU's
rack first (``rack_candidates`` + 1 of them) so that KV moves inside the rack when it can.

Sampling uses the cluster's seeded generator, so routing is deterministic for a seed.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cluster import Cluster, Gpu, SimRequest

__all__ = ["Router"]


class Router:
    """Chooses GPUs for requests of one :class:`~tiertop.runtime.sim.cluster.Cluster`."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        config = cluster.topology.router
        self.candidates = config.candidates
        self.rack_candidates = config.rack_candidates
        self.affinity_enabled = config.affinity
        self.memory_penalty_s = config.memory_penalty_s
        self.max_queue = config.max_queue
        self.rng = rng
        self.front: list[Gpu] = [g for g in cluster.gpus if g.role != "decode"]
        self.back: list[Gpu] = [g for g in cluster.gpus if g.role == "decode"]
        racks = cluster.topology.racks
        self.front_by_rack: list[list[Gpu]] = [[] for _ in range(racks)]
        self.back_by_rack: list[list[Gpu]] = [[] for _ in range(racks)]
        for g in self.front:
            self.front_by_rack[g.rack].append(g)
        for g in self.back:
            self.back_by_rack[g.rack].append(g)
        self._rr = 0
        self.affinity: OrderedDict[Hashable, int] = OrderedDict()
        self.affinity_cap = 1 << 20
        # Counters (what the router did, for telemetry and tests).
        self.routed = 0
        self.round_robin = 0
        self.affine = 0  # requests that went to their session's GPU

    # ------------------------------------------------------------------------- prefill side

    def choose(self, req: SimRequest) -> Gpu:
        """The GPU that prefills (and, colocated, decodes) ``req``."""
        self.routed += 1
        front = self.front
        if len(front) == 1:
            return front[0]
        rng = self.rng
        conv = req.conv
        home: Gpu | None = None
        if self.affinity_enabled and conv is not None:
            gid = self.affinity.get(conv)
            if gid is not None:
                home = self.cluster.gpus[gid]
        picks: list[Gpu] = []
        if home is not None:
            picks.append(home)
            local = self.front_by_rack[home.rack]
            for _ in range(self.rack_candidates):
                picks.append(local[int(rng.random() * len(local))])
        while len(picks) < self.candidates:
            picks.append(front[int(rng.random() * len(front))])
        best: Gpu | None = None
        best_score = 0.0
        scored = False
        estimate = self.cluster.estimate_ttft
        for g in picks:
            score, hits = estimate(g, req)
            if hits:
                scored = True
            if best is None or score < best_score:
                best, best_score = g, score
        if not scored:
            best = self._round_robin()
            self.round_robin += 1
        assert best is not None
        if best is home:
            self.affine += 1
        if self.affinity_enabled and conv is not None:
            table = self.affinity
            table[conv] = best.id
            table.move_to_end(conv)
            if len(table) > self.affinity_cap:
                table.popitem(last=False)
        return best

    def _round_robin(self) -> Gpu:
        front = self.front
        n = len(front)
        for _ in range(n):
            g = front[self._rr % n]
            self._rr += 1
            if len(g.queue) < self.max_queue:
                return g
        g = front[self._rr % n]
        self._rr += 1
        return g

    # -------------------------------------------------------------------------- decode side

    def choose_decode(self, req: SimRequest, prefill: Gpu) -> Gpu:
        """The decode GPU for ``req`` prefilled on ``prefill`` (separated mode only)."""
        rng = self.rng
        local: Sequence[Gpu] = self.back_by_rack[prefill.rack]
        picks: list[Gpu] = []
        if local:
            for _ in range(min(len(local), self.rack_candidates + 1)):
                picks.append(local[int(rng.random() * len(local))])
        back = self.back
        while len(picks) < max(self.candidates, 1):
            picks.append(back[int(rng.random() * len(back))])
        need = req.need
        best = picks[0]
        best_key: tuple[int, float] | None = None
        for g in picks:
            blocked = 0 if g.work_used + need <= g.work_cap and not g.admit else 1
            key = (blocked, (g.work_used + need) / g.work_cap + len(g.admit))
            if best_key is None or key < best_key:
                best, best_key = g, key
        return best
