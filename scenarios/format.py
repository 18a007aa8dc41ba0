"""The scenario file format: a repeatable experiment as one TOML file.

A scenario names the runtime to start (the model runtime or the cluster simulator) and how it
is set up, how long it runs, a timeline of control commands applied at given times, named
phases the summary is cut into, and expectations that make the run fail when violated. The
full reference, with every key and unit, is ``docs/scenarios.md``; in short::

    [scenario]
    name = "burst"                    # default: the file name without .toml
    description = "one line for `tiertop play --list`"
    mode = "model"                    # "model" (real model, wall clock) or "sim" (simulator)
    duration = 30                     # seconds (virtual seconds in sim mode); or "30s", "2m"
    seed = 0                          # seeds the weights, the workload and the router

    # mode = "model": the model, its tiers (fastest first) and its workload (or a [trace])
    [model]
    name = "tiny"                     # tiny, gpt2-small or a local checkpoint path
    block_size = 16                   # tokens per KV block
    strategy = "lru-tiering"          # or placement = "spill" (and promotion = "never")
    [[tiers]]                         # the keys of a tier spec (``tiertop run --tier``)
    kind = "dram"
    capacity = "1MiB"
    [workload]                        # WorkloadParams fields
    lambda_rate = 4.0
    prompt = { kind = "lognormal", mean = 48, max = 192 }

    # mode = "sim": a preset or config, overridden by the topology file's tables
    [sim]
    preset = "single-node"
    [sim.hbm]
    cache_blocks = 4096

    [[timeline]]                      # a control command at a time, fields as in
    at = 10                           # monitor/commands.py
    command = "SetWorkload"
    rate = 20.0

    [[phases]]                        # default: one phase "all" over the whole run
    name = "burst"
    start = 10
    end = 20

    [[expect]]                        # checked on the summary when the run ends
    metric = "ttft_p99_s"
    op = "<="
    value = "200ms"
    phase = "burst"

This module holds the parsed form (:class:`Scenario` and its parts), the expectation metrics
(:data:`METRICS`) and the value syntax (:func:`parse_value`); :mod:`.validate` reads and checks
files, :mod:`.player` runs them.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from tiertop.monitor.summary import Phase
from tiertop.tiers.units import parse_size

if TYPE_CHECKING:
    from tiertop.monitor.commands import AnyCommand
    from tiertop.runtime.sim.profile import Profile
    from tiertop.runtime.sim.topology import Topology
    from tiertop.runtime.workload import WorkloadParams
    from tiertop.tiers.spec import TierSpec

__all__ = [
    "METRICS",
    "MODES",
    "OPS",
    "Action",
    "Expectation",
    "Metric",
    "ModelSetup",
    "Scenario",
    "SimSetup",
    "TraceSetup",
    "Unit",
    "format_value",
    "parse_duration",
    "parse_value",
]

MODES: Final = ("model", "sim")

#: Keys of each table (unknown keys are errors). Timeline entries take ``at``, ``command`` and
#: the command's own fields; ``[sim]`` also takes the topology tables (see :data:`SIM_TABLES`).
SCENARIO_KEYS: Final = ("name", "description", "mode", "duration", "seed")
MODEL_KEYS: Final = ("name", "block_size", "strategy", "placement", "promotion", "device",
                     "threads", "tick", "max_queue")
SIM_KEYS: Final = ("preset", "config", "profile", "speed", "tick", "request_sample")
#: Topology tables allowed under ``[sim]`` (``[sim.hbm]``...), as in a ``tiertop sim --config``
#: file.
SIM_TABLES: Final = ("cluster", "hbm", "dram", "ssd", "pool", "remote", "policy", "pd", "router",
                     "workload")
TRACE_KEYS: Final = ("path", "format", "speed", "start", "max_requests")
TIMELINE_KEYS: Final = ("at", "command")
PHASE_KEYS: Final = ("name", "start", "end")
EXPECT_KEYS: Final = ("metric", "tier", "op", "value", "phase", "between", "ref", "scale", "note")
#: WorkloadParams fields a scenario may not set: the scenario's seed, and what the runtime
#: takes from the model.
WORKLOAD_FIXED: Final = {
    "seed": "the workload is seeded by [scenario] seed",
    "vocab_size": "the model runtime sets it from the model",
    "max_context_tokens": "the model runtime sets it from the model's context window",
}

#: Seconds between TierStats when the scenario does not say: wall seconds in model mode,
#: virtual seconds in sim mode.
DEFAULT_MODEL_TICK_S: Final = 0.25
DEFAULT_SIM_TICK_S: Final = 0.5

Unit = Literal["fraction", "count", "seconds", "bytes", "per_second", "check"]


@dataclass(frozen=True, slots=True)
class Metric:
    """An expectation metric: a key of the per-phase summary (:mod:`tiertop.monitor.summary`).

    Attributes:
        name: The key (``tiers[TIER][name]`` for tier metrics, ``service[name]`` otherwise).
        scope: ``"tier"`` (needs ``tier``), ``"service"`` or ``"check"`` (no op or value).
        unit: How values are written and compared.
        help: One line for the docs and error messages.
    """

    name: str
    scope: Literal["tier", "service", "check"]
    unit: Unit
    help: str


def _metrics() -> dict[str, Metric]:
    tier: list[tuple[str, Unit, str]] = [
        ("hit_ratio", "fraction", "hits / (hits + misses) of the tier's lookups"),
        ("hits", "count", "lookups the tier served"),
        ("misses", "count", "lookups the tier did not serve"),
        ("puts", "count", "blocks stored into the tier"),
        ("evictions", "count", "blocks evicted to make room (demoted or dropped)"),
        ("promotions", "count", "blocks moved up out of the tier"),
        ("demotions", "count", "blocks moved down out of the tier"),
        ("drops", "count", "blocks that left the tier without being kept below"),
        ("deletes", "count", "blocks deleted on request"),
        ("bytes_in", "bytes", "bytes written into the tier"),
        ("bytes_out", "bytes", "bytes read out of the tier"),
        ("errors", "count", "failed operations"),
        ("corrupt", "count", "blocks that failed their integrity check (dropped, recomputed)"),
        ("occupancy_mean", "fraction", "mean used / capacity over the phase"),
        ("occupancy_end", "fraction", "used / capacity at the end of the phase"),
        ("used_bytes_end", "bytes", "bytes resident at the end of the phase"),
        ("get_p50_s", "seconds", "median block get latency"),
        ("get_p99_s", "seconds", "99th percentile block get latency"),
        ("get_mean_s", "seconds", "mean block get latency"),
    ]
    service: list[tuple[str, Unit, str]] = [
        ("requests", "count", "requests completed or failed"),
        ("failed", "count", "requests that ended with an error"),
        ("output_tokens", "count", "tokens generated"),
        ("request_rate", "per_second", "requests per second of the phase"),
        ("tokens_per_s", "per_second", "generated tokens per second of the phase"),
        ("ttft_p50_s", "seconds", "median time to first token"),
        ("ttft_p99_s", "seconds", "99th percentile time to first token"),
        ("tpot_p50_s", "seconds", "median time per output token"),
        ("tpot_p99_s", "seconds", "99th percentile time per output token"),
        ("e2e_mean_s", "seconds", "mean end-to-end latency"),
        ("prefix_hit_ratio", "fraction", "prompt tokens found in some tier / looked up"),
        ("restored_share", "fraction", "share of prompt tokens restored from the tiers"),
        ("recomputed_share", "fraction", "share of prompt tokens recomputed"),
        ("migrations", "count", "promotions + demotions over all tiers"),
        ("evictions", "count", "evictions over all tiers"),
        ("control_changes", "count", "control commands applied"),
        ("faults", "count", "fault and health events"),
    ]
    out = {name: Metric(name, "tier", unit, text) for name, unit, text in tier}
    # ``evictions`` is both: with a tier it is the tier's, without one the runtime's total.
    out.update({name: Metric(name, "service", unit, text) for name, unit, text in service
                if name not in out})
    out["no_wrong_kv"] = Metric(
        "no_wrong_kv", "check", "check",
        "no request failed with an error, and every restored token came from a block that "
        "passed its tier's checks (restored tokens <= block_size x hits, per tier)",
    )
    return out


#: Every expectation metric by name.
METRICS: Final[dict[str, Metric]] = _metrics()
#: Metrics that exist both per tier and runtime-wide (the tier decides which).
BOTH_SCOPES: Final = frozenset({"evictions"})

#: Comparison operators of expectations.
OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|m|min|h)\s*$")
_DURATION_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                          "min": 60.0, "h": 3600.0}
_PERCENT = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+)\s*%\s*$")


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return float(raw)


def parse_duration(raw: Any) -> float:
    """Seconds from a number (seconds) or a string with a unit: ``"200ms"``, ``"1.5s"``,
    ``"250us"``, ``"2m"``, ``"1h"``.

    Raises:
        ValueError: Anything else, or a value that is not finite.
    """
    value = _number(raw)
    if value is None:
        m = _DURATION.match(raw) if isinstance(raw, str) else None
        if m is None:
            raise ValueError(f"expected seconds (a number) or a duration such as '200ms', "
                             f"'1.5s', '2m', got {raw!r}")
        value = float(m[1]) * _DURATION_UNITS[m[2]]
    if not math.isfinite(value):
        raise ValueError(f"expected a finite duration, got {raw!r}")
    return value


def parse_value(unit: Unit, raw: Any) -> float:
    """A comparison value in the metric's own unit (seconds, a fraction, bytes...).

    ``seconds`` take numbers or durations (``"200ms"``), ``fraction`` numbers or percentages
    (``"50%"``), ``bytes`` numbers or sizes (``"64MiB"``), ``count`` and ``per_second`` numbers.

    Raises:
        ValueError: A value that does not fit the unit, saying what would.
    """
    if unit == "seconds":
        return parse_duration(raw)
    value = _number(raw)
    if unit == "fraction":
        if value is None and isinstance(raw, str) and (m := _PERCENT.match(raw)):
            value = float(m[1]) / 100.0
        if value is None:
            raise ValueError(f"expected a fraction (0.5) or a percentage ('50%'), got {raw!r}")
    elif unit == "bytes":
        if value is None:
            if not isinstance(raw, str):
                raise ValueError(f"expected bytes or a size such as '64MiB', got {raw!r}")
            value = float(parse_size(raw))
    elif value is None:
        raise ValueError(f"expected a number, got {raw!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def format_value(unit: Unit, value: float | None) -> str:
    """A value as a person reads it: ``"183.4ms"``, ``"52.1%"``, ``"1.0MiB"``, ``"1,234"``."""
    if value is None:
        return "n/a"
    if unit == "seconds":
        if abs(value) >= 1.0 or value == 0:
            return f"{value:.3g}s"
        if abs(value) >= 1e-3:
            return f"{value * 1e3:.4g}ms"
        return f"{value * 1e6:.4g}us"
    if unit == "fraction":
        return f"{100 * value:.4g}%"
    if unit == "bytes":
        v = float(value)
        for name in ("B", "KiB", "MiB", "GiB"):
            if abs(v) < 1024 or name == "GiB":
                return f"{v:.0f}{name}" if name == "B" else f"{v:.4g}{name}"
            v /= 1024
    if unit == "per_second":
        return f"{value:.4g}/s"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}"


# ---------------------------------------------------------------------------------- the parts


@dataclass(frozen=True, slots=True)
class Action:
    """One timeline entry: a control command applied at a time.

    Attributes:
        index: Position in the file's ``[[timeline]]`` list (from 0).
        at_s: Seconds from the start (virtual seconds in sim mode).
        command: The command, as :mod:`tiertop.monitor.commands` defines it (validated).
        line: Line of its ``[[timeline]]`` header in the file (None when unknown).
    """

    index: int
    at_s: float
    command: AnyCommand
    line: int | None = None

    def describe(self) -> str:
        """``"SetWatermarks(tier='dram', high=0.6, low=0.4) at 10s"``."""
        fields = ", ".join(f"{k}={getattr(self.command, k)!r}"
                           for k in self.command.__struct_fields__
                           if getattr(self.command, k) not in (None, {}))
        return f"{self.command.name}({fields}) at {self.at_s:g}s"


@dataclass(frozen=True, slots=True)
class Expectation:
    """One ``[[expect]]`` entry.

    Attributes:
        index: Position in the file's ``[[expect]]`` list (from 0).
        metric: A name in :data:`METRICS`.
        tier: The tier of a tier metric (None for service metrics and checks).
        op: A key of :data:`OPS` (None for checks).
        value: Threshold in the metric's unit (None for checks and ``ref`` comparisons).
        phase: Phase to check (None: the whole run, or ``between``).
        between: ``(start_s, end_s)`` to check instead of a named phase.
        ref: Another phase: compare with the same metric there, times ``scale``.
        scale: Multiplies the ``ref`` phase's value.
        note: Free text shown with the result.
    """

    index: int
    metric: str
    tier: str | None = None
    op: str | None = None
    value: float | None = None
    phase: str | None = None
    between: tuple[float, float] | None = None
    ref: str | None = None
    scale: float = 1.0
    note: str = ""

    @property
    def unit(self) -> Unit:
        return METRICS[self.metric].unit

    def where(self) -> str:
        if self.phase is not None:
            return f"in phase {self.phase}"
        if self.between is not None:
            return f"between {self.between[0]:g} s and {self.between[1]:g} s"
        return "over the whole run"

    def describe(self) -> str:
        """``"dram hit_ratio >= 50% between 30 s and 60 s"``, ``"no wrong KV ..."``."""
        if self.metric == "no_wrong_kv":
            return f"no wrong KV {self.where()}"
        subject = f"{self.tier} {self.metric}" if self.tier else self.metric
        if self.ref is not None:
            scaled = f"{self.scale:g} x " if self.scale != 1.0 else ""
            return f"{subject} {self.where()} {self.op} {scaled}{subject} in phase {self.ref}"
        return f"{subject} {self.op} {format_value(self.unit, self.value)} {self.where()}"


@dataclass(frozen=True, slots=True)
class ModelSetup:
    """``[model]``, ``[[tiers]]`` and ``[workload]`` of a model-mode scenario.

    Attributes:
        name: ``tiny``, ``gpt2-small`` or a local checkpoint path.
        block_size: Tokens per KV block.
        strategy: A named strategy (None when ``placement`` is given).
        placement: A placement policy instead of a strategy.
        promotion: A promotion policy (None: the strategy's or ``on-hit``).
        device: ``cpu`` (default) or ``cuda``.
        threads: Torch CPU threads (None: 1 for tiny, torch's choice otherwise).
        tick_s: Wall seconds between TierStats.
        max_queue: Requests that may wait; more are rejected.
        tiers: The tiers, fastest first.
        workload: The generated workload (None when a trace is replayed).
    """

    tiers: list[TierSpec]
    workload: WorkloadParams | None
    name: str = "tiny"
    block_size: int = 16
    strategy: str | None = "lru-tiering"
    placement: str | None = None
    promotion: str | None = None
    device: str | None = None
    threads: int | None = None
    tick_s: float = DEFAULT_MODEL_TICK_S
    max_queue: int = 256


@dataclass(frozen=True, slots=True)
class SimSetup:
    """``[sim]`` of a sim-mode scenario.

    Attributes:
        topology: The cluster (preset or config file, then the inline tables).
        profile: The calibration profile.
        speed: Virtual seconds per wall second (``inf``: as fast as possible, the default).
        tick_s: Virtual seconds between TierStats.
        request_sample: One ``RequestDone`` per this many requests (by arrival).
    """

    topology: Topology
    profile: Profile
    speed: float = math.inf
    tick_s: float = DEFAULT_SIM_TICK_S
    request_sample: int = 1


@dataclass(frozen=True, slots=True)
class TraceSetup:
    """``[trace]``: replay a trace instead of the generated workload.

    Attributes:
        path: The trace file (relative paths are relative to the scenario file).
        format: ``mooncake``, ``burstgpt``, ``azure`` or ``splitwise`` (None: detected).
        speed: Time scaling (2.0 replays twice as fast).
        start_s: Skip this many seconds of the trace's own timeline.
        max_requests: Stop after this many requests.
    """

    path: Path
    format: str | None = None
    speed: float = 1.0
    start_s: float = 0.0
    max_requests: int | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed, validated scenario (:func:`tiertop.scenarios.validate.load_scenario`).

    Attributes:
        name: From ``[scenario] name`` or the file name.
        description: One line.
        mode: ``"model"`` or ``"sim"``.
        duration_s: Seconds the run lasts (virtual seconds in sim mode).
        seed: Seeds everything random.
        model: The model setup (model mode).
        sim: The simulator setup (sim mode).
        trace: The trace replayed instead of a generated workload, if any.
        timeline: Actions, sorted by time (file order among equal times).
        phases: The phases of the summary (default: one phase ``all``).
        expectations: What must hold at the end.
        path: The file (None for text).
        text: The file's text (goes into recordings).
    """

    name: str
    description: str
    mode: Literal["model", "sim"]
    duration_s: float
    seed: int = 0
    model: ModelSetup | None = None
    sim: SimSetup | None = None
    trace: TraceSetup | None = None
    timeline: list[Action] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    expectations: list[Expectation] = field(default_factory=list)
    path: Path | None = None
    text: str = ""

    def tier_names(self) -> list[str]:
        """The tiers telemetry will show, fastest first (tier kinds in sim mode)."""
        if self.model is not None:
            return [spec.name for spec in self.model.tiers]
        assert self.sim is not None
        return self.sim.topology.kinds()

    def describe(self) -> Mapping[str, Any]:
        """Plain facts for JSON: name, file, mode, duration, seed, phases, timeline size."""
        return {
            "name": self.name,
            "description": self.description,
            "file": str(self.path) if self.path is not None else None,
            "mode": self.mode,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "tiers": self.tier_names(),
            "phases": [{"name": p.name, "start_s": p.start_s, "end_s": p.end_s}
                       for p in self.phases],
            "timeline": len(self.timeline),
            "expectations": len(self.expectations),
        }
