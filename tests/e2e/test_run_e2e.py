"""End to end: `tiertop run` as a subprocess, read with the real subscriber, steered with the
real control client; a watermark change and a policy change show up in the telemetry."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiertop.monitor.control_client import CommandRefused, ControlClient
from tiertop.monitor.protocol import ControlChange, Hello, RequestDone, TierStats
from tiertop.monitor.subscriber import TelemetrySubscriber

pytestmark = pytest.mark.slow


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[dict[str, str]]:
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tiertop", "run", "--rate", "20", "--new-conv-prob", "0.2",
             "--tier", "dram:512KiB,high=0.95,low=0.9", "--tier", "remote:1MiB",
             "--tier", "disk:4MiB", "--publish", "tcp://127.0.0.1:0",
             "--control", "tcp://127.0.0.1:0", "--replay", "tcp://127.0.0.1:0",
             "--tick", "0.1", "--workdir", str(tmp_path)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        addresses: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "control" not in addresses:
            text = log.read_text()
            addresses = dict(re.findall(r"^(telemetry|control|replay): (tcp://\S+)$", text, re.M))
            if proc.poll() is not None:
                pytest.fail(f"tiertop run exited early:\n{text}")
            time.sleep(0.1)
        assert "control" in addresses, log.read_text()
        yield addresses
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        assert proc.returncode == 0, log.read_text()
        assert "served" in log.read_text()
        assert not list(tmp_path.glob("tiertop-disk-*")), "temporary tier files left behind"


def collect(sub: TelemetrySubscriber, seconds: float) -> list[object]:
    messages: list[object] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        messages += sub.poll(1000, timeout_ms=50)
    return messages


def dram(stats: TierStats) -> tuple[float, int, int]:
    tier = next(t for t in stats.tiers if t.name == "dram")
    return tier.used_bytes / tier.capacity_bytes, tier.demotions, tier.used_blocks


def test_watermark_and_policy_changes_take_effect(runtime: dict[str, str]) -> None:
    sub = TelemetrySubscriber(runtime["telemetry"], runtime["replay"])
    client = ControlClient(runtime["control"], timeout_s=5.0)
    try:
        messages = collect(sub, 4.0)
        hello = sub.hello  # the Hello arrives on its own or inside the join snapshot
        assert isinstance(hello, Hello)
        assert [t.name for t in hello.tiers] == ["dram", "remote", "disk"]
        assert hello.tiers[1].description.startswith("remote: memory server tcp://127.0.0.1:")
        assert hello.addresses["control"] == runtime["control"]
        stats = [m for m in messages if isinstance(m, TierStats)]
        done = [m for m in messages if isinstance(m, RequestDone)]
        assert stats and done, "no telemetry from the runtime"
        fill_before, demotions_before, _ = dram(stats[-1])
        assert fill_before > 0.5  # the workload filled the top tier

        applied = client.set_watermarks("dram", 0.3, 0.2)
        assert applied.new == {"dram": {"high": 0.3, "low": 0.2}}
        client.set_eviction_policy("dram", "s3fifo")
        with pytest.raises(CommandRefused, match=r"high watermark 1\.5 for tier dram is outside"):
            client.set_watermarks("dram", 1.5, 0.2)

        after = collect(sub, 2.0)
        later = [m for m in after if isinstance(m, TierStats)]
        assert later
        fill_after, demotions_after, _ = dram(later[-1])
        assert fill_after <= 0.3 + 1e-9  # occupancy dropped under the new high watermark
        assert demotions_after > demotions_before  # evictions moved blocks down
        dram_sample = next(t for t in later[-1].tiers if t.name == "dram")
        assert dram_sample.eviction_policy == "s3fifo"
        changes = [m for m in after if isinstance(m, ControlChange)]
        assert [c.command for c in changes][:2] == ["SetWatermarks", "SetEvictionPolicy"]
        assert client.last_rtt_s is not None and client.last_rtt_s < 5.0
        assert sub.counters().gaps == 0 or sub.counters().recovered >= sub.counters().gaps
    finally:
        client.close()
        sub.close()


def test_run_replays_a_trace_and_stops_when_it_is_served(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        '{"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [7, 8]}\n'
        '{"timestamp": 100, "input_length": 600, "output_length": 4, "hash_ids": [7, 8]}\n'
        '{"timestamp": 200, "input_length": 900, "output_length": 4, "hash_ids": [7, 8]}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "tiertop", "run", "--trace", str(trace), "--speed", "4",
         "--publish", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
         "--replay", "tcp://127.0.0.1:0", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "served 3 requests (0 failed" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tiertop", "run", "--trace", str(tmp_path / "missing.jsonl"),
         "--publish", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
         "--replay", "tcp://127.0.0.1:0", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "--trace:" in bad.stderr
