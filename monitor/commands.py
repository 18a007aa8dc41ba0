"""The control protocol: what a client may ask a runtime to do, and what the runtime answers.

Shared by the runtime's control server and every client (dashboard, scenario player, scripts).
A request is one msgpack-encoded :class:`Request`: an envelope (``request_id``, ``client``,
``deadline``, protocol version ``v``) around one command from a tagged union (the tag field is
``type``, its value the class name, e.g. ``{"type": "SetWatermarks", "tier": "dram", ...}``). The
answer is one :class:`Applied` or :class:`Refused`, tagged the same way.

Validation that needs no runtime state (ranges, ``low <= high``, positive capacity, durations,
names that cannot be empty) lives here, in each command's ``validate``: clients run it before
sending and the server runs it again on receipt. Validation that needs the runtime's state
(unknown tier, unknown policy, a capacity the medium cannot hold) belongs to the runtime.

Tier selectors. Per-tier commands take a ``tier`` selector string:

- ``"dram"``: the tier with that name;
- ``"kind:disk"``: every tier of that kind (a simulated cluster has many tiers per kind);
- ``"*"``: every tier.

Commands without a tier (workload, placement, promotion, pause, clock) act on the whole runtime,
which for the cluster simulator is the whole cluster.

Wire framing (ZeroMQ): a client's DEALER sends two frames, an empty delimiter and the encoded
request, so a REQ socket can talk to the server too; the reply comes back the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Final

import msgspec

__all__ = [
    "COMMANDS",
    "CONTROL_VERSION",
    "DEFAULT_CONTROL_ADDRESS",
    "FAULT_KINDS",
    "MAX_DRILL_RACKS",
    "MAX_NAME_CHARS",
    "MAX_SLOW_DELAY_S",
    "AnyCommand",
    "Applied",
    "ClearAll",
    "ClearFaults",
    "ClearTier",
    "Command",
    "ErrorCode",
    "InjectFault",
    "InvalidCommand",
    "Pause",
    "Ping",
    "PolicyOptions",
    "Refused",
    "Reply",
    "Request",
    "RequestError",
    "Resume",
    "SetCapacity",
    "SetDrillDown",
    "SetEvictionPolicy",
    "SetPlacementPolicy",
    "SetPromotionPolicy",
    "SetSimSpeed",
    "SetWatermarks",
    "SetWorkload",
    "Snapshot",
    "TierSelector",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
]

#: Version of this schema. A runtime refuses requests of another version with a clear message;
#: fields added later are optional, so older peers ignore them (msgspec skips unknown fields).
CONTROL_VERSION: Final = 1
#: Where a runtime's control server listens unless told otherwise (loopback only).
DEFAULT_CONTROL_ADDRESS: Final = "tcp://127.0.0.1:5558"
#: Longest tier, policy, client and request-id string accepted.
MAX_NAME_CHARS: Final = 128
#: Longest per-operation delay a ``slow`` fault may add; longer would stall the runtime's loop.
MAX_SLOW_DELAY_S: Final = 60.0
#: Most racks one ``SetDrillDown`` may name (per-GPU detail is published for each, every tick).
MAX_DRILL_RACKS: Final = 16
#: The fault kinds a tier store knows (``tiertop.tiers.store.FaultKind``).
FAULT_KINDS: Final = ("corrupt", "down", "full", "slow")

PolicyOptions = dict[str, str | int | float | bool]


class ErrorCode(StrEnum):
    """Why a request was refused (``Refused.error_code``). Runtimes may add codes of their own."""

    MALFORMED = "malformed"  # not a request: bad framing, not msgpack, wrong field types
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_COMMAND = "unknown_command"
    INVALID_ARGUMENT = "invalid_argument"  # a value out of range, empty name, low > high, ...
    TOO_LARGE = "too_large"
    EXPIRED = "expired"  # the deadline passed before the runtime could apply it
    READ_ONLY = "read_only"
    BUSY = "busy"  # too many commands already queued
    CONFLICT = "conflict"  # a request id reused for a different command
    UNKNOWN_TIER = "unknown_tier"
    UNKNOWN_POLICY = "unknown_policy"
    UNSUPPORTED = "unsupported"  # this runtime cannot do that (e.g. SetSimSpeed in real mode)
    REJECTED = "rejected"  # the runtime tried and could not (medium limit, tier down, ...)
    INTERNAL = "internal"  # the runtime failed unexpectedly while applying it


class InvalidCommand(ValueError):
    """A command that cannot be valid whatever the runtime's state; ``str()`` says why."""

    code: ClassVar[ErrorCode] = ErrorCode.INVALID_ARGUMENT


# ------------------------------------------------------------------------------- tier selectors


@dataclass(frozen=True, slots=True)
class TierSelector:
    """A parsed ``tier`` string: one tier by name, every tier of a kind, or every tier."""

    name: str | None = None
    kind: str | None = None

    @property
    def every(self) -> bool:
        return self.name is None and self.kind is None

    @classmethod
    def parse(cls, text: str) -> TierSelector:
        _check_name(text, "tier selector")
        if text == "*":
            return cls()
        if text.startswith("kind:"):
            kind = text[len("kind:") :]
            if not kind:
                raise InvalidCommand(f"tier selector {text!r} names no kind")
            return cls(kind=kind)
        return cls(name=text)

    def __str__(self) -> str:
        if self.name is not None:
            return self.name
        return "*" if self.kind is None else f"kind:{self.kind}"


def _num(value: float | int | str | bool) -> str:
    """A number as messages show it: ``600``, not ``600.0`` (a value that crossed the wire as
    a float reads the same as the one the user typed)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_name(value: str, what: str) -> None:
    if not value or not value.strip():
        raise InvalidCommand(f"{what} must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidCommand(f"{what} is {len(value)} characters long; at most {MAX_NAME_CHARS}")
    if not value.isprintable():
        raise InvalidCommand(f"{what} {value!r} contains unprintable characters")


def _check_policy(policy: str, options: PolicyOptions) -> None:
    _check_name(policy, "policy name")
    for key, value in options.items():
        _check_name(key, f"option name of policy {policy!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidCommand(f"option {key}={_num(value)} of policy {policy!r} is not finite")


# ------------------------------------------------------------------------------------ commands


class Command(msgspec.Struct, tag=True, frozen=True, omit_defaults=True):
    """Base of every command. ``mutating`` commands are refused by a read-only runtime."""

    mutating: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return type(self).__name__

    def validate(self) -> None:
        """Raise :class:`InvalidCommand` when no runtime could apply this command. The base
        class checks nothing: commands without fields (Pause, Ping, ...) are always valid."""


class SetWatermarks(Command, frozen=True):
    """Occupancy fractions of ``tier``: above ``high`` the tier evicts/demotes down to ``low``."""

    tier: str
    high: float
    low: float

    def validate(self) -> None:
        TierSelector.parse(self.tier)
        for label, value in (("high", self.high), ("low", self.low)):
            if not 0.0 <= value <= 1.0:
                raise InvalidCommand(
                    f"{label} watermark {_num(value)} for tier {self.tier} is outside 0..1"
                )
        if self.low > self.high:
            raise InvalidCommand(
                f"low watermark {_num(self.low)} for tier {self.tier} is above its high "
                f"watermark {_num(self.high)}"
            )


class SetCapacity(Command, frozen=True):
    """Capacity of ``tier`` in bytes; shrinking evicts/demotes down to it first."""

    tier: str
    bytes: int

    def validate(self) -> None:
        TierSelector.parse(self.tier)
        if self.bytes <= 0:
            raise InvalidCommand(
                f"capacity for tier {self.tier} must be a positive number of bytes, "
                f"got {self.bytes}"
            )


class SetEvictionPolicy(Command, frozen=True):
    """Switch the eviction policy of ``tier`` live (resident blocks are kept)."""

    tier: str
    policy: str
    options: PolicyOptions = {}

    def validate(self) -> None:
        TierSelector.parse(self.tier)
        _check_policy(self.policy, self.options)


class SetPlacementPolicy(Command, frozen=True):
    """Where new blocks go (hierarchy-wide)."""

    policy: str
    options: PolicyOptions = {}

    def validate(self) -> None:
        _check_policy(self.policy, self.options)


class SetPromotionPolicy(Command, frozen=True):
    """When a block hit in a lower tier moves up (hierarchy-wide)."""

    policy: str
    options: PolicyOptions = {}

    def validate(self) -> None:
        _check_policy(self.policy, self.options)


class SetWorkload(Command, frozen=True, kw_only=True):
    """Change the generated workload; fields left ``None`` keep their current value.

    Attributes:
        rate: arrivals per second (0 stops new requests).
        new_conv_prob: probability that a request starts a new conversation rather than
            continuing a live one (prefix reuse falls as it rises).
        prompt_len_mean, prompt_len_max: new prompt tokens per request.
        output_len_mean, output_len_max: generated tokens per request.
        live_conversations: how many conversations are kept open for continuation.
    """

    rate: float | None = None
    new_conv_prob: float | None = None
    prompt_len_mean: float | None = None
    prompt_len_max: int | None = None
    output_len_mean: float | None = None
    output_len_max: int | None = None
    live_conversations: int | None = None

    def changes(self) -> dict[str, float | int]:
        """The fields this command sets, by name."""
        return {
            field: value
            for field in self.__struct_fields__
            if (value := getattr(self, field)) is not None
        }

    def validate(self) -> None:
        changes = self.changes()
        if not changes:
            fields = ", ".join(self.__struct_fields__)
            raise InvalidCommand(f"SetWorkload changes nothing: give at least one of {fields}")
        if self.rate is not None and not (0.0 <= self.rate < math.inf):
            raise InvalidCommand(
                f"rate must be a finite number >= 0 requests/s, got {_num(self.rate)}"
            )
        if self.new_conv_prob is not None and not 0.0 <= self.new_conv_prob <= 1.0:
            raise InvalidCommand(f"new_conv_prob {_num(self.new_conv_prob)} is outside 0..1")
        for field in ("prompt_len_mean", "output_len_mean"):
            value = getattr(self, field)
            if value is not None and not (1.0 <= value < math.inf):
                raise InvalidCommand(
                    f"{field} must be a finite number >= 1 token, got {_num(value)}"
                )
        for field in ("prompt_len_max", "output_len_max", "live_conversations"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise InvalidCommand(f"{field} must be >= 1, got {value}")
        for stem in ("prompt_len", "output_len"):
            mean, top = getattr(self, f"{stem}_mean"), getattr(self, f"{stem}_max")
            if mean is not None and top is not None and mean > top:
                raise InvalidCommand(f"{stem}_mean {_num(mean)} is above {stem}_max {top}")


class Pause(Command, frozen=True):
    """Stop admitting and stepping requests (telemetry keeps flowing)."""


class Resume(Command, frozen=True):
    """Undo :class:`Pause`."""


class ClearTier(Command, frozen=True):
    """Drop every block held by ``tier``."""

    tier: str

    def validate(self) -> None:
        TierSelector.parse(self.tier)


class ClearAll(Command, frozen=True):
    """Drop every block in every tier."""


class InjectFault(Command, frozen=True):
    """Make ``tier`` misbehave on purpose (see ``tiertop.tiers.store.FaultKind``).

    Attributes:
        kind: ``down``, ``slow``, ``corrupt`` or ``full``.
        duration_s: how long it lasts; ``None`` until :class:`ClearFaults`.
        delay_s: extra time per operation, for ``slow`` only (``None``: the runtime's default).
    """

    tier: str
    kind: str
    duration_s: float | None = None
    delay_s: float | None = None

    def validate(self) -> None:
        TierSelector.parse(self.tier)
        if self.kind not in FAULT_KINDS:
            raise InvalidCommand(
                f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}"
            )
        if self.duration_s is not None and not (0.0 < self.duration_s < math.inf):
            raise InvalidCommand(
                f"fault duration for tier {self.tier} must be > 0 s and finite, "
                f"got {_num(self.duration_s)}"
            )
        if self.delay_s is not None:
            if self.kind != "slow":
                raise InvalidCommand(
                    f"delay_s applies to slow faults only, not {self.kind!r}"
                )
            if not 0.0 < self.delay_s <= MAX_SLOW_DELAY_S:
                raise InvalidCommand(
                    f"slow-fault delay for tier {self.tier} must be in (0, "
                    f"{MAX_SLOW_DELAY_S:g}] s, got {_num(self.delay_s)}"
                )


class ClearFaults(Command, frozen=True):
    """End injected faults on ``tier`` (``None``: on every tier)."""

    tier: str | None = None

    def validate(self) -> None:
        if self.tier is not None:
            TierSelector.parse(self.tier)


class Snapshot(Command, frozen=True):
    """Ask the runtime to publish a full state snapshot on its telemetry stream (resync)."""

    mutating: ClassVar[bool] = False


class SetSimSpeed(Command, frozen=True):
    """Simulator clock speed: virtual seconds per wall second (``inf``: as fast as possible)."""

    factor: float

    def validate(self) -> None:
        if not self.factor > 0.0:
            raise InvalidCommand(f"simulation speed factor must be > 0, got {_num(self.factor)}")


class SetDrillDown(Command, frozen=True):
    """Ask a cluster simulator for per-GPU detail of these racks in every ``ClusterStats``
    (an empty list: none). It changes what is published, not what is simulated, so a read-only
    runtime accepts it too; the last one received wins for every reader. A runtime that is not
    a cluster refuses it as ``unsupported``."""

    mutating: ClassVar[bool] = False

    racks: list[int]

    def validate(self) -> None:
        if len(self.racks) > MAX_DRILL_RACKS:
            raise InvalidCommand(
                f"drill-down names {len(self.racks)} racks; at most {MAX_DRILL_RACKS}"
            )
        for rack in self.racks:
            if rack < 0:
                raise InvalidCommand(f"rack id {rack} is negative; racks are numbered from 0")
        if len(set(self.racks)) != len(self.racks):
            raise InvalidCommand(f"drill-down names a rack twice: {self.racks}")


class Ping(Command, frozen=True):
    """Liveness and round-trip check; answered by the runtime's loop like any command."""

    mutating: ClassVar[bool] = False


AnyCommand = (
    SetWatermarks
    | SetCapacity
    | SetEvictionPolicy
    | SetPlacementPolicy
    | SetPromotionPolicy
    | SetWorkload
    | Pause
    | Resume
    | ClearTier
    | ClearAll
    | InjectFault
    | ClearFaults
    | Snapshot
    | SetSimSpeed
    | SetDrillDown
    | Ping
)

#: Every command class by its wire tag.
COMMANDS: Final[dict[str, type[Command]]] = {
    cls.__name__: cls
    for cls in (
        SetWatermarks,
        SetCapacity,
        SetEvictionPolicy,
        SetPlacementPolicy,
        SetPromotionPolicy,
        SetWorkload,
        Pause,
        Resume,
        ClearTier,
        ClearAll,
        InjectFault,
        ClearFaults,
        Snapshot,
        SetSimSpeed,
        SetDrillDown,
        Ping,
    )
}


# ------------------------------------------------------------------------------------ envelope


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """One command with what the server needs to route, deduplicate, expire and audit it.

    Attributes:
        request_id: unique per client; a retry reuses it, and the server answers a retry with
            the reply it already sent instead of applying the command twice.
        client: who is asking (``user@host:pid`` or a tool's name), for the audit trail.
        command: what to do.
        deadline: absolute wall-clock time (unix seconds) after which the runtime must not
            apply the command; it is refused as expired instead.
        timeout_s: the same, relative to when the server receives the request (for peers whose
            clocks disagree). At least one of the two is required; the earlier one counts.
        v: protocol version (:data:`CONTROL_VERSION`).
    """

    request_id: str
    client: str
    command: AnyCommand
    deadline: float | None = None
    timeout_s: float | None = None
    v: int = CONTROL_VERSION

    def validate(self) -> None:
        _check_name(self.request_id, "request_id")
        _check_name(self.client, "client")
        if self.deadline is None and self.timeout_s is None:
            raise InvalidCommand(
                f"request {self.request_id} has no deadline: set deadline (unix seconds) "
                "or timeout_s"
            )
        if self.deadline is not None and not math.isfinite(self.deadline):
            raise InvalidCommand(f"deadline {_num(self.deadline)} of request {self.request_id} is "
                                 "not a finite unix time")
        if self.timeout_s is not None and not (0.0 < self.timeout_s < math.inf):
            raise InvalidCommand(
                f"timeout_s of request {self.request_id} must be > 0 and finite, "
                f"got {_num(self.timeout_s)}"
            )
        self.command.validate()


class Applied(msgspec.Struct, tag=True, frozen=True, kw_only=True):
    """The command was applied. ``old``/``new`` are the values before and after, as plain
    data (for per-tier commands, a mapping from tier name to value)."""

    request_id: str
    command: str
    target: str
    old: Any = None
    new: Any = None
    v: int = CONTROL_VERSION


class Refused(msgspec.Struct, tag=True, frozen=True, kw_only=True):
    """Nothing changed. ``message`` names the problem; ``command`` is empty when the request
    could not be read far enough to know it."""

    request_id: str
    error_code: str
    message: str
    command: str = ""
    v: int = CONTROL_VERSION


Reply = Applied | Refused


class RequestError(Exception):
    """A request that must be refused before it reaches the runtime (see :meth:`refusal`)."""

    def __init__(self, code: str, message: str, request_id: str = "", command: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.command = command

    def refusal(self) -> Refused:
        return Refused(
            request_id=self.request_id,
            error_code=self.code,
            message=self.message,
            command=self.command,
        )


# ------------------------------------------------------------------------------------ encoding

_ENCODER = msgspec.msgpack.Encoder()
_REQUEST_DECODER = msgspec.msgpack.Decoder(Request)
_REPLY_DECODER = msgspec.msgpack.Decoder(Reply)
_RAW_DECODER = msgspec.msgpack.Decoder()


def encode_request(request: Request) -> bytes:
    return _ENCODER.encode(request)


def encode_reply(reply: Applied | Refused) -> bytes:
    return _ENCODER.encode(reply)


def decode_reply(data: bytes) -> Applied | Refused:
    """Raises ``msgspec.DecodeError``/``msgspec.ValidationError`` for anything but a reply."""
    reply: Applied | Refused = _REPLY_DECODER.decode(data)
    return reply


def decode_request(data: bytes) -> Request:
    """Decode and validate one request, or raise :class:`RequestError` saying what is wrong
    (with the request id and command name when they could be read)."""
    try:
        request = _REQUEST_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise _explain(data, exc) from None
    name = request.command.name
    if request.v != CONTROL_VERSION:
        raise _version_error(request.v, request.request_id, name)
    try:
        request.validate()
    except InvalidCommand as exc:
        raise RequestError(exc.code, str(exc), request.request_id, name) from None
    return request


def _version_error(version: object, request_id: str, command: str) -> RequestError:
    return RequestError(
        ErrorCode.UNSUPPORTED_VERSION,
        f"unsupported control protocol version {version!r}; this runtime speaks "
        f"{CONTROL_VERSION}",
        request_id,
        command,
    )


def _explain(data: bytes, exc: Exception) -> RequestError:
    """Turn a failed typed decode into the most useful refusal the bytes allow."""
    try:
        raw = _RAW_DECODER.decode(data)
    except Exception as raw_exc:  # not msgpack at all, or nested beyond reason
        return RequestError(
            ErrorCode.MALFORMED, f"request is not a msgpack-encoded control request: {raw_exc}"
        )
    if not isinstance(raw, dict):
        return RequestError(
            ErrorCode.MALFORMED,
            f"request must be a msgpack map, got {_wire_type(raw)}",
        )
    request_id = raw.get("request_id")
    request_id = request_id[:MAX_NAME_CHARS] if isinstance(request_id, str) else ""
    version = raw.get("v", CONTROL_VERSION)
    command = raw.get("command")
    tag = command.get("type") if isinstance(command, dict) else None
    tag = tag if isinstance(tag, str) else None
    if version != CONTROL_VERSION or isinstance(version, bool):
        return _version_error(version, request_id, tag or "")
    if command is None:
        return RequestError(ErrorCode.MALFORMED, "request has no command", request_id)
    if not isinstance(command, dict):
        return RequestError(
            ErrorCode.MALFORMED,
            f"command must be a msgpack map, got {_wire_type(command)}",
            request_id,
        )
    if tag is None:
        return RequestError(
            ErrorCode.MALFORMED, "command has no 'type' naming the command", request_id
        )
    if tag not in COMMANDS:
        known = ", ".join(sorted(COMMANDS))
        return RequestError(
            ErrorCode.UNKNOWN_COMMAND,
            f"unknown command {tag[:MAX_NAME_CHARS]!r}; known: {known}",
            request_id,
        )
    return RequestError(ErrorCode.MALFORMED, f"malformed {tag} request: {exc}", request_id, tag)


def _wire_type(value: object) -> str:
    kinds: dict[type, str] = {
        list: "an array", str: "a string", bytes: "binary", int: "an integer",
        float: "a float", bool: "a boolean", type(None): "nil",
    }
    return kinds.get(type(value), type(value).__name__)

