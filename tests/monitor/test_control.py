"""Control server and client over real loopback sockets, with a fake runtime target.

``FakeTarget``, ``RuntimeLoop`` and ``raw_dealer`` are shared with the fuzz and CURVE tests.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import zmq
from tiertop.monitor import commands as c
from tiertop.monitor import control_client
from tiertop.monitor.commands import Applied, ErrorCode, Refused, Request, encode_request
from tiertop.monitor.control_client import (
    CommandRefused,
    ControlClient,
    ControlTimeout,
    MockTransport,
    Transport,
    ZmqTransport,
)
from tiertop.runtime.control_server import READ_BATCH, AppliedChange, ControlServer
from tiertop.runtime.control_target import (
    Change,
    ControlError,
    ControlTarget,
    PolicyRole,
    TierInfo,
    refuse_drill_down,
)

LOOPBACK = "tcp://127.0.0.1:0"


# ----------------------------------------------------------------------------- the fake runtime


@dataclass
class FakeTier:
    kind: str
    high: float
    low: float
    capacity: int
    max_capacity: int
    used: int
    eviction: str = "lru"
    faults: dict[str, dict[str, float | None]] = field(default_factory=dict)


class FakeTarget:
    """An in-memory runtime: tiers with watermarks, capacities, policies and faults, a
    workload, a pause flag and a simulated clock. Records which thread calls it."""

    def __init__(self, *, simulated: bool = True) -> None:
        self.tiers = {
            "hbm": FakeTier("hbm", 0.95, 0.85, 1 << 30, 2 << 30, 100),
            "dram": FakeTier("dram", 0.9, 0.7, 4 << 30, 64 << 30, 2000),
            "dram1": FakeTier("dram", 0.9, 0.7, 4 << 30, 64 << 30, 3000),
            "disk": FakeTier("disk", 0.98, 0.9, 100 << 30, 1 << 40, 50000),
        }
        self.placement = "top"
        self.promotion = "on_hit"
        self.workload: dict[str, float | int] = {"rate": 10.0, "new_conv_prob": 0.3,
                                                 "live_conversations": 32}
        self.paused = False
        self.sim_speed: float | None = 1.0 if simulated else None
        self.snapshots = 0
        self.calls: list[tuple[str, int]] = []
        self.fail_next: Exception | None = None

    def _called(self, name: str) -> None:
        self.calls.append((name, threading.get_ident()))
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error

    def state(self) -> dict[str, Any]:
        """Everything a command could change, as a comparable copy."""
        return copy.deepcopy({
            "tiers": self.tiers, "placement": self.placement, "promotion": self.promotion,
            "workload": self.workload, "paused": self.paused, "sim_speed": self.sim_speed,
        })

    # --- ControlTarget

    def describe_tiers(self) -> Sequence[TierInfo]:
        return [TierInfo(name, tier.kind) for name, tier in self.tiers.items()]

    def known_policies(self) -> Mapping[PolicyRole, Sequence[str]]:
        return {"eviction": ["arc", "fifo", "lru", "s3fifo"],
                "placement": ["top", "by_size"], "promotion": ["on_hit", "never"]}

    def _each(self, tiers: Sequence[str], attr: str) -> dict[str, Any]:
        return {name: getattr(self.tiers[name], attr) for name in tiers}

    def set_watermarks(self, tiers: Sequence[str], high: float, low: float) -> Change:
        self._called("set_watermarks")
        old = {name: {"high": self.tiers[name].high, "low": self.tiers[name].low}
               for name in tiers}
        for name in tiers:
            self.tiers[name].high, self.tiers[name].low = high, low
        return old, {name: {"high": high, "low": low} for name in tiers}

    def set_capacity(self, tiers: Sequence[str], nbytes: int) -> Change:
        self._called("set_capacity")
        for name in tiers:  # check all before changing any
            if nbytes > self.tiers[name].max_capacity:
                raise ControlError(
                    ErrorCode.REJECTED,
                    f"capacity {nbytes} B for tier {name!r} exceeds what its medium holds "
                    f"({self.tiers[name].max_capacity} B)",
                )
        old = self._each(tiers, "capacity")
        for name in tiers:
            self.tiers[name].capacity = nbytes
        return old, self._each(tiers, "capacity")

    def set_eviction_policy(
        self, tiers: Sequence[str], policy: str, options: Mapping[str, Any]
    ) -> Change:
        self._called("set_eviction_policy")
        if set(options) - {"ghost_fraction"}:
            raise ControlError(ErrorCode.INVALID_ARGUMENT,
                               f"policy {policy!r} has no option(s) {sorted(options)}")
        old = self._each(tiers, "eviction")
        for name in tiers:
            self.tiers[name].eviction = policy
        return old, self._each(tiers, "eviction")

    def set_placement_policy(self, policy: str, options: Mapping[str, Any]) -> Change:
        self._called("set_placement_policy")
        old, self.placement = self.placement, policy
        return old, policy

    def set_promotion_policy(self, policy: str, options: Mapping[str, Any]) -> Change:
        self._called("set_promotion_policy")
        old, self.promotion = self.promotion, policy
        return old, policy

    def set_workload(self, changes: Mapping[str, float | int]) -> Change:
        self._called("set_workload")
        old = {key: self.workload.get(key) for key in changes}
        self.workload.update(changes)
        return old, dict(changes)

    def set_paused(self, paused: bool) -> Change:
        self._called("set_paused")
        old, self.paused = self.paused, paused
        return old, paused

    def clear_tiers(self, tiers: Sequence[str]) -> Change:
        self._called("clear_tiers")
        down = [name for name in tiers if "down" in self.tiers[name].faults]
        if down:
            raise ControlError(ErrorCode.REJECTED, f"tier {down[0]!r} is down (injected fault)")
        old = self._each(tiers, "used")
        for name in tiers:
            self.tiers[name].used = 0
        return old, self._each(tiers, "used")

    def inject_fault(
        self, tiers: Sequence[str], kind: str, duration_s: float | None, delay_s: float | None
    ) -> Change:
        self._called("inject_fault")
        old = {name: sorted(self.tiers[name].faults) for name in tiers}
        for name in tiers:
            self.tiers[name].faults[kind] = {"duration_s": duration_s, "delay_s": delay_s}
        return old, {name: sorted(self.tiers[name].faults) for name in tiers}

    def clear_faults(self, tiers: Sequence[str]) -> Change:
        self._called("clear_faults")
        old = {name: sorted(self.tiers[name].faults) for name in tiers}
        for name in tiers:
            self.tiers[name].faults.clear()
        return old, {name: [] for name in tiers}

    def set_sim_speed(self, factor: float) -> Change:
        self._called("set_sim_speed")
        if self.sim_speed is None:
            raise ControlError(ErrorCode.UNSUPPORTED,
                               "SetSimSpeed needs the simulator; this runtime runs on the wall "
                               "clock")
        old, self.sim_speed = self.sim_speed, factor
        return old, factor

    def set_drill_down(self, racks: Sequence[int]) -> Change:
        self._called("set_drill_down")
        return refuse_drill_down(racks)

    def snapshot(self) -> Any:
        self._called("snapshot")
        self.snapshots += 1
        return {"seq": 1000 + self.snapshots}


class RuntimeLoop:
    """Drives a server the way a runtime does: a thread that waits for commands and applies
    them to the target."""

    def __init__(self, server: ControlServer, target: ControlTarget) -> None:
        self.server, self.target = server, target
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fake-runtime", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.server.wait(0.05)
            self.server.apply_pending(self.target)

    def __enter__(self) -> RuntimeLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(5)


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def changes() -> list[AppliedChange]:
    return []


@pytest.fixture
def server(changes: list[AppliedChange]) -> Iterator[ControlServer]:
    with ControlServer(LOOPBACK, on_applied=changes.append) as srv:
        yield srv


@pytest.fixture
def runtime(server: ControlServer, target: FakeTarget) -> Iterator[RuntimeLoop]:
    with RuntimeLoop(server, target) as loop:
        yield loop


@pytest.fixture
def client(server: ControlServer) -> Iterator[ControlClient]:
    with ControlClient(server.address, timeout_s=2.0, retries=0, client="tester") as cli:
        yield cli


class RawDealer:
    """A bare DEALER for sending exactly the frames a test wants."""

    def __init__(self, address: str) -> None:
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def send(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def recv(self, timeout_s: float = 2.0) -> list[bytes] | None:
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        return self.socket.recv_multipart()

    def reply(self, timeout_s: float = 2.0) -> bytes:
        """The body of the next reply (which must come, framed as the protocol says)."""
        frames = self.recv(timeout_s)
        assert frames is not None, "no reply"
        assert len(frames) == 2 and frames[0] == b""
        return frames[1]

    def ask(self, body: bytes, timeout_s: float = 2.0) -> bytes:
        self.send(b"", body)
        return self.reply(timeout_s)

    def close(self) -> None:
        self.socket.close(0)


@pytest.fixture
def raw(server: ControlServer) -> Iterator[RawDealer]:
    dealer = RawDealer(server.address)
    yield dealer
    dealer.close()


def read_until(server: ControlServer, received: int, timeout_s: float = 2.0) -> None:
    """Read the socket as a runtime would, without applying, until ``received`` messages
    have been read."""
    deadline = time.monotonic() + timeout_s
    while server.stats.received < received and time.monotonic() < deadline:
        server.wait(0.05)
        server.receive()
    assert server.stats.received >= received


def request_bytes(command: c.AnyCommand, request_id: str = "raw-1", **envelope: Any) -> bytes:
    fields: dict[str, Any] = {"client": "raw", "deadline": time.time() + 30, **envelope}
    data: bytes = encode_request(Request(request_id=request_id, command=command, **fields))
    return data


def refused(data: bytes) -> Refused:
    reply = c.decode_reply(data)
    assert isinstance(reply, Refused), reply
    return reply


# ------------------------------------------------------------------------------ applied paths


def test_server_reports_its_real_port(server: ControlServer) -> None:
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", server.address)
    assert not server.address.endswith(":0")


def test_server_has_no_thread_of_its_own() -> None:
    before = set(threading.enumerate())
    with ControlServer(LOOPBACK):
        assert set(threading.enumerate()) == before


def test_wait_returns_when_a_request_arrives(server: ControlServer, raw: RawDealer,
                                             target: FakeTarget) -> None:
    assert not server.wait(0.01)
    assert server.apply_pending(target) == 0
    raw.send(b"", request_bytes(c.Ping()))
    assert server.wait(2.0)
    assert server.apply_pending(target) == 1
    assert c.decode_reply(raw.reply()).command == "Ping"
    assert not server.wait(0)


def test_a_flood_is_read_one_bounded_batch_per_call(
    server: ControlServer, raw: RawDealer,
) -> None:
    flood = READ_BATCH + 10
    for _ in range(flood):
        raw.send(b"junk")
    time.sleep(0.3)  # let libzmq take them all in
    reads: list[int] = []
    deadline = time.monotonic() + 5
    while sum(reads) < flood and time.monotonic() < deadline:
        server.wait(0.1)
        reads.append(server.receive())
    assert sum(reads) == flood and max(reads) == READ_BATCH
    assert server.stats.malformed == flood
    assert sum(raw.recv() is not None for _ in range(flood)) == flood


def test_every_command_applies(
    runtime: RuntimeLoop, client: ControlClient, target: FakeTarget,
    changes: list[AppliedChange],
) -> None:
    expect: list[tuple[Applied, str, Any, Any]] = [
        (client.set_watermarks("dram", 0.8, 0.6), "dram",
         {"dram": {"high": 0.9, "low": 0.7}}, {"dram": {"high": 0.8, "low": 0.6}}),
        (client.set_watermarks("kind:dram", 0.85, 0.5), "dram,dram1",
         {"dram": {"high": 0.8, "low": 0.6}, "dram1": {"high": 0.9, "low": 0.7}},
         {"dram": {"high": 0.85, "low": 0.5}, "dram1": {"high": 0.85, "low": 0.5}}),
        (client.set_capacity("hbm", 1 << 29), "hbm", {"hbm": 1 << 30}, {"hbm": 1 << 29}),
        (client.set_eviction_policy("*", "arc", {"ghost_fraction": 0.5}), "hbm,dram,dram1,disk",
         dict.fromkeys(target.tiers, "lru"), dict.fromkeys(target.tiers, "arc")),
        (client.set_placement_policy("by_size"), "placement", "top", "by_size"),
        (client.set_promotion_policy("never"), "promotion", "on_hit", "never"),
        (client.set_workload(rate=25.0, prompt_len_mean=300), "workload",
         {"rate": 10.0, "prompt_len_mean": None}, {"rate": 25.0, "prompt_len_mean": 300.0}),
        (client.pause(), "runtime", False, True),
        (client.resume(), "runtime", True, False),
        (client.clear_tier("dram"), "dram", {"dram": 2000}, {"dram": 0}),
        (client.inject_fault("disk", "slow", duration_s=5, delay_s=0.02), "disk",
         {"disk": []}, {"disk": ["slow"]}),
        (client.inject_fault("kind:dram", "corrupt"), "dram,dram1",
         {"dram": [], "dram1": []}, {"dram": ["corrupt"], "dram1": ["corrupt"]}),
        (client.clear_faults("disk"), "disk", {"disk": ["slow"]}, {"disk": []}),
        (client.clear_faults(), "hbm,dram,dram1,disk",
         {"hbm": [], "dram": ["corrupt"], "dram1": ["corrupt"], "disk": []},
         {name: [] for name in target.tiers}),
        (client.clear_all(), "hbm,dram,dram1,disk",
         {"hbm": 100, "dram": 0, "dram1": 3000, "disk": 50000}, dict.fromkeys(target.tiers, 0)),
        (client.set_sim_speed(20.0), "clock", 1.0, 20.0),
    ]
    for reply, where, old, new in expect:
        assert isinstance(reply, Applied)
        assert (reply.target, reply.old, reply.new) == (where, old, new), reply.command
    assert target.tiers["dram1"].high == 0.85 and target.tiers["hbm"].capacity == 1 << 29
    assert target.workload["rate"] == 25.0 and target.sim_speed == 20.0
    assert target.tiers["disk"].faults == {} and target.tiers["dram"].used == 0
    # every mutating command was passed to on_applied, with who asked for it
    assert [ch.command for ch in changes] == [reply.command for reply, *_ in expect]
    assert all(ch.client == "tester" for ch in changes)
    assert [ch.request_id for ch in changes] == [reply.request_id for reply, *_ in expect]
    assert changes[0] == AppliedChange("SetWatermarks", "dram", expect[0][2], expect[0][3],
                                       "tester", expect[0][0].request_id, changes[0].time)
    assert abs(changes[0].time - time.time()) < 60


def test_ping_and_snapshot_do_not_count_as_changes(
    runtime: RuntimeLoop, client: ControlClient, target: FakeTarget,
    changes: list[AppliedChange],
) -> None:
    pong = client.ping()
    assert pong.command == "Ping" and pong.target == "runtime"
    assert pong.new["version"] == c.CONTROL_VERSION and pong.new["read_only"] is False
    assert abs(pong.new["time"] - time.time()) < 5
    assert client.last_rtt_s is not None and 0 < client.last_rtt_s < 2
    assert client.last_attempts == 1
    snap = client.snapshot()
    assert (snap.target, snap.new) == ("telemetry", {"seq": 1001})
    assert changes == []


def test_commands_are_applied_on_the_runtime_thread_only(
    runtime: RuntimeLoop, client: ControlClient, target: FakeTarget,
) -> None:
    client.set_watermarks("hbm", 0.5, 0.4)
    client.clear_tier("kind:disk")
    client.snapshot()
    assert {ident for _, ident in target.calls} == {runtime.thread.ident}


# ------------------------------------------------------------------------------ refused paths

REFUSALS: list[tuple[c.AnyCommand, str, str]] = [
    (c.SetWatermarks("dramm", 0.8, 0.5), ErrorCode.UNKNOWN_TIER,
     "unknown tier 'dramm'; known: disk, dram, dram1, hbm"),
    (c.SetCapacity("kind:nvme", 10), ErrorCode.UNKNOWN_TIER,
     "no tier of kind 'nvme'; kinds here: disk, dram, hbm"),
    (c.SetCapacity("hbm", 3 << 30), ErrorCode.REJECTED,
     "capacity 3221225472 B for tier 'hbm' exceeds what its medium holds (2147483648 B)"),
    (c.SetEvictionPolicy("dram", "lruu"), ErrorCode.UNKNOWN_POLICY,
     "unknown eviction policy 'lruu'; known: arc, fifo, lru, s3fifo"),
    (c.SetEvictionPolicy("dram", "arc", {"p": 1}), ErrorCode.INVALID_ARGUMENT,
     "policy 'arc' has no option(s) ['p']"),
    (c.SetPlacementPolicy("random"), ErrorCode.UNKNOWN_POLICY,
     "unknown placement policy 'random'; known: by_size, top"),
    (c.SetPromotionPolicy("always"), ErrorCode.UNKNOWN_POLICY,
     "unknown promotion policy 'always'; known: never, on_hit"),
    (c.InjectFault("tape", "down"), ErrorCode.UNKNOWN_TIER,
     "unknown tier 'tape'; known: disk, dram, dram1, hbm"),
    (c.ClearFaults("kind:tape"), ErrorCode.UNKNOWN_TIER,
     "no tier of kind 'tape'; kinds here: disk, dram, hbm"),
]


@pytest.mark.parametrize(("command", "code", "message"), REFUSALS, ids=[m for *_, m in REFUSALS])
def test_runtime_refusals_name_the_problem_and_change_nothing(
    runtime: RuntimeLoop, client: ControlClient, target: FakeTarget,
    changes: list[AppliedChange], command: c.AnyCommand, code: str, message: str,
) -> None:
    before = target.state()
    with pytest.raises(CommandRefused) as info:
        client.call(command)
    assert (info.value.code, info.value.message, info.value.command) == (
        code, message, command.name,
    )
    assert str(info.value) == f"{command.name} refused: {message} [{code}]"
    assert info.value.request_id.startswith(client._prefix)
    assert target.state() == before
    assert changes == []


def test_target_refusal_is_atomic_across_tiers(
    runtime: RuntimeLoop, client: ControlClient, target: FakeTarget,
) -> None:
    client.inject_fault("dram1", "down")
    before = target.state()
    with pytest.raises(CommandRefused, match=r"tier 'dram1' is down \(injected fault\)"):
        client.clear_tier("kind:dram")
    assert target.state() == before


def test_wall_clock_runtime_refuses_sim_speed(server: ControlServer, client: ControlClient) -> None:
    target = FakeTarget(simulated=False)
    with RuntimeLoop(server, target), pytest.raises(CommandRefused) as info:
        client.set_sim_speed(2.0)
    assert info.value.code == ErrorCode.UNSUPPORTED
    assert info.value.message == (
        "SetSimSpeed needs the simulator; this runtime runs on the wall clock"
    )


def test_unexpected_target_failure_is_refused_and_the_runtime_goes_on(
    runtime: RuntimeLoop, client: ControlClient, target: FakeTarget,
) -> None:
    target.fail_next = RuntimeError("hierarchy exploded")
    with pytest.raises(CommandRefused) as info:
        client.set_watermarks("dram", 0.8, 0.6)
    assert info.value.code == ErrorCode.INTERNAL
    assert info.value.message == (
        "SetWatermarks failed in the runtime: RuntimeError: hierarchy exploded"
    )
    assert client.set_watermarks("dram", 0.8, 0.6).new == {"dram": {"high": 0.8, "low": 0.6}}
    assert runtime.thread.is_alive()


def test_values_no_runtime_accepts_are_refused_by_the_client_without_sending(
    server: ControlServer, client: ControlClient,
) -> None:
    with pytest.raises(CommandRefused) as info:
        client.set_watermarks("dram", 1.2, 0.5)
    assert (info.value.code, info.value.message) == (
        ErrorCode.INVALID_ARGUMENT, "high watermark 1.2 for tier dram is outside 0..1",
    )
    time.sleep(0.05)
    assert server.stats.received == 0


def test_server_validates_too(
    runtime: RuntimeLoop, raw: RawDealer, target: FakeTarget, server: ControlServer,
) -> None:
    reply = refused(raw.ask(request_bytes(c.SetWatermarks("dram", 1.2, 0.5))))
    assert reply == Refused(request_id="raw-1", error_code=ErrorCode.INVALID_ARGUMENT,
                            message="high watermark 1.2 for tier dram is outside 0..1",
                            command="SetWatermarks")
    assert target.calls == []
    assert server.stats.malformed == 1


# ------------------------------------------------------------------ idempotency and deadlines


def test_a_retry_gets_the_same_reply_and_is_applied_once(
    runtime: RuntimeLoop, raw: RawDealer, target: FakeTarget, changes: list[AppliedChange],
    server: ControlServer,
) -> None:
    body = request_bytes(c.SetCapacity("dram", 1 << 31), request_id="once")
    first = raw.ask(body)
    second = raw.ask(body)
    assert first == second
    reply = c.decode_reply(first)
    assert isinstance(reply, Applied) and reply.new == {"dram": 1 << 31}
    assert [name for name, _ in target.calls] == ["set_capacity"]
    assert len(changes) == 1
    assert server.stats.retries == 1
    # another client may use the same id: ids are per client
    other = raw.ask(request_bytes(c.SetCapacity("dram", 1 << 31), request_id="once",
                                  client="someone-else"))
    assert c.decode_reply(other).request_id == "once"
    assert len(target.calls) == 2


def test_a_retry_while_queued_joins_the_first_request(
    server: ControlServer, raw: RawDealer, target: FakeTarget,
) -> None:
    body = request_bytes(c.Pause(), request_id="slow-runtime")
    raw.send(b"", body)
    raw.send(b"", body)
    read_until(server, 2)
    assert server.pending == 1
    assert server.apply_pending(target) == 1
    assert raw.reply() == raw.reply()
    assert [name for name, _ in target.calls] == ["set_paused"]


def test_reusing_an_id_for_another_command_is_refused(
    runtime: RuntimeLoop, raw: RawDealer, target: FakeTarget,
) -> None:
    raw.ask(request_bytes(c.Pause(), request_id="dup"))
    reply = refused(raw.ask(request_bytes(c.Resume(), request_id="dup")))
    assert (reply.error_code, reply.message) == (
        ErrorCode.CONFLICT,
        "request id dup of client raw was already used for another command; use a new id for "
        "Resume",
    )
    assert target.paused is True


def test_client_retries_reuse_the_request_id_until_the_runtime_answers(
    server: ControlServer, target: FakeTarget, changes: list[AppliedChange],
) -> None:
    # The runtime's loop is stalled for 0.35 s: the first attempts time out, a retry is answered.
    def late_runtime() -> None:
        time.sleep(0.35)
        with RuntimeLoop(server, target):
            time.sleep(0.5)

    helper = threading.Thread(target=late_runtime)
    helper.start()
    with ControlClient(server.address, timeout_s=0.15, retries=5, client="retrier") as cli:
        reply = cli.set_watermarks("hbm", 0.5, 0.25)
        assert cli.last_attempts >= 3
        assert cli.last_rtt_s is not None and cli.last_rtt_s >= 0.3
    helper.join()
    assert reply.new == {"hbm": {"high": 0.5, "low": 0.25}}
    assert [name for name, _ in target.calls] == ["set_watermarks"]
    assert len(changes) == 1
    assert server.stats.retries >= 2


def test_expired_requests_are_refused_on_arrival(
    runtime: RuntimeLoop, raw: RawDealer, target: FakeTarget,
) -> None:
    reply = refused(raw.ask(request_bytes(c.Pause(), deadline=time.time() - 1.0)))
    assert reply.error_code == ErrorCode.EXPIRED
    assert re.fullmatch(
        r"request raw-1 \(Pause\) arrived \d+\.\d{3} s after its deadline; not applied \(if this "
        r"keeps happening, check the clocks of client and runtime\)", reply.message,
    )
    assert target.calls == []


def test_requests_expiring_in_the_queue_are_refused_not_applied(
    server: ControlServer, raw: RawDealer, target: FakeTarget,
) -> None:
    raw.send(b"", request_bytes(c.ClearAll(), deadline=None, timeout_s=0.1))
    read_until(server, 1)  # timeout_s counts from here
    assert server.pending == 1
    time.sleep(0.15)
    assert server.apply_pending(target) == 1
    reply = refused(raw.reply())
    assert reply.error_code == ErrorCode.EXPIRED
    assert re.fullmatch(r"request raw-1 \(ClearAll\) expired \d+\.\d{3} s before the runtime "
                        r"could apply it; not applied", reply.message)
    assert target.calls == []
    assert target.tiers["disk"].used == 50000


def test_requests_expiring_while_the_runtime_is_busy_say_so(
    server: ControlServer, raw: RawDealer, target: FakeTarget,
) -> None:
    server.apply_pending(target)  # the runtime reads, then starts a long step
    raw.send(b"", request_bytes(c.Pause(), deadline=time.time() + 0.1))
    time.sleep(0.3)
    assert server.apply_pending(target) == 0  # refused on reading: never queued
    reply = refused(raw.reply())
    assert reply.error_code == ErrorCode.EXPIRED
    match = re.fullmatch(
        r"request raw-1 \(Pause\) expired \d+\.\d{3} s before the runtime could read it: the "
        r"runtime was busy for (\d+\.\d{3}) s \(one engine step or tick\) without reading "
        r"commands; not applied", reply.message,
    )
    assert match is not None, reply.message
    assert float(match.group(1)) >= 0.3
    assert target.calls == [] and server.stats.refused_early == 1


def test_a_full_queue_refuses_as_busy(target: FakeTarget) -> None:
    with ControlServer(LOOPBACK, max_pending=2) as srv:
        dealer = RawDealer(srv.address)
        try:
            for n in range(3):
                dealer.send(b"", request_bytes(c.Ping(), request_id=f"p{n}"))
            read_until(srv, 3)
            assert srv.pending == 2
            reply = refused(dealer.reply())
            assert (reply.request_id, reply.error_code) == ("p2", ErrorCode.BUSY)
            assert reply.message == (
                "runtime busy: 2 commands already wait to be applied; Ping not queued"
            )
            # a runtime may bound the work per tick; what is left keeps wait() signalled
            assert srv.apply_pending(target, max_commands=1) == 1
            assert srv.pending == 1 and srv.wait(0)
            assert srv.apply_pending(target) == 1
            assert not srv.wait(0)
            assert [c.decode_reply(dealer.reply()).request_id for _ in range(2)] == ["p0", "p1"]
        finally:
            dealer.close()


# ------------------------------------------------------------------------------ read-only mode


def test_read_only_runtime_refuses_changes_but_answers_ping_and_snapshot(
    target: FakeTarget,
) -> None:
    with ControlServer(LOOPBACK, read_only=True) as srv, RuntimeLoop(srv, target), \
            ControlClient(srv.address, timeout_s=2.0, retries=0) as cli:
        before = target.state()
        for call, name in [
            (lambda: cli.set_watermarks("dram", 0.8, 0.6), "SetWatermarks"),
            (cli.pause, "Pause"),
            (cli.clear_all, "ClearAll"),
            (lambda: cli.inject_fault("disk", "down"), "InjectFault"),
            (lambda: cli.set_workload(rate=1.0), "SetWorkload"),
        ]:
            with pytest.raises(CommandRefused) as info:
                call()
            assert (info.value.code, info.value.message) == (
                ErrorCode.READ_ONLY, f"read-only runtime: {name} refused",
            )
        assert cli.ping().new["read_only"] is True
        assert cli.snapshot().new == {"seq": 1001}
        assert target.state() == before
        assert [name for name, _ in target.calls] == ["snapshot"]


# ------------------------------------------------------------------------- malformed messages


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([b"not-a-delimiter"], "a control request is 2 frames, an empty delimiter then the "
                               "encoded request; got 1 frame(s)"),
        ([b"", b"a", b"b"], "a control request is 2 frames, an empty delimiter then the "
                            "encoded request; got 3 frame(s)"),
        ([b"xx", b"body"], "a control request is 2 frames, an empty delimiter then the "
                           "encoded request; the first frame is 2 B, not empty"),
        ([b"", b"\xc1"], "request is not a msgpack-encoded control request: MessagePack data "
                         "is malformed: invalid opcode '\\xc1' (byte 0)"),
    ],
)
def test_malformed_frames_are_refused(
    runtime: RuntimeLoop, raw: RawDealer, target: FakeTarget, frames: list[bytes], message: str,
) -> None:
    raw.send(*frames)
    reply_frames = raw.recv()
    assert reply_frames is not None and reply_frames[0] == b""
    reply = refused(reply_frames[1])
    assert (reply.request_id, reply.error_code, reply.message) == (
        "", ErrorCode.MALFORMED, message,
    )
    assert target.calls == []


def test_oversized_requests_are_refused_and_huge_frames_dropped(target: FakeTarget) -> None:
    with ControlServer(LOOPBACK, max_request_bytes=2048, max_frame_bytes=16384) as srv, \
            RuntimeLoop(srv, target), \
            ControlClient(srv.address, timeout_s=1.0, retries=0) as cli:
        options: dict[str, str | int | float | bool] = {f"k{i}": "v" * 40 for i in range(60)}
        with pytest.raises(CommandRefused) as info:
            cli.set_eviction_policy("dram", "arc", options)
        assert info.value.code == ErrorCode.TOO_LARGE
        assert re.fullmatch(r"request of \d{4} B exceeds this runtime's limit of 2048 B",
                            info.value.message)
        # beyond ZMQ_MAXMSGSIZE the sender is disconnected unread: no reply, no harm
        dealer = RawDealer(srv.address)
        try:
            dealer.send(b"", b"\x00" * 20000)
            assert dealer.recv(0.3) is None
        finally:
            dealer.close()
        assert cli.set_watermarks("dram", 0.5, 0.1).new == {"dram": {"high": 0.5, "low": 0.1}}
        assert [name for name, _ in target.calls] == ["set_watermarks"]


# ----------------------------------------------------------------- client without a runtime


def _unused_port() -> str:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.close(0)
    return f"tcp://127.0.0.1:{port}"


def test_client_gives_up_in_bounded_time_when_no_runtime_listens() -> None:
    address = _unused_port()
    with ControlClient(address, timeout_s=0.1, retries=2) as cli:
        started = time.monotonic()
        with pytest.raises(ControlTimeout) as info:
            cli.ping()
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.0
    assert re.fullmatch(
        rf"no reply to Ping \(request [0-9a-f]{{8}}-1\) from {re.escape(address)} after 3 "
        r"attempt\(s\) over 0\.3 s; is the runtime running there, and does it accept this "
        r"client's key\?", str(info.value),
    )
    assert isinstance(info.value, TimeoutError)


def test_bind_conflict_is_a_clear_error(server: ControlServer) -> None:
    with pytest.raises(OSError, match=rf"cannot bind the control socket to "
                                      rf"{re.escape(server.address)}: Address already in use"):
        ControlServer(server.address).start()


def test_late_requests_after_the_client_gave_up_are_not_applied(
    server: ControlServer, target: FakeTarget,
) -> None:
    with ControlClient(server.address, timeout_s=0.1, retries=0) as cli, \
            pytest.raises(ControlTimeout):
        cli.pause()
    assert server.apply_pending(target) == 0  # expired when read: refused, never queued
    assert (server.stats.received, server.stats.refused_early) == (1, 1)
    assert target.calls == [] and target.paused is False


# ---------------------------------------------------------------- client over a mock transport


class ScriptedRuntime:
    """Answers requests in memory: the first ``drop`` are lost, then each gets an Applied."""

    def __init__(self, drop: int = 0) -> None:
        self.drop = drop
        self.seen: list[Request] = []

    def __call__(self, data: bytes) -> bytes | None:
        request = c.decode_request(data)
        self.seen.append(request)
        if len(self.seen) <= self.drop:
            return None
        reply: bytes = c.encode_reply(Applied(request_id=request.request_id,
                                              command=request.command.name, target="runtime"))
        return reply


def test_mock_transport_retries_reuse_id_and_bytes() -> None:
    runtime = ScriptedRuntime(drop=2)
    transport = MockTransport(runtime)
    cli = ControlClient("mock://runtime", transport=transport, timeout_s=0.05, retries=3,
                        client="mocked")
    reply = cli.pause()
    assert reply.command == "Pause"
    assert len(transport.sent) == 3 and len(set(transport.sent)) == 1
    assert {r.request_id for r in runtime.seen} == {reply.request_id}
    assert transport.resets == 2
    assert cli.last_attempts == 3
    deadline = runtime.seen[0].deadline
    assert deadline is not None and 0 < deadline - time.time() <= 0.2
    second = cli.resume()
    assert second.request_id != reply.request_id
    cli.close()
    assert transport.closed


def test_client_skips_late_and_unreadable_replies() -> None:
    def handler(data: bytes) -> list[bytes]:
        request = c.decode_request(data)
        return [
            b"junk",
            c.encode_reply(Applied(request_id="old-1", command="Ping", target="runtime")),
            c.encode_reply(Applied(request_id=request.request_id, command="Ping",
                                   target="runtime", new="this one")),
        ]

    cli = ControlClient("mock://", transport=MockTransport(handler), timeout_s=0.5, retries=0)
    assert cli.ping().new == "this one"


def test_transports_satisfy_the_protocol(server: ControlServer) -> None:
    zmq_transport = ZmqTransport(server.address)
    try:
        assert isinstance(zmq_transport, Transport)
        assert isinstance(MockTransport(lambda data: None), Transport)
    finally:
        zmq_transport.close()
    with pytest.raises(control_client.ControlClientError, match="is closed"):
        zmq_transport.send(b"x")


def test_fake_target_satisfies_the_protocol() -> None:
    assert isinstance(FakeTarget(), ControlTarget)


def test_public_api() -> None:
    assert control_client.__all__ == [
        "CommandRefused", "ControlClient", "ControlClientError", "ControlTimeout",
        "MockTransport", "Transport", "ZmqTransport", "default_client_name",
    ]
    public = {name for name in dir(ControlClient) if not name.startswith("_")}
    typed = {"ping", "snapshot", "set_watermarks", "set_capacity", "set_eviction_policy",
             "set_placement_policy", "set_promotion_policy", "set_workload", "pause", "resume",
             "clear_tier", "clear_all", "inject_fault", "clear_faults", "set_sim_speed",
             "set_drill_down"}
    assert public == typed | {"request", "call", "close"}
    assert len(typed) == len(c.COMMANDS)  # one typed method per command


def test_refused_reply_is_msgpack_everywhere(runtime: RuntimeLoop, raw: RawDealer) -> None:
    data = raw.ask(b"\xc1")
    assert msgspec.msgpack.decode(data)["type"] == "Refused"
