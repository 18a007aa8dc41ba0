"""The model runtime: a real GPT-2-architecture model serving a workload, its KV in the tiers.

One thread does everything that touches the hierarchy: it applies control commands (between
requests and between decode steps, so a command waits at most one forward pass), admits
arrivals into the request queue, serves one request at a time, and publishes a ``TierStats`` every
tick. The publisher does its socket work on its own thread, so a slow subscriber cannot stall the
engine; the control server reads its socket on this thread, a bounded batch per call, so a
flood of commands cannot either. Setup ends with ``gc.freeze()``: the model's hundreds of
thousands of objects would otherwise make every full collection a pause of a few hundred ms.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import xxhash
from tiertop.monitor.commands import ErrorCode
from tiertop.monitor.protocol import ControlChange, RequestDone
from tiertop.monitor.security import ServerCurve
from tiertop.tiers.hierarchy import Hierarchy
from tiertop.tiers.spec import OpenTiers, TierSpec

from .control_server import DEFAULT_CONTROL_ADDRESS, AppliedChange, ControlServer
from .control_target import Change, ControlError, refuse_drill_down
from .publisher import DEFAULT_ENDPOINT, DEFAULT_REPLAY_ENDPOINT, TelemetryPublisher
from .telemetry import StatsBuilder, TelemetrySink, build_hello
from .tier_control import TierControl
from .workload import Request, WorkloadError, WorkloadGenerator, WorkloadParams

CAPABILITIES = ["live_tunable", "replay", "snapshot", "pause", "faults"]
#: The GIL hand-over interval while a runtime runs: its control and telemetry threads must get
#: the interpreter within a millisecond even when the engine thread runs Python flat out
#: (CPython's default, 5 ms, shows up directly in control round trips).
SWITCH_INTERVAL_S = 0.0005


@dataclass
class RuntimeConfig:
    """Everything ``tiertop run`` can be told."""

    tiers: list[TierSpec]
    model: str = "tiny"
    seed: int = 0
    device: str | None = None
    threads: int | None = None  # torch CPU threads; None: 1 for the tiny model, else torch's
    block_size: int = 16
    strategy: str | None = "lru-tiering"
    placement: str | None = None
    promotion: str | None = None
    workload: WorkloadParams = field(default_factory=WorkloadParams)
    publish: str = DEFAULT_ENDPOINT
    replay: str | None = DEFAULT_REPLAY_ENDPOINT
    control: str = DEFAULT_CONTROL_ADDRESS
    read_only: bool = False
    tick_s: float = 0.25
    duration_s: float | None = None
    max_queue: int = 256
    curve: ServerCurve | None = None
    workdir: str | None = None


class ModelRuntime(TierControl):
    """Owns the tiers, the model engine, the workload, the publisher and the control server."""

    def __init__(self, config: RuntimeConfig) -> None:
        from .engine import ModelEngine
        from .model import load_model

        self.config = config
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._stop = threading.Event()
        self._not_running = threading.Event()
        self._not_running.set()
        self._tiers = OpenTiers(config.tiers, config.workdir)
        self.publisher: TelemetryPublisher | None = None
        self.control: ControlServer | None = None
        try:
            _set_threads(config)
            self.model = load_model(config.model, config.seed, config.device)
            info = self.model.info
            self.publisher = TelemetryPublisher(config.publish, config.replay, curve=config.curve)
            self.hierarchy = Hierarchy(
                self._tiers.configs,
                block_bytes=self.model.block_bytes(config.block_size),
                placement=config.placement or "top",
                promotion=config.promotion or "on-hit",
                strategy_name=None if config.placement else config.strategy,
                sink=TelemetrySink(self.publisher),
            )
            if config.strategy and config.promotion:
                self.hierarchy.set_promotion(config.promotion)
            self.engine = ModelEngine(self.model, self.hierarchy, config.block_size,
                                      clock=time.time, hash_seed=model_fingerprint(info))
            self.workload = WorkloadGenerator(replace(
                config.workload,
                vocab_size=info.vocab_size,
                max_context_tokens=info.n_positions,
            ))
            self.control = ControlServer(config.control, read_only=config.read_only,
                                         on_applied=self._on_applied, curve=config.curve)
            self.control.start()
            self.stats = StatsBuilder(self.hierarchy, time.time)
            self.addresses = {"telemetry": self.publisher.address, "control": self.control.address}
            if self.publisher.replay_address:
                self.addresses["replay"] = self.publisher.replay_address
            capabilities = CAPABILITIES + (["read_only"] if config.read_only else [])
            self.publisher.set_hello(build_hello(
                self.hierarchy, mode="model", model=info.describe(),
                block_size=config.block_size, capabilities=capabilities,
                addresses=self.addresses,
            ))
        except BaseException:
            self.close()
            raise
        self.queue: deque[Request] = deque()
        self.paused = False
        self.rejected_requests = 0
        self.completed = 0
        self.failed = 0
        self._origin = time.time()
        self._paused_at: float | None = None
        self._tick_completed = 0
        self._tick_tokens = 0
        self._prefix_query_tokens = 0
        self._prefix_hit_tokens = 0

    # ------------------------------------------------------------------ the loop

    def stop(self) -> None:
        """Ask the loop to finish the request in hand and return (safe from any thread)."""
        self._stop.set()  # the loop never waits longer than one tick

    def run(self) -> None:
        """Serve until the duration ends or ``stop()`` is called."""
        assert self.control is not None
        self._not_running.clear()
        try:
            self._loop()
        finally:
            self._not_running.set()

    def _loop(self) -> None:
        assert self.control is not None
        config = self.config
        self._origin = time.time()
        next_tick = self._origin
        deadline = None if config.duration_s is None else self._origin + config.duration_s
        while not self._stop.is_set():
            now = time.time()
            self.control.apply_pending(self)
            if not self.paused:
                self._admit(now)
                if self.queue:
                    self._serve(self.queue.popleft())
                    now = time.time()
            if now >= next_tick:
                self.publish_stats()
                next_tick = now + config.tick_s
            if deadline is not None and now >= deadline:
                break
            if getattr(self.workload, "exhausted", False) and not self.queue:
                break  # a replayed trace is over and served
            if self.paused or not self.queue:
                wake = next_tick
                if not self.paused:
                    wake = min(wake, self._origin + self.workload.next_arrival_s)
                self.control.wait(max(0.0, min(wake - time.time(), config.tick_s)))
        self.publish_stats()

    def _apply_control(self) -> None:
        assert self.control is not None
        self.control.apply_pending(self)

    def _admit(self, now: float) -> None:
        for request in self.workload.requests_until(now - self._origin):
            if len(self.queue) >= self.config.max_queue:
                self.rejected_requests += 1
                self.workload.abandon(request)
                continue
            self.queue.append(request)

    def _serve(self, request: Request) -> None:
        assert self.publisher is not None
        arrival = self._origin + request.arrival_s
        try:
            result = self.engine.serve(
                request.context_tokens.tolist(), request.max_new_tokens, arrival,
                between_steps=self._apply_control)
        except ValueError as exc:
            self.failed += 1
            self.workload.abandon(request)
            self.publisher.publish(RequestDone(
                request_id=str(request.request_id),
                conversation_id=str(request.conversation_id),
                prompt_tokens=len(request.context_tokens), error=str(exc),
            ))
            return
        self.workload.complete(request, result.output_ids)
        self.completed += 1
        self._tick_completed += 1
        self._tick_tokens += result.output_tokens
        self._prefix_query_tokens += result.prompt_tokens
        self._prefix_hit_tokens += result.restored_tokens
        self.publisher.publish(RequestDone(
            request_id=str(request.request_id),
            conversation_id=str(request.conversation_id),
            ttft_s=result.ttft_s,
            tpot_s=result.tpot_s,
            e2e_s=result.e2e_s,
            prompt_tokens=result.prompt_tokens,
            output_tokens=result.output_tokens,
            prefix_tokens=dict(result.prefix_tokens_restored),
            recomputed_tokens=result.recomputed_tokens,
            fetch_bytes=dict(result.bytes_fetched),
            fetch_latency_s=dict(result.fetch_latency_s),
            error="; ".join(result.errors),
        ))

    def publish_stats(self) -> None:
        assert self.publisher is not None
        stats = self.stats.build(
            paused=self.paused,
            queue_depth=len(self.queue),
            prefix_query_tokens=self._prefix_query_tokens,
            prefix_hit_tokens=self._prefix_hit_tokens,
        )
        interval = max(stats.interval_s, 1e-9)
        stats.request_rate = self._tick_completed / interval
        stats.tokens_per_s = self._tick_tokens / interval
        self._tick_completed = 0
        self._tick_tokens = 0
        self.publisher.publish(stats)

    def close(self) -> None:
        """Stop the loop if another thread runs it, flush telemetry, stop serving sockets,
        release every tier (idempotent)."""
        self.stop()
        if not self._not_running.wait(timeout=60):
            raise RuntimeError("the runtime loop did not stop within 60 s")
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.publisher is not None:
            self.publisher.flush(timeout_s=1.0)
            self.publisher.close()
            self.publisher = None
        self._tiers.close()

    # ------------------------------------------------------------------ control target

    def _on_applied(self, change: AppliedChange) -> None:
        if self.publisher is not None:
            self.publisher.publish(ControlChange(
                command=change.command, target=change.target, old=change.old, new=change.new,
                by=change.client, request_id=change.request_id,
            ))

    def set_workload(self, changes: Mapping[str, float | int]) -> Change:
        try:
            return self.workload.apply_set_workload(changes)
        except WorkloadError as exc:
            raise ControlError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None

    def set_paused(self, paused: bool) -> Change:
        old = self.paused
        now = time.time()
        if paused and not old:
            self._paused_at = now
        elif old and not paused and self._paused_at is not None:
            self._origin += now - self._paused_at  # the workload clock stood still
            self._paused_at = None
        self.paused = paused
        return old, paused

    def set_sim_speed(self, factor: float) -> Change:
        raise ControlError(ErrorCode.UNSUPPORTED,
                           "the model runtime runs on the wall clock; speed applies to --sim")

    def set_drill_down(self, racks: Sequence[int]) -> Change:
        return refuse_drill_down(racks)  # a model runtime has no racks

    def snapshot(self) -> Any:
        return {
            "replay": self.addresses.get("replay", ""),
            "tiers": {t.name: {"blocks": t.blocks, "bytes": t.used} for t in self.hierarchy.tiers},
        }

    def describe(self) -> Sequence[str]:
        lines = [f"model: {self.model.info.describe()}"]
        lines += [f"tier {t.name}: {t.describe()}" for t in self.hierarchy.tiers]
        lines += [f"{k}: {v}" for k, v in self.addresses.items()]
        return lines


def model_fingerprint(info: Any) -> int:
    """Seeds the block-hash chain with the model's identity, so tiers that outlive a run (a disk
    directory, a shared memory server) never hand one model's KV to another of the same shape."""
    return xxhash.xxh3_64_intdigest(info.describe().encode())


def _set_threads(config: RuntimeConfig) -> None:
    """A tiny model runs ~20x faster on one thread than on two contended ones."""
    import torch

    threads = config.threads if config.threads is not None else (
        1 if config.model == "tiny" else None)
    if threads is not None:
        torch.set_num_threads(threads)
