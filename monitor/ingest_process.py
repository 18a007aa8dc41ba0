"""Decode and fold block events in a child process; hand the dashboard digests.

At 200,000 block events a second, decoding the vLLM-shaped batches and tracking which blocks are
resident takes about half a core. Done on a thread of the dashboard, that work holds the GIL the
UI thread needs, and a key press waits behind it. :class:`IngestProcess` moves it out: a child
process runs the subscriber (gap detection, replay, snapshots, reconnects), the live miss-ratio
curve and, with ``--record``, the recorder; it folds each run of block-event batches into one
:class:`~tiertop.monitor.residency.BlockDigest` and sends the dashboard those digests with every
other message as it came, about 40 times a second. The dashboard folds them into its
:class:`~tiertop.monitor.state.StateModel` through the same code that folds a raw batch, so what
it shows is the same either way.

:class:`IngestProcess` is a :class:`~tiertop.tui.ingest.Source` (``poll``, ``counters``,
``stale``, ``in_sync``, ``close``). Its :attr:`IngestProcess.mrc` answers the MRC screen with the
latest curve the child sent (asked for only while the screen looks). If the child dies, ``poll``
raises :class:`IngestProcessDied` once and the next ``poll`` starts a new child, which resyncs
from the runtime's snapshot; counters carry on from where the old child's stopped. A child that
loses its parent (the dashboard was killed) sees its socket close and exits, finishing the
recording.

The child resets its block residency when the runtime's epoch changes, as the state model does.
A source without epochs whose counters go backwards (the model's other sign of a restart) is
not detected here: its resident counts would carry the old run's blocks until they are removed.
tiertop's runtimes always start a new epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import IO, Any, Final

import msgspec

from .mrc_feed import MrcFeed, MrcReading
from .protocol import Snapshot
from .recorder import RecorderCounters
from .residency import DEFAULT_MAX_TRACKED_BLOCKS, BlockResidency
from .security import ClientCurve
from .subscriber import SubscriberCounters, TelemetrySubscriber
from .vllm_events import KvEventBatch

__all__ = ["IngestProcess", "IngestProcessDied", "IngestSpec", "MrcFromChild"]

#: A child that has said nothing for this long counts as stale (it reports four times a second).
SILENT_CHILD_S: Final = 2.0
#: How long a closing child may take to say goodbye (the recording's last chunk included).
CLOSE_TIMEOUT_S: Final = 5.0
#: The child yields the CPU to the dashboard when both want it (a busy machine): keys first.
INGEST_NICENESS: Final = 10
#: A child that dies this many times within RESTART_WINDOW_S is not started again.
MAX_RESTARTS: Final = 5
RESTART_WINDOW_S: Final = 60.0


@dataclass(frozen=True)
class IngestSpec:
    """What the child subscribes to and does (pickled to it).

    Attributes:
        telemetry: The runtime's telemetry (PUB) endpoint.
        replay: Its replay/snapshot endpoint (None: gaps are counted, not filled).
        curve: CurveZMQ client settings for a runtime that requires them.
        record_path: Record the stream to this file (``--record``; None: no recording).
        record_meta: Free-form header data of the recording.
        flush_s: Longest a message waits in the child before it is sent on.
        mrc_cpu_limit: Share of a core the live miss-ratio curve may take in the child.
    """

    telemetry: str
    replay: str | None = None
    curve: ClientCurve | None = None
    record_path: str | None = None
    record_meta: dict[str, Any] = field(default_factory=dict)
    flush_s: float = 0.025
    mrc_cpu_limit: float = 0.15


@dataclass(frozen=True)
class ChildStatus:
    """How the child's subscriber, recorder and curve are doing (sent with every bundle)."""

    counters: SubscriberCounters
    stale: bool
    in_sync: bool
    recorder: RecorderCounters | None
    mrc: dict[str, Any]


class IngestProcessDied(RuntimeError):
    """The child process ended without being asked to."""


# ================================================================================= child side


class _Digester:
    """Turns runs of block-event batches into digests, keeping the residency in step with the
    runtime's restarts and snapshots as the state model does."""

    def __init__(self, max_tracked_blocks: int = DEFAULT_MAX_TRACKED_BLOCKS) -> None:
        self.residency = BlockResidency(max_tracked_blocks)
        self.epoch: int | None = None

    def digest(self, messages: Sequence[Any]) -> list[Any]:
        out: list[Any] = []
        run: list[KvEventBatch] = []
        for m in messages:
            if type(m) is KvEventBatch:
                # A digest lands at its last batch's time: one never spans two seconds of the
                # source's clock, so its counts fall in the second (a ring bucket) they did.
                if run and int(m.ts) != int(run[0].ts):
                    self._close_run(run, out)
                run.append(m)
                continue
            if run:
                self._close_run(run, out)
            out += self._watch(m)
        if run:
            self._close_run(run, out)
        return out

    def _close_run(self, run: list[KvEventBatch], out: list[Any]) -> None:
        rest: Sequence[KvEventBatch] = run
        while (digest := self.residency.fold(rest)) is not None:
            out.append(digest)
            rest = rest[digest.batches:]
        run.clear()

    def _watch(self, m: Any) -> list[Any]:
        epoch = getattr(m, "epoch", None)
        if epoch is not None:
            if self.epoch is None:
                self.epoch = epoch
            elif epoch != self.epoch:
                self.epoch = epoch
                self.residency.reset()
        if isinstance(m, Snapshot):
            self.residency.load(m.resident)
            # The hashes stay here; the dashboard needs the counts only, and which of them are
            # exact: a digest of no batches right after says so.
            return [msgspec.structs.replace(m, resident=[
                msgspec.structs.replace(r, block_hashes=None) for r in m.resident]),
                self.residency.state(m.clock)]
        return [m]


def child_entry(fd: int) -> None:  # pragma: no cover - runs in the child
    """The child: read the spec from the parent's socket, then subscribe, digest and send
    until told to stop or the parent is gone. Its own session: the terminal's signals are the
    dashboard's; a plain SIGTERM ends it the orderly way (recording finished)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.nice(INGEST_NICENESS)
    conn = Connection(fd)
    spec: IngestSpec = conn.recv()
    try:
        subscriber, recorder = _open(spec)
    except Exception as exc:  # a bad endpoint or an unwritable recording: say why and end
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    _ChildLoop(conn, spec, subscriber, recorder).run()


def _exit_on_sigterm(signum: int, _frame: object) -> None:  # pragma: no cover - child
    raise SystemExit(128 + signum)


def _open(spec: IngestSpec) -> tuple[TelemetrySubscriber, Any]:
    if spec.record_path is None:
        return TelemetrySubscriber(spec.telemetry, spec.replay, curve=spec.curve), None
    from .recorder import RecordingSubscriber, start_recorder

    recorder = start_recorder(spec.record_path, meta=spec.record_meta)
    try:
        subscriber = RecordingSubscriber(spec.telemetry, spec.replay, curve=spec.curve,
                                         recorder=recorder)
    except Exception:
        recorder.close()
        raise
    return subscriber, recorder


class _ChildLoop:
    """The child's work: poll the subscriber, bundle what came for ``flush_s``, digest it and
    send it on; answer the parent's requests between polls."""

    def __init__(self, conn: Connection, spec: IngestSpec, subscriber: TelemetrySubscriber,
                 recorder: Any) -> None:
        self.conn = conn
        self.spec = spec
        self.subscriber = subscriber
        self.recorder = recorder
        self.digester = _Digester()
        self.feed = MrcFeed(cpu_limit=spec.mrc_cpu_limit)
        self.last_sent = 0.0

    def run(self) -> None:
        pending: list[Any] = []
        flush_at = 0.0
        try:
            while self._commands():
                now = time.monotonic()
                wait_ms = max(0.0, flush_at - now) * 1e3 if pending else 100.0
                got = self.subscriber.poll(4096, timeout_ms=wait_ms)
                now = time.monotonic()
                if got:
                    if not pending:
                        flush_at = now + self.spec.flush_s
                    pending += got
                if pending and (now >= flush_at or len(pending) >= 8192):
                    self._send_bundle(pending)
                    pending = []
                elif not pending and now - self.last_sent > 0.25:
                    self._send_bundle([])  # status only: the parent knows we are alive
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass  # the dashboard is gone: finish the recording and leave
        except Exception:  # a bug: tell the dashboard what it was (no terminal to print it to)
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("crash", traceback.format_exc()))
            raise
        finally:
            self.subscriber.close()
            if self.recorder is not None:
                self.recorder.close()
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("bye", self._status()))
            self.conn.close()

    def _commands(self) -> bool:
        """Read what the parent asked; False when it asked to stop."""
        while self.conn.poll(0):
            command = self.conn.recv()
            if command == "stop":
                return False
            if command == "mrc":
                self.conn.send(("mrc", self.feed.reading()))
        return True

    def _send_bundle(self, messages: list[Any]) -> None:
        if messages:
            self.feed.fold(messages)
        self.conn.send(("data", self.digester.digest(messages), self._status()))
        self.last_sent = time.monotonic()

    def _status(self) -> ChildStatus:
        sub = self.subscriber
        return ChildStatus(
            counters=sub.counters(), stale=sub.stale, in_sync=sub.in_sync,
            recorder=self.recorder.counters() if self.recorder is not None else None,
            mrc=self.feed.stats(),
        )


# ================================================================================ parent side


class MrcFromChild:
    """The MRC screen's :class:`~tiertop.monitor.mrc_feed.MrcSource`: the latest curve the
    child sent; asking marks it wanted, and the ingest asks the child while it is."""

    def __init__(self) -> None:
        self.latest: MrcReading | None = None
        self.wanted_at = float("-inf")
        self.stats_seen: dict[str, Any] = {}

    def reading(self) -> MrcReading | None:
        self.wanted_at = time.monotonic()
        return self.latest

    def stats(self) -> dict[str, Any]:
        return dict(self.stats_seen)


class IngestProcess:
    """A :class:`~tiertop.tui.ingest.Source` whose messages a child process received and
    digested; see the module docstring.

    With ``spec.record_path``, a child that replaces a dead one records to a new part next to
    the first file (``x.ttrec``, then ``x.part2.ttrec``...): a new recorder would otherwise
    start the file afresh and lose what the dead child wrote. :attr:`record_parts` lists them.

    Args:
        spec: What the child does.
        mrc_every_s: How often the child is asked for the curve while the screen reads it.
    """

    def __init__(self, spec: IngestSpec, *, mrc_every_s: float = 0.5) -> None:
        self.spec = spec
        self.mrc = MrcFromChild()
        self.mrc_every_s = mrc_every_s
        #: Times a dead child was replaced.
        self.restarts = 0
        #: Why no child runs any more ("" while fine); set once, then ``poll`` only waits.
        self.fatal = ""
        #: What the last child that failed on a bug said (its traceback; "" when none did).
        self.crash = ""
        #: The recording's files so far with their last figures (``--record``), oldest first.
        self.record_parts: list[tuple[str, RecorderCounters | None]] = []
        self._child_crash = ""
        self._recent_restarts: deque[float] = deque(maxlen=MAX_RESTARTS)
        self._pending: deque[Any] = deque()
        self._status: ChildStatus | None = None
        self._base = SubscriberCounters()  # what earlier children counted
        self._heard_at = time.monotonic()
        self._asked_mrc_at = float("-inf")
        self._closed = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._stderr: IO[bytes] | None = None
        self._start()

    # ------------------------------------------------------------------------------ Source

    def poll(self, max_messages: int = 1000, timeout_ms: float = 0) -> list[Any]:
        if not self._pending:
            if self._closed or self.fatal:
                time.sleep(timeout_ms / 1e3)  # nothing will come: wait as asked, never spin
                return []
            if self._proc is None:
                self._start()
            self._ask_for_curve()
            self._receive(timeout_ms / 1e3)
        n = min(max_messages, len(self._pending))
        return [self._pending.popleft() for _ in range(n)]

    def counters(self) -> SubscriberCounters:
        status = self._status
        if status is None:
            return dataclasses.replace(self._base)
        return _add(self._base, status.counters)

    @property
    def stale(self) -> bool:
        status = self._status
        return (status is None or status.stale
                or time.monotonic() - self._heard_at > SILENT_CHILD_S)

    @property
    def in_sync(self) -> bool:
        status = self._status
        return status is not None and status.in_sync

    @property
    def record_path(self) -> str | None:
        """The file being recorded now (None: not recording)."""
        return self.record_parts[-1][0] if self.record_parts else None

    def recorder_counters(self) -> RecorderCounters | None:
        """The current recording's figures as its child last reported them (None: not
        recording, or not reported yet)."""
        return self.record_parts[-1][1] if self.record_parts else None

    def close(self) -> None:
        """Ask the child to stop (it finishes the recording), wait for it, and reap it."""
        if self._closed:
            return
        self._closed = True
        proc, conn = self._proc, self._conn
        if proc is None or conn is None:
            return
        with contextlib.suppress(EOFError, OSError):  # a child already gone is reaped below
            conn.send("stop")
            deadline = time.monotonic() + CLOSE_TIMEOUT_S
            while (left := deadline - time.monotonic()) > 0 and conn.poll(left):
                message = conn.recv()  # drain: a child blocked sending must get to "stop"
                if message[0] == "bye":
                    self._take(message)
                    break
        _reap(proc)
        conn.close()
        self._close_stderr()
        self._proc = None

    # ------------------------------------------------------------------------------ inside

    def _start(self) -> None:
        """Start a child on one end of a socket pair. A plain subprocess, not
        ``multiprocessing``: nothing of this process (its threads, a UI's stand-in stderr) is
        inherited or re-imported. Its stderr goes to a file, read if it dies unexplained."""
        spec = self.spec
        if spec.record_path is not None:
            path = _part_path(spec.record_path, len(self.record_parts) + 1)
            self.record_parts.append((path, None))
            spec = dataclasses.replace(spec, record_path=path)
        mine, theirs = socket.socketpair()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - as long as the child lives
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from tiertop.monitor.ingest_process import child_entry; "
                 f"child_entry({theirs.fileno()})"],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True,
            )
        finally:
            theirs.close()
        conn = Connection(mine.detach())
        conn.send(spec)
        self._conn, self._proc = conn, proc
        self._child_crash = ""
        self._heard_at = time.monotonic()

    def _ask_for_curve(self) -> None:
        now = time.monotonic()
        if now - self.mrc.wanted_at < 3.0 and now - self._asked_mrc_at >= self.mrc_every_s:
            self._asked_mrc_at = now
            with contextlib.suppress(OSError):  # a dead child shows up in _receive
                if self._conn is not None:
                    self._conn.send("mrc")

    def _receive(self, timeout_s: float) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if not conn.poll(max(0.0, timeout_s)):
                return
            while True:
                self._take(conn.recv())
                if not conn.poll(0):
                    return
        except (EOFError, OSError):
            self._child_died()

    def _take(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        self._heard_at = time.monotonic()
        if kind == "data":
            self._pending.extend(message[1])
            self._take_status(message[2])
        elif kind == "bye":
            self._take_status(message[1])
        elif kind == "mrc":
            self.mrc.latest = message[1]
        elif kind == "fatal":
            self.fatal = message[1]
            raise IngestProcessDied(f"cannot receive telemetry: {self.fatal}")
        elif kind == "crash":
            self.crash = self._child_crash = message[1]

    def _take_status(self, status: ChildStatus) -> None:
        self._status = status
        self.mrc.stats_seen = status.mrc
        if self.record_parts:
            self.record_parts[-1] = (self.record_parts[-1][0], status.recorder)

    def _child_died(self) -> None:
        proc, conn = self._proc, self._conn
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
            code = proc.returncode
        if conn is not None:
            conn.close()
        self._proc, self._conn = None, None
        why = _last_line(self._child_crash) or self._stderr_tail() or f"code {code}"
        self._close_stderr()
        if self._status is not None:  # the next child counts from zero
            self._base = _add(self._base, self._status.counters)
            self._status = None
        now = time.monotonic()
        recent = self._recent_restarts
        if len(recent) == recent.maxlen and now - recent[0] < RESTART_WINDOW_S:
            self.fatal = (f"the ingest process died {len(recent) + 1} times within "
                          f"{RESTART_WINDOW_S:g} s (last: {why})")
            raise IngestProcessDied(self.fatal)
        recent.append(now)
        self.restarts += 1
        raise IngestProcessDied(f"the ingest process exited ({why}); started a new one "
                                f"(restart {self.restarts})")

    def _stderr_tail(self) -> str:
        err = self._stderr
        if err is None:
            return ""
        with contextlib.suppress(OSError):
            err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
            return _last_line(err.read().decode("utf-8", "replace"))
        return ""

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a child told to stop; then SIGTERM (it finishes the recording); then kill."""
    for step in (None, proc.terminate, proc.kill):
        if step is not None:
            step()
        try:
            proc.wait(3.0)
            return
        except subprocess.TimeoutExpired:
            continue


def _part_path(path: str, part: int) -> str:
    """``x.ttrec`` for the first part, ``x.part2.ttrec`` for the second..."""
    if part == 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}.part{part}{ext}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _add(a: SubscriberCounters, b: SubscriberCounters) -> SubscriberCounters:
    """Counters of two children one after the other (the last publisher drop count wins)."""
    summed = {f.name: getattr(a, f.name) + getattr(b, f.name)
              for f in dataclasses.fields(SubscriberCounters)}
    summed["publisher_dropped"] = b.publisher_dropped
    return SubscriberCounters(**summed)
