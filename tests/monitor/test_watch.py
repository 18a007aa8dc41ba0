"""``tiertop watch`` over real loopback sockets, and its text rendering."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from tiertop.main import main
from tiertop.monitor.framing import MessageCodec, encode_seq
from tiertop.monitor.protocol import (
    TOPIC_HELLO,
    TOPIC_STATS,
    FaultEvent,
    Hello,
    RequestDone,
    TierInfo,
    TierSample,
    TierStats,
)
from tiertop.monitor.render_text import TIER_FIELDS, render_table, watch_record
from tiertop.monitor.security import ServerCurve, apply_server_curve, create_key_pair
from tiertop.monitor.state import StateModel
from tiertop.runtime.publisher import TelemetryPublisher
from tiertop.tiers.stats import N_BUCKETS, bucket_mid_s

LOOPBACK = "tcp://127.0.0.1:0"
TICK_S = 0.05  # message-clock seconds between ticks (and wall seconds between sends)

HELLO = Hello(
    mode="sim",
    tiers=[
        TierInfo(name="dram", kind="dram", capacity_bytes=1 << 30),
        TierInfo(name="disk", kind="disk", capacity_bytes=1 << 40, emulated=True),
    ],
)


def latency() -> list[int]:
    h = [0] * N_BUCKETS
    h[10] = 90
    h[20] = 10
    return h


def stats(i: int, clock: float) -> TierStats:
    """Tick ``i``: dram has 9 hits and 1 miss and 2 evictions per tick, disk is slow."""
    return TierStats(
        tick=i,
        clock=clock,
        interval_s=TICK_S,
        queue_depth=4,
        tiers=[
            TierSample(name="dram", used_bytes=256 << 20, used_blocks=64,
                       capacity_bytes=1 << 30, high_watermark=0.9, low_watermark=0.7,
                       eviction_policy="lru", hits=9 * i, misses=i, evictions=2 * i,
                       promotions=i, latency={"get": latency()}),
            TierSample(name="disk", used_bytes=1 << 30, capacity_bytes=1 << 40,
                       eviction_policy="fifo", hits=i, misses=i, faults=["slow"],
                       health="degraded", health_reason="slow fault"),
        ],
    )


class Feeder:
    """Publishes a tick and a request every TICK_S on a virtual clock until stopped."""

    def __init__(self, pub_clock: list[float]) -> None:
        self.clock = pub_clock
        self.publish: Callable[[Any], Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, publish: Callable[[Any], Any]) -> None:
        self.publish = publish
        self._thread.start()

    def _run(self) -> None:
        assert self.publish is not None
        i = 0
        while not self._stop.wait(TICK_S):
            self.clock[0] = 1000.0 + TICK_S * i
            self.publish(stats(i, self.clock[0]))
            self.publish(RequestDone(request_id=f"r{i}", clock=self.clock[0], ttft_s=0.02,
                                     tpot_s=0.002, e2e_s=0.1, prompt_tokens=64,
                                     output_tokens=8, prefix_tokens={"dram": 48},
                                     recomputed_tokens=16))
            i += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)


@pytest.fixture
def publisher() -> Iterator[tuple[TelemetryPublisher, Feeder]]:
    clock = [1000.0]
    pub = TelemetryPublisher(LOOPBACK, LOOPBACK, hello=HELLO, clock=lambda: clock[0],
                             source="test-runtime:1", epoch=42, close_linger_s=0.1,
                             heartbeat_interval_s=0.2)
    feeder = Feeder(clock)
    feeder.start(pub.publish)
    yield pub, feeder
    feeder.stop()
    pub.close()


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def run_watch(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tiertop", "watch", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


# ----------------------------------------------------------------------------- over sockets


def test_watch_json_lines_over_loopback(publisher: tuple[TelemetryPublisher, Feeder]) -> None:
    pub, _ = publisher
    assert pub.replay_address is not None
    result = run_watch("--connect", pub.address, "--replay-addr", pub.replay_address,
                       "--count", "2", "--json", "--interval", "0.3", "--window", "1",
                       "--timeout", "10")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    for rec in records:
        assert rec["source"] == "test-runtime:1"
        assert rec["mode"] == "sim"
        assert rec["epoch"] == 42
        assert rec["restarts"] == 0 and rec["unrecovered"] == 0 and rec["dropped_messages"] == 0
        assert rec["window_s"] == 1.0
        assert 0.0 <= rec["age_s"] < 5.0
        assert [t["name"] for t in rec["tiers"]] == ["dram", "disk"]
        dram, disk = rec["tiers"]
        assert list(dram) == list(TIER_FIELDS)
        assert dram["kind"] == "dram" and dram["policy"] == "lru"
        assert dram["capacity_bytes"] == 1 << 30 and dram["used_bytes"] == 256 << 20
        assert dram["occupancy"] == 0.25
        assert (dram["high_watermark"], dram["low_watermark"]) == (0.9, 0.7)
        assert dram["hit_ratio"] == pytest.approx(0.9)
        assert dram["evictions_per_s"] == pytest.approx(2 / TICK_S)
        assert dram["promotions_per_s"] == pytest.approx(1 / TICK_S)
        assert dram["demotions_per_s"] == 0.0
        assert dram["get_p50_s"] == bucket_mid_s(10)
        assert dram["get_p99_s"] == bucket_mid_s(20)
        assert disk["kind"] == "disk" and disk["emulated"] is True
        assert disk["health"] == "degraded" and disk["faults"] == ["slow"]
        assert disk["hit_ratio"] == pytest.approx(0.5)
        assert disk["get_p50_s"] is None
        svc = rec["service"]
        assert svc["queue_depth"] == 4
        assert svc["request_rate"] == pytest.approx(1 / TICK_S, rel=0.15)
        assert svc["ttft_p50_s"] == pytest.approx(0.02, rel=0.1)
        assert svc["recomputed_share"] == pytest.approx(0.25)
    assert records[1]["messages"] > records[0]["messages"]
    assert records[1]["clock"] > records[0]["clock"]


def test_watch_prints_a_table(
    publisher: tuple[TelemetryPublisher, Feeder], capsys: pytest.CaptureFixture[str]
) -> None:
    pub, _ = publisher
    code = main(["watch", "--connect", pub.address, "--count", "1", "--interval", "0.3",
                 "--timeout", "10"])
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("tiertop  test-runtime:1  mode sim  epoch 42")
    assert lines[1].startswith("service  req ")
    assert lines[2].split()[:4] == ["TIER", "KIND", "HEALTH", "USED/CAP"]
    dram = lines[3].split()
    assert dram[:5] == ["dram", "dram", "ok", "256M/1.0G", "25.0"]
    assert dram[5:8] == ["0.90/0.70", "lru", "90.0"]
    assert dram[8] == "40.0"  # evictions/s
    disk = lines[4].split()
    assert disk[:3] == ["disk", "disk*", "degraded+slow"]


def test_watch_waits_and_times_out_when_nothing_arrives(
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = free_address()
    code = main(["watch", "--connect", address, "--interval", "0.1", "--timeout", "0.5"])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"waiting for telemetry from {address}" in captured.err
    assert f"no telemetry from {address} after 0.5s" in captured.err


def test_watch_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "--interval", "0"]) == 2
    assert main(["watch", "--client-key", "x.key_secret"]) == 2
    assert main(["watch", "--client-key", "/nonexistent.key_secret",
                 "--server-key", "/nonexistent.key"]) == 2
    err = capsys.readouterr().err
    assert "--client-key and --server-key go together" in err
    assert "no CURVE certificate" in err


def test_ctrl_c_exits_130_cleanly() -> None:
    address = free_address()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiertop", "watch", "--connect", address, "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # running its loop: it said it is waiting
        assert "waiting for telemetry" in first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert out == ""


# -------------------------------------------------------------------------------- CurveZMQ


def test_watch_with_curve_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    create_key_pair(keys, "runtime")
    client_pub, client_secret = create_key_pair(keys, "alice")
    create_key_pair(keys, "mallory")
    os.link(client_pub, authorized / "alice.key")

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    authenticator = apply_server_curve(
        pub, ServerCurve.from_files(keys / "runtime.key_secret", authorized)
    )
    pub.bind(LOOPBACK)
    address = pub.getsockopt(zmq.LAST_ENDPOINT).decode()  # type: ignore[union-attr]
    stop = threading.Event()

    def serve() -> None:  # the socket belongs to this thread from here on
        codec = MessageCodec()
        seqs = {TOPIC_HELLO: 0, TOPIC_STATS: 0}
        i = 0
        while not stop.wait(TICK_S):
            for topic, message in ((TOPIC_HELLO, HELLO), (TOPIC_STATS, stats(i, 1.0 + i))):
                message.source, message.epoch, message.seq = "curve-rt", 9, seqs[topic]
                pub.send_multipart([topic.encode(), encode_seq(seqs[topic]),
                                    codec.encode(message)])
                seqs[topic] += 1
            i += 1
        pub.close(0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        code = main(["watch", "--connect", address, "--json", "--count", "1",
                     "--interval", "0.3", "--timeout", "10",
                     "--client-key", str(client_secret),
                     "--server-key", str(keys / "runtime.key")])
        assert code == 0, capsys.readouterr().err
        record = json.loads(capsys.readouterr().out)
        assert record["source"] == "curve-rt"
        assert [t["name"] for t in record["tiers"]] == ["dram", "disk"]
        # A key the runtime does not know gets nothing.
        code = main(["watch", "--connect", address, "--json", "--interval", "0.2",
                     "--timeout", "0.8",
                     "--client-key", str(keys / "mallory.key_secret"),
                     "--server-key", str(keys / "runtime.key")])
        assert code == 1
        assert capsys.readouterr().out == ""
    finally:
        stop.set()
        thread.join(5.0)
        authenticator.release()
        ctx.term()


# ------------------------------------------------------------------------------- rendering


def test_render_table_of_an_empty_and_a_fed_model() -> None:
    model = StateModel(window_s=1.0)
    record = watch_record(model)
    assert record["tiers"] == [] and record["source"] == ""
    text = render_table(record, "tcp://x:1")
    assert text.splitlines()[0].startswith("tiertop  tcp://x:1  mode ?  epoch -")

    model.fold(HELLO.__copy__())
    for i in range(5):
        model.fold(stats(i, 1000.0 + TICK_S * i), received_at=10.0 + i)
    record = watch_record(model, now=14.5)
    assert record["age_s"] == pytest.approx(0.5)
    text = render_table(record)
    assert "age 0.5s" in text
    rows = text.splitlines()[3:]
    assert [r.split()[0] for r in rows] == ["dram", "disk"]
    assert json.loads(json.dumps(record)) == record  # plain data, stable keys

    # Tiers only fault events name (the simulator's rack pools) get no row, one line instead.
    for rack in range(4):
        model.fold(FaultEvent(epoch=HELLO.epoch, clock=1001.0, tier=f"pool@{rack}",
                              fault="slow", old="inactive", new="active"))
    record = watch_record(model, now=14.5)
    assert [t["name"] for t in record["tiers"]] == ["dram", "disk"]
    assert record["other_tiers"] == ["pool@0", "pool@1", "pool@2", "pool@3"]
    last = render_table(record).splitlines()[-1]
    assert last == "+4 tiers known only from fault events (pool@0 … pool@3)"
