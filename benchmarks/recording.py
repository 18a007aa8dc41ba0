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
- **record_overhead**: the real model runtime's throughput (:class:`ModelRuntime`, tiny GPT-2 shape,
  tiers ``dram:1MiB`` + ``disk:8MiB``, arrivals far above what it serves, every request the same
  shape: one shared system prompt, 48 new tokens, 16 out) with a recorder attached by
  :func:`record_runtime` exactly as ``tiertop run --record`` attaches it (a child
  :class:`RecorderProcess` subscribed to the runtime's endpoints) over the same without, as
  *requests per CPU second of the runtime process* (every thread): CPU time is what a neighbour on a
  busy box cannot take from a round, where wall-clock rates swing by tens of percent. One runtime
  process, ``--pairs`` pairs of ``--segment-s`` rounds in A-B / B-A order, whole requests only
  (stamped at completions); the CPU recording adds outside the serving thread is paired round
  against round, so a 2 % cost is resolvable (see :func:`record_overhead`). Standard errors, the
  directly paired process-CPU ratio, the serving thread's own ratio, the wall-clock ratio, the
  recorder's own CPU (its child process) and the ratio counting that CPU as the runtime's are in the
  details.
- **bytes_per_event**: bytes on disk per recorded message (one message = one event on the wire:
  a stats tick, a batch of block events, a finished request...) of the 10-minute session,
  keyframes and index included; bytes per block event and the compression ratio are in the
  details, as are the same figures for the real runtime's recordings of the overhead trials.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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

#: The runtime process of the overhead measurement: serves a fixed request shape on a thread,
#: and on stdin takes ``rec PATH`` (attach a recorder exactly as ``tiertop run --record`` does),
#: ``unrec`` (finish it as ``tiertop run`` does when it stops), ``stamp`` (answers
#: ``COMPLETED PROCESS_CPU_S WALL_S SERVING_CPU_S`` as of the last request completion, then the
#: recorder's CPU seconds now, its child process's; ``dead`` when the serving thread died) and
#: ``quit``.
#: Stamping at completions, not when asked, means a round counts whole requests only.
WORKER = r"""
import sys, tempfile, threading, time
from tiertop.monitor.recorder import finish_runtime_recording, record_runtime
from tiertop.runtime.model_runtime import ModelRuntime, RuntimeConfig
from tiertop.runtime.workload import LengthSpec, WorkloadParams
from tiertop.tiers.spec import TierSpec

config = RuntimeConfig(
    tiers=[TierSpec.parse("dram:1MiB"), TierSpec.parse("disk:8MiB")], model="tiny", seed=0,
    threads=1,
    workload=WorkloadParams(
        lambda_rate=500.0, new_conv_prob=1.0, seed=0, system_prompts=1, system_prompt_len=96,
        prompt=LengthSpec.fixed(48), output=LengthSpec.fixed(16)),
    publish="tcp://127.0.0.1:0", replay="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
    duration_s=None, tick_s=0.25, workdir=tempfile.gettempdir())
runtime = ModelRuntime(config)
stamp = (0, 0.0, 0.0, 0.0)
serve = runtime._serve

def serve_and_stamp(request):
    global stamp
    serve(request)
    thread = time.clock_gettime(time.pthread_getcpuclockid(threading.get_ident()))
    stamp = (runtime.completed, time.process_time(), time.perf_counter(), thread)

runtime._serve = serve_and_stamp
serving = threading.Thread(target=runtime.run, daemon=True)
serving.start()
recorder = None
print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "rec":
        recorder = record_runtime(arg, runtime.addresses)
        print("ok", flush=True)
    elif cmd == "unrec":
        records = finish_runtime_recording(recorder, runtime.publisher).records
        recorder = None
        print(f"ok {records}", flush=True)
    elif cmd == "stamp":
        if not serving.is_alive():
            print("dead", flush=True)
            continue
        cpu = recorder.cpu_seconds() if recorder is not None else 0.0
        print(*stamp, -1.0 if cpu is None else cpu, flush=True)
    elif cmd == "quit":
        break
runtime.stop()
serving.join(timeout=60)  # let it finish the request in hand before the tiers close
runtime.close()
"""


@dataclass(frozen=True, slots=True)
class _Stamp:
    completed: int
    process_cpu_s: float
    wall_s: float
    serving_cpu_s: float
    recorder_cpu_s: float


class _Worker:
    def __init__(self) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.ask(None) == "ready"

    def ask(self, line: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"benchmark worker died answering {line!r}")
        return answer

    def stamp(self) -> _Stamp:
        answer = self.ask("stamp")
        if answer == "dead":
            raise RuntimeError("the benchmark runtime stopped serving (see its traceback)")
        completed, *rest = answer.split()
        return _Stamp(int(completed), *(float(x) for x in rest))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        self.proc.wait(timeout=30)


@dataclass(slots=True)
class _Round:
    """One round: whole requests between two completions, and the CPU seconds spent on them."""

    recording: bool
    requests: int
    wall_s: float
    process_cpu_s: float  # every thread of the runtime process
    serving_cpu_s: float  # the thread that serves requests (forwards, tiers)
    recorder_cpu_s: float  # the recorder's own (its child process)
    recorded: int

    @property
    def other_cpu_per_request(self) -> float:
        """CPU seconds per request outside the serving thread: publisher, ZeroMQ, control
        server, and the recorder when attached: where recording costs."""
        return (self.process_cpu_s - self.serving_cpu_s) / self.requests


def _round(worker: _Worker, recording: bool, segment_s: float, path: Path) -> _Round:
    if recording:
        assert worker.ask(f"rec {path}") == "ok"  # joined: it waits for the runtime's Hello
    time.sleep(0.3)  # past the join's snapshot
    a = worker.stamp()
    time.sleep(segment_s)
    b = worker.stamp()
    recorded = int(worker.ask("unrec").split()[1]) if recording else 0
    n = b.completed - a.completed
    if n < 2 or b.process_cpu_s <= a.process_cpu_s:
        raise RuntimeError(f"a {segment_s:g} s round completed {n} requests: too short a round "
                           "for this machine (raise --segment-s)")
    return _Round(recording, n, b.wall_s - a.wall_s, b.process_cpu_s - a.process_cpu_s,
                  b.serving_cpu_s - a.serving_cpu_s, b.recorder_cpu_s - a.recorder_cpu_s,
                  recorded)


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error."""
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def _rounded(pair: tuple[float, float], digits: int = 4) -> list[float]:
    return [round(pair[0], digits), round(pair[1], digits)]


def record_overhead(pairs: int, segment_s: float, tmp: Path) -> tuple[float, dict[str, Any]]:
    """One model-runtime process serves a saturating stream of identical requests (tiny GPT-2
    shape, ``dram:1MiB`` + ``disk:8MiB``, one shared system prompt then 48 new tokens, 16 out;
    one torch thread) in rounds, alternately with and without a :class:`Recorder` attached in
    :func:`record_runtime` (what ``tiertop run --record`` does: a child process subscribed to
    the runtime's endpoints), in A-B, B-A, A-B...
    pairs so that a slow drift cancels. Each round takes whole requests between two
    completions and the CPU time spent on them: of the whole process, and of the serving
    thread alone.

    Work per CPU second is what other processes cannot take from a round, but on a busy box it still
    swings by about 10 % from second to second (caches and memory shared with neighbours), in the
    serving thread's forwards. Recording adds CPU time outside that thread (the recorder's, the
    publisher's and ZeroMQ's sending to one more subscriber), which the neighbours hardly touch. The
    recorder's own process is not the runtime's: its CPU is reported beside the figure, with the
    same ratio charging it to the runtime too (``other_with`` plus the recorder process's CPU per
    request: what the machine pays). So the figure is requests per process-CPU second with the
    recorder over without, computed as ``(serving + other_without) / (serving + other_with)`` per
    request: ``other`` (outside the serving thread) paired round against round, ``serving`` pooled
    over every round. Beside it, with standard errors: the same ratio taken directly from each
    pair's process CPU time, the serving thread's own work per CPU second with over without (does
    the recorder slow the serving thread itself, e.g. by holding the GIL or polluting caches? then
    this is below 1), and requests per wall second with over without (the noisiest: it moves with
    whatever else runs)."""
    worker = _Worker()
    rounds: list[_Round] = []
    try:
        warm = worker.stamp()
        time.sleep(3.0)  # warm-up: first forwards, the tiers fill, a steady eviction rate
        if worker.stamp().completed - warm.completed < 2:
            raise RuntimeError("the runtime completes under one request a second here")
        for i in range(pairs):
            for recording in ((True, False) if i % 2 == 0 else (False, True)):
                rounds.append(_round(worker, recording, segment_s, tmp / f"overhead-{i}.ttrec"))
    finally:
        worker.close()
    paired = [sorted(rounds[i:i + 2], key=lambda r: not r.recording)
              for i in range(0, len(rounds), 2)]
    serving = _mean_se([r.serving_cpu_s / r.requests for r in rounds])
    other_without = _mean_se([b.other_cpu_per_request for _, b in paired])
    extra = _mean_se([a.other_cpu_per_request - b.other_cpu_per_request for a, b in paired])
    base = serving[0] + other_without[0]
    ratio = base / (base + extra[0])
    ratio_se = base * extra[1] / (base + extra[0]) ** 2
    # The same, charging the recorder's own process to the runtime (what the machine pays).
    extra_all = _mean_se([a.other_cpu_per_request - b.other_cpu_per_request
                          + a.recorder_cpu_s / a.requests for a, b in paired])
    ratio_all = base / (base + extra_all[0])
    ratio_all_se = base * extra_all[1] / (base + extra_all[0]) ** 2

    def pair_ratio(rate: Callable[[_Round], float]) -> tuple[float, float]:
        return _mean_se([rate(a) / rate(b) for a, b in paired])

    recorded = [a for a, _ in paired]
    details = {
        "pairs": len(paired),
        "segment_s": segment_s,
        "ratio_se": round(ratio_se, 4),
        "serving_cpu_ms_per_request": _rounded((serving[0] * 1e3, serving[1] * 1e3), 3),
        "other_cpu_ms_per_request_without": _rounded(
            (other_without[0] * 1e3, other_without[1] * 1e3), 4),
        "recording_extra_cpu_ms_per_request": _rounded((extra[0] * 1e3, extra[1] * 1e3), 4),
        "recorder_process_cpu_ms_per_request": round(
            1e3 * statistics.fmean(r.recorder_cpu_s / r.requests for r in recorded), 4),
        "recorder_process_cpu_share_of_a_core": round(
            statistics.fmean(r.recorder_cpu_s / r.wall_s for r in recorded), 5),
        "cpu_ratio_counting_recorder_process": _rounded((ratio_all, ratio_all_se)),
        "process_cpu_ratio_direct": _rounded(pair_ratio(lambda r: r.requests / r.process_cpu_s)),
        "serving_thread_cpu_ratio": _rounded(pair_ratio(lambda r: r.requests / r.serving_cpu_s)),
        "wall_ratio": _rounded(pair_ratio(lambda r: r.requests / r.wall_s)),
        "round_cv_of_requests_per_process_cpu_s": round(
            statistics.stdev(x := [r.requests / r.process_cpu_s for r in rounds])
            / statistics.fmean(x), 4),
        "requests_per_round": [r.requests for r in rounds],
        "requests_per_wall_s": round(statistics.fmean(r.requests / r.wall_s for r in rounds), 2),
        "recorded_messages_per_round": [r.recorded for r in recorded],
        "runtime_recording_on_disk": disk_figures(tmp / "overhead-0.ttrec"),
    }
    return ratio, details


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "recording benchmark")
    p.add_argument("--repeats", type=int, default=3, help="replays of the session (best)")
    p.add_argument("--pairs", type=int, default=12,
                   help="with/without round pairs of the overhead measurement")
    p.add_argument("--segment-s", type=float, default=3.0, help="seconds per round")
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
               f"± {overhead['ratio_se']} (SE): runtime requests per process-CPU second with "
               f"a recorder over without; taken directly "
               f"{'±'.join(map(str, overhead['process_cpu_ratio_direct']))}, per wall second "
               f"{'±'.join(map(str, overhead['wall_ratio']))}, counting the recorder "
               f"process's CPU as the runtime's "
               f"{'±'.join(map(str, overhead['cpu_ratio_counting_recorder_process']))}"),
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
