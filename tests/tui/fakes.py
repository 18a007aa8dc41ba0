"""Fixed telemetry for dashboard tests: a hand-stepped source and a scripted runtime.

:class:`FakeSource` hands out what a test pushed, like a subscriber's ``poll``; nothing moves
unless the test steps the session's ingest. :class:`Script` builds a deterministic stream of
what a small three-tier runtime publishes (Hello, TierStats ticks with real cumulative counters
and latency histograms, finished requests, block moves), so snapshots and assertions see the same
numbers every run. :func:`control_handler` answers control requests for a ``MockTransport``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tiertop.monitor.commands import Applied, Refused, decode_request, encode_reply
from tiertop.monitor.control_client import ControlClient, MockTransport
from tiertop.monitor.protocol import (
    CAP_CONTROL,
    CAP_LIVE_TUNABLE,
    ClusterStats,
    ControlChange,
    FaultEvent,
    GpuSample,
    HealthChange,
    Hello,
    RackSample,
    RequestDone,
    TierInfo,
    TierMove,
    TierMoves,
    TierSample,
    TierStats,
    Topology,
)
from tiertop.monitor.state import StateModel
from tiertop.monitor.subscriber import SubscriberCounters
from tiertop.tui.control import Controller
from tiertop.tui.session import Session

MiB = 1 << 20
TIERS = (
    ("dram", "dram", 1 * MiB, "dram: host DRAM, 1 MiB arena, 256 B slots", False, ""),
    ("remote", "remote", 2 * MiB, "remote: memory server tcp://127.0.0.1:45423 (4 MiB)", False,
     ""),
    ("disk", "disk", 8 * MiB, "disk: /tmp/tiertop-disk (ext4)", True,
     "no NVMe here: page cache with 200 us latency emulated"),
)
N_BUCKETS = 64


class FakeSource:
    """A subscriber stand-in: ``poll`` returns what was pushed, in order."""

    def __init__(self) -> None:
        self.pending: deque[Any] = deque()
        self.counters_value = SubscriberCounters()
        self.stale = False
        self.in_sync = True
        self.closed = False
        self.polls = 0

    def push(self, *messages: Any) -> None:
        self.pending.extend(messages)

    def poll(self, max_messages: int = 1000, timeout_ms: float = 0) -> list[Any]:
        self.polls += 1
        n = min(max_messages, len(self.pending))
        return [self.pending.popleft() for _ in range(n)]

    def counters(self) -> SubscriberCounters:
        return self.counters_value

    def close(self) -> None:
        self.closed = True


def _hist(center: int, n: int) -> list[int]:
    h = [0] * N_BUCKETS
    if n:
        h[center] = n - n // 5
        h[center + 3] = n // 5
    return h


@dataclass
class _Tier:
    name: str
    kind: str
    capacity: int
    high: float = 0.9
    low: float = 0.8
    policy: str = "lru"
    counters: dict[str, int] = field(default_factory=dict)
    health: str = "ok"
    reason: str = ""
    faults: list[str] = field(default_factory=list)
    fill: float | None = None  # occupancy to report (None: a wave under the high watermark)


class Script:
    """A deterministic small runtime: call :meth:`hello`, then :meth:`tick` per 0.5 s."""

    def __init__(self, mode: str = "sim", source: str = "rt:4242", epoch: int = 7) -> None:
        self.mode = mode
        self.source = source
        self.epoch = epoch
        self.t = 1000.0 if mode == "sim" else 1_763_700_000.0
        self.i = 0
        self.seq: dict[str, int] = {}
        self.paused = False
        self.placement = "top"
        self.promotion = "on-hit"
        self.tiers = [_Tier(n, k, c) for n, k, c, _, _, _ in TIERS]
        self.request_no = 0

    def _env(self, topic: str) -> dict[str, Any]:
        seq = self.seq.get(topic, -1) + 1
        self.seq[topic] = seq
        return {"source": self.source, "epoch": self.epoch, "seq": seq, "clock": self.t}

    def tier(self, name: str) -> _Tier:
        return next(t for t in self.tiers if t.name == name)

    def hello(self) -> Hello:
        return Hello(
            **self._env("tt.hello"), mode=self.mode, speed=1.0 if self.mode == "model" else 10.0,
            host="bench", pid=4242,
            topology=Topology(tier_order=[t.name for t in self.tiers], model="gpt2-tiny",
                              block_size_tokens=16, block_bytes=16384),
            tiers=[TierInfo(name=n, kind=k, capacity_bytes=c, description=d, emulated=e,
                            fallback_reason=r, block_bytes=16384,
                            live_tunable=["watermarks", "capacity", "eviction_policy"])
                   for n, k, c, d, e, r in TIERS],
            capabilities=[CAP_CONTROL, CAP_LIVE_TUNABLE],
            addresses={"control": "tcp://127.0.0.1:1", "replay": "tcp://127.0.0.1:2"},
        )

    def tick(self, dt: float = 0.5) -> list[Any]:
        """One tick: TierStats, a request or two, a batch of moves."""
        self.t += dt
        self.i += 1
        i = self.i
        out: list[Any] = []
        samples = []
        for k, t in enumerate(self.tiers):
            c = t.counters
            wave = 0.5 + 0.45 * math.sin(i / (6.0 + 3 * k))
            gets = 0 if self.paused else 20 - 5 * k
            hits = int(gets * (0.8 - 0.2 * k + 0.1 * math.sin(i / 4)))
            for key, inc in (("hits", hits), ("misses", gets - hits), ("puts", 6 - k),
                             ("promotions", k and 2), ("demotions", 3 - k if k < 2 else 0),
                             ("evictions", 3 - k), ("drops", 1 if k == 2 else 0),
                             ("bytes_in", (6 - k) * 16384), ("bytes_out", hits * 16384)):
                c[key] = c.get(key, 0) + (0 if self.paused else inc)
            fill = min(wave * t.high + 0.05, 1.0) if t.fill is None else t.fill
            used = int(t.capacity * fill) // 16384 * 16384
            samples.append(TierSample(
                name=t.name, used_bytes=used, used_blocks=used // 16384,
                capacity_bytes=t.capacity, high_watermark=t.high, low_watermark=t.low,
                eviction_policy=t.policy, health=t.health, health_reason=t.reason,
                faults=list(t.faults), **c,
                latency={"get": _hist(14 + 3 * k + (i % 3), gets)},
                latency_sum_ns={"get": gets * (2 ** (14 + 3 * k))},
            ))
        out.append(TierStats(
            **self._env("tt.stats"), tick=i, interval_s=dt, tiers=samples,
            placement_policy=self.placement, promotion_policy=self.promotion,
            paused=self.paused, queue_depth=(i % 4), requests_in_flight=2,
            request_rate=2.0, tokens_per_s=40.0,
            prefix_query_tokens=200 * i, prefix_hit_tokens=150 * i,
            rss_bytes=300 * MiB, mem_total_bytes=24 << 30, mem_available_bytes=20 << 30,
        ))
        if not self.paused:
            out.append(self.request())
            if i % 2:
                out.append(self.request(error="" if i % 9 else "tier remote down: recomputed"))
            out.append(TierMoves(**self._env("tt.moves"), moves=[
                TierMove("demote", 0x1000 + i, "dram", "remote", 16384, 2e-5, "watermark",
                         self.t),
                TierMove("promote", 0x2000 + i, "remote", "dram", 16384, 4e-4, "policy", self.t),
            ]))
        return out

    def request(self, error: str = "") -> RequestDone:
        self.request_no += 1
        n = self.request_no
        restored = {"dram": 32 + (n % 3) * 16, "remote": 16 * (n % 2)} if n % 4 else {}
        return RequestDone(
            **self._env("tt.requests"), request_id=f"req-{n:05d}", conversation_id=f"c{n % 7}",
            ttft_s=0.012 + 0.002 * (n % 5), tpot_s=0.005 + 0.0005 * (n % 3),
            e2e_s=0.09 + 0.01 * (n % 4), prompt_tokens=96, output_tokens=16,
            prefix_tokens=restored, recomputed_tokens=96 - sum(restored.values()),
            fetch_bytes={k: v * 1024 for k, v in restored.items()},
            fetch_latency_s={k: 1e-4 for k in restored}, error=error,
        )

    def control(self, command: str, target: str, old: Any, new: Any) -> ControlChange:
        return ControlChange(**self._env("tt.control"), command=command, target=target,
                             old=old, new=new, by="alice@host:1", request_id="r-1")

    def fault(self, tier: str, fault: str, new: str = "active") -> FaultEvent:
        t = self.tier(tier)
        if new == "active":
            t.faults.append(fault)
        elif fault in t.faults:
            t.faults.remove(fault)
        return FaultEvent(**self._env("tt.faults"), tier=tier, fault=fault,
                          old="inactive" if new == "active" else "active", new=new,
                          reason="injected" if new == "active" else "cleared",
                          delay_s=0.02 if fault == "slow" else 0.0, duration_s=10.0)

    def health(self, tier: str, new: str, reason: str) -> HealthChange:
        t = self.tier(tier)
        old, t.health, t.reason = t.health, new, reason
        return HealthChange(**self._env("tt.faults"), tier=tier, old=old, new=new,
                            reason=reason)

    def cluster(self, racks: int, gpus_per_rack: int = 8, drill: tuple[int, ...] = (),
                faults: dict[int, list[str]] | None = None) -> ClusterStats:
        """Per-rack samples (fill rising with the rack id), GPUs of the drilled racks."""
        i = self.i
        rack_samples = [
            RackSample(rack=r, gpus=gpus_per_rack,
                       occupancy={"hbm": (r % 10) / 10 + 0.05, "pool": (r % 4) / 4},
                       hits=(50 + r) * i, lookups=100 * i, evictions=r * i,
                       load=((r * 7) % 10) / 10, queue=r % 3, running=4,
                       faults=(faults or {}).get(r, []))
            for r in range(racks)
        ]
        gpus = [
            GpuSample(gpu=r * gpus_per_rack + g, rack=r, role="colocated",
                      occupancy={"hbm": g / gpus_per_rack, "dram": 0.5}, hits=30 * i,
                      lookups=40 * i, evictions=g * i, load=0.25, queue=g % 2, running=1)
            for r in drill for g in range(gpus_per_rack)
        ]
        return ClusterStats(**self._env("tt.cluster"), tick=i, interval_s=0.5,
                            racks=rack_samples, gpus=gpus, drill_racks=list(drill),
                            sample_note="every rack, every tick")

    def run(self, ticks: int) -> list[Any]:
        out: list[Any] = []
        for _ in range(ticks):
            out += self.tick()
        return out


# ----------------------------------------------------------------------------- control side

Handler = Callable[[Any], Applied | Refused | None]


def control_handler(answer: Handler) -> Callable[[bytes], bytes | None]:
    """A MockTransport handler: decode the request, let ``answer`` reply (None: no reply)."""

    def handle(payload: bytes) -> bytes | None:
        request = decode_request(payload)
        reply = answer(request)
        if reply is None:
            return None
        if isinstance(reply, Applied | Refused):
            reply = _with_id(reply, request.request_id)
        encoded: bytes = encode_reply(reply)
        return encoded

    return handle


def _with_id(reply: Applied | Refused, request_id: str) -> Applied | Refused:
    import msgspec

    return msgspec.structs.replace(reply, request_id=request_id)


def applied(command: str, target: str = "", old: Any = None, new: Any = None) -> Applied:
    return Applied(request_id="", command=command, target=target, old=old, new=new)


def refused(command: str, code: str, message: str) -> Refused:
    return Refused(request_id="", error_code=code, message=message, command=command)


def sent_commands(transport: MockTransport) -> list[Any]:
    """The commands a MockTransport saw, decoded."""
    return [decode_request(p).command for p in transport.sent]


def fake_session(
    answer: Handler | None = None, *, read_only: bool = False, mode: str = "sim",
    ticks: int = 60, max_events: int = 2000,
) -> tuple[Session, FakeSource, Script, MockTransport]:
    """A session fed by a FakeSource with ``ticks`` ticks folded, and a controller over a
    MockTransport answering with ``answer`` (default: every command applied)."""
    transport = MockTransport(control_handler(answer or (lambda r: applied(r.command.name))))
    controller = Controller(
        "tcp://127.0.0.1:1",
        make_client=lambda addr: ControlClient(addr, transport=transport, timeout_s=0.2,
                                               retries=0),
        read_only=read_only,
    )
    session = Session(read_only=read_only, target="tcp://127.0.0.1:5557",
                      controller=controller, clock=lambda: 10_000.0,
                      model=StateModel(window_s=5.0, max_events=max_events))
    source = FakeSource()
    script = Script(mode=mode)
    source.push(script.hello(), *script.run(ticks))
    session.attach_source(source)
    assert session.ingest is not None
    session.ingest.drain()
    return session, source, script, transport
