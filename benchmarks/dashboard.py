"""Dashboard under load: frames drawn, key-to-screen latency, memory over a long soak.

Run ``python -m benchmarks.dashboard`` for a table or ``--json`` for one JSON object
(``--quick`` for a short sanity run).

Everything is measured from outside, as a terminal sees it. ``tiertop dash`` runs as its own
process on a pseudo-terminal (160x48); this process plays the terminal: it reads everything the
dashboard writes, answers its query for synchronized output (so each frame arrives wrapped in
``ESC[?2026h`` … ``ESC[?2026l``, as in any modern terminal), and types keys. A producer process
publishes telemetry through the runtime's real :class:`TelemetryPublisher` over ZeroMQ on
loopback.

* ``render_fps_under_load``: frames the dashboard wrote to the terminal per second (synchronized
  update blocks counted on the pty), while the producer publishes 200,000 block events per
  second (plus per-tick tier statistics, finished requests and block moves) and the dashboard
  ingests them. The offered and ingested event rates are reported beside it.
* ``key_to_screen_ms_p99``: under the same load, time from writing ``z`` (zoom: every panel's
  history is redrawn over the new window) to the pty until the frame that names the new window
  (``zoom 5m`` …) has come out of it whole, up to the end of its synchronized update, when a
  terminal draws it; 99th percentile of many presses at irregular intervals. The CPU share of
  the dashboard's UI thread, of its other threads (folding, terminal I/O) and of its ingest
  process (decoding, block residency, the live MRC) over the frame count's window are
  reported beside it.
* ``rss_growth_mb_per_hour``: the resident memory of the dashboard and its ingest process
  together over a soak fed by a simulated runtime whose clock runs ``--speed`` times faster
  than the wall clock (tier statistics every virtual second, requests, moves and block events
  at matching rates); the slope of a least-squares line through RSS samples after a warm-up,
  per hour of telemetry. The slope per wall-clock hour is reported beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import multiprocessing as mp
import os
import pty
import random
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import Figure, parser, report

TIERS = ("gpu", "dram", "numa", "disk")
EVENTS_PER_S = 200_000
COLS, ROWS = 160, 48
SYNC_START = b"\x1b[?2026h"
SYNC_END = b"\x1b[?2026l"
SYNC_QUERY = b"\x1b[?2026$p"
SYNC_REPLY = b"\x1b[?2026;2$y"  # "supported, currently reset"
ZOOM_LABELS = (b"zoom 5m", b"zoom 15m", b"zoom all", b"zoom 1m")


# ---------------------------------------------------------------------------------- producer


def _producer(conn: Connection, events_per_s: float, speed: float, batch: int) -> None:
    """Publish until told to stop; report what was sent.

    ``speed``: virtual seconds per wall second (1: a real-time model runtime; > 1: a simulator
    running fast, for the soak).
    """
    from tiertop.monitor.protocol import (
        Hello,
        RequestDone,
        TierInfo,
        TierMove,
        TierMoves,
        TierSample,
        TierStats,
    )
    from tiertop.monitor.vllm_events import BlockRemoved, BlockStored
    from tiertop.runtime.publisher import TelemetryPublisher

    sim = speed != 1.0
    wall0 = time.time()
    clock0 = 0.0 if sim else wall0

    def vclock() -> float:
        return clock0 + (time.time() - wall0) * speed

    hello = Hello(
        mode="sim" if sim else "model", speed=speed,
        tiers=[TierInfo(name=t, kind=t, capacity_bytes=64 << 20, description=f"bench {t}")
               for t in TIERS],
    )
    pub = TelemetryPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", hello=hello,
                             clock=vclock, batch_max_events=batch, queue_capacity=200_000,
                             sndhwm=100_000)
    conn.send((pub.address, pub.replay_address))
    conn.recv()  # go

    # A pool of event batches: stored then removed, so every tier's resident set stays bounded.
    pool: list[list[Any]] = []
    for b in range(64):
        events: list[Any] = []
        for i in range(batch):
            key = (b * batch + i) % 40_000
            tier = TIERS[i & 3]
            if i % 2 == 0:
                events.append(BlockStored(block_hashes=[key], parent_block_hash=None,
                                          token_ids=[], block_size=16, lora_id=None,
                                          medium=tier, lora_name=None))
            else:
                events.append(BlockRemoved(block_hashes=[key - 1], medium=tier))
        pool.append(events)

    counters = {t: [0] * 12 for t in TIERS}
    tick = 0
    sent_events = 0
    requests = 0
    start = time.monotonic()
    next_stats = start
    stats_every = 0.25 if not sim else 1.0 / speed  # one tick per virtual second when fast
    rng = random.Random(7)
    stop = False
    while not stop:
        now = time.monotonic()
        # Block events on schedule.
        due = int((now - start) * events_per_s)
        while sent_events + batch <= due:
            pub.kv_events(list(pool[(sent_events // batch) % len(pool)]))
            sent_events += batch
        # Ticks (a few per loop at most when the soak runs fast).
        n_ticks = 0
        while next_stats <= now and n_ticks < 64:
            next_stats += stats_every
            n_ticks += 1
            tick += 1
            samples = []
            for k, t in enumerate(TIERS):
                c = counters[t]
                for j, inc in enumerate((90, 10, 20, 3, 5, 1, 6, 0, 20 << 14, 90 << 14, 0, 0)):
                    c[j] += inc
                hist = [0] * 64
                hist[12 + 3 * k + tick % 3] = 100
                samples.append(TierSample(
                    name=t, used_bytes=int((0.5 + 0.4 * math.sin(tick / 50 + k)) * (64 << 20)),
                    used_blocks=2000 + k, capacity_bytes=64 << 20, high_watermark=0.9,
                    low_watermark=0.8, eviction_policy="lru", hits=c[0], misses=c[1],
                    puts=c[2], promotions=c[3], demotions=c[4], drops=c[5], evictions=c[6],
                    deletes=c[7], bytes_in=c[8], bytes_out=c[9], latency={"get": hist},
                    latency_sum_ns={"get": 100 << (12 + 3 * k)},
                ))
            pub.publish(TierStats(tick=tick, interval_s=1.0, tiers=samples, queue_depth=tick % 5,
                                  requests_in_flight=3, request_rate=5.0, tokens_per_s=80.0,
                                  prefix_query_tokens=100 * tick, prefix_hit_tokens=70 * tick))
            for _ in range(3):
                requests += 1
                pub.publish(RequestDone(
                    request_id=f"r{requests}", conversation_id=f"c{requests % 50}",
                    ttft_s=rng.uniform(0.01, 0.2), tpot_s=rng.uniform(0.004, 0.01),
                    e2e_s=rng.uniform(0.1, 0.5), prompt_tokens=256, output_tokens=32,
                    prefix_tokens={"gpu": 128, "dram": 64}, recomputed_tokens=64,
                ))
            pub.publish(TierMoves(moves=[
                TierMove("demote", tick * 8 + m, "gpu", "dram", 16384, 2e-5, "watermark")
                for m in range(8)
            ]))
        if conn.poll(0):
            stop = conn.recv() == "stop"
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    pub.close()
    c = pub.counters()
    conn.send({"sent_events": sent_events, "seconds": elapsed, "ticks": tick,
               "dropped_events": c.dropped_events, "dropped_messages": c.dropped_messages})
    conn.close()


class Producer:
    def __init__(self, events_per_s: float, speed: float = 1.0, batch: int = 512) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_producer, args=(child, events_per_s, speed, batch),
                                daemon=True)
        self.proc.start()
        self.address, self.replay = self.conn.recv()

    def go(self) -> None:
        self.conn.send("go")

    def stop(self) -> dict[str, Any]:
        self.conn.send("stop")
        result: dict[str, Any] = self.conn.recv() if self.conn.poll(30) else {}
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        return result


# -------------------------------------------------------------------------------- terminal


class Terminal:
    """``tiertop dash`` on a pty; reads its output in a thread, answers its sync query."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor",
               "COLUMNS": str(COLS), "LINES": str(ROWS)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tiertop", "dash", *args],
                                     stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.lock = threading.Lock()
        self.frames: list[float] = []  # times of frame starts
        self.bytes = 0
        self._tail = b""
        self._want: bytes | None = None
        self._until_frame_end = False
        self._seen = False  # the wanted bytes came; waiting for the end of their frame
        self._found = threading.Event()
        self.found_at = 0.0
        self._stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic()
            with self.lock:
                buf = self._tail + data
                if SYNC_QUERY in buf:
                    os.write(self.master, SYNC_REPLY)
                self.bytes += len(data)
                start = max(0, len(self._tail) - len(SYNC_START) + 1)
                i = buf.find(SYNC_START, start)
                while i != -1:
                    self.frames.append(now)
                    i = buf.find(SYNC_START, i + 1)
                if self._want is not None and self._arrived(buf):
                    self.found_at = now
                    self._want = None
                    self._found.set()
                self._tail = buf[-64:]

    def _arrived(self, buf: bytes) -> bool:
        """Whether what is waited for is on the screen with this read (``buf``: the tail of
        the last read, then this one): the wanted bytes and, for a key's effect, the end of the
        synchronized update that carries them, when a terminal draws the frame."""
        assert self._want is not None
        new = len(self._tail)  # where this read starts in buf
        if not self._seen:
            i = buf.find(self._want, max(0, new - len(self._want) + 1))
            if i == -1:
                return False
            self._seen = True
            return not self._until_frame_end or buf.find(SYNC_END, i + len(self._want)) != -1
        return buf.find(SYNC_END, max(0, new - len(SYNC_END) + 1)) != -1

    def _expect(self, marker: bytes, until_frame_end: bool) -> None:
        with self.lock:
            self._want = marker
            self._until_frame_end = until_frame_end
            self._seen = False
            self._found.clear()

    def frames_between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(1 for t in self.frames if t0 <= t < t1)

    def key_to_screen(self, key: bytes, expect: bytes, timeout: float = 5.0) -> float | None:
        """Seconds from writing ``key`` until the frame that shows ``expect`` has been written
        whole (its synchronized update ended: a terminal draws it then)."""
        self._expect(expect, until_frame_end=True)
        t0 = time.monotonic()
        os.write(self.master, key)
        if not self._found.wait(timeout):
            with self.lock:
                self._want = None
            return None
        return self.found_at - t0

    def wait_output(self, marker: bytes, timeout: float) -> bool:
        self._expect(marker, until_frame_end=False)
        return self._found.wait(timeout)

    def thread_cpu(self) -> tuple[float, float, float]:
        """CPU seconds of the dashboard's main (UI) thread, of all its other threads, and of
        its child processes (the ingest process)."""
        process = psutil.Process(self.proc.pid)
        ui = other = children = 0.0
        for t in process.threads():
            if t.id == process.pid:
                ui += t.user_time + t.system_time
            else:
                other += t.user_time + t.system_time
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cpu = child.cpu_times()
                children += cpu.user + cpu.system
        return ui, other, children

    def rss(self) -> int:
        """Resident memory of the dashboard and its ingest process together."""
        process = psutil.Process(self.proc.pid)
        rss: int = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                rss += child.memory_info().rss
        return rss

    def quit(self) -> int | None:
        with contextlib.suppress(OSError):
            os.write(self.master, b"q")
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = None
        self._stop = True
        self.thread.join(2)
        os.close(self.master)
        return code


def _dash_args(p: Producer, stats: Path) -> list[str]:
    return ["--connect", p.address, "--replay-addr", p.replay, "--read-only",
            "--stats-out", str(stats)]


# ---------------------------------------------------------------------------------- phases


def load_phase(seconds: float, presses: int, events_per_s: float) -> dict[str, Any]:
    producer = Producer(events_per_s)
    stats_file = Path(tempfile.mkstemp(prefix="tiertop-dash-stats-", suffix=".json")[1])
    term = Terminal(_dash_args(producer, stats_file))
    try:
        if not term.wait_output(b"LIVE", 60):  # connected and drawing
            raise RuntimeError("the dashboard did not come up")
        producer.go()
        time.sleep(3.0)  # warm up: the ingest reaches its steady state
        threads0 = term.thread_cpu()
        t0 = time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        threads1 = term.thread_cpu()
        frames = term.frames_between(t0, t1)
        cpu = psutil.Process(term.proc.pid).cpu_times()
        latencies: list[float] = []
        missed = 0
        rng = random.Random(3)
        for i in range(presses):
            got = term.key_to_screen(b"z", ZOOM_LABELS[i % len(ZOOM_LABELS)])
            if got is None:
                missed += 1
            else:
                latencies.append(got)
            time.sleep(rng.uniform(0.05, 0.25))
        sent = producer.stop()
    finally:
        code = term.quit()
    stats = json.loads(stats_file.read_text()) if stats_file.stat().st_size else {}
    stats_file.unlink(missing_ok=True)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] \
        if latencies else None
    sub = stats.get("subscriber", {})
    return {
        "fps": frames / (t1 - t0),
        "frames": frames,
        "measure_s": t1 - t0,
        "key_p99_ms": p99 * 1e3 if p99 is not None else None,
        "key_p50_ms": statistics.median(latencies) * 1e3 if latencies else None,
        "key_slowest_ms": [round(x * 1e3, 1) for x in latencies[-5:]],
        "key_presses": presses,
        "key_missed": missed,
        "offered_events_per_s": sent.get("sent_events", 0) / max(sent.get("seconds", 1), 1e-9),
        "publisher_dropped_events": sent.get("dropped_events"),
        "ingested_events": sub.get("events"),
        "ingested_events_per_s": (sub.get("events", 0) / max(sent.get("seconds", 1), 1e-9)),
        "gaps": stats.get("gaps"),
        "unrecovered": stats.get("unrecovered"),
        "dashboard_refreshes": stats.get("refreshes"),
        "dashboard_cpu_s": cpu.user + cpu.system,
        "ui_thread_cpu_share": (threads1[0] - threads0[0]) / (t1 - t0),
        "other_threads_cpu_share": (threads1[1] - threads0[1]) / (t1 - t0),
        "ingest_process_cpu_share": (threads1[2] - threads0[2]) / (t1 - t0),
        "mrc_followed": not stats.get("mrc", {}).get("paused", True),
        "mrc_ns_per_event": stats.get("mrc", {}).get("ns_per_event"),
        "mrc_changes": [c["kind"] for c in stats.get("mrc", {}).get("changes", [])],
        "dashboard_exit": code,
    }


def soak_phase(seconds: float, speed: float) -> dict[str, Any]:
    producer = Producer(20_000, speed=speed, batch=256)
    stats_file = Path(tempfile.mkstemp(prefix="tiertop-dash-stats-", suffix=".json")[1])
    term = Terminal(_dash_args(producer, stats_file))
    samples: list[tuple[float, int]] = []
    try:
        if not term.wait_output(b"LIVE", 60):
            raise RuntimeError("the dashboard did not come up")
        producer.go()
        t0 = time.monotonic()
        while (now := time.monotonic()) - t0 < seconds:
            samples.append((now - t0, term.rss()))
            time.sleep(0.5)
        sent = producer.stop()
    finally:
        term.quit()
    stats_file.unlink(missing_ok=True)
    warm = [(t, r) for t, r in samples if t >= seconds * 0.25]
    ts = [t for t, _ in warm]
    rs = [r / 2**20 for _, r in warm]
    slope = statistics.linear_regression(ts, rs).slope if len(warm) > 2 else float("nan")
    return {
        "mb_per_virtual_hour": slope * 3600 / speed,
        "mb_per_wall_hour": slope * 3600,
        "virtual_hours": seconds * speed / 3600,
        "wall_s": seconds,
        "speed": speed,
        "rss_start_mb": samples[0][1] / 2**20 if samples else None,
        "rss_end_mb": samples[-1][1] / 2**20 if samples else None,
        "rss_max_mb": max(r for _, r in samples) / 2**20 if samples else None,
        "ticks": sent.get("ticks"),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "dashboard benchmark")
    p.add_argument("--seconds", type=float, default=None, help="fps measurement window")
    p.add_argument("--presses", type=int, default=None, help="key presses timed")
    p.add_argument("--soak-s", type=float, default=None, help="soak length in wall seconds")
    p.add_argument("--events-per-s", type=float, default=EVENTS_PER_S,
                   help="block events per second during the load phase (default 200,000)")
    p.add_argument("--no-soak", action="store_true", help="skip the soak")
    p.add_argument("--speed", type=float, default=240.0,
                   help="soak clock speed: virtual seconds per wall second (default 240)")
    args = p.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    presses = args.presses or (40 if args.quick else 150)
    soak_s = args.soak_s or (20.0 if args.quick else 90.0)
    load_avg_before = [round(x, 2) for x in os.getloadavg()]
    load = load_phase(seconds, presses, args.events_per_s)
    if args.no_soak:
        print(json.dumps(load, indent=1))
        return
    soak = soak_phase(soak_s, args.speed)
    figures = [
        Figure("render_fps_under_load", round(load["fps"], 2), "frames/s", ">= 10",
               f"{load['offered_events_per_s']:,.0f} events/s offered, "
               f"{load['ingested_events_per_s']:,.0f}/s ingested"),
        Figure("key_to_screen_ms_p99",
               round(load["key_p99_ms"], 1) if load["key_p99_ms"] is not None else None,
               "ms", "<= 100",
               f"p50 {load['key_p50_ms']:.1f} ms, {load['key_presses']} presses, "
               f"{load['key_missed']} missed; CPU: UI thread "
               f"{load['ui_thread_cpu_share']:.0%}, other threads "
               f"{load['other_threads_cpu_share']:.0%}, ingest process "
               f"{load['ingest_process_cpu_share']:.0%}" if load["key_p50_ms"] is not None
               else ""),
        Figure("rss_growth_mb_per_hour", round(soak["mb_per_virtual_hour"], 2), "MB/h",
               "<= 10",
               f"{soak['virtual_hours']:.1f} h of telemetry in {soak['wall_s']:.0f} s "
               f"(x{soak['speed']:g}); {soak['mb_per_wall_hour']:.1f} MB per wall hour"),
    ]
    report("tiertop dashboard (tiertop dash on a pty, 160x48)", figures, args.json,
           {"load": load, "soak": soak, "events_per_s_target": EVENTS_PER_S,
            "machine_load_average": load_avg_before,
            "note": "wall-clock figures; a shared machine's other work shows in them"})


if __name__ == "__main__":
    main()
