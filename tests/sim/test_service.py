"""The live simulator over loopback: telemetry (Hello, TierStats, ClusterStats, RequestDone)
and control (watermarks per tier kind, speed, pause, faults on a rack pool, drill-down)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from tiertop.monitor.commands import ErrorCode
from tiertop.monitor.control_client import CommandRefused, ControlClient
from tiertop.monitor.protocol import (
    ClusterStats,
    ControlChange,
    FaultEvent,
    Hello,
    RequestDone,
    TierStats,
)
from tiertop.monitor.state import StateModel
from tiertop.monitor.subscriber import TelemetrySubscriber
from tiertop.runtime.control_target import ControlError
from tiertop.runtime.sim.profile import Profile
from tiertop.runtime.sim.service import SimConfig, SimService
from tiertop.runtime.sim.topology import preset

LOOPBACK = "tcp://127.0.0.1:0"


class Live:
    """A running SimService with a subscriber and a control client."""

    def __init__(self, **changes: Any) -> None:
        topo = replace(preset("rack"), racks=4, gpus_per_rack=8)
        topo = replace(topo, workload=replace(topo.workload, rate=40.0))
        config = SimConfig(topology=topo, profile=Profile(), seed=1, speed=20.0,
                           publish=LOOPBACK, replay=LOOPBACK, control=LOOPBACK, tick_s=0.05)
        for key, value in changes.items():
            setattr(config, key, value)
        self.service = SimService(config)
        self.sub = TelemetrySubscriber(self.service.addresses["telemetry"],
                                       self.service.addresses.get("replay"))
        self.client = ControlClient(self.service.addresses["control"], timeout_s=5.0)
        self.model = StateModel()
        self.seen: list[Any] = []
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10.0,
                 *, seen: bool = False) -> Any:
        """The first message (already seen too, with ``seen``) that satisfies ``predicate``."""
        for message in self.seen if seen else ():
            if predicate(message):
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.sub.poll(max_messages=1000, timeout_ms=50):
                self.model.fold(message)
                self.seen.append(message)
                if predicate(message):
                    return message
        raise AssertionError("no such message in time")

    def close(self) -> None:
        self.service.stop()
        self.thread.join(timeout=10)
        self.client.close()
        self.sub.close()
        self.service.close()


@pytest.fixture
def live() -> Iterator[Live]:
    running = Live()
    try:
        yield running
    finally:
        running.close()


def _stats(kind: str) -> Callable[[Any], bool]:
    return lambda m: isinstance(m, TierStats) and any(t.name == kind for t in m.tiers)


def test_publishes_hello_tier_totals_and_cluster_stats(live: Live) -> None:
    live.wait_for(lambda m: live.model.hello is not None)  # a Hello, or a snapshot's
    hello = live.model.hello
    assert hello is not None
    assert hello.mode == "sim" and hello.speed == 20.0
    assert hello.topology.gpus == 32 and hello.topology.racks == 4
    assert [t.name for t in hello.tiers] == ["hbm", "dram", "pool"]
    cluster = live.wait_for(lambda m: isinstance(m, ClusterStats) and
                            sum(r.lookups for r in m.racks) > 0)
    assert [r.rack for r in cluster.racks] == [0, 1, 2, 3]
    assert all(r.gpus == 8 and set(r.occupancy) == {"hbm", "dram", "pool"}
               for r in cluster.racks)
    assert cluster.gpus == [] and cluster.drill_racks == []
    stats = live.wait_for(_stats("pool"))
    pool = next(t for t in stats.tiers if t.name == "pool")
    assert pool.capacity_bytes == 4 * preset("rack").pool.bytes
    done = live.wait_for(lambda m: isinstance(m, RequestDone))
    assert done.ttft_s > 0 and 0 < done.sample_rate <= 1
    # the dashboard's fold: windowed hit ratios once two ticks saw lookups
    live.wait_for(lambda m: any(r.hit_ratio is not None for r in live.model.cluster.racks))
    view = live.model.cluster
    assert [r.rack for r in view.racks] == [0, 1, 2, 3]
    assert all(r.hit_ratio is None or 0 <= r.hit_ratio <= 1 for r in view.racks)


def test_control_commands(live: Live) -> None:
    live.wait_for(_stats("hbm"))
    client = live.client
    # watermarks for one tier kind, cluster-wide, and for one rack's pool
    applied = client.set_watermarks("hbm", 0.7, 0.6)
    assert applied.new == {"hbm": {"high": 0.7, "low": 0.6}}
    client.set_watermarks("pool@2", 0.5, 0.4)
    stats = live.wait_for(lambda m: isinstance(m, TierStats) and
                          m.tiers[0].high_watermark == 0.7)
    assert stats.tiers[0].low_watermark == 0.6
    change = live.wait_for(lambda m: isinstance(m, ControlChange) and m.target == "pool@2",
                           seen=True)
    assert change.new == {"pool@2": {"high": 0.5, "low": 0.4}}
    with pytest.raises(CommandRefused) as info:
        client.set_watermarks("pool@9", 0.5, 0.4)
    assert info.value.reply.error_code == ErrorCode.UNKNOWN_TIER
    # speed, pause and resume
    assert client.set_sim_speed(40.0).new == 40.0
    live.wait_for(lambda m: isinstance(m, Hello) and m.speed == 40.0, seen=True)
    assert live.model.hello is not None and live.model.hello.speed == 40.0
    client.pause()
    paused = live.wait_for(lambda m: isinstance(m, TierStats) and m.paused)
    later = live.wait_for(lambda m: isinstance(m, TierStats) and m.tick >= paused.tick + 3)
    assert later.clock == paused.clock  # the virtual clock stood still
    client.resume()
    moving = live.wait_for(lambda m: isinstance(m, TierStats) and not m.paused
                           and m.clock > paused.clock)
    assert moving.clock > paused.clock
    # a rack pool goes down
    applied = client.inject_fault("pool@1", "down")
    assert applied.new == {"pool@1": ["down"]}
    live.wait_for(lambda m: isinstance(m, FaultEvent) and m.tier == "pool@1" and
                  m.new == "active", seen=True)
    racks = live.wait_for(lambda m: isinstance(m, ClusterStats) and m.racks[1].faults).racks
    assert racks[1].faults == ["down"] and racks[0].faults == []
    pool = next(t for t in live.wait_for(_stats("pool")).tiers if t.name == "pool")
    assert pool.health == "degraded" and pool.faults == ["down"]
    with pytest.raises(CommandRefused) as info:
        client.inject_fault("hbm", "down")
    assert info.value.reply.error_code == ErrorCode.UNSUPPORTED
    client.clear_faults("pool@1")
    live.wait_for(lambda m: isinstance(m, ClusterStats) and not m.racks[1].faults)
    # drill down into a rack
    assert client.set_drill_down([2]).new == [2]
    detail = live.wait_for(lambda m: isinstance(m, ClusterStats) and m.drill_racks == [2])
    assert [g.gpu for g in detail.gpus] == list(range(16, 24))
    assert {g.rack for g in detail.gpus} == {2}
    assert [g.gpu for g in live.model.cluster.gpus[2]] == list(range(16, 24))
    with pytest.raises(CommandRefused):
        client.set_drill_down([4])
    # the workload
    assert client.set_workload(rate=5.0).new == {"rate": 5.0}
    live.close()
    service = live.service
    for g in service.cluster.gpus:
        assert g.h is not None
        assert (g.h.tier("hbm").high, g.h.tier("hbm").low) == (0.7, 0.6)
    assert [(p.h.tier("pool").high) for p in service.cluster.pools] == [0.95, 0.95, 0.5, 0.95]


def test_read_only_still_drills_down() -> None:
    live = Live(read_only=True)
    try:
        assert live.client.set_drill_down([0, 3]).new == [0, 3]
        with pytest.raises(CommandRefused) as info:
            live.client.set_watermarks("hbm", 0.7, 0.6)
        assert info.value.reply.error_code == ErrorCode.READ_ONLY
        message = live.wait_for(lambda m: isinstance(m, ClusterStats) and m.drill_racks)
        assert message.drill_racks == [0, 3] and len(message.gpus) == 16
    finally:
        live.close()


def test_max_speed_and_a_duration_end_the_run() -> None:
    live = Live(speed=math.inf, duration_s=3.0)
    try:
        live.thread.join(timeout=30)
        assert not live.thread.is_alive()
        assert live.service.cluster.now == pytest.approx(3.0)
        assert live.service.cluster.arrived > 50
    finally:
        live.close()


def test_the_model_runtime_refuses_drill_down() -> None:
    from tiertop.runtime.model_runtime import ModelRuntime

    runtime = object.__new__(ModelRuntime)  # the method needs no model
    with pytest.raises(ControlError) as info:
        runtime.set_drill_down([0])
    assert info.value.code == ErrorCode.UNSUPPORTED


def test_the_cli_live_and_headless() -> None:
    import subprocess
    import sys

    live = subprocess.run(
        [sys.executable, "-m", "tiertop", "sim", "--preset", "rack", "--max-speed",
         "--duration", "2", "--publish", LOOPBACK, "--replay", "none", "--control", LOOPBACK],
        capture_output=True, text=True, timeout=60,
    )
    assert live.returncode == 0, live.stderr
    assert "rack: 1 racks x 64 GPUs" in live.stdout and "telemetry: tcp://127.0.0.1:" in live.stdout
    assert "requests completed" in live.stdout
    text = subprocess.run(
        [sys.executable, "-m", "tiertop", "sim", "--headless", "--preset", "single-node",
         "--duration", "3", "--seed", "4"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert text.startswith("single-node: 8 GPUs in 1 racks, colocated, 16-token blocks")
    assert "ttft  p50" in text and "hbm     hits" in text
    bad = subprocess.run(
        [sys.executable, "-m", "tiertop", "sim", "--headless", "--eviction", "belady"],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 1 and "belady needs the future" in bad.stderr


def test_a_live_trace_replay_ends_with_the_trace(tmp_path: Any) -> None:
    from tiertop.runtime.sim.synth import synth_trace, write_mooncake

    trace = synth_trace(requests=300, rate=200.0, block_tokens=64, seed=9)
    path = write_mooncake(tmp_path / "t.jsonl", trace)
    live = Live(speed=math.inf, trace=str(path))
    try:
        live.thread.join(timeout=30)
        assert not live.thread.is_alive()
        cluster = live.service.cluster
        assert cluster.arrived == cluster.completed == 300
        assert cluster.lookups == sum(len(r.hash_ids or ()) for r in trace)
        with pytest.raises(ControlError) as info:
            live.service.set_workload({"rate": 3.0})
        assert info.value.code == ErrorCode.UNSUPPORTED
    finally:
        live.close()
