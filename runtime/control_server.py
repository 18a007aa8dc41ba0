"""The runtime's control endpoint: a ZeroMQ ROUTER that takes commands and answers each one.

Threading model: none of its own. The tier hierarchy is not thread-safe, so commands are applied
on the runtime's thread, and the ROUTER is read and written on that thread too:

- the runtime calls :meth:`ControlServer.apply_pending` from its loop (every iteration, tick or
  engine step). That call reads what waits on the socket (non-blocking, at most one batch),
  checks framing and size, decodes and validates each request (``tiertop.monitor.commands``),
  answers retries from its reply cache, refuses expired, read-only-forbidden and excess requests,
  then applies the rest through the :class:`ControlTarget`, calls ``on_applied`` for every
  change and sends each reply at once. With nothing waiting it costs one socket-option read;
- a runtime with nothing else to do blocks in :meth:`wait` (a ``zmq_poll`` that releases the
  GIL) until a request arrives.

Why no I/O thread: a request then costs no hand-off between Python threads. With one, each
command went socket thread -> runtime thread -> socket thread, and on a busy runtime each
crossing waited up to a GIL switch interval for the interpreter. The price: while the runtime is
inside one step nobody answers, so even a malformed request or a retry waits for the end of the
step (libzmq keeps receiving meanwhile). A request whose deadline passes during that wait is
refused as ``expired`` with a message that says the runtime was busy, and for how long, rather
than blaming clocks.

Nothing a peer sends can stop the runtime or change state unless it is a valid, unexpired,
permitted command: every malformed message that names a peer gets a :class:`Refused` reply.

Idempotency. Replies are cached by ``(client, request_id)``: a retry (same id, same command)
gets the reply already sent, or joins the one still queued, and is never applied twice. The
same id with a different command is refused as a conflict.

Typical use in a runtime (all on one thread; ``close`` after the loop has stopped)::

    server = ControlServer("tcp://127.0.0.1:5558", on_applied=publish_control_change).start()
    try:
        while running:
            server.apply_pending(target)
            step()
    finally:
        server.close()
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

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

#: Most messages one call reads off the socket: bounds what a flood costs one engine step.
READ_BATCH: Final = 256


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
    """Counters: the first group counts what was read off the socket, the second what was
    applied (all on the runtime's thread)."""

    received: int = 0  # messages read from the socket
    malformed: int = 0  # refused before decoding finished (framing, size, schema, values)
    refused_early: int = 0  # every refusal sent without reaching the target (includes malformed)
    retries: int = 0  # answered from the reply cache or joined to a queued request
    queued: int = 0
    applied: int = 0
    refused_by_runtime: int = 0  # expired in the queue, or refused by the target


@dataclass(slots=True)
class _Pending:
    """A request read and waiting to be applied, with every peer to answer."""

    key: tuple[str, str]
    request: Request
    fingerprint: bytes
    deadline: float  # time.monotonic()
    waiters: list[bytes]  # ROUTER identities


def _plain(value: Any) -> Any:
    """Encoder hook for ``old``/``new`` values a target returns: numpy values become lists or
    Python numbers, anything else unknown its ``str``."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)


def _readable(socket: zmq.Socket[bytes]) -> bool:
    """A message waits (one option read: far cheaper than a failed non-blocking recv)."""
    events = socket.getsockopt(zmq.EVENTS)
    return isinstance(events, int) and bool(events & zmq.POLLIN)


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
        max_pending: requests read but not yet applied (a runtime that bounds the work per call
            with ``max_commands``) beyond this are refused as ``busy``.
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
        self._authenticator: CurveAuthenticator | None = None
        self._closed = False
        self._queue: deque[_Pending] = deque()
        self._pending_by_key: dict[tuple[str, str], _Pending] = {}
        self._cache: OrderedDict[tuple[str, str], tuple[bytes, bytes, float]] = OrderedDict()
        self._last_read_wall = time.time()  # when the socket was last read to the end

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """The bound endpoint, with the real port when ``0`` was asked for."""
        if self._address is None:
            raise RuntimeError("the control server is not started")
        return self._address

    @property
    def pending(self) -> int:
        """Requests read and queued for the next :meth:`apply_pending` (requests still on the
        socket are not counted: nobody has read them yet)."""
        return len(self._queue)

    def start(self) -> ControlServer:
        """Bind the socket. Raises ``OSError`` when the address cannot be bound."""
        if self._router is not None or self._closed:
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
        self._router = router
        self._last_read_wall = time.time()
        log.info(
            "control server listening on %s%s%s", self._address,
            " (CURVE)" if self.curve else "", " read-only" if self.read_only else "",
        )
        return self

    def close(self) -> None:
        """Close the socket; requests not yet applied are dropped unanswered. Call it on the
        runtime's thread or after its loop has stopped (the socket is that thread's)."""
        if self._closed:
            return
        self._closed = True
        if self._router is not None:
            self._router.close(0)
            self._router = None
        self._queue.clear()
        self._pending_by_key.clear()
        self._release_authenticator()

    def __enter__(self) -> ControlServer:
        return self if self._router is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _release_authenticator(self) -> None:
        if self._authenticator is not None:
            self._authenticator.release()
            self._authenticator = None

    # ------------------------------------------------------------------ the runtime's thread

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a request waits to be applied or read (True) or ``timeout`` seconds pass
        (False). The GIL is released while waiting. False at once once closed."""
        if self._queue:
            return True
        router = self._router
        if router is None:
            return False
        ms = -1 if timeout is None else max(0, math.ceil(timeout * 1000.0))
        return bool(router.poll(ms, zmq.POLLIN))

    def apply_pending(self, target: ControlTarget, max_commands: int | None = None) -> int:
        """Read what waits on the socket, apply queued commands to ``target`` on the calling
        (runtime) thread and send every reply at once; returns how many commands were applied
        or refused by the runtime. Cheap when nothing waits."""
        self.receive()
        handled = 0
        queue = self._queue
        while queue and (max_commands is None or handled < max_commands):
            item = queue.popleft()
            reply, change = self._apply(item, target)
            if change is not None and self.on_applied is not None:
                try:
                    self.on_applied(change)
                except Exception:
                    log.exception("on_applied failed for %s", change.command)
            self._answer(item, reply)
            handled += 1
        return handled

    def receive(self) -> int:
        """Read at most :data:`READ_BATCH` messages off the socket: answer the ones that need no
        target (malformed, expired, read-only refusals, retries) and queue the rest for
        :meth:`apply_pending`. Returns how many messages were read. Runtime thread only."""
        router = self._router
        if router is None or not _readable(router):
            self._last_read_wall = time.time()
            return 0
        read = 0
        while read < READ_BATCH:
            try:
                identity = router.recv(zmq.NOBLOCK)
            except zmq.Again:
                self._last_read_wall = time.time()
                break
            read += 1
            self._read_one(router, identity)
        return read

    # -------------------------------------------------------------------------- reading

    def _read_one(self, router: zmq.Socket[bytes], identity: bytes) -> None:
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
            self._handle(identity, frames, count, size)
        except Exception:  # a bug here must not stop the runtime
            log.exception("control server failed on a message from %r", identity)

    def _handle(self, identity: bytes, frames: list[bytes], count: int, size: int) -> None:
        if count != 2 or frames[0] != b"":
            problem = (
                f"got {count} frame(s)" if count != 2
                else f"the first frame is {len(frames[0])} B, not empty"
            )
            self._refuse_early(identity, RequestError(
                ErrorCode.MALFORMED,
                "a control request is 2 frames, an empty delimiter then the encoded request; "
                + problem,
            ))
            return
        if size > self.max_request_bytes:
            self._refuse_early(identity, RequestError(
                ErrorCode.TOO_LARGE,
                f"request of {size} B exceeds this runtime's limit of {self.max_request_bytes} B",
            ))
            return
        try:
            request = decode_request(frames[1])
        except RequestError as exc:
            self._refuse_early(identity, exc)
            return
        self._admit(identity, request)

    def _admit(self, identity: bytes, request: Request) -> None:
        command = request.command
        name = command.name
        key = (request.client, request.request_id)
        fingerprint = _FINGERPRINT.encode(command)
        cached = self._cached(key)
        queued = self._pending_by_key.get(key)
        known = queued.fingerprint if queued is not None else (
            cached[0] if cached is not None else None)
        if known is not None:
            if known != fingerprint:
                self._refuse_early(identity, RequestError(
                    ErrorCode.CONFLICT,
                    f"request id {request.request_id} of client {request.client} was already "
                    f"used for another command; use a new id for {name}",
                    request.request_id, name,
                ), malformed=False)
                return
            self.stats.retries += 1
            if queued is not None:
                queued.waiters.append(identity)
            elif cached is not None:
                self._send(identity, cached[1])
            return
        budget = self._budget(request)
        if budget <= 0:
            self._refuse_early(identity, self._expired_on_arrival(request, -budget),
                               malformed=False)
            return
        if self.read_only and command.mutating:
            self._refuse_early(identity, RequestError(
                ErrorCode.READ_ONLY, f"read-only runtime: {name} refused", request.request_id,
                name,
            ), malformed=False)
            return
        if len(self._queue) >= self.max_pending:
            self._refuse_early(identity, RequestError(
                ErrorCode.BUSY,
                f"runtime busy: {len(self._queue)} commands already wait to be applied; "
                f"{name} not queued",
                request.request_id, name,
            ), malformed=False)
            return
        item = _Pending(key, request, fingerprint, time.monotonic() + budget, [identity])
        self._pending_by_key[key] = item
        self.stats.queued += 1
        self._queue.append(item)

    @staticmethod
    def _budget(request: Request) -> float:
        """Seconds left to apply ``request``; ``timeout_s`` counts from now (when it is read)."""
        budget = math.inf
        if request.deadline is not None:
            budget = request.deadline - time.time()
        if request.timeout_s is not None:
            budget = min(budget, request.timeout_s)
        return budget

    def _expired_on_arrival(self, request: Request, late: float) -> RequestError:
        """Why a request was already expired when read: it waited on the socket while the
        runtime was busy (its deadline passed since the last read), or it came too late."""
        name = request.command.name
        deadline = request.deadline
        if deadline is not None and deadline > self._last_read_wall:
            busy = time.time() - self._last_read_wall
            return RequestError(
                ErrorCode.EXPIRED,
                f"request {request.request_id} ({name}) expired {late:.3f} s before the runtime "
                f"could read it: the runtime was busy for {busy:.3f} s (one engine step or "
                "tick) without reading commands; not applied",
                request.request_id, name,
            )
        return RequestError(
            ErrorCode.EXPIRED,
            f"request {request.request_id} ({name}) arrived {late:.3f} s after its deadline; "
            "not applied (if this keeps happening, check the clocks of client and runtime)",
            request.request_id, name,
        )

    def _cached(self, key: tuple[str, str]) -> tuple[bytes, bytes, float] | None:
        horizon = time.monotonic() - self.reply_cache_ttl_s
        while self._cache:
            oldest = next(iter(self._cache.values()))
            if oldest[2] >= horizon:
                break
            self._cache.popitem(last=False)
        return self._cache.get(key)

    # -------------------------------------------------------------------------- applying

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

    # -------------------------------------------------------------------------- replying

    def _answer(self, item: _Pending, reply: Applied | Refused) -> None:
        """Cache the reply for retries and send it to every peer that asked."""
        try:
            data = _ENCODER.encode(reply)
        except (TypeError, ValueError, OverflowError) as exc:  # a target returned odd values
            log.error("cannot encode the reply to %s: %s", reply.request_id, exc)
            data = _ENCODER.encode(Refused(
                request_id=reply.request_id, error_code=ErrorCode.INTERNAL,
                message=f"{reply.command} was handled but its reply could not be encoded: {exc}",
                command=reply.command,
            ))
        self._pending_by_key.pop(item.key, None)
        self._cache[item.key] = (item.fingerprint, data, time.monotonic())
        while len(self._cache) > self.reply_cache_size:
            self._cache.popitem(last=False)
        for identity in item.waiters:
            self._send(identity, data)

    def _refuse_early(
        self, identity: bytes, error: RequestError, *, malformed: bool = True,
    ) -> None:
        self.stats.refused_early += 1
        if malformed:
            self.stats.malformed += 1
        log.debug("refused a request from %r: %s", identity, error.message)
        self._send(identity, _ENCODER.encode(error.refusal()))

    def _send(self, identity: bytes, data: bytes) -> None:
        """Never blocks: ROUTER drops a reply to a peer that is gone or not reading."""
        router = self._router
        if router is None:
            return
        try:
            router.send_multipart([identity, b"", data], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("reply to %r not sent: %s", identity, exc)


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

