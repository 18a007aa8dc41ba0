"""``--record`` runs the recorder in a child process (just another subscriber): it records what
a runtime publishes, finishes the file when told, and also when the runtime dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiertop.monitor.framing import FrameDecoder
from tiertop.monitor.protocol import TelemetryMessage
from tiertop.monitor.recorder import (
    RecorderProcess,
    finish_runtime_recording,
    record_runtime,
)
from tiertop.monitor.recording import Recording, RecordingError
from tiertop.monitor.vllm_events import KvEventBatch
from tiertop.runtime.publisher import TelemetryPublisher

from tests.recording.streams import hello, session


def publisher() -> TelemetryPublisher:
    return TelemetryPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", hello=hello(),
                              heartbeat_interval_s=0.05, close_linger_s=0.2)


def publish_session(pub: TelemetryPublisher, seconds: float) -> dict[str, int]:
    """Publish a recorded-style session; how many messages of each type went out."""
    decoder = FrameDecoder()
    sent: dict[str, int] = {}
    for _, topic, seq, payload in session(seconds)[1:]:  # the publisher sends its own Hello
        message = decoder.decode(topic, seq, payload)
        if isinstance(message, KvEventBatch):
            pub.kv_events(list(message.events), message.ts)
        else:
            assert isinstance(message, TelemetryMessage)
            pub.publish(message)
        sent[type(message).__name__] = sent.get(type(message).__name__, 0) + 1
    return sent


def recorded_types(path: Path) -> dict[str, int]:
    decoder = FrameDecoder()
    counts: dict[str, int] = {}
    with Recording.open(path) as rec:
        for r in rec.iter_records():
            name = type(decoder.decode(r.topic, r.seq, r.payload)).__name__
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_record_runtime_records_everything_published_from_a_child_process(
    tmp_path: Path,
) -> None:
    pub = publisher()
    path = tmp_path / "run.ttrec"
    try:
        recorder = record_runtime(path, pub.addresses, scenario="name: x\n")
        assert isinstance(recorder, RecorderProcess)
        assert recorder.wait_joined() and recorder.running
        sent = publish_session(pub, 10.0)
        counters = finish_runtime_recording(recorder, pub)
    finally:
        pub.close()
    assert not recorder.running
    assert counters.error == "" and counters.queue_dropped == 0
    with Recording.open(path) as rec:
        assert rec.complete, rec.issues
        assert rec.records == counters.records
        assert rec.scenario == "name: x\n"
        assert rec.hello is not None
    recorded = recorded_types(path)
    for name, n in sent.items():
        assert recorded.get(name, 0) >= n, (name, recorded)
    assert f"recorded {counters.records:,} messages to {path}" in recorder.summary_line()


def test_the_child_finishes_the_file_when_the_runtime_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "killed.ttrec"
    parent = subprocess.Popen(
        [sys.executable, "-c", RUNTIME_THAT_RECORDS, str(path)], stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "recording"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with Recording.open(path) as rec:
                if rec.end is not None:
                    break
            time.sleep(0.2)
        with Recording.open(path) as rec:
            assert rec.complete, rec.issues
            assert rec.records > 0
    finally:
        if parent.poll() is None:
            parent.kill()


#: A "runtime": a publisher with a recorder attached, publishing until it is killed.
RUNTIME_THAT_RECORDS = r"""
import sys, time
from tiertop.monitor.recorder import record_runtime
from tiertop.runtime.publisher import TelemetryPublisher
from tests.recording.streams import hello
from tiertop.monitor.protocol import Heartbeat

pub = TelemetryPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", hello=hello(),
                         heartbeat_interval_s=0.05)
recorder = record_runtime(sys.argv[1], pub.addresses)
assert recorder.wait_joined()
print("recording", flush=True)
while True:
    pub.publish(Heartbeat(topic_seqs={}, uptime_s=time.monotonic()))
    time.sleep(0.01)
"""


def test_a_bad_path_fails_in_the_parent_with_the_childs_reason(tmp_path: Path) -> None:
    pub = publisher()
    try:
        with pytest.raises(OSError, match=r"dir\.ttrec"):
            record_runtime(tmp_path / "no" / "such" / "dir.ttrec", pub.addresses)
        text = tmp_path / "notes.txt"
        text.write_text("not a recording")
        with pytest.raises(RecordingError, match="not a tiertop recording"):
            record_runtime(text, pub.addresses)
        assert text.read_text() == "not a recording"
    finally:
        pub.close()
