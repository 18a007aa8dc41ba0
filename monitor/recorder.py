"""The recorder: just another subscriber, writing what it receives to a recording file.

:class:`Recorder` owns a :class:`~tiertop.monitor.recording.RecordingWriter` and one worker thread.
The worker reads the telemetry stream with a :class:`RecordingSubscriber` (a
:class:`~tiertop.monitor.subscriber.TelemetrySubscriber` that also keeps the raw frames of what
it delivers: the same gap filling, snapshots on join and restart handling as any dashboard, so
the recording holds exactly the messages a live reader folds, in the order it folds them) and
appends them with their receive time; it also takes messages handed to it in-process through
:meth:`Recorder.write` (a dashboard that already reads the stream records its own frames, see
:class:`RecordingSubscriber`). Compression, keyframes and file I/O happen on that thread, so the
runtime and the dashboard never wait for the disk.

Typical uses::

    # What ``tiertop run --record`` / ``tiertop play --record`` do: a child process (see
    # RecorderProcess) subscribed to the runtime's own endpoints, dying with it:
    rec = record_runtime("session.ttrec", runtime.addresses)
    ...  # serve
    finish_runtime_recording(rec, runtime.publisher)

    # A separate process or thread recording a runtime:
    with Recorder("session.ttrec", "tcp://127.0.0.1:5557", "tcp://127.0.0.1:5560") as rec:
        ...  # until done; rec.counters() says how it goes

    # A dashboard recording the stream it already reads:
    sub = RecordingSubscriber(endpoint, replay_endpoint)
    rec = Recorder("session.ttrec").start()
    messages = sub.poll(2000, 50)
    model.fold_many(messages, received_at=now)
    rec.write(sub.take_frames(), received_at=time.time())

    # The same, the subscriber handing its frames to the recorder itself (``tiertop dash
    # --record``: whatever polls it, everything it delivers is recorded):
    rec = start_recorder("session.ttrec")
    sub = RecordingSubscriber(endpoint, replay_endpoint, recorder=rec)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .framing import Decoded, FrameDecoder
from .protocol import Hello, Snapshot
from .recording import RecordingError, RecordingWriter, WriterStats, is_recording
from .subscriber import SubscriberCounters, TelemetrySubscriber
from .vllm_events import MediumNormalizer

__all__ = [
    "RawFrame",
    "Recorder",
    "RecorderCounters",
    "RecorderProcess",
    "RecordingSubscriber",
    "check_record_path",
    "finish_runtime_recording",
    "record_runtime",
    "start_recorder",
]

#: One received message: (topic frame, sequence number, payload frame).
RawFrame = tuple[bytes, int, bytes]


# ------------------------------------------------------------------------------ the subscriber


class _CapturingDecoder(FrameDecoder):
    """A frame decoder that remembers the frames each decoded object came from."""

    def __init__(self, normalizer: MediumNormalizer, ttl_s: float) -> None:
        super().__init__(normalizer)
        self._raw: dict[int, tuple[Decoded, RawFrame, float]] = {}
        self._ttl = ttl_s
        self.uncaptured = 0
        self.expired = 0

    def decode(
        self, topic: bytes, seq: int, payload: bytes, source: str = "", epoch: int = 0
    ) -> Decoded | None:
        message = super().decode(topic, seq, payload, source, epoch)
        if message is not None:
            self._raw[id(message)] = (message, (bytes(topic), seq, bytes(payload)),
                                      time.monotonic())
        return message

    def take(self, delivered: Sequence[Decoded]) -> list[RawFrame]:
        out: list[RawFrame] = []
        raw = self._raw
        for message in delivered:
            entry = raw.pop(id(message), None)
            if entry is None or entry[0] is not message:
                self.uncaptured += 1
                continue
            out.append(entry[1])
        return out

    def expire(self) -> None:
        """Forget frames of messages never delivered (duplicates the subscriber dropped) once
        they are older than any hold could be."""
        if len(self._raw) < 256:
            return
        cutoff = time.monotonic() - self._ttl
        stale = [k for k, (_, _, at) in self._raw.items() if at < cutoff]
        for k in stale:
            del self._raw[k]
        self.expired += len(stale)


class RecordingSubscriber(TelemetrySubscriber):
    """A :class:`TelemetrySubscriber` that also keeps the raw frames of every message it
    delivers, for a recorder.

    Same arguments and behaviour as :class:`TelemetrySubscriber`, plus ``capture_ttl_s``: how
    long frames of a message that is never delivered (a duplicate dropped after a resync) are
    kept before being forgotten (longer than any resync wait), and ``recorder``. After
    :meth:`poll`, :meth:`take_frames` returns ``(topic, seq, payload)`` of each message that
    ``poll`` returned, in the same order, byte for byte as received (live or replayed); with
    a ``recorder``, ``poll`` hands them to :meth:`Recorder.write` instead, so whoever polls
    (a dashboard's ingest) records exactly what it folds without knowing it does.
    """

    def __init__(self, *args: Any, capture_ttl_s: float = 60.0,
                 recorder: Recorder | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Swap in a decoder that remembers frames (the base class decodes everything through
        # this attribute: live, replayed and snapshot answers).
        self._capture = _CapturingDecoder(self._decoder.normalizer, capture_ttl_s)
        self._decoder = self._capture
        self._frames: list[RawFrame] = []
        self.recorder = recorder

    def poll(self, max_messages: int = 1000, timeout_ms: float = 0) -> list[Decoded]:
        out = super().poll(max_messages, timeout_ms)
        if out:
            frames = self._capture.take(out)
            if self.recorder is not None:
                self.recorder.write(frames)
            else:
                self._frames.extend(frames)
        self._capture.expire()
        return out

    def take_frames(self) -> list[RawFrame]:
        """The frames of what :meth:`poll` returned since the last call, in order."""
        frames, self._frames = self._frames, []
        return frames

    @property
    def uncaptured(self) -> int:
        """Delivered messages whose frames were not found (0 unless something is wrong)."""
        return self._capture.uncaptured


# -------------------------------------------------------------------------------- the recorder


@dataclass(frozen=True, slots=True)
class RecorderCounters:
    """How a recorder is doing.

    Attributes:
        received: Messages taken in (from its subscriber and from :meth:`Recorder.write`).
        queue_dropped: Messages :meth:`Recorder.write` refused because its queue was full.
        uncaptured: Messages its subscriber delivered without frames (0 unless broken).
        writer: The writer's figures (records, bytes, chunks, keyframes, retention...).
        subscriber: Its subscriber's counters (None when it has none).
        error: Why it stopped writing ("" while fine).
    """

    received: int
    queue_dropped: int
    uncaptured: int
    writer: WriterStats
    subscriber: SubscriberCounters | None
    error: str

    @property
    def records(self) -> int:
        return self.writer.records

    @property
    def file_bytes(self) -> int:
        return self.writer.file_bytes

    def summary_line(self, path: str) -> str:
        """One line for a person: what was recorded to ``path``."""
        w = self.writer
        extra = []
        if w.dropped:
            extra.append(f"{w.dropped:,} not recorded ({w.stopped})")
        if w.dropped_by_retention:
            extra.append(f"{w.dropped_by_retention:,} oldest dropped by retention")
        if self.queue_dropped:
            extra.append(f"{self.queue_dropped:,} dropped by a full queue")
        if self.error:
            extra.append(f"error: {self.error}")
        tail = f" ({'; '.join(extra)})" if extra else ""
        return (f"recorded {w.records:,} messages to {path} ({w.file_bytes:,} bytes, "
                f"{w.keyframes} keyframes){tail}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a :class:`RecorderProcess` child sends its parent)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecorderCounters:
        sub = data.get("subscriber")
        return cls(
            received=int(data["received"]), queue_dropped=int(data["queue_dropped"]),
            uncaptured=int(data["uncaptured"]), writer=WriterStats(**data["writer"]),
            subscriber=SubscriberCounters(**sub) if sub is not None else None,
            error=str(data["error"]),
        )


class Recorder:
    """Records a telemetry stream to a file on its own thread.

    Args:
        path: The recording file.
        connect: The runtime's telemetry (PUB) endpoint to subscribe to (None: only
            :meth:`write` feeds it).
        replay_addr: Its replay/snapshot endpoint (gaps filled, snapshot on join).
        topics: Topic prefixes to record (default all).
        curve: CurveZMQ client settings for the subscriber.
        hello: The runtime's Hello when known (goes into the header).
        scenario: Scenario text (goes into the header).
        meta: Free-form header data.
        max_bytes: File size cap (see :class:`RecordingWriter`).
        retain_s: Keep only about the last ``retain_s`` seconds.
        on_full: ``"drop-oldest"`` or ``"stop"`` at ``max_bytes``.
        overwrite: Replace an existing file.
        max_queue: Most messages :meth:`write` queues before refusing (counted).
        poll_ms: Longest the worker waits for the stream at a time.
        batch_s: After taking what arrived, the worker sleeps this long before reading again,
            so it wakes (and takes the GIL from the process it records in) about 1/batch_s
            times a second however busy the stream is; messages wait in the socket meanwhile.
            Each wakeup has a fixed cost: 0.5 s took about 30 % less CPU than 0.1 s recording
            a model runtime, and still well under a chunk's ``chunk_max_s`` (2 s).
        writer_options: More :class:`RecordingWriter` keyword arguments (chunk and keyframe
            policy, compression level...).
        subscriber_options: More :class:`TelemetrySubscriber` keyword arguments.
        clock: Wall clock for receive times.

    Raises:
        RecordingError: The file exists (without ``overwrite``) or bad limits.
        OSError: The file cannot be created.
        zmq.ZMQError: The endpoint is malformed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        connect: str | None = None,
        replay_addr: str | None = None,
        *,
        topics: Sequence[str] = ("",),
        curve: Any = None,
        hello: Hello | bytes | None = None,
        scenario: str | None = None,
        meta: Mapping[str, Any] | None = None,
        max_bytes: int | None = None,
        retain_s: float | None = None,
        on_full: str = "drop-oldest",
        overwrite: bool = False,
        max_queue: int = 1_000_000,
        poll_ms: float = 50.0,
        batch_s: float = 0.5,
        writer_options: Mapping[str, Any] | None = None,
        subscriber_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.connect = connect
        self._clock = clock
        self._poll_ms = poll_ms
        self._batch_s = batch_s
        self._max_queue = max_queue
        self._writer = RecordingWriter(
            path, hello=hello, scenario=scenario, source=connect or "in-process", meta=meta,
            max_bytes=max_bytes, retain_s=retain_s, on_full=on_full, overwrite=overwrite,
            clock=clock, **dict(writer_options or {}),
        )
        self._subscriber: RecordingSubscriber | None = None
        if connect is not None:
            try:
                self._subscriber = RecordingSubscriber(
                    connect, replay_addr, topics=topics, curve=curve,
                    **dict(subscriber_options or {}),
                )
            except BaseException:
                self._writer.close()
                raise
        self._queue: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._received = 0
        self._queue_dropped = 0
        self._last_seq: dict[str, int] = {}
        self._drain_until: dict[str, int] | None = None
        self._drain_timeout = 2.0
        self._drain_quiet = 0.2
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="tiertop-recorder", daemon=True)
        self._started = False
        self._stopped = False

    # --------------------------------------------------------------------------------- API

    def start(self) -> Recorder:
        """Start the worker thread (returns self)."""
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def write(self, frames: Iterable[Sequence[Any]], received_at: float | None = None) -> None:
        """Record messages received elsewhere (thread-safe; never blocks).

        Args:
            frames: Messages as received: each ``(topic, seq, payload)``, the three frames of
                one message, ``seq`` either an int or its 8-byte frame, ``topic`` bytes or str.
            received_at: When they were received (unix seconds; default now).
        """
        at = self._clock() if received_at is None else received_at
        queue = self._queue
        for frame in frames:
            if len(queue) >= self._max_queue:
                self._queue_dropped += 1
                continue
            topic, seq, payload = frame
            if isinstance(seq, bytes | bytearray | memoryview):
                seq = int.from_bytes(seq, "big")
            queue.append(("m", at, topic, int(seq), payload))
        self._wake.set()

    def mark(self, label: str) -> None:
        """Put a labelled mark in the recording's index at this point of the stream."""
        self._queue.append(("k", self._clock(), label))
        self._wake.set()

    def wait_joined(self, timeout_s: float = 5.0) -> bool:
        """Wait until the first message is recorded (True) or ``timeout_s`` passes (False)."""
        return self._first.wait(timeout_s)

    def stop(
        self,
        drain_until: Mapping[str, int] | None = None,
        timeout_s: float = 2.0,
        quiet_s: float = 0.2,
    ) -> RecorderCounters:
        """Finish: take what is still arriving, write it, close the file; the final counters.

        Args:
            drain_until: The last sequence number sent per topic (e.g. the publisher's
                ``counters().topic_seqs`` after a flush): keep reading until each is recorded.
                None: keep reading until the stream is quiet for ``quiet_s``.
            timeout_s: Longest to keep reading.
            quiet_s: Silence that ends the drain without ``drain_until``.
        """
        if self._stopped:
            return self.counters()
        self._stopped = True
        self._drain_until = dict(drain_until) if drain_until is not None else None
        self._drain_timeout = timeout_s
        self._drain_quiet = quiet_s
        self._stop.set()
        self._wake.set()
        if self._started:
            self._thread.join()
        else:
            self._finish()
        return self.counters()

    def close(self) -> None:
        """Same as :meth:`stop` with the defaults."""
        self.stop()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def cpu_seconds(self) -> float | None:
        """CPU time its worker thread (subscriber, decoding, folding, compression, writes) used
        so far; None where the platform cannot tell or the thread has ended."""
        ident = self._thread.ident
        if ident is None:
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(ident))
        except (AttributeError, OSError):
            return None

    def counters(self) -> RecorderCounters:
        sub = self._subscriber
        return RecorderCounters(
            received=self._received,
            queue_dropped=self._queue_dropped,
            uncaptured=sub.uncaptured if sub is not None else 0,
            writer=dataclasses.replace(self._writer.stats),
            subscriber=sub.counters() if sub is not None else None,
            error=self.error,
        )

    def summary_line(self) -> str:
        """One line for a person: what was recorded where."""
        return self.counters().summary_line(self.path)

    # ------------------------------------------------------------------------------ worker

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._step(self._poll_ms) and self._batch_s > 0:
                    self._stop.wait(self._batch_s)
        except Exception as exc:  # disk full, a bad path...: stop writing, say why
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._finish()

    def _finish(self) -> None:
        try:
            if not self.error:
                self._drain()
        except Exception as exc:
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        finally:
            if self._subscriber is not None:
                self._subscriber.close()
            try:
                self._writer.close()
            except Exception as exc:
                self.error = self.error or f"{type(exc).__name__}: {exc}"

    def _drain(self) -> None:
        deadline = time.monotonic() + self._drain_timeout
        until = self._drain_until
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            got = self._step(20.0)
            if until is not None:
                if self._subscriber is None or all(
                    self._last_seq.get(topic, -1) >= seq for topic, seq in until.items()
                ):
                    break
            else:
                now = time.monotonic()
                if got:
                    quiet_since = now
                elif now - quiet_since >= self._drain_quiet or self._subscriber is None:
                    break
        self._step(0.0)

    def _step(self, wait_ms: float) -> int:
        writer = self._writer
        got = 0
        sub = self._subscriber
        if sub is not None:
            messages = sub.poll(20_000, 0 if self._queue else wait_ms)
            if messages:
                frames = sub.take_frames()
                now = self._clock()
                last = self._last_seq
                for topic, seq, payload in frames:
                    message = writer.append(now, topic, seq, payload)
                    name = topic.decode("utf-8", "replace")
                    if seq > last.get(name, -1):
                        last[name] = seq
                    if isinstance(message, Snapshot | Hello):
                        # Everything up to these was either delivered or is in the state
                        # they carry: a drain need not wait for it.
                        for t, s in message.topic_seqs.items():
                            if s > last.get(t, -1):
                                last[t] = s
                got += len(frames)
        elif not self._queue:
            self._wake.wait(wait_ms / 1000.0)
        self._wake.clear()
        queue = self._queue
        while queue:
            item = queue.popleft()
            if item[0] == "m":
                _, at, topic, seq, payload = item
                writer.append(at, topic, seq, payload)
                got += 1
            else:
                writer.mark(item[2], item[1])
        if got:
            self._received += got
            self._first.set()
        with contextlib.suppress(OSError):
            writer.tick(self._clock())
        return got


# ------------------------------------------------------------------------- a runtime's own


def start_recorder(path: str | os.PathLike[str], *args: Any, **options: Any) -> Recorder:
    """Start a :class:`Recorder` for ``--record FILE``: an existing recording at ``path`` is
    replaced, any other existing file is refused (a mistyped path must not eat a file).

    Raises:
        RecordingError: ``path`` is an existing file that is not a recording.
        OSError: The file cannot be created.
    """
    _refuse_non_recording(path)
    return Recorder(path, *args, overwrite=True, **options).start()


def check_record_path(path: str | os.PathLike[str]) -> None:
    """Check now that ``--record FILE`` can be written, for a recorder started later
    (elsewhere): the same refusals as :func:`start_recorder`, and the file can be created.

    Raises:
        RecordingError: ``path`` is an existing file that is not a recording.
        OSError: The file cannot be created.
    """
    _refuse_non_recording(path)
    existed = os.path.exists(path)
    with open(path, "ab"):
        pass
    if not existed:
        os.unlink(path)


def _refuse_non_recording(path: str | os.PathLike[str]) -> None:
    """Raise :class:`RecordingError` when ``path`` exists and is not a recording."""
    if os.path.exists(path) and not is_recording(path):
        raise RecordingError(f"{os.fspath(path)} exists and is not a tiertop recording; "
                             "not overwriting it")


def record_runtime(
    path: str | os.PathLike[str],
    addresses: Mapping[str, str],
    *,
    scenario: str | None = None,
    join_timeout_s: float = 5.0,
    separate_process: bool = True,
    **options: Any,
) -> Recorder | RecorderProcess:
    """Start a recorder subscribed to a runtime's own telemetry, for ``--record FILE`` on the
    commands that start one; call :func:`finish_runtime_recording` when it stops serving.

    By default the recorder runs in a child process (:class:`RecorderProcess`): it is just
    another subscriber, so decoding, folding for keyframes, compression and writes cost the
    runtime's process nothing but one more ZeroMQ subscriber. An existing recording at
    ``path`` is replaced; any other existing file is refused.

    Args:
        path: The recording.
        addresses: The runtime's endpoints by role (``"telemetry"`` or ``"pub"``, and
            ``"replay"`` when it has one).
        scenario: Scenario text for the header.
        join_timeout_s: How long to wait for the first message (the runtime's Hello, sent as
            the recorder subscribes) so that the recording misses nothing of the run.
        separate_process: Record in a child process (False: on a thread of this one).
        options: More :class:`Recorder` keyword arguments (plain data with a child process).

    Raises:
        RecordingError: ``path`` is an existing file that is not a recording.
        OSError: The file cannot be created.
    """
    endpoint = addresses.get("telemetry") or addresses.get("pub")
    if not endpoint:
        raise ValueError("the runtime has no telemetry address")
    if separate_process:
        _refuse_non_recording(path)
        return RecorderProcess(path, endpoint, addresses.get("replay"), scenario=scenario,
                               join_timeout_s=join_timeout_s, **options)
    recorder = start_recorder(path, endpoint, addresses.get("replay"), scenario=scenario,
                              **options)
    recorder.wait_joined(join_timeout_s)
    return recorder


def finish_runtime_recording(recorder: Recorder | RecorderProcess, publisher: Any = None,
                             timeout_s: float = 3.0) -> RecorderCounters:
    """Stop a recorder started by :func:`record_runtime` once the runtime stopped serving but
    before its publisher closes: flush the publisher, read until every message it sent is
    recorded (or ``timeout_s``), close the file."""
    until = None
    if publisher is not None:
        with contextlib.suppress(Exception):
            publisher.flush(timeout_s=1.0)
            until = dict(publisher.counters().topic_seqs)
    return recorder.stop(drain_until=until, timeout_s=timeout_s)


# ------------------------------------------------------------------- in a child process


class RecorderProcess:
    """A :class:`Recorder` in a child process (``python -m tiertop.monitor.recorder``): what
    ``--record`` runs beside a runtime, so that recording costs the runtime's process only one
    more subscriber on its sockets. Same file, written by the same code.

    The child reads its orders from a pipe on its stdin and answers each with one JSON line:
    it finishes the file when told to stop, and also when that pipe closes (the runtime
    exited or was killed), so it never outlives the runtime. It runs in its own session, so a
    Ctrl-C at the terminal reaches only the runtime, which then stops it after draining.

    Args:
        path: The recording (replaced when it exists).
        connect: The runtime's telemetry endpoint.
        replay_addr: Its replay/snapshot endpoint.
        scenario: Scenario text for the header.
        join_timeout_s: How long to wait for the first message (see :func:`record_runtime`).
        options: More :class:`Recorder` keyword arguments; plain data only (they travel as
            JSON).

    Raises:
        RecordingError: The child could not create the recording (bad limits...).
        OSError: The file cannot be created, or the child could not start.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        connect: str,
        replay_addr: str | None = None,
        *,
        scenario: str | None = None,
        join_timeout_s: float = 5.0,
        **options: Any,
    ) -> None:
        import subprocess
        import sys

        self.path = os.fspath(path)
        self.connect = connect
        self._lock = threading.Lock()
        self._final: RecorderCounters | None = None
        order = json.dumps({"path": self.path, "connect": connect, "replay": replay_addr,
                            "scenario": scenario, "join_timeout_s": join_timeout_s,
                            "options": options})
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True, text=True, bufsize=1,
        )
        answer = self._ask(order, timeout_s=60.0 + join_timeout_s)
        if "error" in answer:
            self._proc.wait(timeout=10)
            kind = OSError if answer.get("kind") == "OSError" else RecordingError
            raise kind(answer["error"])
        self.joined = bool(answer.get("joined"))

    def _ask(self, line: str, timeout_s: float) -> dict[str, Any]:
        """Send one order, read the child's one-line answer ({"error": ...} if it is gone)."""
        import select

        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"error": "the recorder process has ended"}
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        answer = proc.stdout.readline() if ready else ""
        if not answer:
            return {"error": "the recorder process did not answer"}
        result: dict[str, Any] = json.loads(answer)
        return result

    def wait_joined(self, timeout_s: float = 5.0) -> bool:
        """Whether the child recorded its first message (it waited for it when starting)."""
        return self.joined

    def mark(self, label: str) -> None:
        """Put a labelled mark in the recording's index at this point of the stream."""
        with self._lock:
            if self._final is None:
                self._ask(json.dumps({"cmd": "mark", "label": label}), timeout_s=5.0)

    def counters(self) -> RecorderCounters:
        with self._lock:
            if self._final is not None:
                return self._final
            answer = self._ask(json.dumps({"cmd": "counters"}), timeout_s=5.0)
        if "error" in answer:
            return _failed_counters(answer["error"])
        return RecorderCounters.from_dict(answer["counters"])

    def cpu_seconds(self) -> float | None:
        """CPU time the child process used so far (None once it has ended)."""
        with self._lock:
            if self._final is not None:
                return None
            answer = self._ask(json.dumps({"cmd": "cpu"}), timeout_s=5.0)
        cpu = answer.get("cpu")
        return float(cpu) if cpu is not None else None

    def stop(
        self,
        drain_until: Mapping[str, int] | None = None,
        timeout_s: float = 2.0,
        quiet_s: float = 0.2,
    ) -> RecorderCounters:
        """Finish as :meth:`Recorder.stop` does (in the child); the final counters."""
        with self._lock:
            if self._final is not None:
                return self._final
            answer = self._ask(json.dumps({
                "cmd": "stop", "drain_until": dict(drain_until) if drain_until else None,
                "timeout_s": timeout_s, "quiet_s": quiet_s,
            }), timeout_s=timeout_s + 60.0)
            if "error" in answer:
                self._proc.kill()
                self._final = _failed_counters(answer["error"])
            else:
                self._final = RecorderCounters.from_dict(answer["counters"])
            self._proc.wait(timeout=30)
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.close()
            self._proc.stdout.close()
        return self._final

    def close(self) -> None:
        """Same as :meth:`stop` with the defaults."""
        self.stop()

    def __enter__(self) -> RecorderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._final is None and self._proc.poll() is None

    def summary_line(self) -> str:
        """One line for a person: what was recorded where."""
        return self.counters().summary_line(self.path)


def _failed_counters(error: str) -> RecorderCounters:
    return RecorderCounters(0, 0, 0, WriterStats(), None, error)


def _child_main() -> int:
    """The child of a :class:`RecorderProcess`: record as ordered on stdin until told to stop
    or until stdin closes (the parent is gone)."""
    import sys

    def answer(data: Mapping[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    order = json.loads(sys.stdin.readline() or "null")
    if not isinstance(order, dict):
        return 2
    try:
        recorder = Recorder(order["path"], order["connect"], order["replay"],
                            scenario=order["scenario"], overwrite=True,
                            **order["options"]).start()
    except (RecordingError, OSError, ValueError, TypeError) as exc:
        answer({"error": str(exc), "kind": "OSError" if isinstance(exc, OSError) else ""})
        return 1
    answer({"joined": recorder.wait_joined(float(order["join_timeout_s"]))})
    stop: dict[str, Any] = {}
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command.get("cmd")
        if cmd == "counters":
            answer({"counters": recorder.counters().to_dict()})
        elif cmd == "cpu":
            answer({"cpu": time.process_time()})
        elif cmd == "mark":
            recorder.mark(str(command["label"]))
            answer({})
        elif cmd == "stop":
            stop = {"drain_until": command["drain_until"], "timeout_s": command["timeout_s"],
                    "quiet_s": command["quiet_s"]}
            break
    counters = recorder.stop(**stop)  # no stop order: the parent is gone; drain until quiet
    with contextlib.suppress(OSError):
        answer({"counters": counters.to_dict()})
    return 0 if not counters.error else 1


if __name__ == "__main__":
    raise SystemExit(_child_main())
