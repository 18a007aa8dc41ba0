"""Control round trips to a real model runtime while it serves requests.

Run ``python -m benchmarks.model_control`` for a table or ``--json`` for one JSON object.

The runtime is started as ``tiertop demo`` starts it (``tiertop run`` with the tiny GPT-2-shaped
model and the demo's small tiers, ``--rate`` requests/s; :func:`tiertop.tui.demo_cli.runtime_args`
and :class:`tiertop.tui.launcher.RuntimeProcess`). Once it serves (a first ``RequestDone`` on
its telemetry), this process sends ``SetWatermarks`` to its first tier every 50 ms for
``--seconds``, alternating between two settings, through :class:`ControlClient`. Each call is
timed from before the request is built to its decoded reply, and counts as a failure unless it
is ``Applied`` with exactly the watermarks sent. The runtime applies commands between decode
steps, so a round trip waits at most for one forward pass of the tiny model.

- ``model_control_rtt_p50_ms`` / ``_p99_ms``: round trips while the runtime serves; the p99
  target (<= 100 ms) is the dashboard's "see the effect within a second" with a wide margin.
- idle: the workload paused with the ``Pause`` command (after the request in hand finished:
  the first ``TierStats`` saying paused), then the same commands; the runtime waits in
  ``ControlServer.wait``.
- reference: after (or before, alternately) each command, one round trip of the same bytes to a
  bare pyzmq ROUTER echo on loopback served by a thread of this process, so the load that slows
  the one slows the other too.
- from the telemetry stream: requests served, tokens/s (tokens over ``TierStats`` intervals),
  and whether every applied command was published as a ``ControlChange``.

All of it runs on this process's main thread (the telemetry stream is drained between
commands), so the reader's own work never overlaps a timed round trip. The runtime process
group and its temporary directory are removed on every exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from tiertop.monitor.commands import Applied, Request, SetWatermarks, encode_request
from tiertop.monitor.control_client import ControlClient, ControlClientError
from tiertop.monitor.framing import Decoded
from tiertop.monitor.protocol import (
    TOPIC_CONTROL,
    TOPIC_REQUESTS,
    TOPIC_STATS,
    ControlChange,
    RequestDone,
    TierStats,
)
from tiertop.monitor.subscriber import TelemetrySubscriber
from tiertop.tui.demo_cli import runtime_args
from tiertop.tui.launcher import RuntimeProcess

from benchmarks.common import Figure, parser, report

TARGET_P99_MS = 100.0
PERIOD_S = 0.05  # one command every 50 ms, as a person dragging a slider would send them
SETTINGS = ((0.9, 0.7), (0.8, 0.6))  # (high, low), alternated
REPLY_TIMEOUT_S = 2.0
START_TIMEOUT_S = 180.0  # the model loads in a few seconds; a loaded box takes longer


# ----------------------------------------------------------------------------- the reference


class EchoServer:
    """A bare ROUTER on loopback that sends every message straight back, on its own thread."""

    def __init__(self) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.bind("tcp://127.0.0.1:0")
        self.address = str(self._router.getsockopt_string(zmq.LAST_ENDPOINT))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="echo", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._router.poll(50):
                self._router.send_multipart(self._router.recv_multipart())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._router.close(0)
        self._context.term()


class EchoClient:
    """A DEALER to :class:`EchoServer`, framed as the control client frames a request."""

    def __init__(self, address: str) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._dealer = self._context.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 0)
        self._dealer.connect(address)

    def round_trip(self, payload: bytes) -> float | None:
        """Seconds for ``payload`` to come back, or None after :data:`REPLY_TIMEOUT_S`."""
        started = time.perf_counter()
        self._dealer.send_multipart([b"", payload])
        if not self._dealer.poll(int(REPLY_TIMEOUT_S * 1000)):
            return None
        self._dealer.recv_multipart()
        return time.perf_counter() - started

    def close(self) -> None:
        self._dealer.close(0)
        self._context.term()


# ------------------------------------------------------------------------------- one phase


@dataclass
class Phase:
    """What one stretch of steering measured, and what the telemetry said meanwhile."""

    rtts_s: list[float] = field(default_factory=list)
    echo_rtts_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    applied_ids: list[str] = field(default_factory=list)
    requests_served: int = 0
    requests_failed: int = 0
    tokens: float = 0.0
    stats_seconds: float = 0.0
    seconds: float = 0.0

    def fold(self, message: Decoded) -> None:
        if isinstance(message, RequestDone):
            if message.error:
                self.requests_failed += 1
            else:
                self.requests_served += 1
        elif isinstance(message, TierStats):
            self.tokens += message.tokens_per_s * message.interval_s
            self.stats_seconds += message.interval_s

    def tokens_per_s(self) -> float | None:
        return self.tokens / self.stats_seconds if self.stats_seconds else None


class Telemetry:
    """The runtime's stream, drained between commands into the phase being measured."""

    def __init__(self, address: str, replay: str | None) -> None:
        self.sub = TelemetrySubscriber(address, replay, reconnect_after_s=None,
                                       topics=[TOPIC_STATS, TOPIC_REQUESTS, TOPIC_CONTROL])
        self.published_ids: set[str] = set()
        self.last_stats: TierStats | None = None

    def drain(self, phase: Phase | None, timeout_s: float) -> None:
        """Fold what arrives within ``timeout_s`` (at least one poll) into ``phase``."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait_ms = max(0.0, deadline - time.monotonic()) * 1000
            for message in self.sub.poll(256, wait_ms):
                if isinstance(message, ControlChange):
                    self.published_ids.add(message.request_id)
                elif isinstance(message, TierStats):
                    self.last_stats = message
                if phase is not None:
                    phase.fold(message)
            if time.monotonic() >= deadline:
                return

    def wait_for(self, seen: Callable[[Decoded], bool], timeout_s: float, what: str) -> Decoded:
        """The first message ``seen`` accepts; RuntimeError naming ``what`` after the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.sub.poll(256, 100):
                if isinstance(message, ControlChange):
                    self.published_ids.add(message.request_id)
                if seen(message):
                    return message
        raise RuntimeError(f"no {what} on the runtime's telemetry within {timeout_s:g} s")

    def close(self) -> None:
        self.sub.close()


def steer(client: ControlClient, echo: EchoClient, telemetry: Telemetry, tier: str,
          seconds: float) -> Phase:
    """SetWatermarks every :data:`PERIOD_S` for ``seconds``, each beside one echo round trip."""
    phase = Phase()
    started = time.monotonic()
    next_at = started
    n = 0
    while (now := time.monotonic()) - started < seconds:
        high, low = SETTINGS[n % 2]
        echo_first = bool(n // 2 % 2)  # alternate the order, so neither always goes first
        if echo_first:
            _echo(echo, client, tier, high, low, phase)
        _command(client, tier, high, low, phase)
        if not echo_first:
            _echo(echo, client, tier, high, low, phase)
        n += 1
        next_at = max(next_at + PERIOD_S, time.monotonic())  # after a stall: no burst
        telemetry.drain(phase, next_at - time.monotonic())
    phase.seconds = now - started
    return phase


def _command(client: ControlClient, tier: str, high: float, low: float, phase: Phase) -> None:
    started = time.perf_counter()
    try:
        reply = client.request(SetWatermarks(tier, high, low))
    except ControlClientError as exc:
        phase.failures.append(f"{type(exc).__name__}: {exc}")
        return
    rtt = time.perf_counter() - started
    if not isinstance(reply, Applied):
        phase.failures.append(f"refused: {reply.message} [{reply.error_code}]")
    elif reply.new != {tier: {"high": high, "low": low}}:
        phase.failures.append(f"applied {reply.new!r}, sent high={high} low={low}")
    else:
        phase.rtts_s.append(rtt)
        phase.applied_ids.append(reply.request_id)


def _echo(echo: EchoClient, client: ControlClient, tier: str, high: float, low: float,
          phase: Phase) -> None:
    payload = encode_request(Request(request_id="echo", client=client.client,
                                     command=SetWatermarks(tier, high, low),
                                     deadline=time.time() + REPLY_TIMEOUT_S))
    rtt = echo.round_trip(payload)
    if rtt is not None:
        phase.echo_rtts_s.append(rtt)


# ----------------------------------------------------------------------------------- a run


def quantile_ms(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of seconds, in ms (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run(seconds: float, rate: float) -> dict[str, Any]:
    """Start a runtime, steer it busy then paused, stop it; every figure and detail."""
    load_before = os.getloadavg()
    runtime = RuntimeProcess(runtime_args(argparse.Namespace(sim=False, tier=None, rate=rate)))
    echo_server = EchoServer()
    echo = EchoClient(echo_server.address)
    telemetry: Telemetry | None = None
    client: ControlClient | None = None
    try:
        addresses = runtime.wait_addresses(START_TIMEOUT_S)
        telemetry = Telemetry(addresses["telemetry"], addresses.get("replay"))
        client = ControlClient(addresses["control"], timeout_s=REPLY_TIMEOUT_S, retries=0)
        first = telemetry.wait_for(lambda m: isinstance(m, TierStats) and bool(m.tiers),
                                   START_TIMEOUT_S, "TierStats")
        assert isinstance(first, TierStats)
        tier = first.tiers[0].name
        started = time.monotonic()
        telemetry.wait_for(lambda m: isinstance(m, RequestDone), START_TIMEOUT_S, "RequestDone")
        serving_after_s = time.monotonic() - started
        busy = steer(client, echo, telemetry, tier, seconds)
        client.pause()
        telemetry.wait_for(lambda m: isinstance(m, TierStats) and m.paused, 30, "paused TierStats")
        idle = steer(client, echo, telemetry, tier, max(2.0, seconds / 4))
        telemetry.drain(None, 1.0)  # the last ControlChange events
        published = telemetry.published_ids
        result: dict[str, Any] = {
            "busy": busy,
            "idle": idle,
            "tier": tier,
            "rate": rate,
            "serving_after_s": round(serving_after_s, 2),
            "unpublished_changes": sum(
                rid not in published for p in (busy, idle) for rid in p.applied_ids),
            "runtime_argv": runtime.argv[1:],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        if client is not None:
            client.close()
        if telemetry is not None:
            telemetry.close()
        echo.close()
        echo_server.close()
        exit_code = runtime.stop()
    result["runtime_exit"] = exit_code
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Every number of a run, in ms where timed (the phases' raw lists left out)."""
    out: dict[str, Any] = {k: v for k, v in result.items() if k not in ("busy", "idle")}
    for name in ("busy", "idle"):
        phase: Phase = result[name]
        prefix = "" if name == "busy" else "idle_"
        out[f"{prefix}round_trips"] = len(phase.rtts_s)
        out[f"{prefix}failures"] = len(phase.failures)
        out[f"{prefix}failure_examples"] = phase.failures[:5]
        for label, values in (("rtt", phase.rtts_s), ("echo_rtt", phase.echo_rtts_s)):
            for q in (0.5, 0.99):
                ms = quantile_ms(values, q)
                out[f"{prefix}{label}_p{round(q * 100)}_ms"] = None if ms is None else round(ms, 3)
        out[f"{prefix}rtt_max_ms"] = round(max(phase.rtts_s, default=0.0) * 1000, 3)
        out[f"{prefix}seconds"] = round(phase.seconds, 2)
        out[f"{prefix}requests_served"] = phase.requests_served
        out[f"{prefix}requests_failed"] = phase.requests_failed
        tps = phase.tokens_per_s()
        out[f"{prefix}tokens_per_s"] = None if tps is None else round(tps, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("Control round trips to a real model runtime (tiny model) while it serves.")
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds of steering while it serves (default 20, --quick 8)")
    p.add_argument("--rate", type=float, default=5.0, help="requests/s of the runtime")
    args = p.parse_args(argv)
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    try:
        s = summary(run(seconds, args.rate))
    except KeyboardInterrupt:
        print("interrupted; the runtime was stopped", file=sys.stderr)
        return 130
    failures = s["failures"] + s["idle_failures"]
    echo_note = f"echo reference p50 {s['echo_rtt_p50_ms']} ms, p99 {s['echo_rtt_p99_ms']} ms"
    figures = [
        Figure("model_control_rtt_p99_ms", s["rtt_p99_ms"], "ms", f"<= {TARGET_P99_MS:g}",
               f"{s['round_trips']} SetWatermarks over {s['seconds']} s at {args.rate:g} req/s; "
               + echo_note),
        Figure("model_control_rtt_p50_ms", s["rtt_p50_ms"], "ms", "", echo_note),
        Figure("idle_rtt_p99_ms", s["idle_rtt_p99_ms"], "ms", "",
               f"workload paused; echo p99 {s['idle_echo_rtt_p99_ms']} ms"),
        Figure("idle_rtt_p50_ms", s["idle_rtt_p50_ms"], "ms", "",
               f"echo p50 {s['idle_echo_rtt_p50_ms']} ms"),
        Figure("requests_served", s["requests_served"], "", "",
               f"{s['requests_failed']} failed, while steering"),
        Figure("tokens_per_s", s["tokens_per_s"], "tok/s", "", "from TierStats"),
        Figure("control_failures", failures, "", "<= 0",
               f"timeouts, refusals, wrong values; {s['unpublished_changes']} unpublished"),
        Figure("load_average_1m", s["load_average_after"][0], "", "",
               f"{s['load_average_before'][0]} before the run"),
    ]
    shown = {f.name for f in figures} | {"rtt_p50_ms", "rtt_p99_ms"}
    details = {k: v for k, v in s.items() if k not in shown}
    report("model runtime control round trips", figures, args.json, details)
    ok = failures == 0 and s["unpublished_changes"] == 0 and s["round_trips"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
