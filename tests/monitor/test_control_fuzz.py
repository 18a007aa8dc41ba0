"""Throw random and malformed multi-frame messages at the control server's ROUTER.

The server must answer each one with a Refused reply, stay up, leave the runtime's state as it
was, and afterwards apply well-formed requests exactly as before.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiertop.monitor import commands as c
from tiertop.monitor.commands import Refused
from tiertop.monitor.control_client import ControlClient
from tiertop.runtime.control_server import ControlServer

try:
    from .test_control import LOOPBACK, FakeTarget, RawDealer, RuntimeLoop
except ImportError:  # tests/monitor is not a package: pytest put this folder on sys.path
    from test_control import LOOPBACK, FakeTarget, RawDealer, RuntimeLoop  # type: ignore[no-redef]

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
_ids = itertools.count()

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=24) | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)

TEMPLATES: list[dict[str, Any]] = [
    {"type": "SetWatermarks", "tier": "dram", "high": 0.9, "low": 0.7},
    {"type": "SetCapacity", "tier": "hbm", "bytes": 1 << 20},
    {"type": "SetEvictionPolicy", "tier": "dram", "policy": "arc", "options": {}},
    {"type": "SetPlacementPolicy", "policy": "top"},
    {"type": "SetWorkload", "rate": 3.0, "live_conversations": 8},
    {"type": "InjectFault", "tier": "disk", "kind": "slow", "duration_s": 1.0, "delay_s": 0.01},
    {"type": "ClearFaults", "tier": "disk"},
    {"type": "ClearTier", "tier": "dram"},
    {"type": "SetSimSpeed", "factor": 2.0},
    {"type": "Pause"},
    {"type": "ClearAll"},
]


def _envelope(command: Any) -> dict[str, Any]:
    return {"request_id": f"fuzz-{next(_ids)}", "client": "fuzzer",
            "deadline": time.time() + 60, "v": c.CONTROL_VERSION, "command": command}


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A valid request with one field deleted or replaced by an arbitrary value, kept only
    when that made it invalid."""
    request = _envelope(dict(draw(st.sampled_from(TEMPLATES))))
    command = request["command"]
    where = draw(st.sampled_from(["envelope", "command"]))
    holder = request if where == "envelope" else command
    key = draw(st.sampled_from(sorted(holder)))
    if draw(st.booleans()):
        del holder[key]
    else:
        holder[key] = draw(msgpack_values)
    body = msgspec.msgpack.encode(request)
    if not _valid(body):
        return body
    # still valid (e.g. a float replaced by another in range): break it for sure
    return msgspec.msgpack.encode({**request, "v": c.CONTROL_VERSION + 1})


def _valid(body: bytes) -> bool:
    """The schema's verdict, reached without the server's decoding path."""
    try:
        request = msgspec.msgpack.decode(body, type=c.Request)
        request.validate()
    except (msgspec.DecodeError, msgspec.ValidationError, c.InvalidCommand):
        return False
    return bool(request.v == c.CONTROL_VERSION)


unknown_names = st.text(
    st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=16,
).filter(lambda s: s not in {"hbm", "dram", "dram1", "disk", "*"} and ":" not in s)


@st.composite
def refused_by_runtime(draw: st.DrawFn) -> bytes:
    """Well-formed requests the runtime must refuse: unknown tiers, kinds and policies."""
    name = draw(unknown_names)
    command = draw(st.sampled_from([
        c.SetWatermarks(name, 0.9, 0.5),
        c.SetCapacity(f"kind:{name}", 1024),
        c.InjectFault(name, "down"),
        c.ClearTier(name),
        c.SetEvictionPolicy("dram", name),
        c.SetPlacementPolicy(name),
        c.SetPromotionPolicy(name),
    ]))
    return msgspec.msgpack.encode(_envelope(msgspec.to_builtins(command)))


raw_bodies = st.binary(max_size=200) | msgpack_values.map(msgspec.msgpack.encode)

# what a DEALER sends; the ROUTER prepends the peer's identity
messages = st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=6),  # arbitrary frames
    raw_bodies.map(lambda body: [b"", body]),  # right framing, arbitrary body
    mutated_requests().map(lambda body: [b"", body]),
    refused_by_runtime().map(lambda body: [b"", body]),
    st.tuples(st.binary(min_size=1, max_size=8), mutated_requests()).map(list),  # bad delimiter
)


def test_fuzzed_messages_are_refused_without_effect() -> None:
    target = FakeTarget()
    with ControlServer(LOOPBACK, max_request_bytes=4096) as server, \
            RuntimeLoop(server, target) as loop:
        dealer = RawDealer(server.address)
        before = target.state()

        @SETTINGS
        @given(batch=st.lists(messages, min_size=1, max_size=4))
        def throw(batch: list[list[bytes]]) -> None:
            for frames in batch:
                dealer.send(*frames)
            for _ in batch:  # exactly one Refused per message
                reply = c.decode_reply(dealer.reply())
                assert isinstance(reply, Refused), reply
                assert reply.error_code in set(c.ErrorCode)
                assert reply.message
            assert target.state() == before

        try:
            throw()
            assert dealer.recv(0.2) is None  # nothing unanswered, nothing extra
        finally:
            dealer.close()
        assert loop.thread.is_alive()
        assert target.state() == before

        # well-formed requests are still answered, and applied exactly as asked
        with ControlClient(server.address, timeout_s=2.0, retries=0, client="after") as cli:
            assert cli.ping().command == "Ping"
            assert cli.set_watermarks("dram", 0.6, 0.3).new == {"dram": {"high": 0.6, "low": 0.3}}
            assert cli.set_capacity("hbm", 4096).old == {"hbm": 1 << 30}
            assert cli.set_eviction_policy("dram1", "s3fifo").new == {"dram1": "s3fifo"}
            assert cli.inject_fault("disk", "full", duration_s=1.0).new == {"disk": ["full"]}
            assert cli.set_workload(rate=0.0).new == {"rate": 0.0}
            assert cli.pause().new is True
        assert (target.tiers["dram"].high, target.tiers["hbm"].capacity) == (0.6, 4096)
        assert target.paused and target.workload["rate"] == 0.0
        assert server.stats.applied >= 7
