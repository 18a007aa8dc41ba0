"""The control schema on its own: encoding, validation messages, decode errors."""

from __future__ import annotations

import math
import subprocess
import sys
import typing

import msgspec
import pytest
from tiertop.monitor import commands as c
from tiertop.monitor.commands import (
    CONTROL_VERSION,
    Applied,
    ErrorCode,
    InvalidCommand,
    Refused,
    Request,
    RequestError,
    TierSelector,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from tiertop.tiers.store import FaultKind

EVERY_COMMAND: list[c.Command] = [
    c.SetWatermarks("dram", 0.9, 0.7),
    c.SetCapacity("kind:disk", 1 << 30),
    c.SetEvictionPolicy("*", "arc", {"ghost_fraction": 0.5, "strict": True}),
    c.SetPlacementPolicy("top"),
    c.SetPromotionPolicy("on_second_hit", {"threshold": 2}),
    c.SetWorkload(rate=12.5, new_conv_prob=0.2, prompt_len_mean=512, prompt_len_max=2048,
                  output_len_mean=128, output_len_max=512, live_conversations=64),
    c.Pause(),
    c.Resume(),
    c.ClearTier("dram"),
    c.ClearAll(),
    c.InjectFault("disk", "slow", duration_s=5.0, delay_s=0.02),
    c.ClearFaults(),
    c.ClearFaults("disk"),
    c.Snapshot(),
    c.SetSimSpeed(10.0),
    c.SetSimSpeed(math.inf),
    c.SetDrillDown([0, 7]),
    c.SetDrillDown([]),
    c.Ping(),
]


def _request(command: c.AnyCommand, **envelope: typing.Any) -> Request:
    fields: dict[str, typing.Any] = {
        "request_id": "r1", "client": "tester", "deadline": 4e9, **envelope,
    }
    return Request(command=command, **fields)


def _raw(command: dict[str, typing.Any], **envelope: typing.Any) -> bytes:
    return msgspec.msgpack.encode({
        "request_id": "r1", "client": "tester", "deadline": 4e9, "v": CONTROL_VERSION,
        "command": command, **envelope,
    })


def _refusal(data: bytes) -> Refused:
    with pytest.raises(RequestError) as info:
        decode_request(data)
    return info.value.refusal()


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda cmd: repr(cmd)[:40])
def test_every_command_round_trips_and_is_valid(command: c.AnyCommand) -> None:
    request = _request(command)
    decoded = decode_request(encode_request(request))
    assert decoded == request
    assert type(decoded.command) is type(command)


def test_command_table_matches_the_union() -> None:
    union = set(typing.get_args(c.AnyCommand))
    assert union == set(c.COMMANDS.values())
    assert all(name == cls.__name__ for name, cls in c.COMMANDS.items())
    assert {name for name, cls in c.COMMANDS.items() if not cls.mutating} == {
        "Ping", "Snapshot", "SetDrillDown",
    }


def test_fault_kinds_match_the_tier_stores() -> None:
    assert set(c.FAULT_KINDS) == {kind.value for kind in FaultKind}


def test_wire_shape_is_tagged_and_versioned() -> None:
    wire = msgspec.msgpack.decode(encode_request(_request(c.SetWatermarks("dram", 0.9, 0.7))))
    assert wire["v"] == CONTROL_VERSION
    assert wire["command"] == {"type": "SetWatermarks", "tier": "dram", "high": 0.9, "low": 0.7}
    # fields left at their defaults are not sent
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(c.SetWorkload(rate=3.0))) == {
        "type": "SetWorkload", "rate": 3.0,
    }


def test_replies_round_trip() -> None:
    applied = Applied(request_id="r1", command="SetCapacity", target="dram",
                      old={"dram": 1}, new={"dram": 2})
    refused = Refused(request_id="r2", error_code=ErrorCode.UNKNOWN_TIER, message="no",
                      command="ClearTier")
    assert decode_reply(encode_reply(applied)) == applied
    assert decode_reply(encode_reply(refused)) == refused
    with pytest.raises(msgspec.ValidationError):
        decode_reply(encode_request(_request(c.Ping())))


# ------------------------------------------------------------------------- validation messages

INVALID: list[tuple[c.Command, str]] = [
    (c.SetWatermarks("dram", 1.2, 0.5), "high watermark 1.2 for tier dram is outside 0..1"),
    (c.SetWatermarks("dram", 0.9, -0.1), "low watermark -0.1 for tier dram is outside 0..1"),
    (c.SetWatermarks("dram", math.nan, 0.1), "high watermark nan for tier dram is outside 0..1"),
    (c.SetWatermarks("dram", 0.5, 0.8),
     "low watermark 0.8 for tier dram is above its high watermark 0.5"),
    (c.SetWatermarks("", 0.9, 0.8), "tier selector must not be empty"),
    (c.SetWatermarks("kind:", 0.9, 0.8), "tier selector 'kind:' names no kind"),
    (c.SetWatermarks("x" * 200, 0.9, 0.8), "tier selector is 200 characters long; at most 128"),
    (c.ClearTier("dr\x00am"), "tier selector 'dr\\x00am' contains unprintable characters"),
    (c.SetCapacity("dram", 0), "capacity for tier dram must be a positive number of bytes, got 0"),
    (c.SetCapacity("dram", -5),
     "capacity for tier dram must be a positive number of bytes, got -5"),
    (c.SetEvictionPolicy("dram", " "), "policy name must not be empty"),
    (c.SetPlacementPolicy("top", {"weight": math.inf}),
     "option weight=inf of policy 'top' is not finite"),
    (c.SetWorkload(), "SetWorkload changes nothing: give at least one of rate, new_conv_prob, "
                      "prompt_len_mean, prompt_len_max, output_len_mean, output_len_max, "
                      "live_conversations"),
    (c.SetWorkload(rate=-1.0), "rate must be a finite number >= 0 requests/s, got -1"),
    (c.SetWorkload(rate=math.inf), "rate must be a finite number >= 0 requests/s, got inf"),
    (c.SetWorkload(new_conv_prob=1.5), "new_conv_prob 1.5 is outside 0..1"),
    (c.SetWorkload(prompt_len_mean=0.5),
     "prompt_len_mean must be a finite number >= 1 token, got 0.5"),
    (c.SetWorkload(live_conversations=0), "live_conversations must be >= 1, got 0"),
    (c.SetWorkload(output_len_mean=600, output_len_max=512),
     "output_len_mean 600 is above output_len_max 512"),
    (c.InjectFault("disk", "melt"), "unknown fault kind 'melt'; known: corrupt, down, full, slow"),
    (c.InjectFault("disk", "down", duration_s=0.0),
     "fault duration for tier disk must be > 0 s and finite, got 0"),
    (c.InjectFault("disk", "down", duration_s=math.inf),
     "fault duration for tier disk must be > 0 s and finite, got inf"),
    (c.InjectFault("disk", "down", delay_s=0.1), "delay_s applies to slow faults only, not 'down'"),
    (c.InjectFault("disk", "slow", delay_s=0.0),
     "slow-fault delay for tier disk must be in (0, 60] s, got 0"),
    (c.InjectFault("disk", "slow", delay_s=61.0),
     "slow-fault delay for tier disk must be in (0, 60] s, got 61"),
    (c.ClearFaults(""), "tier selector must not be empty"),
    (c.SetSimSpeed(0.0), "simulation speed factor must be > 0, got 0"),
    (c.SetSimSpeed(math.nan), "simulation speed factor must be > 0, got nan"),
]


@pytest.mark.parametrize(("command", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_commands_name_the_problem(command: c.AnyCommand, message: str) -> None:
    with pytest.raises(InvalidCommand) as info:
        command.validate()
    assert str(info.value) == message
    # the server-side decoder says the same, with the request id and command name
    refusal = _refusal(encode_request(_request(command)))
    assert refusal == Refused(request_id="r1", error_code=ErrorCode.INVALID_ARGUMENT,
                              message=message, command=command.name)


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ({"deadline": None},
         "request r1 has no deadline: set deadline (unix seconds) or timeout_s"),
        ({"deadline": math.nan}, "deadline nan of request r1 is not a finite unix time"),
        ({"deadline": None, "timeout_s": -1.0},
         "timeout_s of request r1 must be > 0 and finite, got -1"),
        ({"request_id": ""}, "request_id must not be empty"),
        ({"client": ""}, "client must not be empty"),
    ],
)
def test_invalid_envelopes(envelope: dict[str, typing.Any], message: str) -> None:
    refusal = _refusal(encode_request(_request(c.Ping(), **envelope)))
    assert refusal.error_code == ErrorCode.INVALID_ARGUMENT
    assert refusal.message == message


def test_timeout_only_deadline_is_accepted() -> None:
    request = decode_request(encode_request(_request(c.Ping(), deadline=None, timeout_s=2.0)))
    assert request.deadline is None and request.timeout_s == 2.0


# ------------------------------------------------------------------------------ decode errors

DECODE_ERRORS: list[tuple[bytes, Refused]] = [
    (b"\xc1", Refused(request_id="", error_code=ErrorCode.MALFORMED,
                      message="request is not a msgpack-encoded control request: "
                              "MessagePack data is malformed: invalid opcode '\\xc1' (byte 0)")),
    (msgspec.msgpack.encode([1, 2]),
     Refused(request_id="", error_code=ErrorCode.MALFORMED,
             message="request must be a msgpack map, got an array")),
    (msgspec.msgpack.encode({"request_id": "r9", "client": "x", "deadline": 4e9}),
     Refused(request_id="r9", error_code=ErrorCode.MALFORMED, message="request has no command")),
    (_raw("Ping"),  # type: ignore[arg-type]
     Refused(request_id="r1", error_code=ErrorCode.MALFORMED,
             message="command must be a msgpack map, got a string")),
    (_raw({"tier": "dram"}),
     Refused(request_id="r1", error_code=ErrorCode.MALFORMED,
             message="command has no 'type' naming the command")),
    (_raw({"type": "Explode"}),
     Refused(request_id="r1", error_code=ErrorCode.UNKNOWN_COMMAND,
             message="unknown command 'Explode'; known: " + ", ".join(sorted(c.COMMANDS)))),
    (_raw({"type": "SetWatermarks", "tier": "dram", "high": "x", "low": 0.1}),
     Refused(request_id="r1", error_code=ErrorCode.MALFORMED, command="SetWatermarks",
             message="malformed SetWatermarks request: Expected `float`, got `str` - at "
                     "`$.command.high`")),
    (_raw({"type": "SetCapacity", "tier": "dram"}),
     Refused(request_id="r1", error_code=ErrorCode.MALFORMED, command="SetCapacity",
             message="malformed SetCapacity request: Object missing required field `bytes` - "
                     "at `$.command`")),
    (_raw({"type": "Ping"}, v=2),
     Refused(request_id="r1", error_code=ErrorCode.UNSUPPORTED_VERSION, command="Ping",
             message="unsupported control protocol version 2; this runtime speaks 1")),
    (_raw({"type": "Ping"}, v=True),
     Refused(request_id="r1", error_code=ErrorCode.UNSUPPORTED_VERSION, command="Ping",
             message="unsupported control protocol version True; this runtime speaks 1")),
    (_raw({"type": "Ping"}, request_id=7),
     Refused(request_id="", error_code=ErrorCode.MALFORMED, command="Ping",
             message="malformed Ping request: Expected `str`, got `int` - at `$.request_id`")),
    (b"\x91" * 5000,
     Refused(request_id="", error_code=ErrorCode.MALFORMED,
             message="request is not a msgpack-encoded control request: maximum recursion "
                     "depth exceeded while deserializing an object")),
]


@pytest.mark.parametrize(("data", "expected"), DECODE_ERRORS, ids=[e.message[:50]
                                                                    for _, e in DECODE_ERRORS])
def test_decode_errors_are_explained(data: bytes, expected: Refused) -> None:
    assert _refusal(data) == expected


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    request = decode_request(_raw({"type": "Ping", "added_in_v1_1": 3}, trace="abc"))
    assert request.command == c.Ping()


def test_tier_selectors() -> None:
    assert TierSelector.parse("dram") == TierSelector(name="dram")
    assert TierSelector.parse("kind:disk") == TierSelector(kind="disk")
    assert TierSelector.parse("*").every
    assert [str(TierSelector.parse(s)) for s in ("dram", "kind:disk", "*")] == [
        "dram", "kind:disk", "*",
    ]


def test_set_workload_changes_lists_only_given_fields() -> None:
    assert c.SetWorkload(rate=0.0, live_conversations=3).changes() == {
        "rate": 0.0, "live_conversations": 3,
    }


def test_monitor_control_modules_never_import_textual() -> None:
    code = (
        "import sys\n"
        "import tiertop.monitor.commands, tiertop.monitor.control_client\n"
        "import tiertop.monitor.security, tiertop.monitor.keys_cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""
