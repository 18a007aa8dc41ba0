"""A dashboard session: the state model and its lock, the ingest, the controller, the target.

:class:`Session` is what :class:`~tiertop.tui.app.DashboardApp` renders and steers. A session is
*attached* to a telemetry source: at once (tests hand it a fake source), or later by an
``attach`` callable the app runs in a worker thread (``tiertop demo`` waits there for the runtime
it started to print its addresses; ``tiertop dash`` connects and learns the replay and control
addresses from the runtime's Hello). :func:`connect_live` is that connection.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from tiertop.monitor.control_client import ControlClient
from tiertop.monitor.protocol import CAP_READ_ONLY, TOPIC_HELLO, Hello
from tiertop.monitor.recorder import Recorder, RecordingSubscriber
from tiertop.monitor.security import ClientCurve
from tiertop.monitor.state import StateModel
from tiertop.monitor.subscriber import TelemetrySubscriber

from .control import Controller
from .ingest import Ingest, Source
from .mrc_feed import MrcFeed
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
        self.mrc = MrcFeed(self.lock, clock=clock)
        #: A line about what is happening while not attached ("starting runtime…").
        self.note = ""
        #: Why the session cannot go on ("" when fine), e.g. the runtime exited.
        self.error = ""
        #: Shown as warnings when the dashboard opens (e.g. what is damaged in a recording).
        self.warnings: list[str] = []
        #: Writes what this session folds (``--record``; see :meth:`record_to`).
        self.recorder: Recorder | None = None
        self._closers: list[Callable[[], None]] = []
        self.closed = False

    # ------------------------------------------------------------------------------ wiring

    def attach_source(self, source: Source) -> Ingest:
        """Feed the model (and the miss-ratio curve) from ``source`` (the caller starts the
        ingest thread or steps it)."""
        self.ingest = Ingest(self.model, self.lock, self.mrc.tap(source), clock=self.clock)
        return self.ingest

    def record_to(self, recorder: Recorder) -> None:
        """Record the stream this session folds (``--record``): :func:`connect_live` makes
        its subscriber hand the recorder every message it delivers; the file is finished when
        the session closes, after the ingest stopped."""
        self.recorder = recorder
        self.on_close(recorder.close)

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
        recorder = self.recorder
        if recorder is None:
            return None
        counters = recorder.counters()
        return RecordStatus(recorder.path, counters.file_bytes, counters.error)

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
    telemetry: str, context: zmq.Context[Any], timeout_s: float = 3.0
) -> Hello | None:
    """Subscribe to ``tt.hello`` only and wait for the runtime's Hello (sent to every new
    subscriber)."""
    probe = TelemetrySubscriber(
        telemetry, None, topics=(TOPIC_HELLO,), context=context, resync=False,
        reconnect_after_s=None,
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
) -> TelemetrySubscriber:
    """Connect ``session`` to a runtime: subscriber (with replay when known or announced) and
    control address (given, or announced). Returns the subscriber, already attached."""
    context: zmq.Context[Any] = zmq.Context(io_threads=1)
    if curve is not None:
        # Context defaults apply to every socket the subscriber creates, reconnects included.
        context.setsockopt(zmq.CURVE_SERVERKEY, curve.server_public_key)
        context.setsockopt(zmq.CURVE_PUBLICKEY, curve.keys.public_key)
        context.setsockopt(zmq.CURVE_SECRETKEY, curve.keys.secret_key)
    session.on_close(lambda: context.term())
    replay, control = endpoints.replay, endpoints.control
    if replay is None or control is None:
        session.note = f"waiting for the runtime's hello on {endpoints.telemetry}…"
        hello = probe_hello(endpoints.telemetry, context, hello_timeout_s)
        if hello is not None:
            if replay is None and hello.addresses.get("replay"):
                replay = _fix_host(hello.addresses["replay"], endpoints.telemetry)
            if control is None and hello.addresses.get("control"):
                control = _fix_host(hello.addresses["control"], endpoints.telemetry)
    recorder = session.recorder
    subscriber = (
        TelemetrySubscriber(endpoints.telemetry, replay, context=context) if recorder is None
        else RecordingSubscriber(endpoints.telemetry, replay, context=context, recorder=recorder)
    )
    session.on_close(subscriber.close)  # before context.term (closers run last added first)
    if control is not None:
        session.controller.address = control
    if curve is not None:
        session.controller.use_client_factory(
            lambda addr: ControlClient(addr, timeout_s=1.0, retries=1, curve=curve)
        )
    session.target = endpoints.telemetry
    session.note = ""
    if not session.closed:
        session.attach_source(subscriber)
    return subscriber
