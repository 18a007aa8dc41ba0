"""Send commands to a runtime and get typed answers.

::

    with ControlClient("tcp://127.0.0.1:5558", timeout_s=1.0, retries=2) as control:
        control.set_watermarks("dram", high=0.9, low=0.7)   # -> Applied(old=..., new=...)
        control.inject_fault("kind:disk", "slow", duration_s=5, delay_s=0.02)
        print(f"round trip {control.last_rtt_s * 1e3:.2f} ms")

A refused command raises :class:`CommandRefused` (its ``code`` and ``message`` say why, and
nothing changed); no answer within the time budget raises :class:`ControlTimeout`.

Each call gets a fresh request id. When an attempt gets no answer within ``timeout_s`` the
client reconnects and sends the *same* request again (same id, same deadline), up to ``retries``
times; the runtime answers a retry with the reply it already sent, so a command is never applied
twice. The request's deadline is set just before the client gives up, so the runtime never
applies a command whose caller has stopped waiting.

The socket sits behind a small :class:`Transport` interface (send bytes, receive bytes with a
timeout, reset, close): :class:`ZmqTransport` is the real DEALER, :class:`MockTransport` answers
from a function in memory for tests. A client is not thread-safe; use one per thread.
"""

from __future__ import annotations

import getpass
import itertools
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import msgspec
import zmq

from .commands import (
    DEFAULT_CONTROL_ADDRESS,
    AnyCommand,
    Applied,
    ClearAll,
    ClearFaults,
    ClearTier,
    InjectFault,
    InvalidCommand,
    Pause,
    Ping,
    PolicyOptions,
    Refused,
    Request,
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
    decode_reply,
    encode_request,
)
from .security import ClientCurve, apply_client_curve

__all__ = [
    "CommandRefused",
    "ControlClient",
    "ControlClientError",
    "ControlTimeout",
    "MockTransport",
    "Transport",
    "ZmqTransport",
    "default_client_name",
]

log = logging.getLogger(__name__)


class ControlClientError(Exception):
    """Base of the errors a control call raises."""


class CommandRefused(ControlClientError):
    """The runtime (or, for values no runtime accepts, the client itself) refused the command;
    nothing changed."""

    def __init__(self, reply: Refused, command: str) -> None:
        self.reply = reply
        self.code = reply.error_code
        self.message = reply.message
        self.request_id = reply.request_id
        self.command = reply.command or command
        super().__init__(f"{self.command} refused: {self.message} [{self.code}]")


class ControlTimeout(ControlClientError, TimeoutError):
    """No reply within the time budget (all attempts)."""


# ---------------------------------------------------------------------------------- transports


@runtime_checkable
class Transport(Protocol):
    """How a client moves request and reply bytes."""

    def send(self, payload: bytes) -> None:
        """Queue one request; never blocks for long (a request that cannot go is lost)."""

    def recv(self, timeout_s: float) -> bytes | None:
        """The next reply, or None when none arrives within ``timeout_s``."""

    def reset(self) -> None:
        """Drop the connection and everything queued on it, and reconnect (after a timeout)."""

    def close(self) -> None:
        """Release the connection for good."""


class ZmqTransport:
    """A DEALER socket connected to a runtime's ROUTER, optionally with CurveZMQ."""

    def __init__(
        self,
        address: str = DEFAULT_CONTROL_ADDRESS,
        *,
        curve: ClientCurve | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.address = address
        self.curve = curve
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        self._connect()

    def _connect(self) -> zmq.Socket[bytes]:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100)
        if self.curve is not None:
            apply_client_curve(sock, self.curve)
        sock.connect(self.address)
        self._socket = sock
        return sock

    def _live(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            raise ControlClientError(f"the connection to {self.address} is closed")
        return self._socket

    def send(self, payload: bytes) -> None:
        try:
            self._live().send_multipart([b"", payload], zmq.NOBLOCK)
        except zmq.Again:
            log.debug("control request to %s not sent: send queue full", self.address)

    def recv(self, timeout_s: float) -> bytes | None:
        sock = self._live()
        if not sock.poll(max(0, round(timeout_s * 1000)), zmq.POLLIN):
            return None
        frames = sock.recv_multipart()
        return frames[-1]

    def reset(self) -> None:
        self.close()
        self._connect()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None


class MockTransport:
    """Answers each request in memory with ``handler(request_bytes)``: the reply, a list of
    replies (to feed a client stray or duplicate ones too), or ``None`` for no answer (a lost
    request). Keeps every request sent in :attr:`sent`."""

    def __init__(self, handler: Callable[[bytes], bytes | list[bytes] | None]) -> None:
        self.handler = handler
        self.sent: list[bytes] = []
        self.resets = 0
        self.closed = False
        self._replies: deque[bytes] = deque()

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)
        reply = self.handler(payload)
        if isinstance(reply, bytes):
            self._replies.append(reply)
        elif reply is not None:
            self._replies.extend(reply)

    def recv(self, timeout_s: float) -> bytes | None:
        return self._replies.popleft() if self._replies else None

    def reset(self) -> None:
        self.resets += 1
        self._replies.clear()

    def close(self) -> None:
        self.closed = True


# -------------------------------------------------------------------------------------- client


def default_client_name() -> str:
    """``user@host:pid``, what the runtime's audit trail shows for this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


class ControlClient:
    """Typed control calls to one runtime.

    Args:
        address: the runtime's control endpoint.
        timeout_s: how long one attempt waits for its reply.
        retries: attempts after the first (same request id each time); a call gives up with
            :class:`ControlTimeout` after ``timeout_s * (retries + 1)`` seconds.
        client: who is asking, for the runtime's audit trail (default ``user@host:pid``).
        curve: CurveZMQ client keys and the runtime's public key.
        transport: use this transport instead of a ZeroMQ socket (tests).
        context: ZeroMQ context for the default transport.
    """

    def __init__(
        self,
        address: str = DEFAULT_CONTROL_ADDRESS,
        *,
        timeout_s: float = 1.0,
        retries: int = 2,
        client: str | None = None,
        curve: ClientCurve | None = None,
        transport: Transport | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if not timeout_s > 0 or retries < 0:
            raise ValueError(f"need timeout_s > 0 and retries >= 0, got {timeout_s}, {retries}")
        self.address = address
        self.timeout_s = timeout_s
        self.retries = retries
        self.client = client or default_client_name()
        self.transport: Transport = transport or ZmqTransport(
            address, curve=curve, context=context
        )
        #: Seconds from the first send of the last answered call to its reply.
        self.last_rtt_s: float | None = None
        #: Attempts the last call made (1 when the first one was answered).
        self.last_attempts = 0
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ core calls

    def request(self, command: AnyCommand) -> Applied | Refused:
        """Send ``command`` and return the runtime's reply, refused or not. Raises
        :class:`CommandRefused` only for values no runtime would accept (checked locally),
        :class:`ControlTimeout` when no reply comes."""
        try:
            command.validate()
        except InvalidCommand as exc:
            raise CommandRefused(
                Refused(request_id="", error_code=exc.code, message=str(exc),
                        command=command.name),
                command.name,
            ) from None
        request_id = f"{self._prefix}-{next(self._counter)}"
        budget = self.timeout_s * (self.retries + 1)
        margin = min(0.1 * budget, 0.25)  # time for the reply to travel back before we give up
        payload = encode_request(Request(
            request_id=request_id, client=self.client, command=command,
            deadline=time.time() + budget - margin,
        ))
        first_sent = time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                self.transport.reset()  # drop a dead connection and anything queued on it
            attempt_end = time.monotonic() + self.timeout_s
            self.transport.send(payload)
            reply = self._await_reply(request_id, attempt_end)
            if reply is not None:
                self.last_rtt_s = time.monotonic() - first_sent
                self.last_attempts = attempt + 1
                return reply
        self.last_attempts = self.retries + 1
        raise ControlTimeout(
            f"no reply to {command.name} (request {request_id}) from {self.address} after "
            f"{self.retries + 1} attempt(s) over {budget:.3g} s; is the runtime running there, "
            "and does it accept this client's key?"
        )

    def _await_reply(self, request_id: str, attempt_end: float) -> Applied | Refused | None:
        while (remaining := attempt_end - time.monotonic()) > 0:
            data = self.transport.recv(remaining)
            if data is None:
                return None
            try:
                reply = decode_reply(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("ignoring an unreadable reply from %s: %s", self.address, exc)
                continue
            if reply.request_id == request_id:
                return reply
            if isinstance(reply, Refused) and not reply.request_id:
                # The runtime could not read the request far enough to learn its id
                # (too large, or framing): it can only be about what this client just sent.
                return reply
            log.debug("ignoring a late reply to request %s", reply.request_id)
        return None

    def call(self, command: AnyCommand) -> Applied:
        """Send ``command``; return :class:`Applied` or raise :class:`CommandRefused`."""
        reply = self.request(command)
        if isinstance(reply, Refused):
            raise CommandRefused(reply, command.name)
        return reply

    # ----------------------------------------------------------------------------- typed calls

    def ping(self) -> Applied:
        """Round trip through the runtime's loop; ``new`` holds its time, version, read-only."""
        return self.call(Ping())

    def snapshot(self) -> Applied:
        """Ask the runtime to publish a full telemetry snapshot."""
        return self.call(Snapshot())

    def set_watermarks(self, tier: str, high: float, low: float) -> Applied:
        return self.call(SetWatermarks(tier, high, low))

    def set_capacity(self, tier: str, nbytes: int) -> Applied:
        return self.call(SetCapacity(tier, nbytes))

    def set_eviction_policy(
        self, tier: str, policy: str, options: PolicyOptions | None = None
    ) -> Applied:
        return self.call(SetEvictionPolicy(tier, policy, options or {}))

    def set_placement_policy(self, policy: str, options: PolicyOptions | None = None) -> Applied:
        return self.call(SetPlacementPolicy(policy, options or {}))

    def set_promotion_policy(self, policy: str, options: PolicyOptions | None = None) -> Applied:
        return self.call(SetPromotionPolicy(policy, options or {}))

    def set_workload(
        self,
        *,
        rate: float | None = None,
        new_conv_prob: float | None = None,
        prompt_len_mean: float | None = None,
        prompt_len_max: int | None = None,
        output_len_mean: float | None = None,
        output_len_max: int | None = None,
        live_conversations: int | None = None,
    ) -> Applied:
        return self.call(SetWorkload(
            rate=rate, new_conv_prob=new_conv_prob, prompt_len_mean=prompt_len_mean,
            prompt_len_max=prompt_len_max, output_len_mean=output_len_mean,
            output_len_max=output_len_max, live_conversations=live_conversations,
        ))

    def pause(self) -> Applied:
        return self.call(Pause())

    def resume(self) -> Applied:
        return self.call(Resume())

    def clear_tier(self, tier: str) -> Applied:
        return self.call(ClearTier(tier))

    def clear_all(self) -> Applied:
        return self.call(ClearAll())

    def inject_fault(
        self, tier: str, kind: str, duration_s: float | None = None, delay_s: float | None = None
    ) -> Applied:
        return self.call(InjectFault(tier, kind, duration_s, delay_s))

    def clear_faults(self, tier: str | None = None) -> Applied:
        return self.call(ClearFaults(tier))

    def set_sim_speed(self, factor: float) -> Applied:
        return self.call(SetSimSpeed(factor))

    def set_drill_down(self, racks: list[int]) -> Applied:
        """Per-GPU detail for these racks in the cluster simulator's ``ClusterStats``."""
        return self.call(SetDrillDown(list(racks)))
