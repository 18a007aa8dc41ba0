"""Telemetry throughput: publisher → subscriber → decode → fold, against raw pyzmq + msgpack.

Run ``python -m benchmarks.telemetry`` for a table or ``--json`` for one JSON object.

Two runs move the same block events (a mix of ``BlockStored`` and ``BlockRemoved`` over four
tiers) from a producer process to this process:

* **tiertop**: the producer calls the engine-facing :class:`TelemetryPublisher` methods; this
  process reads with :class:`TelemetrySubscriber` and folds every decoded batch through a
  pluggable fold (default: per-tier totals; ``--fold module:Class`` swaps in e.g. the state
  model once it exists).
* **raw**: the producer builds the same events as msgpack maps and sends batches of the same
  size on a plain PUB; this process receives on a plain SUB, decodes generically and folds
  the same totals.

``events_per_s`` is events delivered and folded per second of wall time, from the start signal
to the last event; the producer keeps the publisher's queue from overflowing (it backs off above
100,000 queued items), so the figure is what the pipeline sustains, not what the queue absorbs.
Accounting must close: received + drops the publisher counted == sent. ``vs_raw_zmq`` is the
tiertop rate over the raw rate of the same run. Rounds of both pipelines are interleaved
(``--repeats``) and the best round of each is reported, since neighbours on a shared machine
only ever slow a round down; CPU seconds per event (all threads of each process) are reported
too, being far less sensitive to neighbours than wall time.

``control_rtt_p99_ms``: while the tiertop stream runs, a thread of this process steers the
producer through the real control plane (SetWatermarks on a real hierarchy, applied on the
producer's loop between event bursts, as a runtime applies commands between engine steps); the
figure is the p99 of those round trips over all rounds (``control_rtt_p50_ms`` their median;
``control_rtt_p99_best_round_ms`` the p99 of the least disturbed round alone). It is what a
client in the reader's own process sees: that process folds the stream flat out, so its GIL and
its garbage collector count as much as the producer's. Bursts are 256 events (well under a
millisecond), so the figure is the control path's cost under telemetry load, not the length of
an engine step. ``control_rtt_idle_p99_ms``: the same round trips before the stream starts,
with the producer waiting for work in ``ControlServer.wait`` as an idle runtime does. The
default fold is the dashboard's StateModel.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import msgspec
import zmq
from tiertop.monitor.control_client import ControlClient, ControlClientError
from tiertop.monitor.framing import Decoded
from tiertop.monitor.protocol import Hello, Snapshot, TierInfo
from tiertop.monitor.subscriber import TelemetrySubscriber
from tiertop.monitor.vllm_events import BlockRemoved, BlockStored, KvEventBatch
from tiertop.runtime.heap import freeze_heap
from tiertop.runtime.model_runtime import SWITCH_INTERVAL_S

from benchmarks.common import Figure, parser, report

TIERS = ("gpu", "dram", "numa", "disk")
TARGET_EVENTS_PER_S = 300_000
TARGET_VS_RAW = 0.5
BURST_EVENTS = 256  # events between two visits of the producer's loop to the control server
IDLE_PROBES = 100  # round trips per round before the stream starts


class Fold(Protocol):
    """What the benchmark folds decoded messages through (the state model will be one)."""

    def apply(self, message: Decoded) -> None: ...

    def totals(self) -> dict[str, int]: ...


class TierTotalsFold:
    """Stand-in for the state model: per-tier counts of stored and removed blocks."""

    def __init__(self) -> None:
        self.stored: defaultdict[str, int] = defaultdict(int)
        self.removed: defaultdict[str, int] = defaultdict(int)
        self.cleared = 0

    def apply(self, message: Decoded) -> None:
        if not isinstance(message, KvEventBatch):
            return
        stored, removed = self.stored, self.removed
        for event, tier in zip(message.events, message.tiers, strict=True):
            if type(event) is BlockStored:
                stored[tier] += len(event.block_hashes)
            elif type(event) is BlockRemoved:
                removed[tier] += len(event.block_hashes)
            else:
                self.cleared += 1

    def totals(self) -> dict[str, int]:
        out = {f"stored.{t}": n for t, n in sorted(self.stored.items())}
        out.update({f"removed.{t}": n for t, n in sorted(self.removed.items())})
        return out


class StateModelFold(TierTotalsFold):
    """The real reader path: every message folded into the dashboard's StateModel, with the
    per-tier totals kept beside it to check that nothing went unaccounted."""

    def __init__(self) -> None:
        super().__init__()
        from tiertop.monitor.state import StateModel

        self.model = StateModel()

    def apply(self, message: Decoded) -> None:
        super().apply(message)
        self.model.fold(message)


def expected_totals(n_events: int) -> dict[str, int]:
    """What a correct fold of :func:`_event_params` over ``n_events`` must total."""
    stored: defaultdict[str, int] = defaultdict(int)
    removed: defaultdict[str, int] = defaultdict(int)
    for i in range(n_events):
        tier = TIERS[i & 3]
        if i % 4 == 3:
            removed[tier] += 1
        else:
            stored[tier] += 2
    out = {f"stored.{t}": n for t, n in sorted(stored.items())}
    out.update({f"removed.{t}": n for t, n in sorted(removed.items())})
    return out


def load_fold(spec: str | None) -> Callable[[], Fold]:
    """The fold factory named ``module:Class`` (default :class:`StateModelFold`)."""
    if not spec:
        return StateModelFold
    module_name, _, attr = spec.partition(":")
    factory: Callable[[], Fold] = getattr(importlib.import_module(module_name), attr)
    return factory


# ------------------------------------------------------------------------------ producers


def _tiertop_producer(conn: Connection, n_events: int, batch: int) -> None:
    from tiertop.runtime.control_server import ControlServer
    from tiertop.runtime.publisher import TelemetryPublisher
    from tiertop.runtime.tier_control import TierControl
    from tiertop.tiers.hierarchy import Hierarchy, TierConfig

    class Target(TierControl):
        """A runtime's control target: a real (accounting-only) hierarchy."""

        def __init__(self) -> None:
            self.hierarchy = Hierarchy([TierConfig(t, 1 << 20) for t in TIERS], block_bytes=1)

    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as the runtime does
    target = Target()
    server = ControlServer("tcp://127.0.0.1:0")
    server.start()

    pub = TelemetryPublisher(
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:0",
        hello=Hello(mode="sim", tiers=[TierInfo(name=t) for t in TIERS]),
        batch_max_events=batch,
        queue_capacity=200_000,
        sndhwm=100_000,
    )
    freeze_heap()  # as `tiertop run` and `tiertop sim` do once set up
    conn.send((pub.address, pub.replay_address, server.address))
    while not conn.poll():  # idle until "go": a runtime waiting for work still takes commands
        if server.wait(0.001):
            server.apply_pending(target)
    conn.recv()
    cpu0 = time.process_time()
    stored, removed = pub.block_stored, pub.block_removed
    pending = pub.pending
    high = 100_000
    for i in range(n_events):
        tier = TIERS[i & 3]
        if i % 4 == 3:
            removed([i - 1], tier)
        else:
            stored([i, i + 1], tier)
        if not i % BURST_EVENTS:  # as a runtime loop does between engine steps: serve
            server.apply_pending(target)  # control, and let the publisher thread have the
            time.sleep(0)  # GIL (a real step releases it inside torch)
        if not i & 1023 and pending() > high:
            while pending() > high // 2:  # a polite producer: the rate the pipeline sustains
                server.apply_pending(target)
                time.sleep(0.0002)
    pub.close()
    server.close()
    c = pub.counters()
    conn.send(
        {
            "sent": n_events,
            "dropped_events": c.dropped_events,
            "messages": c.sent_messages,
            "producer_cpu_s": time.process_time() - cpu0,
        }
    )
    conn.close()


def _raw_producer(conn: Connection, n_events: int, batch: int) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    pub.bind("tcp://127.0.0.1:0")
    conn.send((pub.getsockopt(zmq.LAST_ENDPOINT).decode(), None))  # type: ignore[union-attr]
    while not conn.poll(0.01):  # let the subscriber see something before it says go
        pub.send_multipart([b"warmup", b"\0" * 8, b""])
    conn.recv()
    cpu0 = time.process_time()
    encode = msgspec.msgpack.encode
    topic = b"kv-events"
    seq = 0
    events: list[dict[str, Any]] = []
    for i in range(n_events):
        tier = TIERS[i & 3]
        if i % 4 == 3:
            events.append({"type": "BlockRemoved", "block_hashes": [i - 1], "medium": tier})
        else:
            events.append(
                {
                    "type": "BlockStored",
                    "block_hashes": [i, i + 1],
                    "parent_block_hash": None,
                    "token_ids": [],
                    "block_size": 0,
                    "lora_id": None,
                    "medium": tier,
                    "lora_name": None,
                }
            )
        if len(events) >= batch or i == n_events - 1:
            pub.send_multipart([topic, seq.to_bytes(8, "big"), encode([time.time(), events, 0])])
            seq += 1
            events = []
    pub.close(linger=5000)
    ctx.term()
    conn.send(
        {
            "sent": n_events,
            "dropped_events": 0,
            "messages": seq,
            "producer_cpu_s": time.process_time() - cpu0,
        }
    )
    conn.close()


# ------------------------------------------------------------------------------- consumers


def run_tiertop(n_events: int, batch: int, fold_factory: Callable[[], Fold]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_tiertop_producer, args=(child, n_events, batch), daemon=True)
    proc.start()
    address, replay, control = parent.recv()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as the dashboard does: a reader that
    # folds flat out must still let its control thread run
    sub = TelemetrySubscriber(address, replay, topics=["kv-events"], reconnect_after_s=None)
    prober = ControlProber(control)
    fold = fold_factory()
    try:
        deadline = time.monotonic() + 10
        joined = False
        while not joined and time.monotonic() < deadline:
            joined = any(isinstance(m, Hello | Snapshot) for m in sub.poll(100, 50))
        if not joined:
            raise RuntimeError("subscriber never saw the publisher")
        idle_rtts, idle_errors = probe_idle(control, IDLE_PROBES)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        parent.send("go")
        prober.start()
        received = 0
        last = t0
        final: dict[str, Any] | None = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for message in sub.poll(16, 20):
                if isinstance(message, KvEventBatch):
                    received += len(message.events)
                    last = time.perf_counter()
                fold.apply(message)
            if final is None and parent.poll():
                final = parent.recv()
            if received >= n_events:
                break
            if final is not None and received + final["dropped_events"] >= final["sent"]:
                break
        if final is None:
            final = parent.recv() if parent.poll(10) else {"sent": n_events, "dropped_events": -1}
        consumer_cpu = time.process_time() - cpu0
        counters = sub.counters()
    finally:
        prober.stop()
        sub.close()
        proc.join(10)
    elapsed = max(last - t0, 1e-9)
    return {
        "events_per_s": received / elapsed,
        "sent": final["sent"],
        "received": received,
        "dropped_counted": final["dropped_events"],
        "unaccounted": final["sent"] - received - max(0, final["dropped_events"]),
        "seconds": elapsed,
        "producer_cpu_s": final.get("producer_cpu_s", 0.0),
        "consumer_cpu_s": consumer_cpu,
        "gaps": counters.gaps,
        "decode_errors": counters.decode_errors,
        "fold_ok": fold.totals() == expected_totals(n_events) if received == n_events else None,
        "control_rtts_s": prober.rtts,
        "control_errors": prober.errors,
        "control_idle_rtts_s": idle_rtts,
        "control_idle_errors": idle_errors,
    }


def run_raw(n_events: int, batch: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_raw_producer, args=(child, n_events, batch), daemon=True)
    proc.start()
    address, _ = parent.recv()
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    stored: defaultdict[str, int] = defaultdict(int)
    removed: defaultdict[str, int] = defaultdict(int)
    decode = msgspec.msgpack.decode
    try:
        if not sub.poll(10_000):
            raise RuntimeError("raw subscriber never saw the publisher")
        while sub.poll(0):
            sub.recv_multipart()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        parent.send("go")
        received = 0
        last = t0
        deadline = time.monotonic() + 120
        while received < n_events and time.monotonic() < deadline:
            if not sub.poll(200):
                if parent.poll():
                    break  # the producer is done and nothing more comes: loss
                continue
            topic, _seq, payload = sub.recv_multipart()
            if topic != b"kv-events":
                continue
            _ts, events, _rank = decode(payload)
            for event in events:
                if event["type"] == "BlockStored":
                    stored[event["medium"].lower()] += len(event["block_hashes"])
                elif event["type"] == "BlockRemoved":
                    removed[event["medium"].lower()] += len(event["block_hashes"])
            received += len(events)
            last = time.perf_counter()
        consumer_cpu = time.process_time() - cpu0
        final = parent.recv() if parent.poll(10) else {"sent": n_events, "producer_cpu_s": 0.0}
    finally:
        sub.close(0)
        zctx.term()
        proc.join(10)
    elapsed = max(last - t0, 1e-9)
    return {
        "events_per_s": received / elapsed,
        "sent": final["sent"],
        "received": received,
        "seconds": elapsed,
        "producer_cpu_s": final["producer_cpu_s"],
        "consumer_cpu_s": consumer_cpu,
    }


# ----------------------------------------------------------------------------- control rtt


def _steer(client: ControlClient, flip: bool) -> float | None:
    """One SetWatermarks round trip in seconds (None when it failed)."""
    high, low = (0.9, 0.8) if flip else (0.8, 0.7)
    try:
        client.set_watermarks(TIERS[0], high, low)
    except ControlClientError:
        return None
    return client.last_rtt_s


def probe_idle(address: str, count: int) -> tuple[list[float], int]:
    """``count`` round trips on this thread while nothing flows; (RTTs, failures)."""
    rtts: list[float] = []
    with ControlClient(address, timeout_s=2.0, retries=0) as client:
        for n in range(count):
            rtt = _steer(client, bool(n & 1))
            if rtt is not None:
                rtts.append(rtt)
            time.sleep(0.002)
    return rtts, count - len(rtts)


class ControlProber:
    """Sends SetWatermarks to the producer's control server, back to back, while the event
    stream runs: the round trips a user sees when steering a busy runtime."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.rtts: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with ControlClient(self.address, timeout_s=2.0, retries=0) as client:
            flip = False
            while not self._stop.is_set():
                flip = not flip
                rtt = _steer(client, flip)
                if rtt is None:
                    self.errors += 1
                    continue
                self.rtts.append(rtt)
                time.sleep(0.002)  # a person steering, not a flood


def control_rtt_ms(rounds: list[dict[str, Any]], key: str, quantile: float) -> float | None:
    """A quantile of the round trips under ``key`` pooled over every tiertop round, in ms."""
    rtts = sorted(r for rnd in rounds for r in rnd["tiertop"][key])
    if not rtts:
        return None
    return float(rtts[min(len(rtts) - 1, int(quantile * len(rtts)))]) * 1000


def best_round_p99_ms(rounds: list[dict[str, Any]]) -> float | None:
    """The loaded p99 of the round least disturbed by neighbours (as for ``events_per_s``)."""
    p99s = [control_rtt_ms([rnd], "control_rtts_s", 0.99) for rnd in rounds]
    return min((p for p in p99s if p is not None), default=None)


def control_rtt_status(rounds: list[dict[str, Any]]) -> str:
    loaded = sum(len(rnd["tiertop"]["control_rtts_s"]) for rnd in rounds)
    idle = sum(len(rnd["tiertop"]["control_idle_rtts_s"]) for rnd in rounds)
    if not loaded:
        return "missing: no control round trip completed during the runs"
    return f"{loaded} SetWatermarks round trips while events flowed, {idle} before"


# ----------------------------------------------------------------------------------- main


def software_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cpus_usable": usable,
        "implementation": platform.python_implementation(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
    }


def run(n_events: int, batch: int, fold_spec: str | None, repeats: int) -> dict[str, Any]:
    """``repeats`` interleaved rounds of both pipelines; the best round of each is reported
    (the one least disturbed by neighbours on a shared machine), every round is in ``rounds``."""
    fold_factory = load_fold(fold_spec)
    rounds: list[dict[str, Any]] = []
    for _ in range(max(1, repeats)):
        tiertop = run_tiertop(n_events, batch, fold_factory)
        raw = run_raw(n_events, batch)
        rounds.append({"tiertop": tiertop, "raw": raw})
    best = max((r["tiertop"] for r in rounds), key=lambda t: float(t["events_per_s"]))
    best_raw = max((r["raw"] for r in rounds), key=lambda t: float(t["events_per_s"]))
    return {
        "events": n_events,
        "batch_max_events": batch,
        "fold": fold_spec or "benchmarks.telemetry:StateModelFold",
        "repeats": len(rounds),
        "events_per_s": best["events_per_s"],
        "raw_zmq_events_per_s": best_raw["events_per_s"],
        "vs_raw_zmq": best["events_per_s"] / best_raw["events_per_s"],
        "unaccounted_events": sum(r["tiertop"]["unaccounted"] for r in rounds),
        "dropped_counted": sum(r["tiertop"]["dropped_counted"] for r in rounds),
        "fold_ok": all(r["tiertop"]["fold_ok"] is not False for r in rounds),
        "producer_cpu_us_per_event": best["producer_cpu_s"] / n_events * 1e6,
        "consumer_cpu_us_per_event": best["consumer_cpu_s"] / n_events * 1e6,
        "raw_producer_cpu_us_per_event": best_raw["producer_cpu_s"] / n_events * 1e6,
        "raw_consumer_cpu_us_per_event": best_raw["consumer_cpu_s"] / n_events * 1e6,
        "control_rtt_p99_ms": control_rtt_ms(rounds, "control_rtts_s", 0.99),
        "control_rtt_p99_best_round_ms": best_round_p99_ms(rounds),
        "control_rtt_p50_ms": control_rtt_ms(rounds, "control_rtts_s", 0.5),
        "control_rtt_idle_p99_ms": control_rtt_ms(rounds, "control_idle_rtts_s", 0.99),
        "control_rtt_status": control_rtt_status(rounds),
        "rounds": rounds,
        "software": software_info(),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser("Telemetry throughput: publisher -> subscriber -> decode -> fold, vs raw pyzmq.")
    p.add_argument("--events", type=int, default=None, help="block events per run")
    p.add_argument("--batch", type=int, default=512, help="most events per batch message")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best reported)")
    p.add_argument("--fold", default=None, help="fold factory as module:Class")
    args = p.parse_args(argv)
    n_events = args.events or (150_000 if args.quick else 600_000)
    result = run(n_events, args.batch, args.fold, 1 if args.quick else args.repeats)
    figures = [
        Figure(
            "events_per_s",
            round(result["events_per_s"]),
            "events/s",
            f">= {TARGET_EVENTS_PER_S}",
            f"best of {result['repeats']}; {n_events:,} events, batches <= {args.batch}",
        ),
        Figure(
            "vs_raw_zmq",
            round(result["vs_raw_zmq"], 3),
            "",
            f">= {TARGET_VS_RAW}",
            f"raw pyzmq+msgpack: {result['raw_zmq_events_per_s']:,.0f} events/s",
        ),
        Figure(
            "unaccounted_events",
            result["unaccounted_events"],
            "events",
            "<= 0",
            f"sent - received - counted drops ({result['dropped_counted']} counted)",
        ),
        Figure("fold_totals_correct", int(result["fold_ok"]), "", ">= 1", result["fold"]),
        Figure("producer_cpu_us_per_event", round(result["producer_cpu_us_per_event"], 3), "us"),
        Figure("consumer_cpu_us_per_event", round(result["consumer_cpu_us_per_event"], 3), "us"),
        Figure(
            "raw_producer_cpu_us_per_event", round(result["raw_producer_cpu_us_per_event"], 3), "us"
        ),
        Figure(
            "raw_consumer_cpu_us_per_event", round(result["raw_consumer_cpu_us_per_event"], 3), "us"
        ),
        _ms_figure(result, "control_rtt_p99_ms", "<= 20", result["control_rtt_status"]),
        _ms_figure(result, "control_rtt_p99_best_round_ms", note="the least disturbed round"),
        _ms_figure(result, "control_rtt_p50_ms"),
        _ms_figure(result, "control_rtt_idle_p99_ms", note="before the stream starts"),
    ]
    details = {k: v for k, v in result.items() if k not in {f.name for f in figures}}
    report("telemetry", figures, args.json, details)
    return 0 if result["unaccounted_events"] == 0 and result["fold_ok"] else 1


def _ms_figure(result: dict[str, Any], name: str, target: str = "", note: str = "") -> Figure:
    value = result[name]
    return Figure(name, None if value is None else round(value, 2), "ms", target, note)


if __name__ == "__main__":
    sys.exit(main())
