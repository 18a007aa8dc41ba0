"""The telemetry schema and framing: round trips, tolerance, counting, frame shapes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import msgspec
import pytest
from tiertop.monitor.framing import (
    END_SEQ,
    MAX_SEQ,
    FrameDecoder,
    FramingError,
    MessageCodec,
    ReplayItem,
    decode_seq,
    encode_seq,
    live_frames,
    map_len,
    parse_replay_request,
    replay_request_frames,
    snapshot_request_frames,
    split_live,
    split_replay,
)
from tiertop.monitor.protocol import (
    CAP_SNAPSHOT,
    FIELD_COUNT,
    LATENCY_BUCKETS,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    TOPIC_FAULTS,
    TOPIC_OF,
    TOPIC_SNAPSHOT,
    TOPICS,
    ClusterStats,
    ControlChange,
    FaultEvent,
    GpuSample,
    HealthChange,
    Heartbeat,
    Hello,
    RackSample,
    RequestDone,
    ResidentSummary,
    Snapshot,
    TelemetryMessage,
    TierInfo,
    TierMove,
    TierMoves,
    TierSample,
    TierStats,
    Topology,
    is_tt_topic,
    type_name,
)
from tiertop.tiers.stats import N_BUCKETS, LatencyHistogram, percentile_of_counts

ENVELOPE: dict[str, Any] = {
    "source": "host:1",
    "epoch": 1_700_000_000_000_000_000,
    "seq": 7,
    "clock": 12.5,
}


def _sample() -> TierSample:
    hist = LatencyHistogram()
    for ns in (900, 1_500, 40_000, 40_000, 2_000_000):
        hist.record(ns)
    return TierSample(
        name="dram",
        used_bytes=3 << 20,
        used_blocks=12,
        capacity_bytes=64 << 20,
        high_watermark=0.9,
        low_watermark=0.7,
        eviction_policy="lru",
        health="degraded",
        health_reason="slow fault",
        faults=["slow"],
        hits=10,
        misses=3,
        puts=20,
        promotions=1,
        demotions=2,
        drops=4,
        evictions=6,
        deletes=1,
        bytes_in=1 << 20,
        bytes_out=1 << 19,
        errors=1,
        corrupt=0,
        latency={"get": hist.counts, "put": []},
        latency_sum_ns={"get": hist.sum_ns},
    )


def _examples() -> list[TelemetryMessage]:
    hello = Hello(
        **ENVELOPE,
        software_version="0.1.0",
        mode="sim",
        speed=100.0,
        started_at=1.7e9,
        host="box",
        pid=42,
        topology=Topology(tier_order=["gpu", "dram"], gpus=8, racks=2, numa_nodes=2, model="g"),
        tiers=[
            TierInfo(
                name="gpu",
                kind="cuda",
                description="emulated HBM: 8 GiB, 2 TB/s",
                emulated=True,
                fallback_reason="no CUDA device",
                capacity_bytes=8 << 30,
                max_capacity_bytes=None,
                live_tunable=["capacity", "watermarks"],
            ),
            TierInfo(name="dram", kind="dram", capacity_bytes=1 << 30, read_only=True),
        ],
        capabilities=[CAP_SNAPSHOT],
        addresses={"pub": "tcp://127.0.0.1:5557"},
    )
    stats = TierStats(
        **ENVELOPE,
        tick=3,
        interval_s=0.1,
        tiers=[_sample()],
        placement_policy="fastest-first",
        promotion_policy="on-hit",
        queue_depth=4,
        request_rate=12.0,
        tokens_per_s=900.0,
        rss_bytes=1 << 28,
        numa_free_bytes={0: 1 << 30, 1: 2 << 30},
        dropped_messages=3,
    )
    return [
        hello,
        stats,
        TierMoves(
            **ENVELOPE,
            moves=[TierMove("demote", 2**64 - 1, "gpu", "dram", 4096, 1e-5, "watermark", 3.0)],
            sample_rate=0.5,
        ),
        RequestDone(
            **ENVELOPE,
            request_id="r1",
            conversation_id="c1",
            ttft_s=0.05,
            tpot_s=0.01,
            e2e_s=0.5,
            prompt_tokens=100,
            output_tokens=20,
            prefix_tokens={"gpu": 32, "dram": 16},
            recomputed_tokens=52,
            fetch_bytes={"dram": 1 << 20},
            fetch_latency_s={"dram": 0.002},
        ),
        ControlChange(
            **ENVELOPE, command="set_watermarks", target="dram", old=[0.9, 0.7], new=[0.8, 0.6]
        ),
        FaultEvent(
            **ENVELOPE, tier="disk", fault="slow", old="inactive", new="active", delay_s=0.01
        ),
        HealthChange(**ENVELOPE, tier="disk", old="ok", new="degraded", reason="slow fault"),
        Snapshot(
            **ENVELOPE,
            hello=hello,
            stats=stats,
            resident=[ResidentSummary(tier="dram", blocks=2, bytes=8192, block_hashes=[1, 2])],
            settings={"rate": 3.5},
            topic_seqs={"kv-events": 10, "tt.stats": 3},
        ),
        Heartbeat(**ENVELOPE, topic_seqs={"kv-events": 10}, uptime_s=3.0, queue_len=2),
        ClusterStats(
            **ENVELOPE,
            tick=3,
            interval_s=0.25,
            racks=[RackSample(rack=0, gpus=64, occupancy={"hbm": 0.5, "pool": 0.25}, hits=90,
                              lookups=100, evictions=7, load=0.4, queue=3, running=12,
                              faults=["down"])],
            gpus=[GpuSample(gpu=1, rack=0, role="prefill", occupancy={"hbm": 0.75}, hits=9,
                            lookups=10, evictions=1, load=0.5, queue=1, running=2)],
            drill_racks=[0],
            sample_note="per-GPU detail for rack 0",
        ),
    ]


def test_every_message_type_has_an_example_and_a_topic() -> None:
    assert {type(m) for m in _examples()} == set(MESSAGE_TYPES)
    assert set(TOPIC_OF) == set(MESSAGE_TYPES)
    assert len({type_name(c) for c in MESSAGE_TYPES}) == len(MESSAGE_TYPES)
    assert all(is_tt_topic(t) for t in TOPIC_OF.values())
    assert not is_tt_topic(TOPICS[0]) and not is_tt_topic("")
    assert TOPIC_OF[FaultEvent] == TOPIC_OF[HealthChange] == TOPIC_FAULTS
    assert LATENCY_BUCKETS == N_BUCKETS


@pytest.mark.parametrize("message", _examples(), ids=lambda m: type(m).__name__)
def test_round_trip(message: TelemetryMessage) -> None:
    payload = MessageCodec().encode(message)
    decoder = FrameDecoder()
    decoded = decoder.decode(TOPIC_OF[type(message)].encode(), 7, payload)
    assert decoded == message
    assert type(decoded) is type(message)
    assert decoder.counters.unknown_fields == decoder.counters.decode_errors == 0
    # Tagged map on the wire, the tag being the class name.
    raw = msgspec.msgpack.decode(payload)
    assert raw["type"] == type(message).__name__
    assert len(raw) == FIELD_COUNT[type(message)]


def test_latency_deltas_survive_the_wire() -> None:
    sample = _sample()
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(sample), type=TierSample)
    assert len(wire.latency["get"]) == N_BUCKETS
    assert percentile_of_counts(wire.latency["get"], 0.5) == percentile_of_counts(
        sample.latency["get"], 0.5
    )
    assert 20e-6 < percentile_of_counts(wire.latency["get"], 0.5) < 80e-6


@pytest.mark.parametrize("message", _examples()[:2], ids=lambda m: type(m).__name__)
def test_unknown_fields_are_ignored_and_counted(message: TelemetryMessage) -> None:
    newer = msgspec.to_builtins(message)
    newer["added_in_v2"] = {"x": 1}
    newer["also_new"] = [1, 2]
    payload = msgspec.msgpack.encode(newer)
    decoder = FrameDecoder()
    assert decoder.decode(b"tt.x", 0, payload) == message
    assert decoder.counters.unknown_fields == 2
    assert decoder.counters.unknown_types == decoder.counters.decode_errors == 0


def test_fields_an_older_publisher_leaves_out_take_defaults() -> None:
    payload = msgspec.msgpack.encode({"type": "TierStats", "tick": 9, "seq": 2})
    decoded = FrameDecoder().decode(b"tt.stats", 2, payload)
    assert decoded == TierStats(tick=9, seq=2)


def test_unknown_type_is_counted_not_fatal() -> None:
    decoder = FrameDecoder()
    payload = msgspec.msgpack.encode({"type": "PowerDraw", "source": "x", "watts": 300})
    assert decoder.decode(b"tt.power", 0, payload) is None
    assert decoder.counters.unknown_types == 1
    assert decoder.counters.decode_errors == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never valid msgpack
        msgspec.msgpack.encode(5),
        msgspec.msgpack.encode({"no": "type"}),
        msgspec.msgpack.encode({"type": "TierStats", "tick": "three"}),
        msgspec.msgpack.encode({"type": "Hello", "tiers": [{"capacity_bytes": "big"}]}),
    ],
)
def test_garbage_is_a_counted_decode_error(payload: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.decode(b"tt.stats", 0, payload) is None
    assert decoder.counters.decode_errors == 1
    assert decoder.counters.unknown_types == 0


def test_protocol_version_travels_in_hello() -> None:
    hello = Hello()
    assert hello.protocol_version == PROTOCOL_VERSION
    raw = msgspec.msgpack.decode(MessageCodec().encode(hello))
    assert raw["protocol_version"] == PROTOCOL_VERSION


def test_map_len_reads_every_map_header() -> None:
    assert map_len(msgspec.msgpack.encode({})) == 0
    assert map_len(msgspec.msgpack.encode({str(i): i for i in range(15)})) == 15
    assert map_len(msgspec.msgpack.encode({str(i): i for i in range(16)})) == 16  # map16
    assert map_len(msgspec.msgpack.encode({str(i): i for i in range(70000)})) == 70000  # map32
    assert map_len(msgspec.msgpack.encode([1])) is None
    assert map_len(b"") is None


# ------------------------------------------------------------------------------- framing


@pytest.mark.parametrize("seq", [0, 1, 255, 256, 2**32, MAX_SEQ])
def test_sequence_frame_is_8_bytes_big_endian(seq: int) -> None:
    frame = encode_seq(seq)
    assert len(frame) == 8
    assert frame == seq.to_bytes(8, "big")
    assert decode_seq(frame) == seq


def test_bad_frames_raise_framing_error() -> None:
    with pytest.raises(FramingError):
        decode_seq(b"\x00" * 4)
    with pytest.raises(FramingError):
        split_live([b"topic", encode_seq(1)])
    assert split_live(live_frames(b"kv-events", 9, b"p")) == (b"kv-events", 9, b"p")
    assert (-1).to_bytes(8, "big", signed=True) == END_SEQ


def test_replay_requests_parse() -> None:
    vllm = parse_replay_request(replay_request_frames(5))
    assert (vllm.snapshot, vllm.start, vllm.topic) == (False, 5, None)
    topic = parse_replay_request(replay_request_frames(7, b"tt.stats"))
    assert (topic.snapshot, topic.start, topic.topic, topic.end) == (False, 7, b"tt.stats", None)
    bounded = parse_replay_request(replay_request_frames(7, b"tt.stats", 9))
    assert (bounded.start, bounded.topic, bounded.end) == (7, b"tt.stats", 9)
    assert replay_request_frames(7, None, 9) == replay_request_frames(7)  # vLLM: no end
    assert parse_replay_request(snapshot_request_frames()).snapshot
    assert snapshot_request_frames()[1] == TOPIC_SNAPSHOT.encode()
    for bad in ([b"", b"abc"], [b"", encode_seq(1), b"t", b"extra"], [b""]):
        with pytest.raises(FramingError):
            parse_replay_request(bad)


def test_replay_answers_parse_in_both_vllm_framings() -> None:
    seq8 = encode_seq(3)
    # v0.26: [b"", topic, seq, payload]; end [b"", b"", END, b""]
    assert split_replay([b"", b"kv-events", seq8, b"p"]) == ReplayItem(b"kv-events", 3, b"p")
    assert split_replay([b"", b"", seq8, b"p"]) == ReplayItem(b"", 3, b"p")  # vLLM topic ""
    assert split_replay([b"", b"", END_SEQ, b""]) is None
    # before v0.26: [b"", seq, payload]; end [b"", END, b""]
    assert split_replay([b"", seq8, b"p"]) == ReplayItem(None, 3, b"p")
    assert split_replay([b"", END_SEQ, b""]) is None
    with pytest.raises(FramingError):
        split_replay([b"", b"a", b"b", b"c", b"d"])
    with pytest.raises(FramingError):
        split_replay([b"", b"short", b"p"])


def test_telemetry_modules_never_import_textual() -> None:
    code = (
        "import sys\n"
        "import tiertop.monitor.protocol, tiertop.monitor.framing, tiertop.monitor.vllm_events\n"
        "import tiertop.monitor.subscriber, tiertop.runtime.publisher\n"
        "assert 'textual' not in sys.modules, sorted(m for m in sys.modules if 'textual' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
