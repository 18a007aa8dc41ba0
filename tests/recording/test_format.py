"""The recording file: round trip, crash safety (SIGKILL), truncation, corruption, keyframe
safety, size limits and retention."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tiertop.monitor.recording import (
    FILE_MAGIC,
    HEADER_BYTES,
    KIND_KEYFRAME,
    Recording,
    RecordingError,
    RecordingWriter,
    StreamFolder,
    is_recording,
    keyframe_fingerprint,
)
from tiertop.monitor.replay import Replayer

from tests.recording.streams import Frame, session

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, frames: list[Frame], **options: Any) -> RecordingWriter:
    options.setdefault("chunk_max_s", 2.0)
    writer = RecordingWriter(path, overwrite=True, **options)
    for r, topic, seq, payload in frames:
        writer.append(r, topic, seq, payload)
    writer.close()
    return writer


def state(model: Any) -> dict[str, Any]:
    snap = model.snapshot()
    snap.pop("connection")
    return dict(snap)


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return session(60.0)


def test_round_trip_keeps_every_frame_byte_for_byte(tmp_path: Path, frames: list[Frame]) -> None:
    path = tmp_path / "s.ttrec"
    writer = RecordingWriter(path, scenario="[run]\nmode = 'sim'\n", meta={"who": "test"},
                             chunk_max_s=2.0)
    for k, (r, topic, seq, payload) in enumerate(frames):
        writer.append(r, topic, seq, payload)
        if k == 100:
            writer.mark("warm-up done")
    writer.close()
    assert is_recording(path) and not is_recording(tmp_path)

    with Recording.open(path) as rec:
        assert rec.complete and rec.ok and rec.issues == []
        got = list(rec.iter_records())
        assert [(g.received_at, g.topic, g.seq, g.payload) for g in got] == frames
        assert [g.index for g in got] == list(range(len(frames)))
        assert all(a.t <= b.t for a, b in itertools.pairwise(got))  # session time
        assert rec.hello is not None and rec.hello.host == "testhost"
        assert [t.name for t in rec.hello.tiers] == ["dram", "remote", "disk"]
        assert rec.scenario == "[run]\nmode = 'sim'\n"
        assert rec.header["meta"] == {"who": "test"}
        assert rec.start_time == pytest.approx(0.0) and rec.duration_s == pytest.approx(60.0)
        kinds = [e.kind for e in rec.index]
        assert kinds.count("control") == 4 and kinds.count("fault") == 2
        assert kinds.count("health") == 2 and kinds.count("mark") == 1
        mark = next(e for e in rec.index if e.kind == "mark")
        assert mark.index == 101 and mark.label == "warm-up done"
        assert len(rec.chunks) >= 25  # one per 2 s of receive time
        text = "\n".join(rec.describe())
        assert "1,389 messages" in text and "4 control changes" in text


def test_a_writer_killed_with_sigkill_leaves_a_readable_prefix(tmp_path: Path) -> None:
    """A subprocess appends an endless stream; SIGKILL it mid-write; the file opens and holds
    exactly the stream's first N messages, N >= what it had flushed when killed."""
    path = tmp_path / "killed.ttrec"
    code = (
        "import sys\n"
        "from tiertop.monitor.recording import RecordingWriter\n"
        "from tests.recording.streams import session, cycle\n"
        "frames = session(30.0)\n"
        f"w = RecordingWriter({str(path)!r}, chunk_max_s=0.25, fsync_interval_s=None)\n"
        "for i, (r, topic, seq, payload) in cycle(frames):\n"
        "    w.append(i * 0.01, topic, seq, payload)\n"
        "    if i % 500 == 0:\n"
        "        print(i, w.stats.chunks, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    flushed_records = 0
    try:
        for line in proc.stdout:  # let it write a few hundred kB, then kill it mid-stream
            index, chunks = map(int, line.split())
            if chunks >= 3:
                flushed_records = max(flushed_records, index - 2 * 25 * 10)
            if path.stat().st_size > 300_000:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    frames = session(30.0)
    with Recording.open(path) as rec:
        assert rec.end is None and not rec.complete
        assert any("no end block" in i or "truncated" in i for i in rec.issues), rec.issues
        assert rec.ok or any(i.startswith("truncated") for i in rec.issues)
        got = list(rec.iter_records())
        assert len(got) > max(flushed_records, 1000)
        for rec_ in got:  # exactly the stream's prefix
            _, topic, seq, payload = frames[rec_.index % len(frames)]
            assert (rec_.topic, rec_.seq, rec_.payload) == (topic, seq, payload)
        assert [g.index for g in got] == list(range(len(got)))
        replayer = Replayer(rec)
        assert replayer.run_until(None) == len(got)
        assert replayer.model.stats is not None


def test_truncated_files_open_with_a_clear_message_and_their_readable_part(
    tmp_path: Path, frames: list[Frame]
) -> None:
    path = tmp_path / "full.ttrec"
    write(path, frames)
    data = path.read_bytes()
    with Recording.open(path) as full:
        chunks = full.chunks
        last = chunks[-1]
        middle = chunks[len(chunks) // 2]

    # Cut inside the last chunk's body: everything before it is there.
    cut = tmp_path / "cut1.ttrec"
    cut.write_bytes(data[: last.body_offset + last.body_len // 2])
    with Recording.open(cut) as rec:
        assert any(i.startswith("truncated: the block at offset") for i in rec.issues)
        assert f"offset {last.offset}" in rec.issues[0]
        assert rec.records == len(frames) - last.n
        assert not rec.ok and rec.end is None
        assert [r.payload for r in rec.iter_records()] == [f[3] for f in frames[: last.first]]

    # Cut inside a block header in the middle.
    cut2 = tmp_path / "cut2.ttrec"
    cut2.write_bytes(data[: middle.offset + HEADER_BYTES // 2])
    with Recording.open(cut2) as rec:
        assert rec.records == middle.first
        assert "incomplete" in rec.issues[0]

    # Cut inside the header block: nothing to read, a clear error.
    for size, needle in ((0, "empty or truncated before the header"),
                         (len(FILE_MAGIC) + 5, "no readable header")):
        bad = tmp_path / f"cut_{size}.ttrec"
        bad.write_bytes(data[:size])
        with pytest.raises(RecordingError, match=needle):
            Recording.open(bad)


def test_a_corrupt_chunk_is_reported_and_skipped_the_rest_is_read(
    tmp_path: Path, frames: list[Frame]
) -> None:
    path = tmp_path / "bad.ttrec"
    write(path, frames)
    with Recording.open(path) as rec:
        victim = rec.chunks[5]
    data = bytearray(path.read_bytes())
    data[victim.body_offset + victim.body_len // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with Recording.open(path) as rec:
        assert any(i.startswith(f"corrupt: checksum mismatch at offset {victim.offset}")
                   for i in rec.issues), rec.issues
        assert any(f"records {victim.first}..{victim.end - 1} are missing" in i
                   for i in rec.issues), rec.issues
        assert not rec.ok
        got = [r.index for r in rec.iter_records()]
        assert got == [i for i in range(len(frames)) if not victim.first <= i < victim.end]
        assert rec.end is not None  # the end block after the damage is found again
        replayer = Replayer(rec)
        assert replayer.run_until(None) == len(got)

    # A damaged header block: not readable as a recording at all.
    data = bytearray(path.read_bytes())
    data[len(FILE_MAGIC) + 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=r"first block is not a header|no readable header"):
        Recording.open(path)


def test_files_that_are_not_recordings_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello\n" * 100)
    with pytest.raises(RecordingError, match="not a tiertop recording"):
        Recording.open(other)
    with pytest.raises(RecordingError, match="cannot open"):
        Recording.open(tmp_path / "missing.ttrec")
    with pytest.raises(RecordingError, match="exists"):
        RecordingWriter(other)


def test_a_keyframe_that_would_run_code_is_refused_and_replay_folds_instead(
    tmp_path: Path, frames: list[Frame]
) -> None:
    path = tmp_path / "evil.ttrec"
    writer = RecordingWriter(path, keyframe_ratio=0)  # no keyframes of its own
    half = len(frames) // 2
    for r, topic, seq, payload in frames[:half]:
        writer.append(r, topic, seq, payload)
    writer.flush()
    evil = pickle.dumps({"model": {"x": os.system}, "decoder": None})
    writer._write_block(KIND_KEYFRAME, {  # a hand-made block: writers never write this
        "next": writer.next_index, "t": writer.folder.time, "r": 0.0,
        "fingerprint": keyframe_fingerprint(), "raw": len(evil)}, evil)
    for r, topic, seq, payload in frames[half:]:
        writer.append(r, topic, seq, payload)
    writer.close()

    with Recording.open(path) as rec:
        assert len(rec.keyframes) == 1
        with pytest.raises(RecordingError, match="not allowed"):
            rec.load_keyframe(rec.keyframes[0], StreamFolder())
        fold = Replayer(rec, use_keyframes=False)
        fold.run_until(None)
        replayer = Replayer(rec)
        replayer.run_until(None)
        replayer.seek(45.0)  # backwards: the bad keyframe is tried, refused, folded instead
        assert any("unusable" in i for i in replayer.issues)
        replayer.run_until(None)
        assert state(replayer.model) == state(fold.model)


def test_drop_oldest_retention_keeps_the_file_small_and_replays_from_a_keyframe(
    tmp_path: Path,
) -> None:
    frames = session(240.0)
    path = tmp_path / "capped.ttrec"
    cap = 128 << 10
    writer = write(path, frames, max_bytes=cap, keyframe_min_interval_s=2.0)
    assert writer.stats.compactions >= 1 and writer.stats.dropped_by_retention > 0
    assert path.stat().st_size <= cap * 1.2
    assert not (tmp_path / "capped.ttrec.compact").exists()
    with Recording.open(path) as rec:
        assert rec.ok and rec.end is not None
        base = rec.base
        assert base is not None and base["dropped"] == writer.stats.dropped_by_retention
        assert rec.first_index == base["first"] > 0
        assert rec.hello is not None  # the runtime description survives the cut
        assert "retention dropped the oldest" in "\n".join(rec.describe())
        replayer = Replayer(rec)
        assert replayer.keyframes_restored == 1  # the base state
        replayer.run_until(None)
        assert replayer.issues == []
        # The base keyframe plus what follows is exactly what the writer saw in full.
        assert state(replayer.model) == state(writer.model)


def test_retain_s_keeps_about_the_last_seconds(tmp_path: Path) -> None:
    frames = session(180.0)
    path = tmp_path / "recent.ttrec"
    writer = write(path, frames, retain_s=40.0, keyframe_min_interval_s=2.0,
                   keyframe_max_interval_s=10.0)
    assert writer.stats.compactions >= 1
    with Recording.open(path) as rec:
        span = rec.chunks[-1].r1 - rec.chunks[0].r0
        assert 40.0 <= span <= 40.0 * 1.25 + 10.0
        assert rec.end_time == pytest.approx(180.0)


def test_stop_at_the_size_limit(tmp_path: Path) -> None:
    frames = session(240.0)
    path = tmp_path / "stopped.ttrec"
    cap = 96 << 10
    writer = write(path, frames, max_bytes=cap, on_full="stop")
    assert writer.stats.dropped > 0 and "size limit" in writer.stats.stopped
    assert path.stat().st_size <= cap
    with Recording.open(path) as rec:
        assert rec.end is not None and rec.end["dropped"] == writer.stats.dropped
        assert rec.records + writer.stats.dropped == len(frames)
        assert [r.index for r in rec.iter_records()] == list(range(rec.records))
        assert any(e.kind == "mark" and "stopped" in e.label for e in rec.index)
    with pytest.raises(RecordingError, match="on_full"):
        RecordingWriter(tmp_path / "x.ttrec", on_full="explode")


def test_keyframes_are_a_bounded_share_of_the_file(tmp_path: Path) -> None:
    frames = session(300.0)
    path = tmp_path / "k.ttrec"
    started = time.perf_counter()
    writer = write(path, frames)
    assert time.perf_counter() - started < 20
    assert writer.stats.keyframes >= 2
    # The policy: a keyframe when the data since the last one reaches twice its size.
    assert writer.stats.keyframe_bytes <= 0.5 * writer.stats.file_bytes
