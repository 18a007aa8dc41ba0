"""Recording and replay: how fast a recording replays, what recording costs the runtime, and how
many bytes it takes on disk.

Run ``python -m benchmarks.recording`` for a table or ``--json`` for one JSON object.

- **replay_speed_vs_realtime**: a 10-minute simulated session (:func:`session_frames`: 4 tiers,
  4 TierStats ticks a second with latency histograms, ~20 requests a second with their block
  events in vLLM-shaped batches, moves, heartbeats, a control change a minute; about 97 messages
  and 230 block events a second, the order of what the model runtime publishes under a busy
  workload) is written to a recording with the real writer (keyframes and all), then replayed
  headless at maximum speed exactly as ``tiertop replay --headless`` does (open, decode, fold
  through the state model, per-phase summary). Figure: session seconds over wall seconds of the
  replay, best of ``--repeats``.
- **record_overhead**: requests/s completed by the real model runtime (:class:`ModelRuntime`,
  tiny GPT-2 shape, tiers ``dram:1MiB`` + ``disk:8MiB``, every request a new conversation on
  one of four shared system prompts, arrivals far above what it serves, so it is always busy
  at a steady cost per request) with a :class:`Recorder` subscribed to its telemetry in the
  same process (what ``tiertop run --record`` does) over the same without. Two identical
  runtime processes serve side by side; in each round one has a recorder attached (they take
  turns), and both count the requests completed over the same ``--segment-s`` window, so
  whatever else the machine does slows both alike. The figure is the mean of the per-round
  ratios over ``2 * --pairs`` rounds; the rounds, and the recorder thread's own CPU time per
  second (``recorder_cpu_share``), are in the details.
- **bytes_per_event**: bytes on disk per recorded message (one message = one event on the wire:
  a stats tick, a batch of block events, a finished request...) of the 10-minute session,
  keyframes and index included; bytes per block event and the compression ratio are in the
  details, as are the same figures for the real runtime's recordings of the overhead trials.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tiertop.monitor.framing import MessageCodec
from tiertop.monitor.protocol import (
    TOPIC_KV,
    TOPIC_OF,
    ControlChange,
    Heartbeat,
    Hello,
    RequestDone,
    TelemetryMessage,
    TierInfo,
    TierMove,
    TierMoves,
    TierSample,
    TierStats,
    Topology,
)
from tiertop.monitor.recording import Recording, RecordingWriter
from tiertop.monitor.replay import Replayer
from tiertop.monitor.summary import parse_phases, summarize_replay
from tiertop.monitor.vllm_events import BlockRemoved, BlockStored, encode_batch
from tiertop.tiers.stats import N_BUCKETS

from benchmarks.common import Figure, parser, report

TIERS = ("gpu", "dram", "remote", "disk")
Frame = tuple[float, bytes, int, bytes]


def session_frames(duration_s: float = 600.0, seed: int = 0, rate: float = 20.0
                   ) -> list[Frame]:
    """A simulated session as received frames ``(received_at, topic, seq, payload)``."""
    rng = random.Random(seed)
    codec = MessageCodec()
    seqs: dict[bytes, int] = {}
    frames: list[Frame] = []

    def emit(t: float, topic: bytes, payload: bytes) -> None:
        seq = seqs.get(topic, 0)
        seqs[topic] = seq + 1
        frames.append((1.7e9 + t + 0.0005, topic, seq, payload))

    def message(t: float, m: TelemetryMessage) -> None:
        topic = TOPIC_OF[type(m)].encode()
        m.source, m.epoch, m.seq, m.clock = "sim:1", 1, seqs.get(topic, 0), t
        emit(t, topic, codec.encode(m))

    message(0.0, Hello(mode="sim", speed=1.0, topology=Topology(tier_order=list(TIERS),
                                                               model="gpt2-small"),
                       tiers=[TierInfo(name=n, kind=n, capacity_bytes=1 << 30) for n in TIERS]))
    cum = {n: dict.fromkeys(("hits", "misses", "puts", "evictions", "promotions",
                             "demotions", "bytes_in", "bytes_out"), 0) for n in TIERS}
    used = {n: 1 << 29 for n in TIERS}
    key = 0
    tick = 0
    next_tick, next_hb, next_req = 0.25, 0.5, rng.expovariate(rate)
    kv_topic = TOPIC_KV.encode()
    while True:
        t = min(next_tick, next_hb, next_req)
        if t > duration_s:
            break
        if t == next_req:
            n = len(frames)
            served = rng.choice(TIERS)
            message(t, RequestDone(
                request_id=str(n), conversation_id=str(n % 97), ttft_s=rng.uniform(0.01, 0.2),
                tpot_s=rng.uniform(0.005, 0.02), e2e_s=rng.uniform(0.2, 1.0),
                prompt_tokens=256, output_tokens=32, prefix_tokens={served: 128},
                recomputed_tokens=128, fetch_bytes={served: 1 << 20},
                fetch_latency_s={served: rng.uniform(1e-4, 5e-3)}))
            events: list[Any] = []
            for _ in range(rng.randint(4, 12)):
                key += 1
                tier = rng.choice(TIERS)
                events.append(BlockStored([key], key - 1, [], 16, None, tier, None))
                used[tier] += 1 << 16
                if rng.random() < 0.5:
                    gone = rng.choice(TIERS)
                    events.append(BlockRemoved([key - rng.randint(1, 500)], gone))
                    used[gone] = max(0, used[gone] - (1 << 16))
            for i in range(0, len(events), 4):  # the publisher batches per few ms
                emit(t, kv_topic, encode_batch(events[i:i + 4], t))
            if rng.random() < 0.3:
                message(t, TierMoves(moves=[
                    TierMove("demote", key - j, "gpu", "dram", 1 << 16, 1e-4, "watermark", t)
                    for j in range(rng.randint(1, 6))]))
            for tier in TIERS:
                c = cum[tier]
                c["hits"] += rng.randint(0, 10)
                c["misses"] += rng.randint(0, 3)
                c["puts"] += 3
                c["evictions"] += rng.randint(0, 2)
                c["bytes_in"] += 3 << 16
            next_req = t + rng.expovariate(rate)
        elif t == next_tick:
            tick += 1
            hist_get = [0] * N_BUCKETS
            for _ in range(40):
                hist_get[rng.randint(10, 24)] += 1
            samples = [TierSample(
                name=n, used_bytes=min(used[n], 1 << 30), used_blocks=used[n] >> 16,
                capacity_bytes=1 << 30, high_watermark=0.9, low_watermark=0.8,
                eviction_policy="lru", latency={"get": list(hist_get), "put": list(hist_get)},
                latency_sum_ns={"get": 40 * 50_000, "put": 40 * 60_000}, **cum[n],
            ) for n in TIERS]
            message(t, TierStats(tick=tick, interval_s=0.25, tiers=samples,
                                 placement_policy="top", promotion_policy="on-hit",
                                 queue_depth=rng.randint(0, 8), request_rate=rate,
                                 tokens_per_s=rate * 32, rss_bytes=1 << 30))
            if tick % 240 == 0:
                message(t, ControlChange(command="set_watermarks", target="dram",
                                         old={"high": 0.9}, new={"high": 0.85}, by="bench"))
            next_tick += 0.25
        else:
            message(t, Heartbeat(topic_seqs={}, uptime_s=t))
            next_hb += 0.5
    return frames


def write_session(path: Path, frames: list[Frame]) -> float:
    """Write the frames with the real writer; wall seconds it took."""
    started = time.perf_counter()
    with RecordingWriter(path, overwrite=True) as writer:
        for r, topic, seq, payload in frames:
            writer.append(r, topic, seq, payload)
    return time.perf_counter() - started


def replay_headless(path: Path) -> tuple[float, float]:
    """What ``tiertop replay --headless --phases ...`` does; (wall seconds, session seconds)."""
    started = time.perf_counter()
    with Recording.open(path) as rec:
        replayer = Replayer(rec)
        summary = summarize_replay(replayer, parse_phases("0:120,120:300,300:"))
    elapsed = time.perf_counter() - started
    assert summary.phases[-1].complete
    return elapsed, replayer.duration_s


def disk_figures(path: Path) -> dict[str, Any]:
    with Recording.open(path) as rec:
        records = rec.records
        payload = 0
        events = 0
        from tiertop.monitor.vllm_events import decode_batch

        for r in rec.iter_records():
            payload += len(r.payload)
            if r.topic == TOPIC_KV.encode():
                events += len(decode_batch(r.payload).events)
        size = rec.file_bytes
        keyframe_bytes = sum(k.body_len for k in rec.keyframes)
        return {
            "file_bytes": size,
            "messages": records,
            "block_events": events,
            "payload_bytes": payload,
            "bytes_per_message": size / records if records else None,
            "bytes_per_block_event": size / events if events else None,
            "payload_bytes_per_message": payload / records if records else None,
            "compression_ratio": payload / size if size else None,
            "keyframes": len(rec.keyframes),
            "keyframe_share": keyframe_bytes / size if size else None,
            "duration_s": rec.duration_s,
        }


# ------------------------------------------------------------------------------ overhead

#: One runtime process of the overhead measurement: serves on a thread, and on stdin takes
#: ``rec PATH`` (attach a recorder, as ``tiertop run --record`` does), ``unrec`` (stop it),
#: ``count`` (answers ``COMPLETED PERF_COUNTER RECORDER_CPU_S``, or ``dead`` when its serving
#: thread died) and ``quit``.
WORKER = r"""
import sys, tempfile, threading, time
from tiertop.monitor.recorder import finish_runtime_recording, record_runtime
from tiertop.runtime.model_runtime import ModelRuntime, RuntimeConfig
from tiertop.runtime.workload import LengthSpec, WorkloadParams
from tiertop.tiers.spec import TierSpec

config = RuntimeConfig(
    tiers=[TierSpec.parse("dram:1MiB"), TierSpec.parse("disk:8MiB")], model="tiny", seed=0,
    workload=WorkloadParams(
        lambda_rate=500.0, new_conv_prob=1.0, seed=0, system_prompts=4, system_prompt_len=96,
        prompt=LengthSpec.lognormal(48, sigma=0.5, min=1, max=192),
        output=LengthSpec.lognormal(16, sigma=0.3, min=1, max=64)),
    publish="tcp://127.0.0.1:0", replay="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
    duration_s=None, tick_s=0.25, workdir=tempfile.gettempdir())
runtime = ModelRuntime(config)
serving = threading.Thread(target=runtime.run, daemon=True)
serving.start()
recorder = None
records = 0
print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "rec":
        recorder = record_runtime(arg, runtime.addresses)
        print("ok", flush=True)
    elif cmd == "unrec":
        records = finish_runtime_recording(recorder, None).records
        recorder = None
        print(f"ok {records}", flush=True)
    elif cmd == "count":
        if not serving.is_alive():
            print("dead", flush=True)
            continue
        cpu = recorder.cpu_seconds() if recorder is not None else None
        print(runtime.completed, time.perf_counter(), -1.0 if cpu is None else cpu, flush=True)
    elif cmd == "quit":
        break
runtime.stop()
serving.join(timeout=60)  # let it finish the request in hand before the tiers close
runtime.close()
"""


class _Worker:
    def __init__(self) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.ask_raw(None) == "ready"

    def ask_raw(self, line: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"benchmark worker died answering {line!r}")
        return answer

    def count(self) -> tuple[int, float, float]:
        answer = self.ask_raw("count")
        if answer == "dead":
            raise RuntimeError("a benchmark runtime stopped serving (see its traceback)")
        completed, at, cpu = answer.split()
        return int(completed), float(at), float(cpu)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask_raw("quit")
        self.proc.wait(timeout=30)


def record_overhead(pairs: int, segment_s: float, tmp: Path) -> tuple[float, dict[str, Any]]:
    """Two identical model-runtime processes serve a steady, saturating workload side by side;
    in each round one of them has a recorder attached (alternating), and both count the
    requests they complete over the same wall-clock window. Whatever else the machine does
    slows both alike, so the ratio of the two rates in one window is what the recorder costs;
    the figure is the mean of the per-round ratios (half the rounds with each process
    recording, which cancels any difference between the two)."""
    workers = [_Worker(), _Worker()]
    ratios: list[float] = []
    rates_with: list[float] = []
    rates_without: list[float] = []
    cpu_share: list[float] = []
    recorded: list[int] = []
    try:
        time.sleep(3.0)  # warm-up: first forwards, the tiers fill
        for i in range(2 * pairs):
            rec, plain = workers[i % 2], workers[1 - i % 2]
            assert rec.ask_raw(f"rec {tmp / f'overhead-{i}.ttrec'}") == "ok"
            time.sleep(0.3)
            r0, p0 = rec.count(), plain.count()
            time.sleep(segment_s)
            r1, p1 = rec.count(), plain.count()
            with_rate = (r1[0] - r0[0]) / (r1[1] - r0[1])
            without_rate = (p1[0] - p0[0]) / (p1[1] - p0[1])
            if r0[2] >= 0 and r1[2] >= 0:
                cpu_share.append((r1[2] - r0[2]) / (r1[1] - r0[1]))
            recorded.append(int(rec.ask_raw("unrec").split()[1]))
            rates_with.append(with_rate)
            rates_without.append(without_rate)
            ratios.append(with_rate / without_rate if without_rate > 0 else float("nan"))
    finally:
        for w in workers:
            w.close()
    ratio = statistics.fmean(ratios)
    disk = disk_figures(tmp / "overhead-0.ttrec")
    details = {
        "rounds": len(ratios),
        "segment_s": segment_s,
        "requests_per_s_with": [round(r, 2) for r in rates_with],
        "requests_per_s_without": [round(r, 2) for r in rates_without],
        "round_ratios": [round(r, 4) for r in ratios],
        "median_round_ratio": round(statistics.median(ratios), 4),
        "ratio_stdev": round(statistics.stdev(ratios), 4) if len(ratios) > 1 else None,
        "recorder_cpu_share": round(statistics.mean(cpu_share), 5) if cpu_share else None,
        "recorded_messages_per_round": recorded,
        "runtime_recording_on_disk": disk,
    }
    return ratio, details


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "recording benchmark")
    p.add_argument("--repeats", type=int, default=3, help="replays of the session (best)")
    p.add_argument("--pairs", type=int, default=16, help="with/without segment pairs")
    p.add_argument("--segment-s", type=float, default=2.0, help="seconds per segment")
    p.add_argument("--session-s", type=float, default=600.0, help="simulated session length")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.pairs, args.segment_s = 1, 3, 2.0
    with tempfile.TemporaryDirectory(prefix="tiertop-bench-rec-") as d:
        tmp = Path(d)
        frames = session_frames(args.session_s)
        path = tmp / "session.ttrec"
        write_s = write_session(path, frames)
        best = min(replay_headless(path)[0] for _ in range(args.repeats))
        session_s = args.session_s
        speed = session_s / best
        disk = disk_figures(path)
        ratio, overhead = record_overhead(args.pairs, args.segment_s, tmp)
    figures = [
        Figure("replay_speed_vs_realtime", round(speed, 1), "x", ">= 100",
               f"{session_s:.0f} s session replayed in {best:.2f} s"),
        Figure("record_overhead", round(ratio, 4), "ratio", ">= 0.98",
               "runtime requests/s with a recorder over without"),
        Figure("bytes_per_event", round(disk["bytes_per_message"], 1), "B",
               note=f"{disk['bytes_per_block_event']:.1f} B per block event, "
                    f"{disk['compression_ratio']:.1f}x smaller than the payloads"),
    ]
    details = {
        "session": {
            "duration_s": session_s,
            "messages": len(frames),
            "messages_per_s": len(frames) / session_s,
            "write_s": round(write_s, 3),
            "write_speed_vs_realtime": round(session_s / write_s, 1),
            "replay_s_best": round(best, 3),
            "disk": disk,
        },
        "record_overhead": overhead,
    }
    report("Recording and replay", figures, args.json, details)


if __name__ == "__main__":
    main()
