"""A dashboard session: the state model and its lock, the ingest, the controller, the target.

:class:`Session` is what :class:`~tiertop.tui.app.DashboardApp` renders and steers. A session is
*attached* to a telemetry source: at once (tests hand it a fake source), or later by an
``attach`` callable the app runs in a worker thread (``tiertop demo`` waits there for the runtime
it started to print its addresses; ``tiertop dash`` connects and learns the replay and control
addresses from the runtime's Hello). :func:`connect_live` is that connection: a live session
reads an :class:`~tiertop.monitor.ingest_process.IngestProcess`, which decodes the stream and
folds block events in a child process, so the UI thread never waits behind them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tiertop.monitor.control_client import ControlClient
from tiertop.monitor.ingest_process import IngestProcess, IngestSpec
from tiertop.monitor.mrc_feed import MrcFeed, MrcSource
from tiertop.monitor.protocol import CAP_READ_ONLY, TOPIC_HELLO, Hello
from tiertop.monitor.security import ClientCurve
from tiertop.monitor.state import StateModel
from tiertop.monitor.subscriber import TelemetrySubscriber

from .control import Controller
from .ingest import Ingest, Source
from .replay_status import RecordStatus, Tape

__all__ = ["Endpoints", "Session", "connect_live", "probe_hello"]


@dataclass(slots=True)
class Endpoints:
    """Where a runtime is: telemetry (PUB), replay/snapshot (ROUTER) and control (ROUTER)."""

    telemetry: str
    replay: str | None = None
    control: str | None = None


class Session:
    """What the dashboard shows and steers.

    Args:
        model: The state model (default: a fresh one with a 5 s window for the figures).
        read_only: Disable every control (``--read-only``).
        target: What this session watches, for the status line (an address).
        controller: Sends commands (default: one that uses the runtime's announced address).
        attach: Called once in a worker thread to connect (None: :meth:`attach_source` is
            called by whoever builds the session).
        clock: Monotonic seconds (message age).
    """

    def __init__(
        self,
        *,
        model: StateModel | None = None,
        read_only: bool = False,
        target: str = "",
        controller: Controller | None = None,
        attach: Callable[[Session], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model if model is not None else StateModel(window_s=5.0)
        self.lock = threading.Lock()
        self.read_only = read_only
        self.target = target
        self.clock = clock
        self.controller = controller if controller is not None else Controller(
            address_hint=self.announced_control, read_only=read_only
        )
        self.controller.read_only = self.controller.read_only or read_only
        self.attach = attach
        self.ingest: Ingest | None = None
        #: The live miss-ratio curve, folded by the ingest from the same stream as the model.
        self.mrc: MrcSource = MrcFeed(self.lock, clock=clock)
        #: A line about what is happening while not attached ("starting runtime…").
        self.note = ""
        #: Why the session cannot go on ("" when fine), e.g. the runtime exited.
        self.error = ""
        #: Shown as warnings when the dashboard opens (e.g. what is damaged in a recording).
        self.warnings: list[str] = []
        #: The live connection's ingest process (None: not connected, or not live).
        self.live: IngestProcess | None = None
        #: Where this session records what it folds (``--record``; see :meth:`record_to`).
        self.record_path: str | None = None
        self.record_meta: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []
        self.closed = False

    # ------------------------------------------------------------------------------ wiring

    def attach_source(self, source: Source, mrc: MrcSource | None = None) -> Ingest:
        """Feed the model from ``source`` (the caller starts the ingest thread or steps it).

        ``mrc``: where the miss-ratio curve comes from when the source folds it itself (a live
        :class:`~tiertop.monitor.ingest_process.IngestProcess`); without it the session's own
        feed folds what the ingest polls."""
        also_fold = None
        if mrc is not None:
            self.mrc = mrc
        elif isinstance(self.mrc, MrcFeed):
            also_fold = self.mrc.fold_locked
        self.ingest = Ingest(self.model, self.lock, source, clock=self.clock,
                             also_fold=also_fold)
        return self.ingest

    def record_to(self, path: str, meta: dict[str, Any] | None = None) -> None:
        """Record the stream this session folds to ``path`` (``--record``): the live
        connection's ingest process records every message it delivers; the file is finished
        when the session closes."""
        self.record_path = path
        self.record_meta = dict(meta or {})

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the session closes (after the ingest stopped), last added first; at
        once when it is closed already (a connection that completed after the user quit)."""
        if self.closed:
            fn()
            return
        self._closers.append(fn)

    def close(self) -> None:
        self.closed = True
        if self.ingest is not None:
            self.ingest.stop()
        self.controller.close()
        while self._closers:
            fn = self._closers.pop()
            with contextlib.suppress(Exception):  # closing must go on
                fn()

    # ------------------------------------------------------------------------------ facts

    def announced_control(self) -> str | None:
        """The control address the runtime's Hello names (None: none yet)."""
        with self.lock:
            hello = self.model.hello
        if hello is None:
            return None
        return hello.addresses.get("control") or None

    def tape(self) -> Tape | None:
        """What the status line says about a recording (None: this session writes none)."""
        if self.record_path is None:
            return None
        live = self.live
        if live is None:  # not connected yet
            return RecordStatus(self.record_path, 0)
        path = live.record_path or self.record_path
        counters = live.recorder_counters()
        if counters is None:
            return RecordStatus(path, 0, live.fatal)
        return RecordStatus(path, counters.file_bytes, counters.error or live.fatal)

    def record_summary(self) -> str | None:
        """What was recorded, one line per file (None: this session records nothing)."""
        if self.record_path is None:
            return None
        live = self.live
        if live is None:
            return f"nothing recorded to {self.record_path}: the dashboard never connected"
        parts = live.record_parts
        lines = []
        for i, (path, counters) in enumerate(parts):
            if counters is None:
                lines.append(f"nothing recorded to {path}: "
                             f"{live.fatal or 'the recorder never started'}")
                continue
            line = counters.summary_line(path)
            if i < len(parts) - 1:  # its ingest process died: the open chunk went with it
                line += "; up to its last complete chunk (its ingest process died)"
            lines.append(line)
        if len(parts) > 1:
            times = "once" if live.restarts == 1 else f"{live.restarts} times"
            lines.append(f"the ingest process was replaced {times}: the recording is in "
                         f"{len(parts)} files (replay them in order)")
        return "\n".join(lines)

    def controls_disabled(self) -> str:
        """Why controls are off ("" when they are on)."""
        if self.read_only:
            return "read-only dashboard (--read-only)"
        hello = self.model.hello
        if hello is not None and CAP_READ_ONLY in hello.capabilities:
            return "the runtime is read-only"
        return ""


def _fix_host(address: str, reference: str) -> str:
    """An announced ``tcp://0.0.0.0:P`` / ``tcp://*:P`` is reachable at the host we used."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"):
        if address.startswith(wildcard) and reference.startswith("tcp://"):
            host = reference[len("tcp://"):].rsplit(":", 1)[0]
            return f"tcp://{host}:{address[len(wildcard):]}"
    return address


def probe_hello(
    telemetry: str, timeout_s: float = 3.0, curve: ClientCurve | None = None
) -> Hello | None:
    """Subscribe to ``tt.hello`` only and wait for the runtime's Hello (sent to every new
    subscriber)."""
    probe = TelemetrySubscriber(
        telemetry, None, topics=(TOPIC_HELLO,), resync=False, reconnect_after_s=None,
        curve=curve,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            for message in probe.poll(100, timeout_ms=min(left, 0.2) * 1000):
                if isinstance(message, Hello):
                    return message
        return None
    finally:
        probe.close()


def connect_live(
    session: Session,
    endpoints: Endpoints,
    *,
    curve: ClientCurve | None = None,
    hello_timeout_s: float = 3.0,
) -> IngestProcess:
    """Connect ``session`` to a runtime: an ingest process subscribed to its telemetry (with
    replay when known or announced) and the control address (given, or announced). Returns
    the ingest process, already attached."""
    replay, control = endpoints.replay, endpoints.control
    if replay is None or control is None:
        session.note = f"waiting for the runtime's hello on {endpoints.telemetry}…"
        hello = probe_hello(endpoints.telemetry, hello_timeout_s, curve)
        if hello is not None:
            if replay is None and hello.addresses.get("replay"):
                replay = _fix_host(hello.addresses["replay"], endpoints.telemetry)
            if control is None and hello.addresses.get("control"):
                control = _fix_host(hello.addresses["control"], endpoints.telemetry)
    source = IngestProcess(IngestSpec(
        endpoints.telemetry, replay, curve=curve, record_path=session.record_path,
        record_meta=session.record_meta,
    ))
    session.live = source
    session.on_close(source.close)  # at once when the user quit while we connected
    if control is not None:
        session.controller.address = control
    if curve is not None:
        session.controller.use_client_factory(
            lambda addr: ControlClient(addr, timeout_s=1.0, retries=1, curve=curve)
        )
    session.target = endpoints.telemetry
    session.note = ""
    if not session.closed:
        session.attach_source(source, mrc=source.mrc)
    return source
