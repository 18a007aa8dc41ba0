"""The simulator's headless single-node single-tier replay against textbook caches.

Traces come from ``synth_trace``: interleaved multi-turn sessions, shared system prompts and
Zipf-shared documents, i.e. real reuse. The replay runs them through the whole simulator
(trace player, router, queues, the tier library's Hierarchy and policies) with one tier of a
given capacity in blocks; the references in ``reference.py`` are written from the papers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiertop.runtime.sim.profile import Profile
from tiertop.runtime.sim.replay import build_cluster, run_headless
from tiertop.runtime.sim.synth import synth_trace, write_mooncake
from tiertop.runtime.sim.topology import preset
from tiertop.runtime.traces import TraceRequest

from .reference import REFERENCES

WARMUP = 150


def _traces() -> dict[str, list[TraceRequest]]:
    return {
        "chat": synth_trace(requests=1200, sessions=24, documents=0, seed=1),
        "rag": synth_trace(requests=1200, sessions=48, documents=96, doc_prob=0.8,
                           doc_blocks=16, doc_zipf=0.9, user_blocks_mean=2.0, seed=2),
        "mixed": synth_trace(requests=1500, sessions=64, system_prompts=8, seed=3),
    }


TRACES = _traces()


def _flat(trace: list[TraceRequest], warmup: int) -> tuple[list[int], list[bool]]:
    keys: list[int] = []
    counted: list[bool] = []
    for index, request in enumerate(trace):
        assert request.hash_ids is not None
        keys.extend(request.hash_ids)
        counted.extend([index >= warmup] * len(request.hash_ids))
    return keys, counted


def _replay(trace: list[TraceRequest], capacity: int, policy: str,
            warmup: int = WARMUP) -> dict[str, object]:
    topology = preset("single-node").single_tier(capacity, policy)
    cluster = build_cluster(topology, Profile(), trace=trace, warmup=warmup)
    return run_headless(cluster)


@pytest.mark.parametrize("policy", ["lru", "arc", "belady"])
@pytest.mark.parametrize("trace_name", sorted(TRACES))
@pytest.mark.parametrize("capacity", [300, 1200])
def test_replay_matches_the_textbook(policy: str, trace_name: str, capacity: int) -> None:
    trace = TRACES[trace_name]
    keys, counted = _flat(trace, WARMUP)
    hits, evictions = REFERENCES[policy](capacity, keys, counted)
    summary = _replay(trace, capacity, policy)
    lookups = sum(counted)
    assert summary["lookups"] == lookups
    assert summary["hits"] == hits
    assert summary["misses"] == lookups - hits
    assert summary["evictions"] == evictions
    tier = summary["tiers"]["hbm"]  # type: ignore[index]
    assert tier["hits"] == hits and tier["evictions"] == evictions
    assert summary["hit_rate"] == pytest.approx(hits / lookups)
    assert summary["requests"]["warmup"] == WARMUP  # type: ignore[index]
    assert 0 < hits < lookups  # real reuse, and a cache too small for all of it


def test_warmup_is_left_out() -> None:
    trace = TRACES["chat"]
    full = _replay(trace, 300, "lru", warmup=0)
    keys, counted = _flat(trace, 0)
    assert full["lookups"] == len(keys)
    assert full["hits"] == REFERENCES["lru"](300, keys, counted)[0]
    later = _replay(trace, 300, "lru", warmup=WARMUP)
    assert later["lookups"] < full["lookups"]
    assert later["hits"] < full["hits"]


def test_the_policies_differ_on_these_traces() -> None:
    for name, trace in TRACES.items():
        results = {policy: _replay(trace, 300, policy)["hits"] for policy in REFERENCES}
        assert len(set(results.values())) == 3, (name, results)
        assert results["belady"] > max(results["lru"], results["arc"]), (name, results)


def test_cli_prints_the_json_summary(tmp_path: Path) -> None:
    trace = TRACES["rag"]
    path = write_mooncake(tmp_path / "trace.jsonl", trace)
    keys, counted = _flat(trace, 100)
    hits, evictions = REFERENCES["arc"](500, keys, counted)
    out = subprocess.run(
        [sys.executable, "-m", "tiertop", "sim", "--headless", "--json", "--trace", str(path),
         "--block-tokens", "16", "--capacity-blocks", "500", "--eviction", "arc",
         "--warmup", "100"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    summary = json.loads(out)
    assert (summary["hits"], summary["evictions"]) == (hits, evictions)
    assert summary["lookups"] == sum(counted)
    rates = [tier["hit_rate"] for tier in summary["tiers"].values()]
    assert sum(rates) == pytest.approx(summary["hit_rate"])
    for key in ("promotions", "demotions", "latency_s", "requests"):
        assert key in summary
    assert set(summary["latency_s"]) == {"ttft", "tpot", "e2e", "queue"}
    assert summary["latency_s"]["ttft"]["p99"] >= summary["latency_s"]["ttft"]["p50"] > 0
