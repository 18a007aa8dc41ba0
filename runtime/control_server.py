"""The runtime's control endpoint: a ZeroMQ ROUTER that takes commands and answers each one.

Threading model. The tier hierarchy is not thread-safe, so commands are *applied on the
runtime's thread* and nowhere else:

- the server's own I/O thread owns the ROUTER socket. It reads each message, checks framing and
  size, decodes and validates it (``tiertop.monitor.commands``), answers retries from its reply
  cache, refuses expired, read-only-forbidden and excess requests at once, and queues the rest;
- the runtime calls :meth:`ControlServer.apply_pending` from its loop (every iteration or tick;
  it returns at once when nothing is queued). That call resolves tier selectors and policy names
  against the target, applies each queued command through the :class:`ControlTarget`, calls
  ``on_applied`` for every change, and hands the replies back to the I/O thread over an inproc
  pipe, which sends them at once. A runtime with nothing else to do can block in :meth:`wait`.

Nothing a peer sends can stop either thread or change state unless it is a valid, unexpired,
permitted command: every malformed message that names a peer gets a :class:`Refused` reply.

Idempotency. Replies are cached by ``(client, request_id)``: a retry (same id, same command)
gets the reply already sent, or joins the one still queued, and is never applied twice. The
same id with a different command is refused as a conflict.

Typical use in a runtime::

    server = ControlServer("tcp://127.0.0.1:5558", on_applied=publish_control_change).start()
    try:
        while running:
            server.apply_pending(target)
            step()
    finally:
        server.close()
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq
from tiertop.monitor.commands import (
    CONTROL_VERSION,
    DEFAULT_CONTROL_ADDRESS,
    Applied,
    ClearAll,
    ClearFaults,
    ClearTier,
    Command,
    ErrorCode,
    InjectFault,
    Pause,
    Ping,
    Refused,
    Request,
    RequestError,
    Resume,
    SetCapacity,
    SetDrillDown,
    SetEvictionPolicy,
    SetPlacementPolicy,
    SetPromotionPolicy,
    SetSimSpeed,
    SetWatermarks,
    SetWorkload,
    Snapshot,
    decode_request,
)
from tiertop.monitor.security import CurveAuthenticator, ServerCurve, apply_server_curve

from .control_target import ControlError, ControlTarget, PolicyRole, resolve_tiers

__all__ = ["DEFAULT_CONTROL_ADDRESS", "AppliedChange", "ControlServer", "ServerStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """What one applied command changed, for the telemetry stream and the audit trail."""

    command: str
    target: str
    old: Any
    new: Any
    client: str
    request_id: str
    time: float  # unix seconds when it was applied


OnApplied = Callable[[AppliedChange], None]


@dataclass(slots=True)
class ServerStats:
    """Counters. The first group is written by the I/O thread, the second by the runtime's."""

    received: int = 0  # messages read from the socket
    malformed: int = 0  # refused before decoding finished (framing, size, schema, values)
    refused_early: int = 0  # every refusal the I/O thread sent (includes malformed)
    retries: int = 0  # answered from the reply cache or joined to a queued request
    queued: int = 0
    applied: int = 0
    refused_by_runtime: int = 0  # expired in the queue, or refused by the target


@dataclass(slots=True)
class _Pending:
    ticket: int
    request: Request
    deadline: float  # time.monotonic()


@dataclass(slots=True)
class _InFlight:
    key: tuple[str, str]
    fingerprint: bytes
    waiters: list[bytes]  # ROUTER identities to answer


def _plain(value: Any) -> Any:
    """Encoder hook for ``old``/``new`` values a target returns: numpy values become lists or
    Python numbers, anything else unknown its ``str``."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_plain)
_FINGERPRINT = msgspec.msgpack.Encoder()


class ControlServer:
    """ROUTER endpoint of a runtime; see the module docstring for the threading model.

    Args:
        address: where to bind (``tcp://host:port``; port ``0`` picks a free one, see
            :attr:`address`).
        read_only: refuse every mutating command (Ping and Snapshot still work).
        on_applied: called on the runtime's thread with each applied mutating command.
        curve: CurveZMQ settings; without them the socket is plain (bind to loopback).
        context: ZeroMQ context (default: the process's shared instance).
        max_request_bytes: larger requests are refused with ``too_large``.
        max_frame_bytes: larger frames make ZeroMQ drop the sender's connection unread
            (``ZMQ_MAXMSGSIZE``); default 16 x ``max_request_bytes``.
        max_pending: requests queued for the runtime beyond this are refused as ``busy``.
        reply_cache_size, reply_cache_ttl_s: how many replies, for how long, are kept to answer
            retries without applying twice.
    """

    def __init__(
        self,
        address: str = DEFAULT_CONTROL_ADDRESS,
        *,
        read_only: bool = False,
        on_applied: OnApplied | None = None,
        curve: ServerCurve | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        max_request_bytes: int = 64 * 1024,
        max_frame_bytes: int | None = None,
        max_pending: int = 1024,
        reply_cache_size: int = 4096,
        reply_cache_ttl_s: float = 600.0,
    ) -> None:
        if max_request_bytes <= 0 or max_pending <= 0 or reply_cache_size <= 0:
            raise ValueError("max_request_bytes, max_pending and reply_cache_size must be > 0")
        self.requested_address = address
        self.read_only = read_only
        self.on_applied = on_applied
        self.curve = curve
        self.max_request_bytes = max_request_bytes
        self.max_frame_bytes = max_frame_bytes or 16 * max_request_bytes
        self.max_pending = max_pending
        self.reply_cache_size = reply_cache_size
        self.reply_cache_ttl_s = reply_cache_ttl_s
        self.stats = ServerStats()
        self._context = context or zmq.Context.instance()
        self._address: str | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._pipe_rx: zmq.Socket[bytes] | None = None
        self._pipe_tx: zmq.Socket[bytes] | None = None
        self._pipe_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._authenticator: CurveAuthenticator | None = None
        self._closed = False
        # Shared between the threads: the queue (deque appends/pops are atomic) and the event.
        self._queue: deque[_Pending] = deque()
        self._ready = threading.Event()
        # Owned by the I/O thread.
        self._tickets = itertools.count(1)
        self._in_flight: dict[int, _InFlight] = {}
        self._ticket_of: dict[tuple[str, str], int] = {}
        self._cache: OrderedDict[tuple[str, str], tuple[bytes, bytes, float]] = OrderedDict()

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """The bound endpoint, with the real port when ``0`` was asked for."""
        if self._address is None:
            raise RuntimeError("the control server is not started")
        return self._address

    @property
    def pending(self) -> int:
        """Requests queued for the runtime's next :meth:`apply_pending`."""
        return len(self._queue)

    def start(self) -> ControlServer:
        """Bind and start the I/O thread. Raises ``OSError`` when the address cannot be bound."""
        if self._thread is not None or self._closed:
            raise RuntimeError("a control server starts once")
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        try:
            if self.curve is not None:
                self._authenticator = apply_server_curve(router, self.curve)
            router.bind(self.requested_address)
        except zmq.ZMQError as exc:
            router.close(0)
            self._release_authenticator()
            raise OSError(
                f"cannot bind the control socket to {self.requested_address}: {exc}"
            ) from exc
        except BaseException:
            router.close(0)
            self._release_authenticator()
            raise
        self._address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        pipe = f"inproc://tiertop-control-{id(self):x}"
        self._pipe_rx = self._context.socket(zmq.PAIR)
        self._pipe_rx.setsockopt(zmq.LINGER, 0)
        self._pipe_rx.setsockopt(zmq.RCVHWM, 0)
        self._pipe_rx.bind(pipe)
        self._pipe_tx = self._context.socket(zmq.PAIR)
        self._pipe_tx.setsockopt(zmq.LINGER, 0)
        self._pipe_tx.setsockopt(zmq.SNDHWM, 0)
        self._pipe_tx.connect(pipe)
        self._router = router
        self._thread = threading.Thread(
            target=self._serve, name=f"tiertop-control {self._address}", daemon=True
        )
        self._thread.start()
        log.info(
            "control server listening on %s%s%s", self._address,
            " (CURVE)" if self.curve else "", " read-only" if self.read_only else "",
        )
        return self

    def close(self) -> None:
        """Stop the I/O thread and close the sockets; queued requests are dropped unanswered."""
        with self._pipe_lock:
            if self._closed:
                return
            self._closed = True
            if self._pipe_tx is not None:
                self._pipe_tx.send(b"stop")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._pipe_lock:
            if self._pipe_tx is not None:
                self._pipe_tx.close(0)
                self._pipe_tx = None
        self._queue.clear()
        self._ready.set()  # wake a runtime blocked in wait()
        self._release_authenticator()

    def __enter__(self) -> ControlServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _release_authenticator(self) -> None:
        if self._authenticator is not None:
            self._authenticator.release()
            self._authenticator = None

    # --------------------------------------------------------------- the runtime's thread

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a request is queued (True) or ``timeout`` passes (False)."""
        return self._ready.wait(timeout)

    def apply_pending(self, target: ControlTarget, max_commands: int | None = None) -> int:
        """Apply queued commands to ``target`` on the calling (runtime) thread and send their
        replies; returns how many were handled. Cheap when nothing is queued."""
        self._ready.clear()  # before looking, so a request queued meanwhile sets it again
        if not self._queue:
            return 0
        handled = 0
        while max_commands is None or handled < max_commands:
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            reply, change = self._apply(item, target)
            if change is not None and self.on_applied is not None:
                try:
                    self.on_applied(change)
                except Exception:
                    log.exception("on_applied failed for %s", change.command)
            self._send_reply(item.ticket, reply)
            handled += 1
        if self._queue:
            self._ready.set()
        return handled

    def _apply(
        self, item: _Pending, target: ControlTarget
    ) -> tuple[Applied | Refused, AppliedChange | None]:
        request = item.request
        command = request.command
        name = command.name
        late = time.monotonic() - item.deadline
        if late > 0:
            self.stats.refused_by_runtime += 1
            return self._refusal(
                request, ErrorCode.EXPIRED,
                f"request {request.request_id} ({name}) expired {late:.3f} s before the runtime "
                "could apply it; not applied",
            ), None
        try:
            where, old, new = _dispatch(command, target, self.read_only)
        except ControlError as exc:
            self.stats.refused_by_runtime += 1
            log.info("refused %s from %s (request %s): %s",
                     name, request.client, request.request_id, exc.message)
            return self._refusal(request, exc.code, exc.message), None
        except Exception as exc:
            self.stats.refused_by_runtime += 1
            log.exception("%s from %s (request %s) failed in the runtime",
                          name, request.client, request.request_id)
            return self._refusal(
                request, ErrorCode.INTERNAL,
                f"{name} failed in the runtime: {type(exc).__name__}: {exc}",
            ), None
        self.stats.applied += 1
        applied = Applied(
            request_id=request.request_id, command=name, target=where, old=old, new=new
        )
        if not command.mutating:
            return applied, None
        log.info("applied %s to %s for %s (request %s): %r -> %r",
                 name, where, request.client, request.request_id, old, new)
        change = AppliedChange(name, where, old, new, request.client, request.request_id,
                               time.time())
        return applied, change

    @staticmethod
    def _refusal(request: Request, code: str, message: str) -> Refused:
        return Refused(request_id=request.request_id, error_code=code, message=message,
                       command=request.command.name)

    def _send_reply(self, ticket: int, reply: Applied | Refused) -> None:
        try:
            data = _ENCODER.encode(reply)
        except (TypeError, ValueError, OverflowError) as exc:  # a target returned odd values
            log.error("cannot encode the reply to %s: %s", reply.request_id, exc)
            data = _ENCODER.encode(Refused(
                request_id=reply.request_id, error_code=ErrorCode.INTERNAL,
                message=f"{reply.command} was handled but its reply could not be encoded: {exc}",
                command=reply.command,
            ))
        with self._pipe_lock:
            if self._pipe_tx is not None and not self._closed:
                self._pipe_tx.send_multipart([ticket.to_bytes(8, "little"), data])

    # ------------------------------------------------------------------------ the I/O thread

    def _serve(self) -> None:
        router, pipe = self._router, self._pipe_rx
        assert router is not None and pipe is not None
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        try:
            while True:
                try:
                    events = dict(poller.poll())
                    if pipe in events and self._drain_pipe(pipe):
                        return
                    if router in events:
                        self._drain_router(router)
                except zmq.ContextTerminated:
                    return
                except Exception:  # whatever it was, the endpoint must stay up
                    log.exception("control server I/O failed; carrying on")
        finally:
            router.close(0)
            pipe.close(0)

    def _drain_pipe(self, pipe: zmq.Socket[bytes]) -> bool:
        """Forward the runtime's replies; True when told to stop."""
        while True:
            try:
                frames = pipe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return False
            if len(frames) == 1:  # b"stop"
                return True
            self._deliver(int.from_bytes(frames[0], "little"), frames[1])

    def _drain_router(self, router: zmq.Socket[bytes], batch: int = 256) -> None:
        for _ in range(batch):
            try:
                identity = router.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            frames: list[bytes] = []
            count = size = 0
            while router.getsockopt(zmq.RCVMORE):
                frame = router.recv()
                count += 1
                size += len(frame)
                if count <= 2:
                    frames.append(frame)
            self.stats.received += 1
            try:
                self._handle(router, identity, frames, count, size)
            except Exception:  # a bug here must not end the thread
                log.exception("control server failed on a message from %r", identity)

    def _handle(
        self, router: zmq.Socket[bytes], identity: bytes, frames: list[bytes], count: int,
        size: int,
    ) -> None:
        if count != 2 or frames[0] != b"":
            problem = (
                f"got {count} frame(s)" if count != 2
                else f"the first frame is {len(frames[0])} B, not empty"
            )
            self._refuse_early(router, identity, RequestError(
                ErrorCode.MALFORMED,
                "a control request is 2 frames, an empty delimiter then the encoded request; "
                + problem,
            ))
            return
        body = frames[1]
        if size > self.max_request_bytes:
            self._refuse_early(router, identity, RequestError(
                ErrorCode.TOO_LARGE,
                f"request of {size} B exceeds this runtime's limit of {self.max_request_bytes} B",
            ))
            return
        try:
            request = decode_request(body)
        except RequestError as exc:
            self._refuse_early(router, identity, exc)
            return
        self._admit(router, identity, request)

    def _admit(self, router: zmq.Socket[bytes], identity: bytes, request: Request) -> None:
        command = request.command
        name = command.name
        key = (request.client, request.request_id)
        fingerprint = _FINGERPRINT.encode(command)
        cached = self._cached(key)
        ticket = self._ticket_of.get(key)
        in_flight = self._in_flight[ticket] if ticket is not None else None
        known = cached[0] if cached is not None else None
        if in_flight is not None:
            known = in_flight.fingerprint
        if known is not None:
            if known != fingerprint:
                self._refuse_early(router, identity, RequestError(
                    ErrorCode.CONFLICT,
                    f"request id {request.request_id} of client {request.client} was already "
                    f"used for another command; use a new id for {name}",
                    request.request_id, name,
                ), malformed=False)
                return
            self.stats.retries += 1
            if cached is not None:
                router.send_multipart([identity, b"", cached[1]])
            elif in_flight is not None:
                in_flight.waiters.append(identity)
            return
        now = time.monotonic()
        budget = math.inf
        if request.deadline is not None:
            budget = request.deadline - time.time()
        if request.timeout_s is not None:
            budget = min(budget, request.timeout_s)
        if budget <= 0:
            self._refuse_early(router, identity, RequestError(
                ErrorCode.EXPIRED,
                f"request {request.request_id} ({name}) arrived {-budget:.3f} s after its "
                "deadline; not applied (if this keeps happening, check the clocks of client "
                "and runtime)",
                request.request_id, name,
            ), malformed=False)
            return
        if self.read_only and command.mutating:
            self._refuse_early(router, identity, RequestError(
                ErrorCode.READ_ONLY, f"read-only runtime: {name} refused", request.request_id,
                name,
            ), malformed=False)
            return
        if len(self._queue) >= self.max_pending:
            self._refuse_early(router, identity, RequestError(
                ErrorCode.BUSY,
                f"runtime busy: {len(self._queue)} commands already wait to be applied; "
                f"{name} not queued",
                request.request_id, name,
            ), malformed=False)
            return
        ticket = next(self._tickets)
        self._in_flight[ticket] = _InFlight(key, fingerprint, [identity])
        self._ticket_of[key] = ticket
        self.stats.queued += 1
        self._queue.append(_Pending(ticket, request, now + budget))
        self._ready.set()

    def _refuse_early(
        self, router: zmq.Socket[bytes], identity: bytes, error: RequestError,
        *, malformed: bool = True,
    ) -> None:
        self.stats.refused_early += 1
        if malformed:
            self.stats.malformed += 1
        log.debug("refused a request from %r: %s", identity, error.message)
        router.send_multipart([identity, b"", _ENCODER.encode(error.refusal())])

    def _deliver(self, ticket: int, data: bytes) -> None:
        in_flight = self._in_flight.pop(ticket, None)
        if in_flight is None:
            return
        self._ticket_of.pop(in_flight.key, None)
        self._cache[in_flight.key] = (in_flight.fingerprint, data, time.monotonic())
        while len(self._cache) > self.reply_cache_size:
            self._cache.popitem(last=False)
        router = self._router
        assert router is not None
        for identity in in_flight.waiters:
            router.send_multipart([identity, b"", data])

    def _cached(self, key: tuple[str, str]) -> tuple[bytes, bytes, float] | None:
        horizon = time.monotonic() - self.reply_cache_ttl_s
        while self._cache:
            oldest = next(iter(self._cache.values()))
            if oldest[2] >= horizon:
                break
            self._cache.popitem(last=False)
        return self._cache.get(key)


# ---------------------------------------------------------------------------------- dispatch


def _dispatch(command: Command, target: ControlTarget, read_only: bool) -> tuple[str, Any, Any]:
    """Apply one validated command; returns ``(target label, old, new)``."""
    if isinstance(command, Ping):
        return "runtime", None, {
            "time": time.time(), "version": CONTROL_VERSION, "read_only": read_only,
        }
    if isinstance(command, Snapshot):
        return "telemetry", None, target.snapshot()
    if isinstance(command, SetWatermarks):
        tiers = _tiers(command.tier, target)
        return _label(tiers), *target.set_watermarks(tiers, command.high, command.low)
    if isinstance(command, SetCapacity):
        tiers = _tiers(command.tier, target)
        return _label(tiers), *target.set_capacity(tiers, command.bytes)
    if isinstance(command, SetEvictionPolicy):
        tiers = _tiers(command.tier, target)
        _check_policy("eviction", command.policy, target)
        return _label(tiers), *target.set_eviction_policy(tiers, command.policy, command.options)
    if isinstance(command, SetPlacementPolicy):
        _check_policy("placement", command.policy, target)
        return "placement", *target.set_placement_policy(command.policy, command.options)
    if isinstance(command, SetPromotionPolicy):
        _check_policy("promotion", command.policy, target)
        return "promotion", *target.set_promotion_policy(command.policy, command.options)
    if isinstance(command, SetWorkload):
        return "workload", *target.set_workload(command.changes())
    if isinstance(command, Pause | Resume):
        return "runtime", *target.set_paused(isinstance(command, Pause))
    if isinstance(command, ClearTier | ClearAll):
        tiers = _tiers(command.tier if isinstance(command, ClearTier) else "*", target)
        return _label(tiers), *target.clear_tiers(tiers)
    if isinstance(command, InjectFault):
        tiers = _tiers(command.tier, target)
        return _label(tiers), *target.inject_fault(
            tiers, command.kind, command.duration_s, command.delay_s
        )
    if isinstance(command, ClearFaults):
        tiers = _tiers(command.tier or "*", target)
        return _label(tiers), *target.clear_faults(tiers)
    if isinstance(command, SetSimSpeed):
        return "clock", *target.set_sim_speed(command.factor)
    if isinstance(command, SetDrillDown):
        return "drill_down", *target.set_drill_down(list(command.racks))
    raise ControlError(ErrorCode.UNSUPPORTED, f"this runtime cannot apply {command.name}")


def _tiers(selector: str, target: ControlTarget) -> list[str]:
    own: Callable[[str], Sequence[str]] | None = getattr(target, "resolve_tier_selector", None)
    if own is not None:  # a target with selectors of its own (see control_target)
        return list(own(selector))
    return resolve_tiers(selector, target.describe_tiers())


def _label(tiers: Sequence[str]) -> str:
    return ",".join(tiers)


def _check_policy(role: PolicyRole, policy: str, target: ControlTarget) -> None:
    known = target.known_policies().get(role, ())
    if policy not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ControlError(
            ErrorCode.UNKNOWN_POLICY, f"unknown {role} policy {policy!r}; known: {names}"
        )

