"""Playing a scenario headless: start the runtime, apply the timeline, summarise, check.

:func:`play` (or :class:`Player`) runs one validated :class:`~.format.Scenario` in this process
and returns a :class:`PlayResult`. Everything goes through the same paths a person at the
dashboard uses:

* the runtime starts in-process on loopback with random ports: a
  :class:`~tiertop.runtime.model_runtime.ModelRuntime` with its loop on a thread (model mode), or
  a :class:`~tiertop.runtime.sim.service.SimService` whose virtual clock this module steps
  (sim mode, see below);
* timeline actions are sent with the real :class:`~tiertop.monitor.control_client.ControlClient`
  and applied by the runtime's control server like any client's;
* telemetry is read with the real :class:`~tiertop.monitor.subscriber.TelemetrySubscriber` and
  folded into a :class:`~tiertop.monitor.state.StateModel`; the per-phase summary is
  :class:`~tiertop.monitor.summary.PhaseSummarizer`'s, the one ``tiertop replay --headless``
  prints; ``record`` adds a :class:`~tiertop.monitor.recorder.Recorder` on the same stream.

**Sim mode is exact.** The simulator's clock is stepped here rather than paced by its own loop:
the cluster's thread simulates up to the next point of a grid (every ``[sim] tick`` virtual
seconds, every action time and every phase boundary), publishes one TierStats there and waits;
this thread reads everything up to that TierStats, closes the phases that end there, sends the
actions due there (the waiting loop applies them at exactly that virtual time), and lets it go
on. ``RequestDone`` sampling is fixed (``[sim] request_sample``) instead of adapting to the wall
clock. So the same scenario and seed give the same summary, to the byte, at any speed (a finite
``speed`` only adds sleeps between steps, for a dashboard to watch).

**Model mode runs on the wall clock**: actions are sent when their time comes, phases are cut
at the first message past their boundary (TierStats come every ``[model] tick``), and a run is
reproducible in its counts as far as the machine keeps up with the workload.

Phase attribution at a boundary ``b``: everything the runtime published at or before ``b``
counts in the phase that ends at ``b``; an action at ``b`` (its ``ControlChange``) and its
effects count in the phase that starts there.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from tiertop.monitor.commands import Applied
from tiertop.monitor.control_client import ControlClient, ControlClientError
from tiertop.monitor.protocol import (
    TOPIC_OF,
    RequestDone,
    Snapshot,
    TelemetryMessage,
    TierStats,
)
from tiertop.monitor.state import StateModel
from tiertop.monitor.subscriber import TelemetrySubscriber
from tiertop.monitor.summary import Phase, PhaseResult, PhaseSummarizer, Summary, render_summary
from tiertop.monitor.vllm_events import KvEventBatch
from tiertop.runtime.trace_workload import TraceWorkload

from .format import METRICS, OPS, Action, Expectation, Scenario, format_value

if TYPE_CHECKING:
    from tiertop.runtime.publisher import TelemetryPublisher

__all__ = ["ActionResult", "CheckResult", "PlayError", "PlayResult", "Player", "play"]

LOOPBACK = "tcp://127.0.0.1:0"
#: Name of the hidden phase over the whole run (expectations without phase or between).
RUN_PHASE = "(whole run)"
#: Longest the player waits for telemetry it knows is coming before giving up.
TELEMETRY_TIMEOUT_S = 30.0
#: Longest the player waits for a dashboard it started to join (``await_reader``).
READER_TIMEOUT_S = 60.0


class PlayError(RuntimeError):
    """The scenario could not be played (the runtime did not start, telemetry stopped...)."""


# ------------------------------------------------------------------------------------- results


@dataclass(slots=True)
class ActionResult:
    """What became of one timeline action.

    Attributes:
        index: Its index in the file's ``[[timeline]]``.
        at_s: When it was due (seconds from the start).
        command: The command's name.
        fields: The command's fields.
        applied: True when the runtime applied it.
        sent_at_s: When it was sent (seconds from the start; exact in sim mode).
        old: Value before (from the runtime's reply).
        new: Value after.
        error: Why it was not applied ("" when it was).
    """

    index: int
    at_s: float
    command: str
    fields: dict[str, Any]
    applied: bool = False
    sent_at_s: float | None = None
    old: Any = None
    new: Any = None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "at_s": self.at_s, "command": self.command,
            "fields": self.fields, "applied": self.applied, "sent_at_s": self.sent_at_s,
            "old": self.old, "new": self.new, "error": self.error,
        }

    def describe(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        head = f"timeline[{self.index}] at {self.at_s:g}s {self.command}({fields})"
        if not self.applied:
            return f"{head}: NOT APPLIED: {self.error}"
        return f"{head}: {_short(self.old)} -> {_short(self.new)}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(slots=True)
class CheckResult:
    """One expectation, evaluated.

    Attributes:
        expectation: What was expected.
        passed: Whether it held.
        measured: The value measured (None: no data, or a check).
        threshold: What it was compared with (the value, or ``scale`` x the ``ref`` phase's).
        detail: How it was judged, in words (always set for checks and failures).
    """

    expectation: Expectation
    passed: bool
    measured: float | None = None
    threshold: float | None = None
    detail: str = ""
    reference: float | None = None

    def describe(self) -> str:
        e = self.expectation
        status = "PASS" if self.passed else "FAIL"
        text = f"{status} expect[{e.index}]: {e.describe()}"
        if e.metric != "no_wrong_kv":
            text += f": measured {format_value(e.unit, self.measured)}"
            if e.ref is not None:
                text += f" vs {format_value(e.unit, self.threshold)}"
                if e.scale != 1.0 and self.reference is not None:
                    text += f" = {e.scale:g} x {format_value(e.unit, self.reference)}"
        if self.detail:
            text += f" ({self.detail})"
        if e.note:
            text += f" [{e.note}]"
        return text

    def as_dict(self) -> dict[str, Any]:
        e = self.expectation
        return {
            "index": e.index, "text": e.describe(), "metric": e.metric, "tier": e.tier,
            "op": e.op, "value": e.value, "phase": e.phase,
            "between": list(e.between) if e.between else None, "ref": e.ref,
            "scale": e.scale, "passed": self.passed, "measured": self.measured,
            "threshold": self.threshold, "reference": self.reference, "detail": self.detail,
            "note": e.note,
        }


@dataclass(slots=True)
class PlayResult:
    """Everything a play produced.

    Attributes:
        scenario: What was played.
        summary: The per-phase summary (the scenario's phases), as ``tiertop replay
            --headless`` computes it.
        checks: Each expectation's outcome, in file order.
        actions: Each timeline action's outcome, in time order.
        integrity: Whole-run KV integrity figures (see :func:`no_wrong_kv`).
        wall_s: Wall seconds from starting the runtime to its last message read.
        recording: The recording written (None without ``record``).
        issues: Stream problems (lost messages...) that may make the summary inexact.
    """

    scenario: Scenario
    summary: Summary
    checks: list[CheckResult]
    actions: list[ActionResult]
    integrity: dict[str, Any]
    wall_s: float
    recording: str | None = None
    issues: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """All expectations held and every action was applied."""
        return all(c.passed for c in self.checks) and all(a.applied for a in self.actions)

    def failures(self) -> list[str]:
        """One line per failed expectation or unapplied action."""
        out = [c.describe() for c in self.checks if not c.passed]
        out += [a.describe() for a in self.actions if not a.applied]
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``. Everything but ``run`` is determined by the scenario and
        the telemetry (byte-identical across runs of a sim scenario)."""
        return {
            "scenario": dict(self.scenario.describe()),
            "passed": self.passed,
            "summary": self.summary.as_dict(),
            "expectations": [c.as_dict() for c in self.checks],
            "timeline": [a.as_dict() for a in self.actions],
            "integrity": dict(self.integrity),
            "run": {"wall_s": self.wall_s, "recording": self.recording,
                    "issues": list(self.issues)},
        }

    def render(self) -> str:
        """The text ``tiertop play`` prints."""
        s = self.scenario
        unit = "virtual s" if s.mode == "sim" else "s"
        lines = [f"scenario {s.name}: {s.description}".rstrip(": "),
                 f"{s.mode} mode, {s.duration_s:g} {unit}, seed {s.seed}; played in "
                 f"{self.wall_s:.1f} s wall", ""]
        lines.append(render_summary(self.summary))
        if self.actions:
            lines += ["", "timeline:"]
            lines += [f"  {a.describe()}" for a in self.actions]
        i = self.integrity
        lines += ["", f"integrity: {i['failed_requests']:g} failed requests, "
                      f"{i['restored_tokens']:,.0f} restored tokens from "
                      f"{i['verified_hits']:,} verified hits x {i['block_tokens']} tokens, "
                      f"{i['corrupt_blocks']:,} corrupt blocks detected and recomputed"]
        if self.checks:
            lines += ["", "expectations:"]
            lines += [f"  {c.describe()}" for c in self.checks]
        for issue in self.issues:
            lines.append(f"warning: {issue}")
        failed = sum(not c.passed for c in self.checks)
        unapplied = sum(not a.applied for a in self.actions)
        lines.append("")
        if self.passed:
            lines.append(f"PASSED: {len(self.checks)} expectation(s) held"
                         + (f", {len(self.actions)} action(s) applied" if self.actions else ""))
        else:
            parts = []
            if failed:
                parts.append(f"{failed} of {len(self.checks)} expectation(s) failed")
            if unapplied:
                parts.append(f"{unapplied} action(s) not applied")
            lines.append("FAILED: " + ", ".join(parts))
        if self.recording:
            lines.append(f"recording: {self.recording}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- reading telemetry


class _Stream:
    """The player's reader: subscriber -> state model -> phase summarizer, cut at boundaries,
    plus the whole-run integrity counts."""

    def __init__(self, addresses: Mapping[str, str], phases: list[Phase],
                 origin: float | None) -> None:
        self.sub = TelemetrySubscriber(addresses["telemetry"], addresses.get("replay"),
                                       reconnect_after_s=None, resync_timeout_s=5.0)
        self.model = StateModel()
        self.summarizer = PhaseSummarizer(self.model, phases, origin=origin)
        self.last_seq: dict[str, int] = {}
        self.stats_tick = -1
        self.restored: dict[str, float] = {}
        self.requests = 0.0
        self.failed = 0.0
        self.errors: list[str] = []
        self.min_sample_rate = 1.0
        self.last_received = time.monotonic()

    def close(self) -> None:
        self.sub.close()

    def _position(self, message: Any) -> float | None:
        origin = self.summarizer.origin
        if origin is None:
            return None
        if isinstance(message, TelemetryMessage):
            if isinstance(message, Snapshot):
                return None  # state, not an event: it belongs where it is folded
            return message.clock - origin
        if isinstance(message, KvEventBatch):
            return message.ts - origin
        return None

    def take(self, message: Any) -> None:
        summarizer = self.summarizer
        t = self._position(message)
        if t is not None:
            while (b := summarizer.next_boundary()) is not None and t > b + 1e-9:
                summarizer.observe(b)
        self.model.fold(message, time.time())
        summarizer.note(message)
        if isinstance(message, TelemetryMessage):
            topic = TOPIC_OF.get(type(message))
            if topic is not None and not isinstance(message, Snapshot):
                self._seen(topic, message.seq)
            if isinstance(message, Snapshot):
                for name, seq in message.topic_seqs.items():
                    self._seen(name, seq)
            if isinstance(message, TierStats):
                self.stats_tick = max(self.stats_tick, message.tick)
            elif isinstance(message, RequestDone):
                self._request(message)
        elif isinstance(message, KvEventBatch):
            self._seen(message.topic, message.seq)

    def _seen(self, topic: str, seq: int) -> None:
        if seq > self.last_seq.get(topic, -1):
            self.last_seq[topic] = seq

    def _request(self, m: RequestDone) -> None:
        rate = m.sample_rate if m.sample_rate > 0 else 1.0
        w = 1.0 / rate
        self.min_sample_rate = min(self.min_sample_rate, rate)
        self.requests += w
        if m.error:
            self.failed += w
            if len(self.errors) < 5 and m.error not in self.errors:
                self.errors.append(m.error)
        for tier, tokens in m.prefix_tokens.items():
            self.restored[tier] = self.restored.get(tier, 0.0) + tokens * w

    def pump(self, timeout_ms: float = 0.0) -> int:
        messages = self.sub.poll(5000, timeout_ms)
        for message in messages:
            self.take(message)
        if messages:
            self.last_received = time.monotonic()
        return len(messages)

    def cut(self, position_s: float) -> None:
        """Everything published up to ``position_s`` was folded: close and open phases
        there."""
        self.summarizer.observe(position_s)

    def join(self, timeout_s: float = TELEMETRY_TIMEOUT_S) -> None:
        """Wait for the runtime's Hello and the join snapshot."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump(50)
            if self.model.hello is not None and self.sub.in_sync:
                return
        raise PlayError(f"no telemetry from {self.sub.endpoint} within {timeout_s:g} s")

    def until_tick(self, tick: int, timeout_s: float = TELEMETRY_TIMEOUT_S) -> None:
        """Read until the TierStats of ``tick`` (and so everything published before it)."""
        deadline = time.monotonic() + timeout_s
        while self.stats_tick < tick:
            if time.monotonic() > deadline:
                raise PlayError(f"TierStats tick {tick} did not arrive within {timeout_s:g} s "
                                f"(last: {self.stats_tick})")
            self.pump(20)

    def drain(self, until: Mapping[str, int], timeout_s: float = 5.0) -> bool:
        """Read until every topic's message ``until[topic]`` arrived (True) or the time is
        up (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.last_seq.get(t, -1) >= s for t, s in until.items()):
                return True
            self.pump(20)
        return all(self.last_seq.get(t, -1) >= s for t, s in until.items())

    def issues(self) -> list[str]:
        c = self.sub.counters()
        out = []
        if c.unrecovered:
            out.append(f"{c.unrecovered} telemetry message(s) lost: the summary may miss "
                       "detail (counts come from cumulative counters and stay exact)")
        if c.restarts:
            out.append(f"the runtime restarted {c.restarts} time(s) during the run")
        if c.decode_errors:
            out.append(f"{c.decode_errors} undecodable message(s)")
        return out


# ----------------------------------------------------------------------- the simulator's steps


class _SimLoop:
    """Owns the simulated cluster's thread: simulate to a target, publish, wait; apply the
    control commands that arrive while waiting (so an action sent at a grid point is applied
    at exactly that virtual time)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._cond = threading.Condition()
        self._target: float | None = None
        self._done_tick = -1
        self._stop = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tiertop-play-sim", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        service = self.service
        cluster = service.cluster
        try:
            while True:
                control = service.control
                if control is None:
                    return
                control.apply_pending(service)
                with self._cond:
                    if self._stop:
                        return
                    target, self._target = self._target, None
                if target is None:
                    control.wait(0.002)
                    continue
                every = cluster.sample_every
                cluster.run_until(target)
                service.publish_stats()
                cluster.sample_every = every  # sampling must not follow the wall clock
                with self._cond:
                    self._done_tick = service.tick - 1
                    self._cond.notify_all()
        except BaseException as exc:
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def advance(self, t: float, timeout_s: float = 600.0) -> int:
        """Simulate up to virtual time ``t`` and publish a TierStats there; its tick."""
        with self._cond:
            want = self._done_tick + 1
            self._target = t
            ok = self._cond.wait_for(lambda: self._done_tick >= want or self.error is not None,
                                     timeout_s)
            if self.error is not None:
                raise PlayError(f"the simulator failed: {self.error}") from self.error
            if not ok:
                raise PlayError(f"the simulator did not reach {t:g} virtual s in {timeout_s:g} s")
            return self._done_tick

    def stop(self) -> None:
        with self._cond:
            self._stop = True
        if self.thread.ident is not None:
            self.thread.join(timeout=10)


# ------------------------------------------------------------------------------------ playing


def _command_fields(action: Action) -> dict[str, Any]:
    raw = msgspec.to_builtins(action.command)
    raw.pop("type", None)
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in raw.items()}


class Player:
    """Plays one scenario (see the module docstring).

    Args:
        scenario: A validated scenario.
        record: Write the telemetry stream to this recording file (replaced if it is one).
        speed: Sim mode: virtual seconds per wall second (None: the scenario's, which
            defaults to as fast as possible; ``inf``: as fast as possible).
        on_start: Called with the runtime's addresses once it serves and before the first
            step (``--dash`` starts the dashboard there).
        hold: Called after the last step, before the runtime closes (``--dash`` waits for the
            dashboard there).
        await_reader: With ``on_start``: before the first step, wait (up to
            :data:`READER_TIMEOUT_S`) for one more reader to join the stream (its snapshot
            request), while this returns True (``--dash``: while the dashboard runs), so that
            it sees the run from the start.
        log: Progress lines for a person (default: none).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        record: str | Path | None = None,
        speed: float | None = None,
        on_start: Callable[[Mapping[str, str]], None] | None = None,
        hold: Callable[[], None] | None = None,
        await_reader: Callable[[], bool] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if speed is not None and scenario.mode != "sim":
            raise ValueError("speed applies to sim scenarios; the model runtime runs on the "
                             "wall clock")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.scenario = scenario
        self.record = str(record) if record is not None else None
        self.speed = speed
        self.on_start = on_start
        self.hold = hold
        self.await_reader = await_reader
        self.log = log or (lambda text: None)
        self._hidden: dict[int, Phase] = {}

    # --------------------------------------------------------------------------- phases

    def _phases(self) -> list[Phase]:
        s = self.scenario
        phases = [*s.phases, Phase(RUN_PHASE, 0.0, None)]
        for e in s.expectations:
            if e.between is not None:
                end = None if abs(e.between[1] - s.duration_s) < 1e-9 else e.between[1]
                phase = Phase(f"expect[{e.index}]", e.between[0], end)
                self._hidden[e.index] = phase
                phases.append(phase)
        return phases

    # ------------------------------------------------------------------------------ play

    def play(self) -> PlayResult:
        """Run the scenario to its end; the result (expectations evaluated).

        Raises:
            PlayError: The runtime could not start or its telemetry stopped.
        """
        started = time.monotonic()
        phases = self._phases()
        if self.scenario.mode == "sim":
            stream, actions, block_tokens = self._play_sim(phases)
        else:
            stream, actions, block_tokens = self._play_model(phases)
        wall = time.monotonic() - started
        full = stream.summarizer.finish()
        by_name = {p.name: p for p in full.phases}
        visible = [p for p in full.phases if p.name in {q.name for q in self.scenario.phases}]
        summary = Summary(phases=visible, source=full.source, duration_s=full.duration_s,
                          info={"scenario": self.scenario.name, "seed": self.scenario.seed})
        integrity = _integrity(stream, by_name[RUN_PHASE], block_tokens)
        checks = [self._check(e, by_name, integrity, stream) for e in
                  self.scenario.expectations]
        return PlayResult(self.scenario, summary, checks, actions, integrity, wall,
                          self.record, stream.issues())

    def _recorder(self, addresses: Mapping[str, str]) -> Any:
        if self.record is None:
            return None
        from tiertop.monitor.recorder import record_runtime

        s = self.scenario
        meta = {"scenario": s.name, "mode": s.mode, "seed": s.seed,
                "phases": [[p.name, p.start_s, p.end_s] for p in s.phases]}
        return record_runtime(self.record, addresses, scenario=s.text or None, meta=meta)

    def _started(self, publisher: Any, addresses: Mapping[str, str], stream: _Stream) -> None:
        """Tell ``on_start`` the runtime serves; wait for the reader it starts, if asked."""
        if self.on_start is None:
            return
        before = publisher.counters().snapshot_requests
        self.on_start(dict(addresses))
        if self.await_reader is None:
            return
        deadline = time.monotonic() + READER_TIMEOUT_S
        while time.monotonic() < deadline and self.await_reader():
            if publisher.counters().snapshot_requests > before:
                return
            stream.pump(50)

    def _client(self, address: str) -> ControlClient:
        return ControlClient(address, timeout_s=5.0, retries=1,
                             client=f"tiertop-play:{self.scenario.name}")

    def _apply(self, client: ControlClient, action: Action, sent_at_s: float) -> ActionResult:
        result = ActionResult(action.index, action.at_s, action.command.name,
                              _command_fields(action), sent_at_s=sent_at_s)
        try:
            reply = client.request(action.command)
        except ControlClientError as exc:
            result.error = str(exc)
            return result
        if isinstance(reply, Applied):
            result.applied = True
            result.old, result.new = reply.old, reply.new
        else:
            result.error = f"refused [{reply.error_code}]: {reply.message}"
        self.log(f"  {result.describe()}")
        return result

    # ---------------------------------------------------------------------------- sim

    def _grid(self, tick_s: float) -> list[float]:
        s = self.scenario
        points = {0.0, s.duration_s}
        n = math.floor(s.duration_s / tick_s + 1e-9)
        points.update(round(i * tick_s, 9) for i in range(n + 1))
        points.update(a.at_s for a in s.timeline)
        for p in self._phases():
            points.add(p.start_s)
            if p.end_s is not None:
                points.add(p.end_s)
        return sorted(t for t in points if 0.0 <= t <= s.duration_s)

    @staticmethod
    def _wind_up(stream: _Stream, publisher: TelemetryPublisher | None, recorder: Any) -> None:
        """After the last action: everything published reaches the summary (and the
        recording, which is then finished)."""
        assert publisher is not None
        publisher.flush(timeout_s=2.0)
        if not stream.drain(dict(publisher.counters().topic_seqs)):
            stream.pump(100)
        if recorder is not None:
            from tiertop.monitor.recorder import finish_runtime_recording

            finish_runtime_recording(recorder, publisher)

    def _play_sim(self, phases: list[Phase]) -> tuple[_Stream, list[ActionResult], int]:
        from tiertop.runtime.sim.replay import build_cluster
        from tiertop.runtime.sim.service import SimConfig, SimService
        from tiertop.runtime.traces import TraceReader

        s = self.scenario
        sim = s.sim
        assert sim is not None
        topo = sim.topology
        trace: Any = None
        if s.trace is not None:
            ts = s.trace
            reader = TraceReader(ts.path, format=ts.format, speed=ts.speed, start_s=ts.start_s,
                                 max_requests=ts.max_requests, block_size=topo.block_tokens)
            belady = any(topo.kind(k).eviction == "belady" for k in topo.kinds())
            trace = list(reader) if belady else reader
        speed = self.speed if self.speed is not None else sim.speed
        self.log(f"building {topo.name}: {topo.gpus:,} GPUs in {topo.racks} racks")
        cluster = build_cluster(topo, sim.profile, trace=trace, seed=s.seed)
        config = SimConfig(topology=topo, profile=sim.profile, seed=s.seed, speed=speed,
                           duration_s=s.duration_s, publish=LOOPBACK, replay=LOOPBACK,
                           control=LOOPBACK, tick_s=sim.tick_s)
        service = SimService(config, cluster=cluster)
        assert service.publisher is not None
        # A stable source id: nobody is subscribed yet, and the summary names it.
        service.publisher.source = f"sim:{s.name}"
        cluster.sample_every = sim.request_sample
        stream: _Stream | None = None
        recorder = None
        loop = _SimLoop(service)
        client: ControlClient | None = None
        actions: list[ActionResult] = []
        try:
            stream = _Stream(service.addresses, phases, origin=0.0)
            recorder = self._recorder(service.addresses)
            stream.join()
            self._started(service.publisher, service.addresses, stream)
            loop.start()
            client = self._client(service.addresses["control"])
            due = list(s.timeline)
            wall0, virtual0, pace = time.monotonic(), 0.0, service.speed
            self.log(f"simulating {s.duration_s:g} virtual s")
            for t in self._grid(sim.tick_s):
                while service.paused:  # a dashboard's Pause (a timeline cannot pause a sim)
                    stream.pump(50)
                    wall0, virtual0 = time.monotonic(), t
                if service.speed != pace:  # a SetSimSpeed (timeline or dashboard)
                    wall0, virtual0, pace = time.monotonic(), t, service.speed
                if math.isfinite(pace):
                    wake = wall0 + (t - virtual0) / pace
                    while (left := wake - time.monotonic()) > 0:
                        stream.pump(min(left, 0.05) * 1000)
                tick = loop.advance(t)
                stream.until_tick(tick)
                stream.cut(t)
                while due and due[0].at_s <= t + 1e-9:
                    actions.append(self._apply(client, due.pop(0), t))
            self._wind_up(stream, service.publisher, recorder)
            recorder = None
            if self.hold is not None:
                self.hold()  # the loop still applies a dashboard's commands meanwhile
        finally:
            loop.stop()
            if client is not None:
                client.close()
            if recorder is not None:
                recorder.stop()
            service.close()
            if stream is not None:
                stream.close()
        assert stream is not None
        return stream, actions, topo.block_tokens

    # -------------------------------------------------------------------------- model

    def _play_model(self, phases: list[Phase]) -> tuple[_Stream, list[ActionResult], int]:
        from tiertop.runtime.model_runtime import ModelRuntime, RuntimeConfig
        from tiertop.runtime.workload import WorkloadParams

        s = self.scenario
        m = s.model
        assert m is not None
        config = RuntimeConfig(
            tiers=list(m.tiers), model=m.name, seed=s.seed, device=m.device, threads=m.threads,
            block_size=m.block_size, strategy=m.strategy, placement=m.placement,
            promotion=m.promotion,
            workload=m.workload if m.workload is not None else WorkloadParams(seed=s.seed),
            publish=LOOPBACK, replay=LOOPBACK, control=LOOPBACK, tick_s=m.tick_s,
            duration_s=s.duration_s, max_queue=m.max_queue,
        )
        self.log(f"starting the model runtime ({m.name}, "
                 + ", ".join(f"{t.name} {t.capacity_bytes:,} B" for t in m.tiers) + ")")
        try:
            runtime = ModelRuntime(config)
        except (ValueError, OSError, RuntimeError) as exc:
            raise PlayError(f"the model runtime could not start: {exc}") from exc
        stream: _Stream | None = None
        recorder = None
        client: ControlClient | None = None
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                runtime.run()
            except BaseException as exc:  # reported once the run is over
                failure.append(exc)

        thread = threading.Thread(target=serve, name="tiertop-play-model", daemon=True)
        actions: list[ActionResult] = []
        try:
            if s.trace is not None:
                info = runtime.model.info
                runtime.workload = TraceWorkload(  # type: ignore[assignment]
                    s.trace.path, s.trace.format, vocab_size=info.vocab_size,
                    max_context=info.n_positions, seed=s.seed, speed=s.trace.speed,
                    start_s=s.trace.start_s, max_requests=s.trace.max_requests)
            stream = _Stream(runtime.addresses, phases, origin=None)
            recorder = self._recorder(runtime.addresses)
            stream.join()
            self._started(runtime.publisher, runtime.addresses, stream)
            client = self._client(runtime.addresses["control"])
            self.log(f"running {s.duration_s:g} s")
            origin = time.time()
            stream.summarizer.origin = origin
            thread.start()
            for action in s.timeline:
                due = origin + action.at_s
                while (left := due - time.time()) > 0:
                    stream.pump(min(left, 0.05) * 1000)
                actions.append(self._apply(client, action, time.time() - origin))
            while thread.is_alive():
                stream.pump(50)
            if failure:
                raise PlayError(f"the model runtime failed: {failure[0]!r}") from failure[0]
            self._wind_up(stream, runtime.publisher, recorder)
            recorder = None
            if self.hold is not None:
                self.hold()
        finally:
            runtime.stop()
            if thread.is_alive():
                thread.join(timeout=30)
            if client is not None:
                client.close()
            if recorder is not None:
                recorder.stop()
            runtime.close()
            if stream is not None:
                stream.close()
        assert stream is not None
        return stream, actions, m.block_size

    # ------------------------------------------------------------------------- checking

    def _check(self, e: Expectation, phases: Mapping[str, PhaseResult],
               integrity: Mapping[str, Any], stream: _Stream) -> CheckResult:
        phase = phases[e.phase] if e.phase is not None else (
            phases[self._hidden[e.index].name] if e.between is not None else phases[RUN_PHASE])
        if e.metric == "no_wrong_kv":
            return no_wrong_kv(e, phase, integrity)
        measured = _measure(phase, e)
        threshold = e.value
        ref = None
        if e.ref is not None:
            ref = _measure(phases[e.ref], e)
            threshold = None if ref is None else e.scale * ref
        if measured is None:
            return CheckResult(e, False, None, threshold,
                               "no data: nothing measured in that time range"
                               + ("" if phase.complete else "; the run ended before it"),
                               ref)
        if threshold is None:
            return CheckResult(e, False, measured, None, f"no data in phase {e.ref}")
        assert e.op is not None
        passed = bool(OPS[e.op](measured, threshold))
        detail = "" if phase.complete else "the run ended before the phase did"
        return CheckResult(e, passed, measured, threshold, detail, ref)


def _measure(phase: PhaseResult, e: Expectation) -> float | None:
    metric = METRICS[e.metric]
    if e.tier is not None:
        row = phase.tiers.get(e.tier)
        value = None if row is None else row.get(metric.name)
    else:
        value = phase.service.get(metric.name)
    return None if value is None else float(value)


def _integrity(stream: _Stream, run: PhaseResult, block_tokens: int) -> dict[str, Any]:
    """Whole-run KV integrity figures: what requests restored, by tier, against the hits the
    tiers counted (a hit is a block that passed its tier's checks), and what was caught."""
    tiers = {}
    for name, row in run.tiers.items():
        tiers[name] = {
            "restored_tokens": round(stream.restored.get(name, 0.0), 6),
            "hits": int(row.get("hits") or 0),
            "corrupt": int(row.get("corrupt") or 0),
            "errors": int(row.get("errors") or 0),
        }
    return {
        "block_tokens": block_tokens,
        "requests": round(stream.requests, 6),
        "failed_requests": round(stream.failed, 6),
        "error_samples": list(stream.errors),
        "sampled": stream.min_sample_rate < 1.0,
        "restored_tokens": round(sum(stream.restored.values()), 6),
        "verified_hits": sum(t["hits"] for t in tiers.values()),
        "corrupt_blocks": sum(t["corrupt"] for t in tiers.values()),
        "tiers": tiers,
    }


def no_wrong_kv(e: Expectation, phase: PhaseResult,
                integrity: Mapping[str, Any]) -> CheckResult:
    """The ``no_wrong_kv`` check.

    A block is only ever served after its tier's checks (a corrupt one fails its checksum, is
    dropped, counted in ``corrupt`` and recomputed; a block of the wrong size or shape, or a
    store breaking its contract, fails the request with an error). So wrong KV would show as:

    1. a request that ended with an error, in the checked range (``failed`` > 0); or
    2. restored tokens not backed by verified hits: over the whole run, per tier, the prompt
       tokens requests report as restored from the tier must not exceed ``block_size`` x the
       tier's hits (a hit is counted only for a block that passed). Checked over the whole
       run because a request's lookups and its completion can fall on two sides of a phase
       boundary; skipped when the runtime sampled its request reports.
    """
    failed = float(phase.service.get("failed") or 0.0)
    requests = float(phase.service.get("requests") or 0.0)
    bt = int(integrity["block_tokens"])
    problems = []
    if failed > 0:
        samples = "; ".join(integrity.get("error_samples", [])[:2])
        problems.append(f"{failed:g} of {requests:g} requests failed ({samples})")
    unbacked = []
    if not integrity["sampled"]:
        for name, t in integrity["tiers"].items():
            if t["restored_tokens"] > t["hits"] * bt + 1e-6:
                unbacked.append(f"{name}: {t['restored_tokens']:g} restored tokens > "
                                f"{t['hits']} hits x {bt}")
    problems += unbacked
    corrupt = integrity["corrupt_blocks"]
    balance = ("restored tokens not checked: request reports were sampled"
               if integrity["sampled"] else
               f"{integrity['restored_tokens']:,.0f} restored tokens all backed by verified "
               f"hits ({integrity['verified_hits']:,} x {bt})")
    caught = f"{corrupt:,} corrupt block(s) caught and recomputed" if corrupt else \
        "no corrupt block detected"
    if problems:
        return CheckResult(e, False, None, None, "; ".join(problems))
    return CheckResult(e, True, None, None,
                       f"{requests:g} requests, none failed; {balance}; {caught}")


def play(scenario: Scenario, **options: Any) -> PlayResult:
    """Play ``scenario`` headless (see :class:`Player` for the options)."""
    return Player(scenario, **options).play()
