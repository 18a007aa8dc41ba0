"""The cluster model: timings by hand, prefill/decode transfer, the shared pool and its
faults, routing, memory limits, the presets on this machine, determinism."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from tiertop.runtime.sim.cluster import Cluster, TraceSource
from tiertop.runtime.sim.profile import Profile
from tiertop.runtime.sim.replay import build_cluster, run_headless
from tiertop.runtime.sim.topology import PdConfig, TierKindConfig, Topology, preset
from tiertop.runtime.traces import TraceRequest

GiB = 1 << 30
PROFILE = Profile()


def _request(t: float, ids: list[int], output: int = 10, conv: str | None = None,
             block_tokens: int = 16) -> TraceRequest:
    return TraceRequest(t, len(ids) * block_tokens, output, ids, conv)


def _cluster(topology: Topology, requests: list[TraceRequest]) -> Cluster:
    return Cluster(topology, PROFILE, TraceSource(requests, topology.block_tokens))


def _small(gpus: int = 1, **changes: Any) -> Topology:
    return replace(preset("single-node"), racks=1, gpus_per_rack=gpus, gpus_per_node=gpus,
                   dram=TierKindConfig(), ssd=TierKindConfig(), **changes)


def _run(cluster: Cluster, step: float = 0.05) -> None:
    """Run to the end, checking every memory limit along the way."""
    t = 0.0
    while not cluster.idle:
        t += step
        cluster.run_until(t)
        cluster.check_invariants()
        assert t < 10_000


def test_a_lone_request_takes_exactly_prefill_then_decode_steps() -> None:
    topo = _small()
    cluster = _cluster(topo, [_request(1.0, list(range(1, 65)), output=10)])
    _run(cluster)
    s = cluster.summary()
    prompt = 64 * 16
    prefill = prompt * PROFILE.prefill_s_per_token  # nothing cached: all computed
    step = PROFILE.decode_step_s(1, prompt + 10)
    assert s["latency_s"]["ttft"]["mean"] == pytest.approx(prefill + step)
    assert s["latency_s"]["tpot"]["mean"] == pytest.approx(step)
    assert s["latency_s"]["e2e"]["mean"] == pytest.approx(prefill + 10 * step)
    assert (s["lookups"], s["hits"]) == (64, 0)


def test_a_repeated_prefix_is_fetched_not_computed() -> None:
    ids = list(range(1, 65))
    cluster = _cluster(_small(), [_request(0.0, ids), _request(100.0, ids)])
    _run(cluster)
    s = cluster.summary()
    assert (s["lookups"], s["hits"]) == (128, 64)
    first, second = cluster.ttft
    step = PROFILE.decode_step_s(1, 64 * 16 + 10)
    # the second one computes only its last token (HBM hits are free to fetch)
    assert second == pytest.approx(PROFILE.prefill_s_per_token + step)
    assert first == pytest.approx(64 * 16 * PROFILE.prefill_s_per_token + step)


def _pd(transfer: str) -> Cluster:
    topo = _small(gpus=2, pd=PdConfig(enabled=True, prefill_share=0.5, transfer=transfer))
    return _cluster(topo, [_request(0.0, list(range(1, 257)), output=4)])


def test_prefill_decode_ttft_is_prefill_plus_transfer_plus_first_step() -> None:
    pull, push = _pd("pull"), _pd("push")
    _run(pull)
    _run(push)
    prompt = 256 * 16
    prefill = prompt * PROFILE.prefill_s_per_token
    link = PROFILE.rdma.link(True)
    transfer = link.latency + prompt * PROFILE.kv_bytes_per_token / link.bandwidth
    step = PROFILE.decode_step_s(1, prompt + 4)
    assert pull.ttft[0] == pytest.approx(prefill + transfer + step)
    # push streams the KV from the first chunk on: only what the link cannot hide remains
    chunk = PROFILE.scheduler.prefill_chunk_tokens
    ready = chunk * PROFILE.prefill_s_per_token
    expected = max(ready + transfer, prefill + link.latency
                   + chunk * PROFILE.kv_bytes_per_token / link.bandwidth)
    assert push.ttft[0] == pytest.approx(expected + step)
    assert push.ttft[0] < pull.ttft[0]
    assert pull.transfers == push.transfers == 1
    assert [g.role for g in pull.gpus] == ["prefill", "decode"]
    assert pull.gpus[1].h is None  # a decode GPU holds running KV only


def _rack_pair() -> Topology:
    return replace(preset("rack"), gpus_per_rack=2, gpus_per_node=2, block_tokens=16,
                   dram=TierKindConfig(), pool=TierKindConfig(64 * GiB))


def _shared_prefix_requests() -> list[TraceRequest]:
    ids = list(range(1, 257))
    # two sessions with one long shared prefix, the second arriving while the first prefills
    return [_request(0.0, ids, conv="a"), _request(0.01, [*ids, 999], conv="b")]


def test_the_rack_pool_serves_another_gpu() -> None:
    cluster = _cluster(_rack_pair(), _shared_prefix_requests())
    _run(cluster)
    s = cluster.summary()
    assert s["tiers"]["pool"]["hits"] == 256  # the second GPU read the prefix from the pool
    assert s["tiers"]["hbm"]["hits"] == 0
    assert s["tiers"]["pool"]["puts"] == 257  # written through: the prefix, then block 999
    assert cluster.gpus[0].lookups == 256 and cluster.gpus[1].lookups == 257


@pytest.mark.parametrize(("fault", "pool_hits", "errors"),
                         [("down", 0, 0), ("corrupt", 0, 256), ("full", 0, 0), ("slow", 256, 0)])
def test_pool_faults(fault: str, pool_hits: int, errors: int) -> None:
    cluster = _cluster(_rack_pair(), _shared_prefix_requests())
    if fault == "full":  # full from the start: nothing is written, so nothing is found
        cluster.inject_fault(cluster.shared_tiers("pool", 0), "full", None, 0.0)
    else:
        cluster.run_until(0.005)  # the first request has written the prefix through
        cluster.inject_fault(cluster.shared_tiers("pool", 0), fault, None, 0.002)
    _run(cluster)
    s = cluster.summary()
    assert s["tiers"]["pool"]["hits"] == pool_hits
    assert cluster.errors[2] == errors
    if fault == "slow":  # 256 blocks each 2 ms slower: the second request pays for it
        normal = _cluster(_rack_pair(), _shared_prefix_requests())
        _run(normal)
        # the pool reader finishes first (the other computes 4096 tokens): ttft[0] is its
        assert cluster.ttft[0] - normal.ttft[0] == pytest.approx(256 * 0.002, rel=1e-6)


def test_a_fault_with_a_duration_expires_on_the_virtual_clock() -> None:
    cluster = _cluster(_rack_pair(), _shared_prefix_requests())
    events: list[tuple[str, ...]] = []
    cluster.on_fault = lambda tier, fault, old, new, why, delay, duration: events.append(
        (tier, fault, old, new, why))
    pool = cluster.shared_tiers("pool", 0)
    cluster.inject_fault(pool, "down", 0.5, 0.0)
    assert not pool[0].usable
    cluster.run_until(0.49)
    assert not pool[0].usable
    cluster.run_until(0.51)
    assert pool[0].usable
    assert events == [("pool@0", "down", "inactive", "active", "injected"),
                      ("pool@0", "down", "active", "inactive", "expired")]


def test_router_keeps_a_session_on_its_gpu() -> None:
    topo = replace(_small(gpus=8), router=replace(_small().router, candidates=3))
    history: list[int] = []
    requests = []
    for turn in range(6):
        history = history + [1000 * turn + j for j in range(1, 33)]
        requests.append(_request(turn * 60.0, list(history), conv="s"))
    cluster = _cluster(topo, requests)
    _run(cluster, step=1.0)
    assert cluster.router.affine == 5  # every turn after the first
    assert cluster.router.round_robin == 1  # the first: nothing cached anywhere
    s = cluster.summary()
    assert s["hits"] == sum(32 * turn for turn in range(6))  # every earlier block hit in HBM


def test_memory_limits_hold_under_overload() -> None:
    topo = replace(_small(gpus=2), hbm=TierKindConfig(2 * GiB), hbm_cache_fraction=0.5)
    # requests of 512 tokens x 320 KiB = 160 MiB running KV each: 1 GiB holds six at a time
    requests = [_request(i * 0.001, [10_000 * i + j for j in range(32)], output=64)
                for i in range(200)]
    cluster = _cluster(topo, requests)
    peak = 0
    t = 0.0
    while not cluster.idle:
        t += 0.02
        cluster.run_until(t)
        cluster.check_invariants()
        peak = max(peak, max(g.work_used for g in cluster.gpus))
    assert cluster.completed == 200 and cluster.failed == 0
    assert peak <= cluster.gpus[0].work_cap
    assert peak > cluster.gpus[0].work_cap // 2  # it did fill up: the limit was binding
    assert cluster.summary()["latency_s"]["queue"]["p99"] > 1.0  # so requests waited
    too_big = _cluster(topo, [_request(0.0, list(range(1, 5000)), output=8)])
    _run(too_big)
    assert too_big.failed == 1 and too_big.completed == 0


@pytest.mark.parametrize(("name", "duration", "rate"), [
    ("single-node", 6.0, None), ("rack", 3.0, None), ("cluster-10k", 2.0, 1500.0),
    ("pd-10k", 2.0, 1500.0),
])
def test_presets_run_headless(name: str, duration: float, rate: float | None) -> None:
    topo = preset(name)
    if rate is not None:
        topo = replace(topo, workload=replace(topo.workload, rate=rate))
    cluster = build_cluster(topo, PROFILE, seed=5, duration_s=duration)
    s = run_headless(cluster, duration)
    cluster.check_invariants()
    requests = s["requests"]
    assert requests["arrived"] > 10 and requests["completed"] == requests["arrived"]
    assert s["gpus"] == topo.gpus and s["racks"] == topo.racks
    assert s["lookups"] > 0 and 0 < s["hit_rate"] < 1
    assert sum(t["hits"] for t in s["tiers"].values()) == s["hits"]
    assert list(s["tiers"]) == topo.kinds()
    ttft = s["latency_s"]["ttft"]
    assert 0 < ttft["p50"] <= ttft["p99"] < math.inf
    if topo.pd.enabled:
        assert s["transfers"]["count"] == requests["completed"]
        assert s["mode"] == "prefill/decode push"
    else:
        assert s["transfers"]["count"] == 0
    if topo.kind("pool").bytes:
        assert s["tiers"]["pool"]["hits"] > 0  # the rack pools are shared


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("wall_s", "lookups_per_s",
                                                           "requests_per_s")}


def test_same_seed_same_summary() -> None:
    topo = replace(preset("rack"), racks=2, gpus_per_rack=16)
    runs = [_comparable(run_headless(build_cluster(topo, PROFILE, seed=seed, duration_s=4.0),
                                     4.0)) for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_a_prefill_shares_decode_steps_on_a_colocated_gpu() -> None:
    a = _request(0.0, list(range(1, 65)), output=1000)
    b = _request(1.0, list(range(1001, 1065)), output=10)
    cluster = _cluster(_small(), [a, b])
    _run(cluster)
    t_token = PROFILE.prefill_s_per_token
    base = PROFILE.decode_step_s(1, 1024 + 1000)  # A decoding alone
    chunks = 1024 // PROFILE.scheduler.prefill_chunk_tokens
    b_prefill = 1024 * t_token + chunks * base  # each chunk rides on one of A's steps
    b_first_step = PROFILE.decode_step_s(2, 1024 + 1000 + 1024 + 10)
    ttft_b, ttft_a = cluster.ttft  # B finishes first
    assert ttft_b == pytest.approx(b_prefill + b_first_step)
    assert ttft_a == pytest.approx(1024 * t_token + PROFILE.decode_step_s(1, 1024 + 1000))
    assert cluster.tpot[1] > base  # A's steps were longer while B prefilled and decoded


def test_decode_memory_limits_hold_with_separation() -> None:
    topo = _small(gpus=4, pd=PdConfig(enabled=True, prefill_share=0.5, transfer="push"),
                  hbm=TierKindConfig(2 * GiB))
    requests = [_request(i * 0.002, [10_000 * i + j for j in range(32)], output=200)
                for i in range(120)]
    cluster = _cluster(topo, requests)
    waited = 0
    t = 0.0
    while not cluster.idle:
        t += 0.05
        cluster.run_until(t)
        cluster.check_invariants()
        waited = max(waited, max(len(g.admit) for g in cluster.gpus))
    assert cluster.completed == 120 and cluster.transfers == 120
    assert waited > 0  # decode memory (2 GiB: 12 requests of 162 MiB) made transfers wait
    decode = [g for g in cluster.gpus if g.role == "decode"]
    assert all(g.work_cap == 2 * GiB for g in decode)


def test_the_remote_tier_serves_what_rack_and_gpu_lost() -> None:
    topo = replace(_rack_pair(), gpus_per_rack=1, gpus_per_node=1,
                   remote=TierKindConfig(64 * GiB))
    ids = list(range(1, 129))
    cluster = _cluster(topo, [_request(0.0, ids), _request(50.0, ids)])
    cluster.run_until(10.0)
    assert cluster.remote is not None and len(cluster.remote.h) == 128  # written through
    for h in [*cluster.hierarchies("hbm"), *cluster.hierarchies("pool")]:
        h.clear()
    _run(cluster)
    s = cluster.summary()
    assert s["tiers"]["remote"]["hits"] == 128 and s["hits"] == 128
    assert len(cluster.pools[0].h) == 128  # fetched from remote, kept in the rack pool again
    link = PROFILE.rdma.link(False)
    fetch = link.latency + 128 * cluster.block_bytes / link.bandwidth
    compute = PROFILE.prefill_s_per_token  # the last token only
    assert cluster.ttft[1] == pytest.approx(fetch + compute + PROFILE.decode_step_s(1, 2048 + 10))
