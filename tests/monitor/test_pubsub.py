"""Publisher and subscriber over real sockets on loopback (ports picked by the OS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import zmq
from tiertop.monitor.framing import (
    END_SEQ,
    Decoded,
    encode_seq,
    replay_request_frames,
    split_replay,
)
from tiertop.monitor.protocol import (
    TOPIC_KV,
    Heartbeat,
    Hello,
    ResidentSummary,
    Snapshot,
    TierInfo,
    TierMoves,
    TierSample,
    TierStats,
)
from tiertop.monitor.subscriber import TelemetrySubscriber
from tiertop.monitor.vllm_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEvent,
    KvEventBatch,
    decode_batch,
    encode_batch,
)
from tiertop.runtime import publisher as publisher_module
from tiertop.runtime.publisher import TelemetryPublisher

LOOPBACK = "tcp://127.0.0.1:0"
HELLO = Hello(mode="sim", tiers=[TierInfo(name="dram"), TierInfo(name="disk")])


def make_pub(closers: list[Callable[[], None]], **kwargs: Any) -> TelemetryPublisher:
    kwargs.setdefault("hello", HELLO)
    kwargs.setdefault("close_linger_s", 0.2)
    endpoint = kwargs.pop("endpoint", LOOPBACK)
    pub = TelemetryPublisher(endpoint, kwargs.pop("replay_endpoint", LOOPBACK), **kwargs)
    closers.append(pub.close)
    return pub


def make_sub(
    closers: list[Callable[[], None]], pub: TelemetryPublisher, **kwargs: Any
) -> TelemetrySubscriber:
    replay = kwargs.pop("replay_endpoint", pub.replay_address)
    sub = TelemetrySubscriber(pub.address, replay, **kwargs)
    closers.append(sub.close)
    return sub


def poll_until(
    sub: TelemetrySubscriber,
    done: Callable[[list[Decoded]], bool],
    timeout_s: float = 5.0,
    max_messages: int = 200,
) -> list[Decoded]:
    got: list[Decoded] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got.extend(sub.poll(max_messages, 20))
        if done(got):
            return got
    raise AssertionError(f"condition not met in {timeout_s}s; got {len(got)}: {sub.counters()}")


def joined(sub: TelemetrySubscriber) -> list[Decoded]:
    """Wait until the subscriber hears the publisher (its subscription is in place)."""
    return poll_until(sub, lambda got: any(isinstance(m, Hello | Snapshot) for m in got))


def event_hashes(events: list[KvEvent]) -> list[int]:
    out: list[int] = []
    for e in events:
        if not isinstance(e, AllBlocksCleared):
            out.extend(h for h in e.block_hashes if isinstance(h, int))
    return out


def kv_hashes(messages: list[Decoded]) -> list[int]:
    out: list[int] = []
    for m in messages:
        if isinstance(m, KvEventBatch):
            out.extend(event_hashes(m.events))
    return out


def wait_flushed(pub: TelemetryPublisher, timeout_s: float = 10.0) -> None:
    assert pub.flush(timeout_s)
    assert not pub.pending()


# ------------------------------------------------------------------------------- ordering


def test_events_arrive_in_order_with_contiguous_sequences(closers: list[Any]) -> None:
    pub = make_pub(closers, batch_max_events=64)
    sub = make_sub(closers, pub)
    joined(sub)
    n = 5000
    for i in range(n):
        if i % 5 == 4:
            assert pub.block_removed([i], "disk")
        else:
            assert pub.block_stored([i], "dram")
        if i % 1000 == 0:
            pub.move("demote", i, "dram", "disk", 4096, reason="watermark")
    pub.publish(TierStats(tick=1, tiers=[TierSample(name="dram", used_blocks=3)]))
    got = poll_until(sub, lambda got: len(kv_hashes(got)) >= n)
    got += poll_until(sub, lambda more: any(isinstance(m, TierStats) for m in got + more))

    assert kv_hashes(got) == list(range(n))
    batches = [m for m in got if isinstance(m, KvEventBatch)]
    assert len(batches) >= n // 64
    seqs = [b.seq for b in batches]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(b.epoch == pub.epoch and b.source == pub.source for b in batches)
    tiers = {t for b in batches for t in b.tiers}
    assert tiers == {"dram", "disk"}  # tier names learnt from Hello, not "unknown"
    moves = [mv for m in got if isinstance(m, TierMoves) for mv in m.moves]
    assert [mv.key for mv in moves] == [0, 1000, 2000, 3000, 4000]
    stats = next(m for m in got if isinstance(m, TierStats))
    assert stats.source == pub.source and stats.epoch == pub.epoch and stats.clock > 0
    counters = sub.counters()
    assert counters.gaps == counters.restarts == counters.decode_errors == 0
    assert counters.events == n


def test_a_backlog_is_sent_in_order_a_pass_at_a_time(
    closers: list[Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publisher_module, "_FLUSH_PASS_ITEMS", 8)  # passes of two 4-event batches
    pub = make_pub(closers, batch_max_events=4)
    sub = make_sub(closers, pub)
    joined(sub)
    n = 3000
    for i in range(n):  # far faster than the publisher sends: a backlog of many passes
        assert pub.block_stored([i], "dram")
        if i % 300 == 0:
            pub.move("promote", i, "disk", "dram", 4096)
    got = poll_until(sub, lambda got: len(kv_hashes(got)) >= n, max_messages=1000)
    got += poll_until(sub, lambda more: len([m for m in got + more if isinstance(m, TierMoves)
                                             for _ in m.moves]) >= 10)
    assert kv_hashes(got) == list(range(n))
    assert max(len(m.events) for m in got if isinstance(m, KvEventBatch)) == 4
    moves = [mv.key for m in got if isinstance(m, TierMoves) for mv in m.moves]
    assert moves == list(range(0, n, 300))
    assert sub.counters().gaps == 0


# --------------------------------------------------------------------------- forced drops

BIG_TOKENS = list(range(100)) * 160  # 16,000 tokens: ~16 KB per event on the wire


def _burst(pub: TelemetryPublisher, n: int) -> None:
    """n messages of one big event each, published while nobody reads."""
    for i in range(n):
        event = BlockStored([i], None, BIG_TOKENS, 16, None, "dram", None)
        assert pub.kv_events([event])


def _stalled_setup(
    closers: list[Any], resync: bool
) -> tuple[TelemetryPublisher, TelemetrySubscriber, int]:
    pub = make_pub(closers, sndhwm=2, heartbeat_interval_s=0.05, replay_buffer_bytes=256 << 20)
    sub = make_sub(
        closers,
        pub,
        rcvhwm=2,
        replay_endpoint=pub.replay_address if resync else None,
        resync_timeout_s=5.0,
    )
    joined(sub)
    n = 1500  # ~24 MB: more than loopback socket buffers hold
    _burst(pub, n)
    wait_flushed(pub)
    assert pub.counters().hwm_dropped_messages > 0  # the stall was real
    return pub, sub, n


def test_hwm_drops_are_counted_and_seen_as_gaps(closers: list[Any]) -> None:
    pub, sub, n = _stalled_setup(closers, resync=False)

    def accounted(got: list[Decoded]) -> bool:
        c = pub.counters()
        gaps: int = sub.counters().gaps
        return bool(
            gaps == c.hwm_dropped_messages and len(kv_hashes(got)) + c.hwm_dropped_events == n
        )

    got = poll_until(sub, accounted, timeout_s=10.0)
    counters = sub.counters()
    # Every drop the publisher counted shows up as a gap here, and nothing else is missing.
    assert counters.gaps == pub.counters().hwm_dropped_messages
    assert counters.unrecovered == counters.gaps and counters.recovered == 0
    received = kv_hashes(got)
    assert received == sorted(received) and len(set(received)) == len(received)
    assert pub.counters().queue_dropped_items == 0


def test_gaps_are_filled_by_replay(closers: list[Any]) -> None:
    pub, sub, n = _stalled_setup(closers, resync=True)
    got = poll_until(sub, lambda got: len(kv_hashes(got)) >= n, timeout_s=15.0)
    assert kv_hashes(got) == list(range(n))  # all of it, in order, no duplicates
    counters = sub.counters()
    assert counters.gaps >= pub.counters().hwm_dropped_events > 0
    assert counters.recovered == counters.gaps
    assert counters.unrecovered == 0
    assert counters.replay_requests > 0


def test_loss_older_than_the_replay_buffer_falls_back_to_a_snapshot(closers: list[Any]) -> None:
    pub = make_pub(closers, sndhwm=2, heartbeat_interval_s=0.05, replay_buffer_batches=4)
    sub = make_sub(closers, pub, rcvhwm=2, resync_timeout_s=5.0)
    joined(sub)
    n = 1500
    _burst(pub, n)
    wait_flushed(pub)
    assert pub.counters().hwm_dropped_messages > 4  # more than the buffer can replay
    got = poll_until(sub, lambda _: sub.counters().snapshots >= 2 and sub.in_sync, 10.0)
    pub.block_stored([n], "dram")  # live again after the resync
    got += poll_until(sub, lambda more: kv_hashes(more)[-1:] == [n])

    counters = sub.counters()
    assert counters.unrecovered > 0 and counters.recovered == 0
    assert counters.gaps == counters.unrecovered
    assert counters.snapshots == 2  # the join, then the resync after unrecoverable loss
    resync = [m for m in got if isinstance(m, Snapshot)][-1]
    after = got[got.index(resync) + 1 :]
    before = got[: got.index(resync)]
    covered = resync.topic_seqs[TOPIC_KV]
    assert covered >= n - 1  # the snapshot covers everything the burst sent
    assert all(m.seq > covered for m in after if isinstance(m, KvEventBatch))
    assert kv_hashes(after) == [n]
    received = kv_hashes(before)
    assert received == sorted(received) and len(set(received)) == len(received)


def test_tail_loss_is_found_by_the_heartbeat(closers: list[Any]) -> None:
    """A raw publisher: kv seqs 0..3, then a heartbeat saying 5 was sent. Nothing follows the
    lost messages, so only the heartbeat can reveal them."""
    ctx = zmq.Context()
    closers.append(ctx.term)
    xpub = ctx.socket(zmq.XPUB)
    closers.append(lambda: xpub.close(0))
    xpub.bind(LOOPBACK)
    sub = TelemetrySubscriber(xpub.getsockopt_string(zmq.LAST_ENDPOINT), None)
    closers.append(sub.close)
    assert xpub.poll(5000) and xpub.recv() == b"\x01"  # subscribed to everything
    for seq in range(4):
        xpub.send_multipart([b"kv-events", encode_seq(seq), encode_batch([], 1.0)])
    beat = Heartbeat(epoch=1, topic_seqs={"kv-events": 5, "tt.heartbeat": 0})
    xpub.send_multipart([b"tt.heartbeat", encode_seq(0), msgspec.msgpack.encode(beat)])
    poll_until(sub, lambda got: any(isinstance(m, Heartbeat) for m in got))
    counters = sub.counters()
    assert counters.gaps == 2 and counters.unrecovered == 2


def test_close_flushes_what_was_queued(closers: list[Any]) -> None:
    pub = make_pub(closers, close_linger_s=2.0, batch_max_delay_s=0.5)
    sub = make_sub(closers, pub)
    joined(sub)
    for i in range(2000):
        pub.block_stored([i], "dram")
    pub.close()  # right away: nothing may be lost
    assert pub.closed
    assert not pub.block_stored([9999], "dram")  # refused, and not counted as a drop
    assert pub.counters().queue_dropped_items == 0
    got = poll_until(sub, lambda got: len(kv_hashes(got)) >= 2000)
    assert kv_hashes(got) == list(range(2000))


# ------------------------------------------------------------------------------- snapshot


def test_late_joiner_gets_snapshot_then_live_without_duplicates(closers: list[Any]) -> None:
    resident = [ResidentSummary(tier="dram", blocks=300, bytes=300 * 4096)]
    pub = make_pub(
        closers, batch_max_events=50, snapshot_provider=lambda: Snapshot(resident=resident)
    )
    pub.publish(TierStats(tick=7))
    for i in range(300):
        pub.block_stored([i], "dram")
    wait_flushed(pub)

    sub = make_sub(closers, pub, topics=[TOPIC_KV, "tt.stats"])
    got = joined(sub)
    for i in range(300, 600):
        pub.block_stored([i], "dram")
    got += poll_until(sub, lambda more: kv_hashes(got + more)[-1:] == [599])

    snapshot = got[0]
    assert isinstance(snapshot, Snapshot)  # first, before any live message
    assert snapshot.resident == resident
    assert snapshot.stats is not None and snapshot.stats.tick == 7
    assert snapshot.hello is not None and [t.name for t in snapshot.hello.tiers] == ["dram", "disk"]
    assert snapshot.epoch == pub.epoch and snapshot.source == pub.source
    last_before = snapshot.topic_seqs[TOPIC_KV]
    assert last_before >= 300 // 50 - 1
    batches = [m for m in got if isinstance(m, KvEventBatch)]
    assert all(b.seq > last_before for b in batches)  # nothing the snapshot already covers
    assert kv_hashes(got) == list(range(300, 600))
    counters = sub.counters()
    assert counters.snapshots == 1 and counters.gaps == 0 and counters.restarts == 0


def test_snapshot_provider_errors_are_survived(closers: list[Any]) -> None:
    def broken() -> Snapshot:
        raise RuntimeError("state lock timeout")

    pub = make_pub(closers, snapshot_provider=broken)
    sub = make_sub(closers, pub, resync_timeout_s=2.0)
    got = joined(sub)
    pub.block_stored([1], "dram")
    got += poll_until(sub, lambda more: kv_hashes(got + more) == [1])
    assert not any(isinstance(m, Snapshot) for m in got)
    assert pub.counters().snapshot_errors == 1
    assert sub.counters().resync_failures == 0  # answered (end marker), not timed out


# ------------------------------------------------------------------------------- restarts


def test_publisher_restart_is_detected(closers: list[Any]) -> None:
    first = make_pub(closers, epoch=1, heartbeat_interval_s=0.05)
    port = first.address.rsplit(":", 1)[1]
    replay_port = (first.replay_address or "").rsplit(":", 1)[1]
    sub = make_sub(closers, first, reconnect_after_s=None)
    joined(sub)
    first.block_stored([1], "dram")
    poll_until(sub, lambda got: kv_hashes(got) == [1])
    assert sub.epoch == 1
    first.close()

    second = make_pub(
        closers,
        epoch=2,
        endpoint=f"tcp://127.0.0.1:{port}",
        replay_endpoint=f"tcp://127.0.0.1:{replay_port}",
        heartbeat_interval_s=0.05,
    )
    poll_until(sub, lambda got: any(isinstance(m, Hello | Snapshot) for m in got), timeout_s=10)
    second.block_stored([2], "dram")
    got = poll_until(sub, lambda got: kv_hashes(got) == [2])
    assert sub.epoch == 2
    assert sub.counters().restarts == 1
    assert all(m.epoch == 2 for m in got if isinstance(m, KvEventBatch))


def test_sequence_going_backwards_is_a_restart(closers: list[Any]) -> None:
    """A vLLM-style stream (no epoch): seq 5, 6, 7, then 0, 1 means the publisher restarted."""
    ctx = zmq.Context()
    closers.append(ctx.term)
    xpub = ctx.socket(zmq.XPUB)
    closers.append(lambda: xpub.close(0))
    xpub.bind(LOOPBACK)
    sub = TelemetrySubscriber(xpub.getsockopt_string(zmq.LAST_ENDPOINT), None)
    closers.append(sub.close)
    assert xpub.poll(5000) and xpub.recv() == b"\x01"
    for n, seq in enumerate((5, 6, 7, 0, 1)):
        event = BlockRemoved([n], "GPU")
        xpub.send_multipart([b"", encode_seq(seq), encode_batch([event], 1.0)])
    got = poll_until(sub, lambda got: len(kv_hashes(got)) == 5)
    assert kv_hashes(got) == [0, 1, 2, 3, 4]
    assert sub.counters().restarts == 1 and sub.counters().gaps == 0


# --------------------------------------------------------------------------- slow readers


def test_stalled_subscriber_costs_the_engine_nothing(closers: list[Any]) -> None:
    capacity = 2000
    pub = make_pub(closers, sndhwm=2, queue_capacity=capacity, heartbeat_interval_s=0.05)
    stalled = make_sub(closers, pub, rcvhwm=2, topics=[TOPIC_KV])
    joined(stalled)  # connected, then never read again

    n = 3000
    accepted = 0
    highest_queue = 0
    for i in range(n):
        accepted += pub.kv_events([BlockStored([i], None, BIG_TOKENS, 16, None, "dram", None)])
        highest_queue = max(highest_queue, pub.pending())
    wait_flushed(pub)
    c = pub.counters()
    # Every call returned; the queue never grew past its bound; every event is accounted for.
    assert highest_queue <= capacity
    assert accepted == n - c.queue_dropped_items
    assert c.sent_events + c.hwm_dropped_events + c.queue_dropped_events == n
    assert c.hwm_dropped_messages > 0
    # Drops are reported in the next stats message.
    stalled.close()
    fresh = make_sub(closers, pub, topics=["tt.stats"], snapshot_on_join=False)
    joined(fresh)
    pub.publish(TierStats(tick=2))
    got = poll_until(fresh, lambda got: any(isinstance(m, TierStats) for m in got))
    stats = next(m for m in got if isinstance(m, TierStats))
    c = pub.counters()
    assert stats.dropped_hwm_messages == c.hwm_dropped_messages > 0
    assert stats.dropped_queue_items == c.queue_dropped_items
    assert stats.dropped_messages == c.dropped_messages
    assert stats.dropped_events == c.dropped_events


# ------------------------------------------------------------------- tolerance on the wire


def test_unknown_types_fields_and_garbage_are_counted(closers: list[Any]) -> None:
    ctx = zmq.Context()
    closers.append(ctx.term)
    xpub = ctx.socket(zmq.XPUB)
    closers.append(lambda: xpub.close(0))
    xpub.bind(LOOPBACK)
    sub = TelemetrySubscriber(xpub.getsockopt_string(zmq.LAST_ENDPOINT), None)
    closers.append(sub.close)
    assert xpub.poll(5000) and xpub.recv() == b"\x01"
    newer_stats = {**msgspec.to_builtins(TierStats(epoch=3, tick=4)), "watts": 300}
    frames: list[list[bytes]] = [
        [b"tt.stats", encode_seq(0), msgspec.msgpack.encode(newer_stats)],
        [b"tt.power", encode_seq(0), msgspec.msgpack.encode({"type": "Power", "epoch": 3})],
        [b"kv-events", encode_seq(0), b"\xc1 not msgpack"],
        [b"kv-events", b"\x01\x02", b"short seq frame"],
        [b"only-one-frame"],
        [b"kv-events", encode_seq(1), msgspec.msgpack.encode([1.0, [{"type": "Nope"}], 0])],
        [b"tt.stats", encode_seq(1), msgspec.msgpack.encode(TierStats(epoch=3, tick=5))],
    ]
    for f in frames:
        xpub.send_multipart(f)
    got = poll_until(sub, lambda got: [getattr(m, "tick", None) for m in got][-1:] == [5])
    assert [m.tick for m in got if isinstance(m, TierStats)] == [4, 5]
    counters = sub.counters()
    assert counters.unknown_fields == 1
    assert counters.unknown_types == 2  # the Power message and the Nope event
    assert counters.decode_errors == 3
    assert counters.gaps == 0  # undecodable messages still count for sequencing


def test_silence_marks_the_stream_stale(closers: list[Any]) -> None:
    pub = make_pub(closers, heartbeat_interval_s=0.05)
    sub = make_sub(closers, pub, stale_after_s=0.4, reconnect_after_s=None)
    joined(sub)
    poll_until(sub, lambda got: any(isinstance(m, Heartbeat) for m in got))
    assert not sub.stale
    age = sub.last_message_age_s
    assert age is not None and age < 0.4
    pub.close()
    deadline = time.monotonic() + 3.0
    while not sub.stale and time.monotonic() < deadline:
        sub.poll(100, 50)
    assert sub.stale
    age = sub.last_message_age_s
    assert age is not None and age > 0.4


def test_silence_long_enough_reconnects(closers: list[Any]) -> None:
    pub = make_pub(closers, heartbeat_interval_s=0.05)
    sub = make_sub(closers, pub, stale_after_s=0.2, reconnect_after_s=0.3)
    joined(sub)
    pub.close()
    deadline = time.monotonic() + 3.0
    while sub.counters().reconnects == 0 and time.monotonic() < deadline:
        sub.poll(100, 50)
    assert sub.counters().reconnects >= 1


# --------------------------------------------------------------------------------- replay


def test_vllm_style_replay_request(closers: list[Any]) -> None:
    pub = make_pub(closers)
    for step in range(5):  # one engine step each: one batch each, seqs 0..4
        events: list[KvEvent] = [BlockRemoved([step * 10 + i], "dram") for i in range(10)]
        pub.kv_events(events, ts=float(step))
    wait_flushed(pub)
    ctx = zmq.Context()
    closers.append(ctx.term)
    dealer = ctx.socket(zmq.DEALER)
    closers.append(lambda: dealer.close(0))
    dealer.connect(pub.replay_address or "")
    dealer.send_multipart(replay_request_frames(2))  # [b"", start8]: vLLM's request
    replies: list[list[bytes]] = []
    while not replies or replies[-1][-2:] != [END_SEQ, b""]:
        assert dealer.poll(5000)
        replies.append(dealer.recv_multipart())
    *items, end = replies
    assert end == [b"", b"", END_SEQ, b""]
    assert [r[1] for r in items] == [b"kv-events"] * 3
    parsed = [split_replay(r) for r in items]
    assert [p.seq for p in parsed if p is not None] == [2, 3, 4]
    hashes: list[int] = []
    for p in parsed:
        assert p is not None
        batch = decode_batch(p.payload)
        assert batch.ts == p.seq  # the step's own timestamp
        hashes += event_hashes(batch.events)
    assert hashes == list(range(20, 50))
