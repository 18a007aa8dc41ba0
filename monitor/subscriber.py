"""The reader's side of the telemetry stream: SUB for live messages, DEALER for resync.

:class:`TelemetrySubscriber` decodes every message with :mod:`tiertop.monitor.framing`, tracks
the sequence of every topic it reads, and keeps the stream whole where it can:

* **gaps** (a sequence number skipped, or a heartbeat naming a later one than received) are
  counted and, with a replay socket, filled by asking the publisher to replay that topic; the
  topic's newer messages wait until the replay answers, so each topic stays in order;
* **late join** (first message of a runtime): it asks for a :class:`Snapshot`, holds the live
  stream meanwhile, hands out the snapshot, then the live messages after the snapshot's sequence
  numbers (older duplicates dropped);
* **restarts** (a new epoch, or a sequence number going backwards) are counted and start a
  fresh join;
* **silence** (no message for ``stale_after_s``) marks the stream stale; after
  ``reconnect_after_s`` the sockets are recreated.

It works with vLLM's publisher too (no heartbeats, no snapshots: it falls back to what is
there). The API is a plain poll, meant to be drained in bounded batches from one worker thread;
it starts no threads and never raises on bad input (garbage is counted as decode errors).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import zmq

from .framing import (
    Decoded,
    FrameDecoder,
    FramingError,
    replay_request_frames,
    snapshot_request_frames,
    split_replay,
)
from .protocol import (
    CAP_SNAPSHOT,
    TOPIC_HEARTBEAT,
    TOPIC_HELLO,
    TOPIC_KV,
    TOPIC_SNAPSHOT,
    TOPICS,
    Heartbeat,
    Hello,
    Snapshot,
    TelemetryMessage,
    TierStats,
)
from .security import ClientCurve, apply_client_curve
from .vllm_events import KvEventBatch, MediumNormalizer

__all__ = ["SubscriberCounters", "TelemetrySubscriber"]


@dataclass(slots=True)
class SubscriberCounters:
    """What a subscriber saw (all cumulative).

    Attributes:
        received: Live messages read off the SUB socket (any kind, good or bad).
        replayed: Messages received from the replay socket (replays and snapshots).
        delivered: Messages handed out by :meth:`TelemetrySubscriber.poll`.
        events: Block events in delivered batches.
        gaps: Sequence numbers found missing (summed over topics), whether or not recovered.
        recovered: Of those, messages then obtained by replay.
        unrecovered: Of those, messages confirmed lost (older than the replay buffer, no replay
            socket, or a failed resync).
        duplicates: Stale messages dropped (already covered by a snapshot or replay).
        restarts: Publisher restarts seen (new epoch, or a sequence going backwards).
        unknown_types: Messages or block events of types this version does not know.
        unknown_fields: Top-level fields of tiertop messages this version does not know.
        decode_errors: Frames or payloads that could not be decoded.
        snapshots: Snapshots received and applied.
        replay_requests: Replay requests sent.
        snapshot_requests: Snapshot requests sent.
        resync_failures: Resyncs that timed out or overflowed the hold buffer.
        reconnects: Times the sockets were recreated after a long silence.
        publisher_dropped: ``dropped_messages`` of the last TierStats (the publisher's count).
    """

    received: int = 0
    replayed: int = 0
    delivered: int = 0
    events: int = 0
    gaps: int = 0
    recovered: int = 0
    unrecovered: int = 0
    duplicates: int = 0
    restarts: int = 0
    unknown_types: int = 0
    unknown_fields: int = 0
    decode_errors: int = 0
    snapshots: int = 0
    replay_requests: int = 0
    snapshot_requests: int = 0
    resync_failures: int = 0
    reconnects: int = 0
    publisher_dropped: int = 0


_Held = tuple[str, int, Decoded | None]


@dataclass(slots=True)
class _TopicState:
    last: int | None = None  # last sequence number accepted (None: nothing yet)
    floor: int = -1  # drop messages with seq <= floor (overlap after a snapshot/replay)
    hold: list[tuple[int, Decoded | None]] | None = None  # waiting for a replay of this topic


@dataclass(slots=True)
class _Request:
    snapshot: bool
    topic: str
    start: int
    missing_until: int  # replay: the first sequence number that was not missing
    sent_at: float
    items: list[tuple[int, Decoded | None]] = field(default_factory=list)


class TelemetrySubscriber:
    """Reads a tiertop (or vLLM) telemetry stream; see the module docstring.

    Args:
        endpoint: The publisher's live endpoint, e.g. ``"tcp://127.0.0.1:5557"``.
        replay_endpoint: The publisher's replay/snapshot endpoint (None: no resync, gaps are
            only counted).
        topics: Topic prefixes to read (``""``: all). ``tt.hello`` and ``tt.heartbeat`` are
            always read as well: they carry the epoch and liveness.
        context: ZeroMQ context (default: a private one, terminated on close).
        rcvhwm: Receive high-water mark in messages.
        stale_after_s: Silence after which :attr:`stale` becomes true.
        reconnect_after_s: Silence after which the sockets are recreated (None: never).
        resync: Ask for replays and snapshots (False: only count).
        snapshot_on_join: Ask for a snapshot on the first message of every runtime epoch.
        resync_timeout_s: How long to wait for a replay or snapshot answer.
        max_held: Most live messages held while waiting for resync answers.
        kv_topic: Topic of block events the publisher's plain (vLLM) replay request serves.
        normalizer: Tier-name normaliser for block events (tier names from Hello are added).
        clock: Monotonic clock in seconds (for tests).
        curve: CurveZMQ client settings (this reader's key pair and the runtime's public key);
            with them the runtime admits this reader, without them a CURVE runtime sends it
            nothing.
    """

    def __init__(
        self,
        endpoint: str,
        replay_endpoint: str | None = None,
        *,
        topics: Sequence[str] = ("",),
        context: zmq.Context[Any] | None = None,
        rcvhwm: int = 100_000,
        stale_after_s: float = 3.0,
        reconnect_after_s: float | None = 10.0,
        resync: bool = True,
        snapshot_on_join: bool = True,
        resync_timeout_s: float = 2.0,
        max_held: int = 100_000,
        kv_topic: str = TOPIC_KV,
        normalizer: MediumNormalizer | None = None,
        clock: Callable[[], float] = time.monotonic,
        curve: ClientCurve | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._curve = curve
        self.replay_endpoint = replay_endpoint
        prefixes = list(dict.fromkeys(topics)) if topics else [""]
        self._prefixes = list(dict.fromkeys([*prefixes, TOPIC_HELLO, TOPIC_HEARTBEAT]))
        self._rcvhwm = rcvhwm
        self.stale_after_s = stale_after_s
        self.reconnect_after_s = reconnect_after_s
        self._resync = resync and replay_endpoint is not None
        self._snapshot_on_join = snapshot_on_join
        self._resync_timeout = resync_timeout_s
        self._max_held = max_held
        self._kv_topic = kv_topic
        self._clock = clock
        self._decoder = FrameDecoder(normalizer)
        self._counters = SubscriberCounters()

        self.epoch: int | None = None
        self.source: str = ""
        self.hello: Hello | None = None
        self._snapshot_capable = False
        self._joined = False
        self._topics: dict[str, _TopicState] = {}
        self._held: list[_Held] | None = None  # everything waits for a snapshot
        self._n_held = 0
        self._outstanding: deque[_Request] = deque()
        self._ready: deque[Decoded] = deque()
        self._created_at = clock()
        self._last_rx: float | None = None
        self._last_reconnect = self._created_at
        self._backoff_until = 0.0

        self._closed = False
        self._own_context = context is None
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1) if context is None else context
        self._sub: zmq.Socket[bytes] | None = None
        self._dealer: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        self._open_sub()
        if replay_endpoint is not None:
            self._open_dealer()

    # -------------------------------------------------------------------------------- API

    def poll(self, max_messages: int = 1000, timeout_ms: float = 0) -> list[Decoded]:
        """Up to ``max_messages`` decoded messages, waiting at most ``timeout_ms`` for the first.

        Returns KV event batches (:class:`KvEventBatch`) and tiertop messages in arrival order
        per topic (a :class:`Snapshot` first after a resync). Never raises on bad input.
        """
        if self._closed:
            return []
        max_messages = max(1, max_messages)
        deadline = self._clock() + max(0.0, timeout_ms) / 1000.0
        while True:
            self._pump(max_messages)
            self._check_timers()
            if self._ready:
                return self._take(max_messages)
            remaining = deadline - self._clock()
            if remaining <= 0:
                return []
            wait_ms = max(1, int(min(remaining, 0.1) * 1000.0))
            try:
                self._poller.poll(wait_ms)
            except zmq.ZMQError:
                return []

    def counters(self) -> SubscriberCounters:
        """A copy of the counters."""
        c = self._decoder.counters
        return replace(
            self._counters,
            unknown_types=c.unknown_types,
            unknown_fields=c.unknown_fields,
            decode_errors=c.decode_errors + self._counters.decode_errors,
        )

    @property
    def last_message_age_s(self) -> float | None:
        """Seconds since the last message from the publisher (None: none yet)."""
        return None if self._last_rx is None else self._clock() - self._last_rx

    @property
    def stale(self) -> bool:
        """True when nothing (not even a heartbeat) arrived for ``stale_after_s``."""
        last = self._last_rx if self._last_rx is not None else self._created_at
        return self._clock() - last > self.stale_after_s

    @property
    def topics(self) -> list[str]:
        """The topic prefixes subscribed to (with ``tt.hello`` and ``tt.heartbeat``)."""
        return list(self._prefixes)

    @property
    def in_sync(self) -> bool:
        """True when no resync is in progress (nothing held, nothing asked)."""
        return not self._outstanding and self._held is None

    def request_snapshot(self) -> bool:
        """Ask for a snapshot now (False without a replay socket). The live stream is held until
        it arrives."""
        if self._dealer is None:
            return False
        self._send_request(_Request(True, TOPIC_SNAPSHOT, 0, 0, self._clock()))
        if self._held is None:
            self._held = []
        return True

    def close(self) -> None:
        """Close the sockets (no linger). ``poll`` returns nothing afterwards."""
        self._closed = True
        for sock in (self._sub, self._dealer):
            if sock is not None:
                self._poller.unregister(sock)
                sock.close(0)
        self._sub = self._dealer = None
        if self._own_context:
            self._ctx.term()
            self._own_context = False

    def __enter__(self) -> TelemetrySubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------- sockets

    def _open_sub(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, self._rcvhwm)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # ZMTP pings find dead TCP peers
        sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        if self._curve is not None:
            apply_client_curve(sub, self._curve)
        for prefix in self._prefixes:
            sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        sub.connect(self.endpoint)
        self._sub = sub
        self._poller.register(sub, zmq.POLLIN)

    def _open_dealer(self) -> None:
        assert self.replay_endpoint is not None
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVHWM, 0)  # replays are bounded by the publisher's buffer
        if self._curve is not None:
            apply_client_curve(dealer, self._curve)
        dealer.connect(self.replay_endpoint)
        self._dealer = dealer
        self._poller.register(dealer, zmq.POLLIN)

    def _reset_dealer(self) -> None:
        """Drop a DEALER whose answers we no longer want (late answers would be misread)."""
        if self._dealer is not None:
            self._poller.unregister(self._dealer)
            self._dealer.close(0)
            self._open_dealer()

    def _reconnect(self) -> None:
        self._counters.reconnects += 1
        if self._sub is not None:
            self._poller.unregister(self._sub)
            self._sub.close(0)
        self._open_sub()
        if self._outstanding:
            self._fail_resync()  # also replaces the DEALER
        else:
            self._reset_dealer()

    # ------------------------------------------------------------------------- receiving

    def _take(self, max_messages: int) -> list[Decoded]:
        ready = self._ready
        n = min(max_messages, len(ready))
        out = [ready.popleft() for _ in range(n)]
        self._counters.delivered += n
        return out

    def _pump(self, max_messages: int) -> None:
        dealer = self._dealer
        if dealer is not None:
            for _ in range(max(max_messages, 1000)):
                try:
                    frames = dealer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_replay(frames)
        sub = self._sub
        if sub is None:
            return
        for _ in range(max_messages):
            if len(self._ready) >= max_messages:
                break
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_live(frames)

    def _on_live(self, frames: list[bytes]) -> None:
        counters = self._counters
        counters.received += 1
        self._last_rx = self._clock()
        if len(frames) != 3 or len(frames[1]) != 8:
            counters.decode_errors += 1
            return
        topic_b, seq_b, payload = frames
        seq = int.from_bytes(seq_b, "big")
        decoder = self._decoder
        topic = decoder.topic_name(topic_b)
        message = decoder.decode(topic_b, seq, payload, self.source, self.epoch or 0)
        self._accept(topic, seq, message)

    def _accept(self, topic: str, seq: int, message: Decoded | None) -> None:
        if isinstance(message, TelemetryMessage):
            if self.epoch is None:
                self.epoch, self.source = message.epoch, message.source
            elif message.epoch != self.epoch:
                self._restart(message.epoch, message.source)
        if not self._joined:
            self._joined = True
            if self._resync and self._snapshot_on_join and self._clock() >= self._backoff_until:
                self.request_snapshot()
        if self._held is not None:
            self._hold_all((topic, seq, message))
            return
        state = self._state(topic)
        if state.hold is not None:
            self._hold_topic(state, seq, message)
            return
        self._sequence(topic, state, seq, message)

    def _sequence(self, topic: str, state: _TopicState, seq: int, message: Decoded | None) -> None:
        last = state.last
        if last is None or seq == last + 1:
            state.floor = -1
        elif seq <= state.floor:
            self._counters.duplicates += 1
            return
        elif seq > last + 1:
            missing = seq - last - 1
            self._counters.gaps += missing
            if self._can_resync():
                state.hold = [(seq, message)]
                self._send_request(_Request(False, topic, last + 1, seq, self._clock()))
                return
            self._counters.unrecovered += missing
        else:  # went backwards: the publisher restarted (vLLM streams carry no epoch)
            self._restart(None, self.source)
            self._accept(topic, seq, message)
            return
        state.last = seq
        if message is not None:
            self._deliver(message)

    def _deliver(self, message: Decoded) -> None:
        if isinstance(message, KvEventBatch):
            self._counters.events += len(message.events)
        elif isinstance(message, Heartbeat):
            self._check_tail(message)
        elif isinstance(message, Hello):
            self._learn(message)
            self._baseline(message.topic_seqs)
        elif isinstance(message, TierStats):
            self._counters.publisher_dropped = message.dropped_messages
        self._ready.append(message)

    def _learn(self, hello: Hello) -> None:
        self.hello = hello
        self._snapshot_capable = CAP_SNAPSHOT in hello.capabilities
        if hello.kv_topic:
            self._kv_topic = hello.kv_topic
        self._decoder.normalizer.add_known(t.name for t in hello.tiers)

    def _baseline(self, topic_seqs: dict[str, int]) -> None:
        """Where each topic stood when the publisher greeted us: topics we have not heard on yet
        continue from there (absent tiertop topics: from the start)."""
        for topic in {*TOPICS, *topic_seqs}:
            state = self._state(topic)
            if state.last is None and state.hold is None:
                state.last = topic_seqs.get(topic, -1)

    def _check_tail(self, heartbeat: Heartbeat) -> None:
        """A heartbeat names the last seq sent per topic; anything newer than what we have was
        lost (the stream is ordered, so it would have arrived before the heartbeat)."""
        for topic, last_sent in heartbeat.topic_seqs.items():
            if topic == TOPIC_HEARTBEAT or not self._subscribed(topic):
                continue
            state = self._state(topic)
            if state.hold is not None:
                continue
            if state.last is None:
                state.last = last_sent  # joined after these: nothing of ours is missing
            elif last_sent > state.last:
                missing = last_sent - state.last
                self._counters.gaps += missing
                if self._can_resync():
                    state.hold = []
                    self._send_request(
                        _Request(False, topic, state.last + 1, last_sent + 1, self._clock())
                    )
                else:
                    self._counters.unrecovered += missing
                    state.last = last_sent

    def _subscribed(self, topic: str) -> bool:
        return any(topic.startswith(p) for p in self._prefixes)

    def _state(self, topic: str) -> _TopicState:
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _TopicState()
        return state

    # --------------------------------------------------------------------------- restarts

    def _restart(self, epoch: int | None, source: str) -> None:
        self._counters.restarts += 1
        # What was held belongs to the old run: hand it out as it is, before the new run.
        if self._held is not None:
            for _, _, message in self._held:
                if message is not None:
                    self._deliver(message)
        for state in self._topics.values():
            for _, message in state.hold or ():
                if message is not None:
                    self._deliver(message)
        self._held = None
        self._n_held = 0
        if self._outstanding:
            self._outstanding.clear()
            self._reset_dealer()
        self._topics.clear()
        self.epoch = epoch
        self.source = source
        self._joined = False

    # ----------------------------------------------------------------------------- resync

    def _can_resync(self) -> bool:
        return self._resync and self._dealer is not None and self._clock() >= self._backoff_until

    def _send_request(self, request: _Request) -> None:
        dealer = self._dealer
        assert dealer is not None
        if request.snapshot:
            frames = snapshot_request_frames()
            self._counters.snapshot_requests += 1
        else:
            if self.hello is None and request.topic == self._kv_topic:
                frames = replay_request_frames(request.start)  # vLLM's request: no topic, no end
            else:
                frames = replay_request_frames(
                    request.start, request.topic.encode(), request.missing_until
                )
            self._counters.replay_requests += 1
        # When the send fails the answer never comes; the timeout releases what waits for it.
        with contextlib.suppress(zmq.ZMQError):
            dealer.send_multipart(frames, flags=zmq.NOBLOCK)
        self._outstanding.append(request)

    def _hold_all(self, item: _Held) -> None:
        assert self._held is not None
        self._held.append(item)
        self._n_held += 1
        if self._n_held > self._max_held:
            self._fail_resync()

    def _hold_topic(self, state: _TopicState, seq: int, message: Decoded | None) -> None:
        assert state.hold is not None
        state.hold.append((seq, message))
        self._n_held += 1
        if self._n_held > self._max_held:
            self._fail_resync()

    def _on_replay(self, frames: list[bytes]) -> None:
        self._last_rx = self._clock()
        if not self._outstanding:
            return  # an answer nobody waits for any more
        request = self._outstanding[0]
        try:
            item = split_replay(frames)
        except FramingError:
            self._counters.decode_errors += 1
            return
        if item is None:
            self._outstanding.popleft()
            if request.snapshot:
                self._complete_snapshot(request)
            else:
                self._complete_replay(request)
            return
        self._counters.replayed += 1
        topic_b = item.topic if item.topic is not None else request.topic.encode()
        message = self._decoder.decode(
            topic_b, item.seq, item.payload, self.source, self.epoch or 0
        )
        request.items.append((item.seq, message))

    def _complete_replay(self, request: _Request) -> None:
        """Deliver the replayed messages that were missing, count what the publisher no longer
        had, then let the topic's held live messages through."""
        state = self._state(request.topic)
        hold = state.hold or []
        state.hold = None
        self._n_held -= len(hold)
        counters = self._counters
        last = state.last if state.last is not None else request.start - 1
        for seq, message in request.items:
            if seq >= request.missing_until:
                break  # the live stream has these (held)
            if seq <= last:
                continue
            if seq > last + 1:  # older than the publisher's replay buffer
                counters.unrecovered += seq - last - 1
            counters.recovered += 1
            last = seq
            if message is not None:
                self._deliver(message)
        lost = request.missing_until - 1 - last
        if lost > 0:
            counters.unrecovered += lost
            last = request.missing_until - 1
            if self._snapshot_capable and self._held is None:
                self.request_snapshot()  # block-level state is unknown: start again from one
        state.last = last
        self._release(request.topic, state, hold)

    def _release(
        self, topic: str, state: _TopicState, hold: list[tuple[int, Decoded | None]]
    ) -> None:
        for seq, message in hold:
            if self._held is not None:
                self._hold_all((topic, seq, message))
            elif state.hold is not None:
                self._hold_topic(state, seq, message)
            else:
                self._sequence(topic, state, seq, message)

    def _complete_snapshot(self, request: _Request) -> None:
        snapshot = next((m for _, m in request.items if isinstance(m, Snapshot)), None)
        held, self._held = self._held or [], None
        self._n_held -= len(held)
        if snapshot is not None:
            if self.epoch is not None and snapshot.epoch != self.epoch:
                # The runtime restarted since we asked: what we held is the old run's.
                for _, _, message in held:
                    if message is not None:
                        self._deliver(message)
                held = []
                self._restart(snapshot.epoch, snapshot.source)
                self._joined = True
            self.epoch, self.source = snapshot.epoch, snapshot.source
            self._counters.snapshots += 1
            if snapshot.hello is not None:
                self._learn(snapshot.hello)
            self._ready.append(snapshot)
            seqs = snapshot.topic_seqs
            for topic in {*TOPICS, *self._topics}:
                state = self._state(topic)
                if state.hold is not None:
                    continue
                last = seqs.get(topic, -1)
                state.last = last
                state.floor = last  # live messages up to here are in the snapshot already
        normalizer = self._decoder.normalizer
        for topic, seq, message in held:
            if isinstance(message, KvEventBatch):  # decoded before we knew who sent it
                message.tiers = normalizer.tiers_of(message.events)
                if self.epoch is not None and not message.epoch:
                    message.epoch, message.source = self.epoch, self.source
            if self._held is not None:
                self._hold_all((topic, seq, message))
                continue
            state = self._state(topic)
            if state.hold is not None:
                self._hold_topic(state, seq, message)
            else:
                self._sequence(topic, state, seq, message)

    def _fail_resync(self) -> None:
        """Give up on every pending answer: hand out what was held, count what stays lost."""
        self._counters.resync_failures += 1
        requests = list(self._outstanding)
        self._outstanding.clear()
        self._reset_dealer()
        self._backoff_until = self._clock() + self._resync_timeout
        held, self._held = self._held or [], None
        holds: list[tuple[str, _TopicState, list[tuple[int, Decoded | None]]]] = []
        for topic, state in self._topics.items():
            if state.hold is not None:
                holds.append((topic, state, state.hold))
                state.hold = None
        self._n_held = 0
        for request in requests:
            if request.snapshot:
                continue
            state = self._state(request.topic)
            last = state.last if state.last is not None else request.start - 1
            lost = request.missing_until - 1 - last
            if lost > 0:
                self._counters.unrecovered += lost
                state.last = request.missing_until - 1
        for topic, state, hold in holds:
            for seq, message in hold:
                self._sequence(topic, state, seq, message)
        for topic, seq, message in held:
            self._sequence(topic, self._state(topic), seq, message)

    def _check_timers(self) -> None:
        now = self._clock()
        if self._outstanding and now - self._outstanding[0].sent_at > self._resync_timeout:
            self._fail_resync()
        if self.reconnect_after_s is not None:
            last = self._last_rx if self._last_rx is not None else self._created_at
            if (
                now - last > self.reconnect_after_s
                and now - self._last_reconnect > self.reconnect_after_s
            ):
                self._last_reconnect = now
                self._reconnect()
