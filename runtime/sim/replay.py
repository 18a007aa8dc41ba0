"""Headless runs: a trace (or the generated workload) as fast as possible, then a JSON summary.

The summary (:meth:`Cluster.summary` plus run facts) holds the overall and per-tier hit rates
(hits in a tier over all counted lookups, so the tier rates sum to the overall rate), lookups,
hits, misses, evictions, promotions, demotions and puts per tier, and TTFT, TPOT, end-to-end and
queueing percentiles of the counted requests.

For textbook checks, :meth:`Topology.single_tier` makes one GPU with one tier of a given number
of blocks and a given eviction policy (watermarks at 1.0: a block is evicted exactly when a new
one does not fit), and ``warmup`` leaves the first requests out of the counts. The replay then
looks up every block of every request, in arrival order, in that one tier. ``belady`` gets the
whole future block sequence from the trace (:class:`FutureOracle`), so it needs a trace and a
single GPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tiertop.tiers.policies.oracle import FutureOracle

from ..traces import MOONCAKE_BLOCK_SIZE, TraceReader, TraceRequest, TraceTokens, load_trace
from ..workload import WorkloadGenerator
from .cluster import Cluster, GeneratedSource, RequestSource, TraceSource
from .profile import Profile
from .topology import Topology

__all__ = ["build_cluster", "open_trace", "run_headless", "trace_block_tokens"]


def trace_block_tokens(path: str | Path, fmt: str | None, default: int) -> int:
    """Tokens per block of a trace: Mooncake's 512 for ``hash_ids`` traces, else ``default``."""
    from ..traces import detect_format

    return MOONCAKE_BLOCK_SIZE if (fmt or detect_format(path)) == "mooncake" else default


def open_trace(path: str | Path, fmt: str | None, block_tokens: int,
               *, whole: bool) -> list[TraceRequest] | TraceReader:
    """The trace's requests: all in memory (``whole``, e.g. for belady) or streamed."""
    if whole:
        return load_trace(path, format=fmt, block_size=block_tokens).requests
    return TraceReader(path, format=fmt, block_size=block_tokens)


def build_cluster(
    topology: Topology,
    profile: Profile,
    *,
    trace: list[TraceRequest] | TraceReader | None = None,
    seed: int = 0,
    warmup: int = 0,
    duration_s: float | None = None,
) -> Cluster:
    """A cluster fed by ``trace`` or, without one, by the topology's generated workload."""
    oracle: FutureOracle | None = None
    source: RequestSource
    if trace is not None:
        if _uses_belady(topology):
            if not isinstance(trace, list):
                trace = list(trace)
            tokens = TraceTokens(topology.block_tokens)
            keys = [key for request in trace for key in tokens.block_keys(request)]
            oracle = FutureOracle(keys)
        requests = trace if isinstance(trace, list) else iter(trace)
        from ..traces import TracePlayer

        source = TraceSource(TracePlayer(requests), topology.block_tokens)
    else:
        if _uses_belady(topology):
            raise ValueError("belady needs the future: replay a trace (--trace) to use it")
        params = topology.workload.params(seed)
        if duration_s is not None:
            params = replace(params, duration=duration_s)
        source = GeneratedSource(WorkloadGenerator(params), topology.block_tokens)
    return Cluster(topology, profile, source, seed=seed, warmup=warmup, oracle=oracle)


def _uses_belady(topology: Topology) -> bool:
    return any(topology.kind(k).eviction == "belady" for k in topology.kinds())


def run_headless(cluster: Cluster, duration_s: float | None = None) -> dict[str, Any]:
    """Run as fast as possible until ``duration_s`` of virtual time (None: until the source
    ends), let what is in flight finish, and return the summary with wall-clock facts."""
    started = time.perf_counter()
    stop = math.inf if duration_s is None else duration_s
    cluster.run_until(stop)
    cluster.close_arrivals()
    cluster.run_until(math.inf)
    wall = time.perf_counter() - started
    summary = cluster.summary()
    summary["wall_s"] = wall
    summary["lookups_per_s"] = cluster.lookups / wall if wall > 0 else None
    summary["requests_per_s"] = cluster.completed / wall if wall > 0 else None
    return summary
