"""End to end with a real runtime: ``tiertop run --record``, ``tiertop record`` beside it, a
dashboard-like reader recording what it folds (replay equals live), then ``tiertop replay
--headless`` and ``tiertop export --plots`` on the files, none of which imports Textual."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tiertop.monitor.control_client import ControlClient
from tiertop.monitor.recorder import Recorder, RecordingSubscriber
from tiertop.monitor.recording import Recording
from tiertop.monitor.replay import Replayer
from tiertop.monitor.state import StateModel

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

#: Runs several tiertop commands in one process (their stdout, stderr and status as JSON) and
#: fails if any of them, or importing the headless modules, pulled in Textual.
HEADLESS = r"""
import contextlib, io, json, sys
import tiertop.monitor.recording, tiertop.monitor.recorder, tiertop.monitor.replay
import tiertop.monitor.summary, tiertop.monitor.export, tiertop.monitor.plots
import tiertop.monitor.record_cli, tiertop.monitor.replay_cli, tiertop.monitor.export_cli
assert 'textual' not in sys.modules, 'importing the headless modules imported textual'
from tiertop.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))
assert not bad, f'headless commands imported {bad[:5]}'
print(json.dumps(results))
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def headless(*commands: list[str]) -> list[Run]:
    """Run tiertop commands in one fresh interpreter that must never import Textual."""
    done = subprocess.run([sys.executable, "-c", HEADLESS, json.dumps(list(commands))],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [Run(r["rc"], r["out"], r["err"]) for r in json.loads(done.stdout)]


@dataclass
class Session:
    run_file: Path  # tiertop run --record
    record_file: Path  # tiertop record beside it
    reader_file: Path  # the in-test reader's Recorder.write
    live: StateModel
    log: str
    record_out: str
    record_rc: int


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp("cli")
    run_file, record_file, reader_file = tmp / "run.ttrec", tmp / "rec.ttrec", tmp / "rd.ttrec"
    log_path = tmp / "run.log"
    publish, replay, control = free_endpoints(3)
    # `tiertop record` first: it connects before the runtime binds and joins when it does.
    rec_proc = subprocess.Popen(
        [sys.executable, "-m", "tiertop", "record", "--connect", publish, "--replay-addr",
         replay, "--out", str(record_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tiertop", "run", "--duration", "3", "--rate", "10",
             "--tier", "dram:256KiB,high=0.95,low=0.9", "--tier", "disk:2MiB",
             "--publish", publish, "--control", control, "--replay", replay,
             "--tick", "0.1", "--workdir", str(tmp), "--record", str(run_file)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
    live = StateModel()
    sub: RecordingSubscriber | None = None
    recorder: Recorder | None = None
    try:
        addresses: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while "replay" not in addresses and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            addresses = dict(re.findall(r"^(telemetry|control|replay): (tcp://\S+)$",
                                        log_path.read_text(), re.M))
            time.sleep(0.05)
        assert "replay" in addresses, log_path.read_text()
        sub = RecordingSubscriber(addresses["telemetry"], addresses["replay"])
        recorder = Recorder(reader_file).start()
        client = ControlClient(addresses["control"], timeout_s=2.0)
        changed = False
        started = time.monotonic()
        while proc.poll() is None:
            messages = sub.poll(2000, 20)
            if messages:
                now = time.time()
                live.fold_many(messages, received_at=now)
                recorder.write(sub.take_frames(), received_at=now)
            if not changed and time.monotonic() - started > 1.5:
                client.set_watermarks("dram", 0.7, 0.6)
                changed = True
        client.close()
        for _ in range(20):  # what the runtime sent last is already on its way
            messages = sub.poll(2000, 10)
            if messages:
                live.fold_many(messages, received_at=time.time())
                recorder.write(sub.take_frames())
        recorder.stop()
        rec_proc.send_signal(signal.SIGINT)  # what Ctrl-C does: drain, close, say what it did
        record_out, _ = rec_proc.communicate(timeout=30)
        yield Session(run_file, record_file, reader_file, live, log_path.read_text(),
                      record_out, rec_proc.returncode)
    finally:
        if sub is not None:
            sub.close()
        if recorder is not None:
            recorder.stop()
        for p in (proc, rec_proc):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL) if p is proc else p.kill()
                p.wait(timeout=10)


def free_endpoints(n: int) -> list[str]:
    """Loopback endpoints on ports free right now (held together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def state(model: StateModel) -> dict[str, Any]:
    snap = model.snapshot()
    snap.pop("connection")
    return dict(snap)


def test_replay_of_what_a_live_reader_recorded_equals_its_live_state(session: Session) -> None:
    assert session.live.messages.get("TierStats", 0) >= 10
    replayer = Replayer(session.reader_file)
    replayer.run_until(None)
    assert replayer.recording.complete
    assert state(replayer.model) == state(session.live)
    assert any(e.kind == "control" for e in replayer.recording.index)


def test_run_record_writes_a_whole_recording_of_the_run(session: Session) -> None:
    assert re.search(r"^recorded [\d,]+ messages to .*run\.ttrec", session.log, re.M), \
        session.log
    with Recording.open(session.run_file) as rec:
        assert rec.complete, rec.issues
        assert rec.hello is not None and rec.hello.mode == "model"
        assert [t.name for t in rec.hello.tiers] == ["dram", "disk"]
        topics = {r.topic for r in rec.iter_records()}
        assert {b"tt.stats", b"tt.requests", b"kv-events", b"tt.control"} <= topics
        controls = [e for e in rec.index if e.kind == "control"]
        assert len(controls) == 1 and "dram" in controls[0].label
        # Everything up to the runtime's last tick: the recorder drained before it closed.
        replayer = Replayer(rec)
        replayer.run_until(None)
        assert replayer.model.stats is not None
        # The runtime's final tick is in (the live reader saw it too).
        assert session.live.stats is not None
        assert replayer.model.stats.tick == session.live.stats.tick


def test_tiertop_record_beside_the_runtime(session: Session) -> None:
    assert session.record_rc == 0, session.record_out
    assert "recorded" in session.record_out
    with Recording.open(session.record_file) as rec:
        assert rec.complete, rec.issues
        assert rec.header["source"].startswith("tcp://127.0.0.1:")
        topics = {r.topic for r in rec.iter_records()}
        assert b"tt.stats" in topics and b"tt.snapshot" in topics  # joined via a snapshot
        assert rec.duration_s > 2.0  # it saw the whole run


def test_replay_and_export_run_headless_without_textual(session: Session,
                                                         tmp_path: Path) -> None:
    run = str(session.run_file)
    bad = tmp_path / "not-a-recording.txt"
    bad.write_text("nope")
    summary_json, text, info, interactive, export, refused = headless(
        ["replay", run, "--headless", "--json", "--phases", "before=0:2,after=2:"],
        ["replay", run, "--headless", "--phases", "controls"],
        ["replay", run, "--info"],
        ["replay", run],
        ["export", run, "--format", "parquet", "--out", str(tmp_path), "--plots"],
        ["export", str(bad), "--out", str(tmp_path / "x")],
    )
    assert summary_json.returncode == 0, summary_json.stderr
    summary = json.loads(summary_json.stdout)
    assert [p["name"] for p in summary["phases"]] == ["before", "after"]
    assert set(summary["phases"][1]["tiers"]) == {"dram", "disk"}
    assert summary["phases"][0]["service"]["requests"] + summary["phases"][1]["service"][
        "requests"] > 0
    assert summary["source"]["mode"] == "model"

    assert text.returncode == 0, text.stderr
    assert "phase start:" in text.stdout and "s SetWatermarks dram:" in text.stdout
    assert re.search(r"^\s+dram\s+[\d.]+%", text.stdout, re.M), text.stdout
    assert info.returncode == 0 and "control" in info.stdout
    assert interactive.returncode == 2 and "dash --replay" in interactive.stderr

    assert export.returncode == 0, export.stderr
    assert "tier_stats:" in export.stdout and "report:" in export.stdout
    for name in ("tier_stats.parquet", "requests.parquet", "summary.json", "manifest.json",
                 "index.html", "plots/occupancy.png", "plots/latency.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert refused.returncode == 1 and "not a tiertop recording" in refused.stderr


def test_record_sizes_parse() -> None:
    from tiertop.monitor.record_cli import _size

    assert _size("500MiB") == 500 << 20 and _size("2G") == 2 << 30 and _size("64k") == 64 << 10
    assert _size("1.5GB") == 1_500_000_000 and _size("1000") == 1000
    with pytest.raises(Exception, match="not a size"):
        _size("lots")
