"""A deterministic, realistic telemetry stream as raw frames, for recording tests.

Messages are the real protocol types encoded the way the publisher encodes them; counters grow
by known amounts per tick so summaries can be checked exactly:
every tick, each tier gains 9 hits, 1 miss, 2 evictions and 1 promotion.
"""

from __future__ import annotations

from collections.abc import Iterator

from tiertop.monitor.framing import Decoded, MessageCodec
from tiertop.monitor.protocol import (
    TOPIC_KV,
    TOPIC_OF,
    ControlChange,
    FaultEvent,
    HealthChange,
    Heartbeat,
    Hello,
    RequestDone,
    TelemetryMessage,
    TierInfo,
    TierMove,
    TierMoves,
    TierSample,
    TierStats,
    Topology,
)
from tiertop.monitor.vllm_events import BlockRemoved, BlockStored, KvEventBatch, encode_batch
from tiertop.runtime.publisher import TelemetryPublisher
from tiertop.tiers.stats import N_BUCKETS

TIERS = ("dram", "remote", "disk")
TICK_S = 0.25
#: (received_at, topic, seq, payload)
Frame = tuple[float, bytes, int, bytes]


def hist(bucket: int, n: int) -> list[int]:
    h = [0] * N_BUCKETS
    h[bucket] = n
    return h


class StreamBuilder:
    """Builds frames with per-topic sequence numbers, like the publisher."""

    def __init__(self, epoch: int = 7, source: str = "test:1", base: float = 1_000.0) -> None:
        self.codec = MessageCodec()
        self.seqs: dict[bytes, int] = {}
        self.epoch = epoch
        self.source = source
        self.base = base  # receive time = base + clock (+ a little)
        self.frames: list[Frame] = []

    def _seq(self, topic: bytes) -> int:
        seq = self.seqs.get(topic, 0)
        self.seqs[topic] = seq + 1
        return seq

    def message(self, clock: float, message: TelemetryMessage) -> None:
        topic = TOPIC_OF[type(message)].encode()
        message.source, message.epoch, message.clock = self.source, self.epoch, clock
        message.seq = self._seq(topic)
        self.frames.append((self.base + clock + 0.001, topic, message.seq,
                            self.codec.encode(message)))

    def kv(self, clock: float, events: list[object]) -> None:
        topic = TOPIC_KV.encode()
        self.frames.append((self.base + clock + 0.001, topic, self._seq(topic),
                            encode_batch(events, clock)))  # type: ignore[arg-type]


def hello() -> Hello:
    return Hello(
        mode="sim", host="testhost", pid=42, speed=1.0,
        topology=Topology(tier_order=list(TIERS), model="gpt2-tiny"),
        tiers=[TierInfo(name=n, kind=n, capacity_bytes=1 << 20, block_bytes=4096)
               for n in TIERS],
    )


def session(seconds: float = 60.0, *, epoch: int = 7, controls_every: float = 15.0,
            fault_at: float | None = 20.0) -> list[Frame]:
    """A ``seconds``-long sim session: Hello, 4 ticks/s, ~10 requests/s with block events and
    moves, heartbeats, a control change every ``controls_every`` s, a fault and its clearing."""
    b = StreamBuilder(epoch=epoch)
    b.message(0.0, hello())
    ticks = int(seconds / TICK_S)
    key = 0
    high = 0.9
    for i in range(1, ticks + 1):
        t = i * TICK_S
        # Requests and their block events, between ticks.
        for j in range(2):
            rt = t - TICK_S + (j + 0.5) * TICK_S / 2
            n = i * 2 + j
            key += 1
            b.kv(rt, [
                BlockStored(block_hashes=[key], parent_block_hash=key - 1, token_ids=[1] * 16,
                            block_size=16, lora_id=None, medium=TIERS[n % 3], lora_name=None),
                BlockRemoved(block_hashes=[key - 3], medium=TIERS[(n + 1) % 3]),
            ])
            b.message(rt, RequestDone(
                request_id=f"r{n}", conversation_id=f"c{n % 5}", ttft_s=0.02 + 0.001 * (n % 7),
                tpot_s=0.005, e2e_s=0.1, prompt_tokens=64, output_tokens=8,
                prefix_tokens={"dram": 32} if n % 2 else {}, recomputed_tokens=32 if n % 2
                else 64, fetch_bytes={"dram": 8192} if n % 2 else {},
                fetch_latency_s={"dram": 0.0001} if n % 2 else {}))
        if i % 4 == 0:
            b.message(t - 0.01, TierMoves(moves=[
                TierMove("demote", key, "dram", "remote", 4096, 0.0002, "watermark", t - 0.01),
                TierMove("promote", key - 1, "remote", "dram", 4096, 0.0003, "policy", t - 0.01),
            ]))
        if i % 2 == 0:
            b.message(t - 0.005, Heartbeat(topic_seqs={}, uptime_s=t))
        if fault_at is not None and abs(t - fault_at) < 1e-9:
            b.message(t - 0.003, FaultEvent(tier="remote", fault="slow", old="inactive",
                                            new="active", reason="injected", delay_s=0.005))
            b.message(t - 0.002, HealthChange(tier="remote", old="ok", new="degraded",
                                              reason="slow fault"))
        if fault_at is not None and abs(t - (fault_at + 10)) < 1e-9:
            b.message(t - 0.003, FaultEvent(tier="remote", fault="slow", old="active",
                                            new="inactive", reason="cleared"))
            b.message(t - 0.002, HealthChange(tier="remote", old="degraded", new="ok",
                                              reason="recovered"))
        if controls_every and i % int(controls_every / TICK_S) == 0:
            old, high = high, round(high - 0.05, 2)
            b.message(t - 0.002, ControlChange(
                command="set_watermarks", target="dram",
                old={"high": old}, new={"high": high}, by="tester", request_id=f"q{i}"))
        b.message(t, TierStats(
            tick=i, interval_s=TICK_S, placement_policy="top", promotion_policy="on-hit",
            queue_depth=i % 3, request_rate=8.0, tokens_per_s=64.0,
            prefix_query_tokens=128 * i, prefix_hit_tokens=32 * i,
            tiers=[TierSample(
                name=n, used_bytes=(1 << 19) + 1024 * ((i + k) % 64), used_blocks=100 + i % 7,
                capacity_bytes=1 << 20, high_watermark=high if n == "dram" else 0.9,
                low_watermark=0.8, eviction_policy="lru",
                health="degraded" if n == "remote" and fault_at is not None
                and fault_at <= t < fault_at + 10 else "ok",
                hits=9 * i, misses=i, evictions=2 * i, promotions=i, puts=3 * i,
                bytes_in=4096 * i, latency={"get": hist(10 + k, 4), "put": hist(12, 2)},
                latency_sum_ns={"get": 4 * 1000, "put": 2 * 3000},
            ) for k, n in enumerate(TIERS)],
        ))
    return b.frames


def cycle(frames: list[Frame]) -> Iterator[tuple[int, Frame]]:
    """The frames forever, index by index (for the crash test's endless writer)."""
    i = 0
    while True:
        yield i, frames[i % len(frames)]
        i += 1


def republish(pub: TelemetryPublisher, clock: list[float], message: Decoded) -> None:
    """Send a decoded recorded message again through a real publisher whose clock is
    ``clock[0]``, at the message's own time."""
    if isinstance(message, KvEventBatch):
        clock[0] = message.ts
        pub.kv_events(list(message.events), message.ts)
    else:
        assert isinstance(message, TelemetryMessage)
        clock[0] = message.clock
        pub.publish(message)
