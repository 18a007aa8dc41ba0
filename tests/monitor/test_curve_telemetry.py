"""CurveZMQ on the telemetry sockets: an authorised reader gets the stream (live and replay),
a reader with an unknown key gets nothing."""

from __future__ import annotations

import time
from pathlib import Path

from tiertop.monitor.protocol import Hello, TierSample, TierStats
from tiertop.monitor.security import ClientCurve, ServerCurve, create_key_pair
from tiertop.monitor.subscriber import TelemetrySubscriber
from tiertop.runtime.publisher import TelemetryPublisher


def keys(tmp_path: Path) -> tuple[ServerCurve, ClientCurve, ClientCurve]:
    authorized = tmp_path / "authorized"
    _, server_secret = create_key_pair(tmp_path / "server", "runtime")
    good_public, good_secret = create_key_pair(tmp_path / "clients", "alice")
    _, bad_secret = create_key_pair(tmp_path / "strangers", "mallory")
    authorized.mkdir()
    (authorized / good_public.name).write_bytes(good_public.read_bytes())
    server = ServerCurve.from_files(server_secret, authorized)
    server_public = tmp_path / "server" / "runtime.key"
    return (server, ClientCurve.from_files(good_secret, server_public),
            ClientCurve.from_files(bad_secret, server_public))


def received(sub: TelemetrySubscriber, seconds: float) -> list[object]:
    out: list[object] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out += sub.poll(100, timeout_ms=50)
    return out


def test_authorised_reader_receives_and_stranger_receives_nothing(tmp_path: Path) -> None:
    server, alice, mallory = keys(tmp_path)
    hello = Hello(mode="model")
    with TelemetryPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", hello=hello,
                            curve=server) as pub:
        good = TelemetrySubscriber(pub.address, pub.replay_address, curve=alice)
        bad = TelemetrySubscriber(pub.address, pub.replay_address, curve=mallory)
        plain = TelemetrySubscriber(pub.address, pub.replay_address)
        try:
            deadline = time.monotonic() + 5
            while good.hello is None and time.monotonic() < deadline:  # joined: snapshot in
                good.poll(100, timeout_ms=50)
            assert good.hello is not None
            for tick in range(5):
                pub.publish(TierStats(tick=tick, tiers=[TierSample(name="dram", hits=tick)]))
            got = received(good, 2.0)
            assert [m.tick for m in got if isinstance(m, TierStats)] == [0, 1, 2, 3, 4]
            assert received(bad, 0.5) == [] and received(plain, 0.5) == []
            assert bad.counters().received == 0 and plain.counters().received == 0
        finally:
            for sub in (good, bad, plain):
                sub.close()
