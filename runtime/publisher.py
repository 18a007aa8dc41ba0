"""The runtime's telemetry publisher: PUB for the live stream, ROUTER for replay and snapshots.

The engine-facing calls (:meth:`TelemetryPublisher.kv_event`, :meth:`~TelemetryPublisher.move`,
:meth:`~TelemetryPublisher.publish`...) only append to a bounded in-memory queue and return; they
never touch a socket, never wait, and never raise on a full queue (they count the drop and return
False). A background thread batches block events (by count and by a few milliseconds),
serializes, assigns per-topic sequence numbers, sends, keeps a bounded replay buffer, answers
replay and snapshot requests and sends heartbeats. A slow or stalled subscriber costs the engine
nothing.

Drops are counted where they happen and reported in the next :class:`TierStats`:

* **queue drops**: the engine produced faster than the thread could send; the item never got a
  sequence number, so readers only learn of it from ``TierStats.dropped_queue_items``.
* **high-water-mark drops**: the live socket is an XPUB with ``XPUB_NODROP``; sends are
  non-blocking, so a subscriber pipe at its high-water mark makes the send raise ``zmq.Again``,
  which is counted. The sequence number was used and the message is kept in the replay buffer,
  so readers see a gap and can replay it.

  Trade-off: with ``XPUB_NODROP`` a send is all-or-nothing, so one subscriber stuck at its HWM
  makes that message drop for every subscriber (they all see the gap and may replay it). A plain
  PUB drops only for the stuck subscriber, but silently: the publisher could not count it. The
  HWM is generous (messages are batches) so only a reader that stops reading hits it; exact
  drop accounting at the source and replayable gaps were judged worth more than isolating one
  stalled reader, whose loss others recover by replay.

Heartbeats go every ``heartbeat_interval_s`` whatever else is being sent, not only when idle: a
reader subscribed to quiet topics only would otherwise take a busy publisher for a silent one.
Each names the last sequence number of every topic, so a reader also finds losses at the tail of
a stream. At two a second they cost nothing.

Replay and snapshots (ROUTER, see :mod:`tiertop.monitor.framing`): vLLM's request
``[b"", start8]`` replays the KV events topic; ``[b"", start8, topic(, end8)]`` any topic;
``[b"", b"tt.snapshot"]`` returns one Snapshot. Every message, dropped at the HWM or not, stays in
a bounded per-topic buffer (count and bytes) for replay.

Threading: the engine-facing calls may come from any thread. The snapshot provider and the clock
are called from the publisher's thread too, so they must be thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import zmq
from tiertop.monitor.framing import (
    END_SEQ,
    FramingError,
    MessageCodec,
    encode_seq,
    parse_replay_request,
)
from tiertop.monitor.protocol import (
    CAP_REPLAY,
    CAP_SNAPSHOT,
    TOPIC_HELLO,
    TOPIC_KV,
    TOPIC_OF,
    TOPIC_SNAPSHOT,
    Heartbeat,
    Hello,
    Snapshot,
    TelemetryMessage,
    TierMove,
    TierMoves,
    TierStats,
)
from tiertop.monitor.security import CurveAuthenticator, ServerCurve, apply_server_curve
from tiertop.monitor.vllm_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    ExternalBlockHash,
    KvEvent,
    KvEventBatchWire,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_REPLAY_ENDPOINT",
    "PublisherCounters",
    "TelemetryPublisher",
]

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT: Final = "tcp://127.0.0.1:5557"
DEFAULT_REPLAY_ENDPOINT: Final = "tcp://127.0.0.1:5560"

_KV_TYPES: Final = frozenset((BlockStored, BlockRemoved, AllBlocksCleared))
_MAX_MOVES_PER_MESSAGE: Final = 4096
_MAX_REQUESTS_PER_WAKE: Final = 64
#: Items taken off the queue per pass of a flush (rounded to whole batches). Classifying a pass
#: is one C call that holds the GIL; unbounded, a 100,000-item backlog held it for milliseconds,
#: stalling the engine thread (and with it control replies) for as long.
_FLUSH_PASS_ITEMS: Final = 4096
_NO_TOKENS: Final[list[int]] = []  # shared by placeholder events; never mutated


class _KvStep:
    """Events of one engine step with their own timestamp (sent as their own batch)."""

    __slots__ = ("events", "ts")

    def __init__(self, events: list[KvEvent], ts: float | None) -> None:
        self.events = events
        self.ts = ts


@dataclass(frozen=True, slots=True)
class PublisherCounters:
    """What the publisher did since it started (all cumulative).

    Attributes:
        sent_messages: Messages handed to the live socket.
        sent_events: Block events in them.
        hwm_dropped_messages: Messages the live socket refused: a subscriber pipe at its
            high-water mark (or a socket error). Their sequence numbers were used.
        hwm_dropped_events: Block events in them.
        queue_dropped_items: Engine-side items dropped because the queue was full.
        queue_dropped_events: Block events among them.
        encode_errors: Messages that could not be serialized (dropped).
        encode_dropped_events: Block events in them.
        replay_requests: Replay requests answered.
        snapshot_requests: Snapshot requests answered.
        snapshot_errors: Snapshot providers that raised (answered with the end marker only).
        replay_aborted: Replay answers cut short because the requester's pipe was full/gone.
        heartbeats: Heartbeats sent.
        internal_errors: Unexpected errors in the publisher thread (it keeps running).
        queue_len: Items waiting in the queue now.
        topic_seqs: Last sequence number used per topic.
    """

    sent_messages: int
    sent_events: int
    hwm_dropped_messages: int
    hwm_dropped_events: int
    queue_dropped_items: int
    queue_dropped_events: int
    encode_errors: int
    encode_dropped_events: int
    replay_requests: int
    snapshot_requests: int
    snapshot_errors: int
    replay_aborted: int
    heartbeats: int
    internal_errors: int
    queue_len: int
    topic_seqs: dict[str, int]

    @property
    def dropped_messages(self) -> int:
        """Every message or item lost: HWM drops, queue drops and encode errors."""
        return self.hwm_dropped_messages + self.queue_dropped_items + self.encode_errors

    @property
    def dropped_events(self) -> int:
        """Block events lost, whichever way."""
        return self.hwm_dropped_events + self.queue_dropped_events + self.encode_dropped_events


class _Ring:
    """Recent messages of one topic for replay: (seq, payload), seqs contiguous."""

    __slots__ = ("items", "nbytes")

    def __init__(self) -> None:
        self.items: deque[tuple[int, bytes]] = deque()
        self.nbytes = 0


class TelemetryPublisher:
    """Publishes tiertop telemetry over ZeroMQ without ever blocking the engine.

    Args:
        endpoint: Where the live PUB (XPUB) socket binds, e.g. ``"tcp://127.0.0.1:5557"``;
            port 0 picks a free port (see :attr:`address`).
        replay_endpoint: Where the replay/snapshot ROUTER binds (None: no replay socket).
        source: Source id put in every message (default ``"host:pid"``).
        epoch: Epoch put in every message (default: the start time in ns; new every start).
        clock: The runtime's clock in seconds: ``time.time`` in model mode, the virtual clock
            in sim mode. Stamps messages at enqueue time and batches at send time.
        kv_topic: Topic of the vLLM-compatible block events.
        data_parallel_rank: Rank written in every block event batch.
        hello: The Hello to send at start and whenever a reader subscribes (see
            :meth:`set_hello`).
        snapshot_provider: Called (on the publisher thread) to build the Snapshot a reader asks
            for; the publisher fills in the envelope, ``topic_seqs`` and, when left None,
            ``hello`` and ``stats``. Without it, snapshots carry hello, last stats and seqs.
        queue_capacity: Items the engine-side queue holds before dropping.
        batch_max_events: Most block events per batch message.
        batch_max_delay_s: Longest a queued item waits for its batch to fill.
        heartbeat_interval_s: Seconds between heartbeats.
        sndhwm: High-water mark of the live socket per subscriber, in messages (batches).
        replay_buffer_batches: Messages kept per topic for replay.
        replay_buffer_bytes: Total payload bytes kept for replay over all topics.
        close_linger_s: How long :meth:`close` lets unsent messages drain.
        context: ZeroMQ context to use (default: a private one, terminated on close).
        curve: CurveZMQ server settings: encrypt both sockets and admit only authorised
            client keys (see :mod:`tiertop.monitor.security`).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        replay_endpoint: str | None = DEFAULT_REPLAY_ENDPOINT,
        *,
        source: str | None = None,
        epoch: int | None = None,
        clock: Callable[[], float] = time.time,
        kv_topic: str = TOPIC_KV,
        data_parallel_rank: int | None = 0,
        hello: Hello | None = None,
        snapshot_provider: Callable[[], Snapshot] | None = None,
        queue_capacity: int = 100_000,
        batch_max_events: int = 512,
        batch_max_delay_s: float = 0.002,
        heartbeat_interval_s: float = 0.5,
        sndhwm: int = 10_000,
        replay_buffer_batches: int = 10_000,
        replay_buffer_bytes: int = 64 << 20,
        close_linger_s: float = 1.0,
        context: zmq.Context[Any] | None = None,
        curve: ServerCurve | None = None,
    ) -> None:
        if queue_capacity < 1 or batch_max_events < 1 or replay_buffer_batches < 1:
            raise ValueError("queue_capacity, batch_max_events, replay_buffer_batches must be >= 1")
        self.source = source if source is not None else f"{socket.gethostname()}:{os.getpid()}"
        self.epoch = epoch if epoch is not None else time.time_ns()
        self.kv_topic = kv_topic
        self._kv_topic_b = kv_topic.encode()
        self._clock = clock
        self._rank = data_parallel_rank
        self._hello_template = hello
        self._hello_pending = False
        self._last_hello: Hello | None = None
        self._last_stats: TierStats | None = None
        self._snapshot_provider = snapshot_provider
        self._limit = queue_capacity  # 0 once closing
        self._batch_max = batch_max_events
        self._pass_items = batch_max_events * max(1, _FLUSH_PASS_ITEMS // batch_max_events)
        self._wake_at = batch_max_events - 1  # queue length before the append that fills a batch
        self._batch_delay = batch_max_delay_s
        self._heartbeat_interval = heartbeat_interval_s
        self._ring_max = replay_buffer_batches
        self._ring_bytes_max = replay_buffer_bytes
        self._linger_s = close_linger_s
        self._started_mono = time.monotonic()

        # Engine side: a deque (append is atomic under the GIL) bounded by a length check.
        self._queue: deque[Any] = deque()
        self._drop_lock = threading.Lock()
        self._queue_dropped_items = 0
        self._queue_dropped_events = 0
        self._closing = False
        self._closed = False
        self._busy = False  # the publisher thread is sending items it took off the queue

        # Publisher-thread side.
        self._seqs: dict[bytes, int] = {}
        self._snapshot_seq = 0
        self._rings: dict[bytes, _Ring] = {}
        self._ring_bytes = 0
        self._sent = 0
        self._sent_events = 0
        self._hwm_dropped = 0
        self._hwm_dropped_events = 0
        self._encode_errors = 0
        self._encode_dropped_events = 0
        self._replay_requests = 0
        self._snapshot_requests = 0
        self._snapshot_errors = 0
        self._replay_aborted = 0
        self._heartbeats = 0
        self._internal_errors = 0
        self.last_error: str = ""
        self._codec = MessageCodec()
        self._kv_encoder = msgspec.msgpack.Encoder()

        self._own_context = context is None
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1) if context is None else context
        self._pub: zmq.Socket[bytes] = self._ctx.socket(zmq.XPUB)
        self._router: zmq.Socket[bytes] | None = None
        self._authenticators: list[CurveAuthenticator] = []
        try:
            if curve is not None:
                self._authenticators.append(apply_server_curve(self._pub, curve))
            self._pub.setsockopt(zmq.SNDHWM, sndhwm)
            self._pub.setsockopt(zmq.XPUB_NODROP, 1)
            self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription: greet with Hello
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.bind(endpoint)
            self.address: str = self._pub.getsockopt(zmq.LAST_ENDPOINT).decode()  # type: ignore[union-attr]
            self.replay_address: str | None = None
            if replay_endpoint is not None:
                self._router = self._ctx.socket(zmq.ROUTER)
                if curve is not None:
                    self._authenticators.append(apply_server_curve(self._router, curve))
                self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
                self._router.setsockopt(zmq.SNDHWM, max(sndhwm, replay_buffer_batches + 16))
                self._router.setsockopt(zmq.LINGER, 0)
                self._router.bind(replay_endpoint)
                self.replay_address = self._router.getsockopt(zmq.LAST_ENDPOINT).decode()  # type: ignore[union-attr]
        except Exception:
            self._pub.close(0)
            if self._router is not None:
                self._router.close(0)
            self._release_authenticators()
            if self._own_context:
                self._ctx.term()
            raise
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"tiertop-publisher-{self.source}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ engine-facing calls

    # Each call reads the queue length once, appends, and wakes the publisher thread only when
    # the queue was empty (to start the batch timer) or just reached a full batch. ``_limit`` is
    # the capacity, or 0 once closing, so the hot path has a single comparison.

    def kv_event(self, event: KvEvent) -> bool:
        """Queue one block event (``medium`` = tier name). False when dropped or closed."""
        queue = self._queue
        n = len(queue)
        if n >= self._limit:
            return self._reject(1, 1)
        queue.append(event)
        if n == 0 or n == self._wake_at:
            self._wake()
        return True

    def block_stored(
        self,
        block_hashes: list[ExternalBlockHash],
        medium: str,
        *,
        parent_block_hash: ExternalBlockHash | None = None,
        token_ids: list[int] | None = None,
        block_size: int = 0,
        lora_id: int | None = None,
        lora_name: str | None = None,
    ) -> bool:
        """Queue ``BlockStored``: blocks now in tier ``medium`` (without tokens: a placeholder,
        like vLLM's offload events). The lists are owned by the publisher afterwards."""
        queue = self._queue
        n = len(queue)
        if n >= self._limit:
            return self._reject(1, 1)
        queue.append(
            BlockStored(
                block_hashes,
                parent_block_hash,
                _NO_TOKENS if token_ids is None else token_ids,
                block_size,
                lora_id,
                medium,
                lora_name,
            )
        )
        if n == 0 or n == self._wake_at:
            self._wake()
        return True

    def block_removed(self, block_hashes: list[ExternalBlockHash], medium: str) -> bool:
        """Queue ``BlockRemoved``: blocks no longer in tier ``medium``."""
        queue = self._queue
        n = len(queue)
        if n >= self._limit:
            return self._reject(1, 1)
        queue.append(BlockRemoved(block_hashes, medium))
        if n == 0 or n == self._wake_at:
            self._wake()
        return True

    def all_blocks_cleared(self) -> bool:
        """Queue ``AllBlocksCleared``: every tier was emptied."""
        return self.kv_event(AllBlocksCleared())

    def kv_events(self, events: list[KvEvent], ts: float | None = None) -> bool:
        """Queue the events of one engine step as one item; ``ts`` (seconds) becomes the batch
        timestamp (default: the clock when the batch is sent). The list is owned by the
        publisher afterwards."""
        queue = self._queue
        if len(queue) >= self._limit:
            return self._reject(1, len(events))
        queue.append(_KvStep(events, ts))
        self._wake()
        return True

    def move(
        self,
        kind: str,
        key: int,
        from_tier: str,
        to_tier: str = "",
        nbytes: int = 0,
        latency_s: float = 0.0,
        reason: str = "",
    ) -> bool:
        """Queue one promote/demote/drop made by tiertop (batched into ``TierMoves``)."""
        queue = self._queue
        n = len(queue)
        if n >= self._limit:
            return self._reject(1, 0)
        queue.append(
            TierMove(kind, key, from_tier, to_tier, nbytes, latency_s, reason, self._clock())
        )
        if n == 0 or n == self._wake_at:
            self._wake()
        return True

    def publish(self, message: TelemetryMessage) -> bool:
        """Queue one tiertop message (TierStats, RequestDone, ControlChange, FaultEvent...).

        The publisher owns the message afterwards: it stamps ``clock`` now when it is 0.0, and
        ``source``, ``epoch``, ``seq`` when sending. A TierStats gets the publisher's drop
        counters filled in. False when dropped or closed.
        """
        if type(message) not in TOPIC_OF or isinstance(message, Snapshot):
            raise TypeError(f"cannot publish a {type(message).__name__}")
        queue = self._queue
        if len(queue) >= self._limit:
            return self._reject(1, 0)
        if message.clock == 0.0:
            message.clock = self._clock()
        queue.append(message)
        self._wake()
        return True

    def set_hello(self, hello: Hello) -> None:
        """Replace the Hello (sent now, and to every reader that subscribes later)."""
        self._hello_template = hello
        self._hello_pending = True
        self._wake()

    # ------------------------------------------------------------------------ introspection

    def counters(self) -> PublisherCounters:
        """A consistent-enough copy of the counters (read from any thread)."""
        return PublisherCounters(
            sent_messages=self._sent,
            sent_events=self._sent_events,
            hwm_dropped_messages=self._hwm_dropped,
            hwm_dropped_events=self._hwm_dropped_events,
            queue_dropped_items=self._queue_dropped_items,
            queue_dropped_events=self._queue_dropped_events,
            encode_errors=self._encode_errors,
            encode_dropped_events=self._encode_dropped_events,
            replay_requests=self._replay_requests,
            snapshot_requests=self._snapshot_requests,
            snapshot_errors=self._snapshot_errors,
            replay_aborted=self._replay_aborted,
            heartbeats=self._heartbeats,
            internal_errors=self._internal_errors,
            queue_len=len(self._queue),
            topic_seqs=self._topic_seqs(),
        )

    def pending(self) -> int:
        """Items waiting in the engine-side queue."""
        return len(self._queue)

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until everything queued so far has been handed to the socket (sent or counted as
        dropped). Not for the engine's hot path. False if that took longer than ``timeout_s``."""
        self._wake()
        deadline = time.monotonic() + timeout_s
        while self._queue or self._busy:
            if self._closed or time.monotonic() >= deadline:
                return not self._queue and not self._busy
            time.sleep(0.001)
        return True

    @property
    def addresses(self) -> dict[str, str]:
        """Bound endpoints by role (``"pub"``, ``"replay"``), real ports resolved."""
        out = {"pub": self.address}
        if self.replay_address is not None:
            out["replay"] = self.replay_address
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Send what is queued, let it drain for at most ``close_linger_s``, release sockets."""
        if self._closing:
            if not self._closed:
                self._thread.join(self._linger_s + 5.0)
            return
        self._closing = True
        self._limit = 0
        self._wake()
        self._thread.join(self._linger_s + 5.0)

    def _release_authenticators(self) -> None:
        for authenticator in self._authenticators:
            authenticator.release()
        self._authenticators.clear()

    def __enter__(self) -> TelemetryPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- engine helpers

    def _reject(self, items: int, events: int) -> bool:
        """A full queue drops (counted); a closing publisher refuses (not a drop)."""
        if not self._closing:
            with self._drop_lock:
                self._queue_dropped_items += items
                self._queue_dropped_events += events
        return False

    def _wake(self) -> None:
        try:  # noqa: SIM105 - try/except is cheaper than contextlib.suppress on this path
            self._wake_w.send(b"\0")
        except OSError:  # the pipe is full (the thread is already awake) or closed
            pass

    # ----------------------------------------------------------------------- publisher thread

    def _run(self) -> None:
        pub, router = self._pub, self._router
        poller = zmq.Poller()
        poller.register(pub, zmq.POLLIN)
        if router is not None:
            poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        queue = self._queue
        pending_since: float | None = None
        next_heartbeat = time.monotonic() + self._heartbeat_interval
        self._hello_pending = self._hello_template is not None
        try:
            while True:
                try:
                    now = time.monotonic()
                    if queue:
                        if pending_since is None:
                            pending_since = now
                        if (
                            self._closing
                            or len(queue) >= self._batch_max
                            or now - pending_since >= self._batch_delay
                        ):
                            self._flush()
                            pending_since = None
                            now = time.monotonic()
                    elif self._closing:
                        break
                    if self._hello_pending:
                        self._hello_pending = False
                        self._send_hello()
                    if now >= next_heartbeat:
                        self._send_heartbeat()
                        next_heartbeat = now + self._heartbeat_interval
                    timeout = next_heartbeat - now
                    if pending_since is not None:
                        timeout = min(timeout, pending_since + self._batch_delay - now)
                    ready = dict(poller.poll(max(0, int(timeout * 1000.0) + 1)))
                    if self._wake_r.fileno() in ready:  # poll() reports plain sockets by fd
                        self._drain_wake()
                    if pub in ready:
                        self._handle_subscriptions()
                    if router is not None and router in ready:
                        self._handle_requests()
                except Exception as exc:  # keep publishing whatever one bad item did
                    self._internal_errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.debug("publisher thread error", exc_info=True)
                    time.sleep(0.001)
        finally:
            self._shutdown_sockets()

    def _shutdown_sockets(self) -> None:
        linger_ms = max(0, int(self._linger_s * 1000))
        self._pub.setsockopt(zmq.LINGER, linger_ms)
        self._pub.close()
        if self._router is not None:
            self._router.close(0)
        self._release_authenticators()
        if self._own_context:
            self._ctx.term()  # waits at most the linger for unsent messages
        self._wake_r.close()
        self._wake_w.close()
        self._closed = True

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _flush(self) -> None:
        """Send everything queued now: block events in batches, moves batched, others one by one."""
        self._busy = True  # before popping: flush() reads the queue first, then this flag
        try:
            self._flush_items()
        finally:
            self._busy = False

    def _flush_items(self) -> None:
        """Send what is queued now (not what the engine adds meanwhile), a pass at a time."""
        popleft = self._queue.popleft
        left = len(self._queue)
        while left > 0:
            n = min(left, self._pass_items)
            left -= n
            self._send_items([popleft() for _ in range(n)])

    def _send_items(self, items: list[Any]) -> None:
        if set(map(type, items)) <= _KV_TYPES:  # the common case: only block events
            self._send_kv(items, None)
            return
        segments: list[tuple[float | None, list[KvEvent]]] = []
        current: list[KvEvent] | None = None
        moves: list[TierMove] = []
        others: list[TelemetryMessage] = []
        kv_types = _KV_TYPES
        for item in items:
            kind = type(item)
            if kind in kv_types:
                if current is None:
                    current = []
                    segments.append((None, current))
                current.append(item)
            elif kind is TierMove:
                moves.append(item)
            elif kind is _KvStep:
                segments.append((item.ts, item.events))
                current = None
            else:
                others.append(item)
        for ts, events in segments:
            self._send_kv(events, ts)
        for start in range(0, len(moves), _MAX_MOVES_PER_MESSAGE):
            chunk = moves[start : start + _MAX_MOVES_PER_MESSAGE]
            self._send_message(TierMoves(moves=chunk, clock=chunk[0].clock))
        for message in others:
            self._send_message(message)

    def _send_kv(self, events: list[KvEvent], ts: float | None) -> None:
        batch_max = self._batch_max
        for start in range(0, len(events), batch_max):
            chunk = events[start : start + batch_max] if len(events) > batch_max else events
            try:
                stamp = self._clock() if ts is None else ts
                payload = self._kv_encoder.encode(KvEventBatchWire(stamp, chunk, self._rank))
            except Exception as exc:  # a value msgpack cannot carry, or a failing clock
                self._encode_errors += 1
                self._encode_dropped_events += len(chunk)
                self.last_error = f"encode block events: {exc}"
                continue
            self._send(self._kv_topic_b, self._next_seq(self._kv_topic_b), payload, len(chunk))

    def _send_message(self, message: TelemetryMessage) -> None:
        topic = TOPIC_OF[type(message)].encode()
        if isinstance(message, TierStats):
            message.dropped_hwm_messages = self._hwm_dropped
            message.dropped_queue_items = self._queue_dropped_items
            message.dropped_events = (
                self._hwm_dropped_events + self._queue_dropped_events + self._encode_dropped_events
            )
            message.dropped_messages = (
                self._hwm_dropped + self._queue_dropped_items + self._encode_errors
            )
        message.source = self.source
        message.epoch = self.epoch
        seq = self._seqs.get(topic, 0)
        message.seq = seq
        try:
            payload = self._codec.encode(message)
        except Exception as exc:  # e.g. a ControlChange value msgpack cannot carry
            self._encode_errors += 1
            self.last_error = f"encode {type(message).__name__}: {exc}"
            return
        self._seqs[topic] = seq + 1
        if isinstance(message, TierStats):
            self._last_stats = message
        elif isinstance(message, Hello):
            self._last_hello = message
        self._send(topic, seq, payload, 0)

    def _next_seq(self, topic: bytes) -> int:
        seq = self._seqs.get(topic, 0)
        self._seqs[topic] = seq + 1
        return seq

    def _send(self, topic: bytes, seq: int, payload: bytes, n_events: int) -> None:
        try:
            self._pub.send_multipart((topic, encode_seq(seq), payload), flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # zmq.Again: a subscriber pipe is at its HWM (XPUB_NODROP)
            self._hwm_dropped += 1
            self._hwm_dropped_events += n_events
        else:
            self._sent += 1
            self._sent_events += n_events
        self._remember(topic, seq, payload)

    def _remember(self, topic: bytes, seq: int, payload: bytes) -> None:
        ring = self._rings.get(topic)
        if ring is None:
            ring = self._rings[topic] = _Ring()
        items = ring.items
        items.append((seq, payload))
        size = len(payload)
        ring.nbytes += size
        self._ring_bytes += size
        while len(items) > 1 and (
            len(items) > self._ring_max or self._ring_bytes > self._ring_bytes_max
        ):
            _, old = items.popleft()
            ring.nbytes -= len(old)
            self._ring_bytes -= len(old)

    def _topic_seqs(self) -> dict[str, int]:
        return {t.decode("utf-8", "replace"): n - 1 for t, n in list(self._seqs.items()) if n}

    def _send_heartbeat(self) -> None:
        self._heartbeats += 1
        self._send_message(
            Heartbeat(
                topic_seqs=self._topic_seqs(),
                uptime_s=time.monotonic() - self._started_mono,
                queue_len=len(self._queue),
                clock=self._clock(),
            )
        )

    def _send_hello(self) -> None:
        template = self._hello_template
        if template is None:
            return
        hello = msgspec.structs.replace(template, clock=self._clock())
        hello.addresses = {**self.addresses, **hello.addresses}
        hello.kv_topic = self.kv_topic
        hello.topic_seqs = self._topic_seqs()
        if self._router is not None:
            hello.capabilities = list(
                dict.fromkeys([*hello.capabilities, CAP_REPLAY, CAP_SNAPSHOT])
            )
        self._send_message(hello)

    def _handle_subscriptions(self) -> None:
        hello_topic = TOPIC_HELLO.encode()
        want_hello = False
        while True:
            try:
                frame = self._pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame[:1] == b"\x01" and hello_topic.startswith(frame[1:]):
                want_hello = True
        if want_hello:
            self._send_hello()

    def _handle_requests(self) -> None:
        router = self._router
        assert router is not None
        for _ in range(_MAX_REQUESTS_PER_WAKE):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            identity = frames[0]
            try:
                request = parse_replay_request(frames[1:])
            except FramingError:
                self._reply_end(identity)
                continue
            if request.snapshot:
                self._answer_snapshot(identity)
            else:
                self._answer_replay(
                    identity, request.topic or self._kv_topic_b, request.start, request.end
                )

    def _answer_replay(self, identity: bytes, topic: bytes, start: int, end: int | None) -> None:
        router = self._router
        assert router is not None
        self._replay_requests += 1
        ring = self._rings.get(topic)
        if ring is not None and ring.items:
            first = ring.items[0][0]  # seqs in a ring are contiguous
            skip = max(0, start - first)
            stop = None if end is None else max(skip, end - first)
            try:
                for seq, payload in itertools.islice(ring.items, skip, stop):
                    router.send_multipart(
                        (identity, b"", topic, encode_seq(seq), payload), flags=zmq.NOBLOCK
                    )
            except zmq.ZMQError:  # requester gone or its pipe full: it will time out
                self._replay_aborted += 1
                return
        self._reply_end(identity)

    def _answer_snapshot(self, identity: bytes) -> None:
        router = self._router
        assert router is not None
        self._snapshot_requests += 1
        self._flush()  # queued items get their sequence numbers first
        topic_seqs = self._topic_seqs()  # read before the state: the state reflects at least these
        try:
            snapshot = self._snapshot_provider() if self._snapshot_provider else Snapshot()
            if not isinstance(snapshot, Snapshot):
                raise TypeError(f"snapshot provider returned {type(snapshot).__name__}")
        except Exception as exc:
            self._snapshot_errors += 1
            self.last_error = f"snapshot provider: {type(exc).__name__}: {exc}"
            self._reply_end(identity)
            return
        if snapshot.hello is None:
            snapshot.hello = self._last_hello or self._hello_template
        if snapshot.stats is None:
            snapshot.stats = self._last_stats
        snapshot.topic_seqs = topic_seqs
        snapshot.source = self.source
        snapshot.epoch = self.epoch
        snapshot.clock = self._clock()
        topic = TOPIC_SNAPSHOT.encode()
        snapshot.seq = self._snapshot_seq  # its own counter: snapshots are not in topic_seqs
        self._snapshot_seq += 1
        try:
            payload = self._codec.encode(snapshot)
        except Exception as exc:
            self._snapshot_errors += 1
            self.last_error = f"encode snapshot: {exc}"
            self._reply_end(identity)
            return
        try:
            router.send_multipart(
                (identity, b"", topic, encode_seq(snapshot.seq), payload), flags=zmq.NOBLOCK
            )
        except zmq.ZMQError:
            self._replay_aborted += 1
            return
        self._reply_end(identity)

    def _reply_end(self, identity: bytes) -> None:
        router = self._router
        assert router is not None
        try:
            router.send_multipart((identity, b"", b"", END_SEQ, b""), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            self._replay_aborted += 1
