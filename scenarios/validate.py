"""Reading and checking scenario files: everything is rejected before anything starts.

:func:`load_scenario` parses a file (see :mod:`.format` and ``docs/scenarios.md``) and checks
all of it against what the runtime will accept: TOML syntax (line and column), unknown keys
(their full path, e.g. ``timeline[2].comand``, with a suggestion), unknown tiers and policies,
timeline actions outside the duration, values of the wrong type or out of range. Timeline
commands are built as the control protocol's structs (:mod:`tiertop.monitor.commands`) and
their own ``validate()`` runs, then the checks that need the scenario (which tiers exist,
which commands the mode supports). The first problem raises :class:`ScenarioError`, whose text
is ``FILE:LINE: KEY: REASON``.

Bundled scenarios (``scenarios/*.toml`` in the package) are found by name with
:func:`resolve_scenario`; :func:`bundled_scenarios` lists them.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import msgspec
from tiertop.monitor.commands import COMMANDS, AnyCommand, InvalidCommand, TierSelector
from tiertop.monitor.summary import Phase

from .format import (
    DEFAULT_MODEL_TICK_S,
    DEFAULT_SIM_TICK_S,
    EXPECT_KEYS,
    METRICS,
    MODEL_KEYS,
    MODES,
    OPS,
    PHASE_KEYS,
    SCENARIO_KEYS,
    SIM_KEYS,
    SIM_TABLES,
    TIMELINE_KEYS,
    TRACE_KEYS,
    WORKLOAD_FIXED,
    Action,
    Expectation,
    ModelSetup,
    Scenario,
    SimSetup,
    TraceSetup,
    parse_duration,
    parse_value,
)

__all__ = [
    "ScenarioError",
    "bundled_scenarios",
    "load_scenario",
    "parse_scenario",
    "resolve_scenario",
]

TOP_LEVEL = ("scenario", "model", "tiers", "workload", "sim", "trace", "timeline", "phases",
             "expect")
#: The workload of ``tiertop run`` (its defaults), which ``[workload]`` overrides.
RUN_WORKLOAD: Mapping[str, Any] = {
    "lambda_rate": 4.0,
    "new_conv_prob": 0.3,
    "prompt": {"kind": "lognormal", "mean": 48, "sigma": 0.5, "min": 1, "max": 192},
    "output": {"kind": "lognormal", "mean": 16, "sigma": 0.3, "min": 1, "max": 64},
    "max_live_conversations": 32,
    "system_prompts": 4,
    "system_prompt_len": 96,
}
#: Command fields given as durations or sizes in files (converted before msgspec checks types).
_DURATION_FIELDS = ("duration_s", "delay_s")
_SIZE_FIELDS = ("bytes",)


class ScenarioError(ValueError):
    """A scenario that cannot run, and where and why.

    Attributes:
        file: The file ("<text>" for text).
        line: 1-based line (None when unknown).
        column: 1-based column (TOML syntax errors only).
        key: Path of the offending key, e.g. ``timeline[2].comand`` ("" when none).
        reason: What is wrong.
    """

    def __init__(self, file: str, reason: str, *, key: str = "", line: int | None = None,
                 column: int | None = None) -> None:
        self.file = file
        self.reason = reason
        self.key = key
        self.line = line
        self.column = column
        where = file
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {key + ': ' if key else ''}{reason}")


# ------------------------------------------------------------------------------- key locations


_HEADER_AOT = re.compile(r"^\[\[\s*([^\]]+?)\s*\]\]")
_HEADER = re.compile(r"^\[\s*([^\]]+?)\s*\]")
_KEY = re.compile(r"^([A-Za-z0-9_\-.\s\"']+?)\s*=(.*)$")


def _clean_key(raw: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in raw.split("."))


class _Locator:
    """Line numbers of tables and keys of a TOML text, by path (``timeline[2].at``). A plain
    scan (tomllib keeps no positions): headers, ``key =`` lines and inline tables' first line;
    multi-line strings are skipped."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        counts: dict[str, int] = {}
        prefix = ""
        closing: str | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if closing is not None:
                if closing in line:
                    closing = None
                continue
            if not line or line.startswith("#"):
                continue
            if m := _HEADER_AOT.match(line):
                name = _clean_key(m[1])
                index = counts.get(name, 0)
                counts[name] = index + 1
                prefix = f"{name}[{index}]"
                self.lines.setdefault(prefix, number)
                continue
            if m := _HEADER.match(line):
                prefix = _clean_key(m[1])
                self.lines.setdefault(prefix, number)
                continue
            if m := _KEY.match(line):
                key = _clean_key(m[1])
                path = f"{prefix}.{key}" if prefix else key
                self.lines.setdefault(path, number)
                value = m[2]
                for quote in ('"""', "'''"):
                    if value.count(quote) % 2 == 1:
                        closing = quote

    def line_of(self, path: str) -> int | None:
        """The line of ``path`` or of the nearest enclosing key or table that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return None
            path = path[:cut]
        return None


# ------------------------------------------------------------------------------------ reading


@dataclass
class _Reader:
    """Raises :class:`ScenarioError` for one file, with lines found by key path."""

    file: str
    locator: _Locator
    base_dir: Path

    def fail(self, key: str, reason: str, line: int | None = None) -> NoReturn:
        raise ScenarioError(self.file, reason, key=key,
                            line=line if line is not None else self.locator.line_of(key))

    def keys(self, path: str, table: Any, known: Sequence[str],
             more: Sequence[str] = ()) -> Mapping[str, Any]:
        """``table`` as a mapping whose keys are all in ``known`` (or ``more``)."""
        if not isinstance(table, Mapping):
            self.fail(path, f"must be a table, got {_kind(table)}")
        allowed = [*known, *more]
        for key in table:
            if key not in allowed:
                self.fail(f"{path}.{key}" if path else key, _unknown(key, allowed))
        return table

    def number(self, path: str, value: Any, *, low: float | None = None,
               above: float | None = None, high: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value):
            self.fail(path, f"must be a finite number, got {value!r}")
        if low is not None and value < low:
            self.fail(path, f"must be >= {low:g}, got {value!r}")
        if above is not None and not value > above:
            self.fail(path, f"must be > {above:g}, got {value!r}")
        if high is not None and value > high:
            self.fail(path, f"must be <= {high:g}, got {value!r}")
        return float(value)

    def integer(self, path: str, value: Any, low: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.fail(path, f"must be an integer >= {low}, got {value!r}")
        return value

    def string(self, path: str, value: Any, *, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value.strip()):
            self.fail(path, f"must be a {'' if empty else 'non-empty '}string, got {value!r}")
        return value

    def seconds(self, path: str, value: Any) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(path, str(exc))

    def file_path(self, path: str, value: Any) -> Path:
        target = Path(self.string(path, value)).expanduser()
        if not target.is_absolute():
            target = self.base_dir / target
        if not target.is_file():
            self.fail(path, f"no such file: {target}")
        return target


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", int: "an integer",
            float: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)


def _unknown(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; known: {', '.join(allowed)}"


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file.

    Raises:
        ScenarioError: The file cannot be read, is not TOML, or is not a valid scenario.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ScenarioError(str(file), f"cannot read the scenario: {reason}") from None
    return parse_scenario(text, file)


def parse_scenario(text: str, path: str | Path | None = None) -> Scenario:
    """Validate scenario ``text`` (``path``, when given, names it in errors and is where
    relative file names in it start from).

    Raises:
        ScenarioError: The text is not TOML or not a valid scenario.
    """
    file = str(path) if path is not None else "<text>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = column = None
        m = re.search(r"\(at line (\d+), column (\d+)\)\s*$", message)
        if m:
            line, column = int(m[1]), int(m[2])
            message = message[:m.start()].rstrip()
        elif m := re.search(r"\(at end of document\)\s*$", message):
            line = text.count("\n") + 1
            message = message[:m.start()].rstrip()
        raise ScenarioError(file, f"not valid TOML: {message}", line=line,
                            column=column) from None
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    reader = _Reader(file, _Locator(text), base)
    scenario = _build(reader, data)
    return replace(scenario, path=Path(path) if path is not None else None, text=text)


def _build(r: _Reader, data: Mapping[str, Any]) -> Scenario:
    r.keys("", data, TOP_LEVEL)
    if "scenario" not in data:
        r.fail("scenario", "missing the [scenario] table (name, mode, duration...)", line=1)
    head = r.keys("scenario", data["scenario"], SCENARIO_KEYS)
    if "mode" not in head:
        r.fail("scenario.mode", f"missing; one of {', '.join(MODES)}",
               line=r.locator.line_of("scenario"))
    mode = head["mode"]
    if mode not in MODES:
        r.fail("scenario.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if "duration" not in head:
        r.fail("scenario.duration", "missing: how long the run lasts, in seconds",
               line=r.locator.line_of("scenario"))
    duration = r.seconds("scenario.duration", head["duration"])
    if not duration > 0:
        r.fail("scenario.duration", f"must be > 0 seconds, got {head['duration']!r}")
    seed = r.integer("scenario.seed", head.get("seed", 0))
    name = r.string("scenario.name", head["name"]) if "name" in head else (
        Path(r.file).stem if r.file != "<text>" else "scenario")
    description = r.string("scenario.description", head.get("description", ""), empty=True)

    trace = _trace(r, data["trace"]) if "trace" in data else None
    model = sim = None
    if mode == "model":
        for key in ("sim",):
            if key in data:
                r.fail(key, "[sim] belongs to mode = \"sim\" scenarios")
        model = _model(r, data, seed, trace)
    else:
        for key in ("model", "tiers", "workload"):
            if key in data:
                r.fail(key, f"[{key}] belongs to mode = \"model\" scenarios; a simulator's "
                            "workload and tiers go in [sim] (e.g. [sim.workload], [sim.hbm])")
        if "sim" not in data:
            r.fail("sim", "missing the [sim] table (preset or config)", line=1)
        sim = _sim(r, data["sim"], trace)
    scenario = Scenario(name=name, description=description, mode=mode, duration_s=duration,
                        seed=seed, model=model, sim=sim, trace=trace)
    phases = _phases(r, data.get("phases"), duration)
    timeline = _timeline(r, data.get("timeline"), scenario)
    scenario = replace(scenario, phases=phases, timeline=timeline)
    expectations = _expectations(r, data.get("expect"), scenario)
    return replace(scenario, expectations=expectations)


def _array(r: _Reader, path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        r.fail(path, f"must be an array of tables ([[{path}]]), got {_kind(value)}")
    return value


# ---------------------------------------------------------------------------------- the runtime


@dataclass
class _View:
    """What placement policies need to know of a tier (for validating names)."""

    name: str
    kind: str

    def has_room_for(self, nbytes: int) -> bool:
        return True

    def is_usable(self) -> bool:
        return True


def _check_placement(r: _Reader, key: str, name: str, views: Sequence[_View]) -> None:
    from tiertop.tiers.policies.placement import STRATEGIES, placement_policy, strategy

    try:
        if name in STRATEGIES:
            strategy(name, views)
        else:
            placement_policy(name, views)
    except ValueError as exc:
        r.fail(key, f"{exc} (strategies: {', '.join(STRATEGIES)})")


def _check_promotion(r: _Reader, key: str, name: str) -> None:
    from tiertop.tiers.policies.placement import PROMOTION_POLICIES

    if name not in PROMOTION_POLICIES:
        r.fail(key, f"unknown promotion policy {name!r}; known: {', '.join(PROMOTION_POLICIES)}")


def _check_eviction(r: _Reader, key: str, name: str, *, live: bool = True) -> None:
    from tiertop.tiers.policies.base import known_eviction_policies

    known = known_eviction_policies()
    if name not in known:
        r.fail(key, f"unknown eviction policy {name!r}; known: {', '.join(known)}")
    if live and name == "belady":
        r.fail(key, "belady needs the future access sequence: only an offline trace replay "
                    "(`tiertop sim --headless --trace`) can use it")


def _model(r: _Reader, data: Mapping[str, Any], seed: int,
           trace: TraceSetup | None) -> ModelSetup:
    from tiertop.runtime.model import SHAPES

    table = r.keys("model", data.get("model", {}), MODEL_KEYS)
    name = r.string("model.name", table.get("name", "tiny"))
    if name not in SHAPES and not Path(name).expanduser().exists():
        r.fail("model.name", f"{name!r} is neither a built-in shape ({', '.join(SHAPES)}) "
                             "nor an existing checkpoint path")
    if "tiers" not in data:
        r.fail("tiers", "a model scenario needs at least one [[tiers]] table (kind, capacity)",
               line=1)
    tiers = _tiers(r, _array(r, "tiers", data["tiers"]))
    views = [_View(s.name, s.kind) for s in tiers]
    strategy = table.get("strategy")
    placement = table.get("placement")
    if strategy is not None and placement is not None:
        r.fail("model.placement", "give strategy or placement, not both (a strategy is a "
                                  "placement and a promotion policy)")
    if placement is not None:
        _check_placement(r, "model.placement", r.string("model.placement", placement), views)
        strategy = None
    else:
        strategy = r.string("model.strategy", strategy if strategy is not None else
                            "lru-tiering")
        from tiertop.tiers.policies.placement import STRATEGIES

        if strategy not in STRATEGIES:
            r.fail("model.strategy", f"unknown strategy {strategy!r}; known: "
                                     f"{', '.join(STRATEGIES)} (or set placement)")
        _check_placement(r, "model.strategy", strategy, views)
    promotion = table.get("promotion")
    if promotion is not None:
        _check_promotion(r, "model.promotion", r.string("model.promotion", promotion))
    device = table.get("device")
    if device is not None:
        device = r.string("model.device", device)
        if device != "cpu" and not device.startswith("cuda"):
            r.fail("model.device", f"must be cpu or cuda[:N], got {device!r}")
    threads = table.get("threads")
    if threads is not None:
        threads = r.integer("model.threads", threads, 1)
    workload = None
    if "workload" in data:
        if trace is not None:
            r.fail("workload", "give [workload] or [trace], not both: a trace is the workload")
        workload = _workload(r, data["workload"], seed)
    elif trace is None:
        workload = _workload(r, {}, seed)
    return ModelSetup(
        tiers=tiers,
        workload=workload,
        name=name,
        block_size=r.integer("model.block_size", table.get("block_size", 16), 1),
        strategy=strategy,
        placement=placement,
        promotion=promotion,
        device=device,
        threads=threads,
        tick_s=r.number("model.tick", table.get("tick", DEFAULT_MODEL_TICK_S), above=0.0),
        max_queue=r.integer("model.max_queue", table.get("max_queue", 256), 1),
    )


def _tiers(r: _Reader, entries: list[Any]) -> list[Any]:
    from tiertop.tiers.hierarchy import DEFAULT_HIGH, DEFAULT_LOW, validate_watermarks
    from tiertop.tiers.spec import COMMON_KEYS, KIND_KEYS, KINDS, TierSpec
    from tiertop.tiers.units import parse_size

    if not entries:
        r.fail("tiers", "needs at least one tier")
    specs: list[TierSpec] = []
    names: dict[str, int] = {}
    for i, entry in enumerate(entries):
        path = f"tiers[{i}]"
        if not isinstance(entry, Mapping):
            r.fail(path, f"must be a table, got {_kind(entry)}")
        kind = entry.get("kind")
        if kind is None:
            r.fail(f"{path}.kind", f"missing; one of {', '.join(KINDS)}",
                   line=r.locator.line_of(path))
        if kind not in KINDS:
            r.fail(f"{path}.kind", f"unknown tier kind {kind!r}; known: {', '.join(KINDS)}")
        r.keys(path, entry, sorted(COMMON_KEYS | KIND_KEYS[kind]))
        if "capacity" not in entry:
            r.fail(f"{path}.capacity", "missing: the tier's size, e.g. \"1MiB\"",
                   line=r.locator.line_of(path))
        capacity = entry["capacity"]
        try:
            if isinstance(capacity, bool) or not isinstance(capacity, int | str):
                raise ValueError(f"expected a size such as '1MiB' or bytes, got {capacity!r}")
            if parse_size(capacity) <= 0:
                raise ValueError("must be > 0 bytes")
        except ValueError as exc:
            r.fail(f"{path}.capacity", str(exc))
        name = r.string(f"{path}.name", entry.get("name", kind))
        high = r.number(f"{path}.high", entry.get("high", DEFAULT_HIGH))
        low = r.number(f"{path}.low", entry.get("low", DEFAULT_LOW))
        try:
            validate_watermarks(name, high, low)
        except ValueError as exc:
            r.fail(f"{path}.{'low' if 'low' in entry else 'high'}", str(exc))
        _check_eviction(r, f"{path}.eviction",
                        r.string(f"{path}.eviction", entry.get("eviction", "lru")))
        if "codec" in entry:
            from tiertop.tiers.codecs import codec

            try:
                codec(r.string(f"{path}.codec", entry["codec"]))
            except ValueError as exc:
                r.fail(f"{path}.codec", str(exc))
        if "fsync" in entry and entry["fsync"] not in ("never", "batch", "always"):
            r.fail(f"{path}.fsync", f"must be never, batch or always, got {entry['fsync']!r}")
        for key in ("node", "timeout_s", "latency_us", "bandwidth_gbps"):
            if key in entry:
                r.number(f"{path}.{key}", entry[key], low=0.0)
        if name in names:
            r.fail(f"{path}.name", f"tier name {name!r} is already used by tiers[{names[name]}];"
                                   " give one a name = \"...\"")
        names[name] = i
        try:
            specs.append(TierSpec.from_mapping(entry))
        except ValueError as exc:
            r.fail(path, str(exc))
    return specs


def _workload(r: _Reader, table: Any, seed: int) -> Any:
    from dataclasses import fields as dataclass_fields

    from tiertop.runtime.workload import WorkloadError, WorkloadParams

    known = [f.name for f in dataclass_fields(WorkloadParams) if f.name not in WORKLOAD_FIXED]
    if not isinstance(table, Mapping):
        r.fail("workload", f"must be a table, got {_kind(table)}")
    for key in table:
        if key in WORKLOAD_FIXED:
            r.fail(f"workload.{key}", f"cannot be set here: {WORKLOAD_FIXED[key]}")
    r.keys("workload", table, known)
    values = {**RUN_WORKLOAD, **table, "seed": seed}
    try:
        return WorkloadParams.from_dict(values)
    except WorkloadError as exc:
        r.fail(f"workload.{exc.param}", str(exc))
    except (TypeError, ValueError) as exc:
        r.fail("workload", str(exc))


def _trace(r: _Reader, table: Any) -> TraceSetup:
    from tiertop.runtime.traces import FORMATS

    r.keys("trace", table, TRACE_KEYS)
    if "path" not in table:
        r.fail("trace.path", "missing: the trace file", line=r.locator.line_of("trace"))
    path = r.file_path("trace.path", table["path"])
    fmt = table.get("format")
    if fmt is not None and fmt not in FORMATS:
        r.fail("trace.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    max_requests = table.get("max_requests")
    return TraceSetup(
        path=path,
        format=fmt,
        speed=r.number("trace.speed", table.get("speed", 1.0), above=0.0),
        start_s=r.seconds("trace.start", table.get("start", 0.0)),
        max_requests=None if max_requests is None else r.integer("trace.max_requests",
                                                                 max_requests, 1),
    )


def _sim(r: _Reader, table: Any, trace: TraceSetup | None) -> SimSetup:
    from tiertop.runtime.sim.profile import (
        SimConfigError,
        load_profile,
        profile_from_dict,
    )
    from tiertop.runtime.sim.replay import trace_block_tokens
    from tiertop.runtime.sim.topology import PRESETS, topology_from_dict

    r.keys("sim", table, SIM_KEYS, SIM_TABLES)
    data: dict[str, Any] = {}
    if "config" in table:
        config = r.file_path("sim.config", table["config"])
        try:
            with config.open("rb") as handle:
                data = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            r.fail("sim.config", f"cannot read {config}: {exc}")
    if "preset" in table:
        preset = r.string("sim.preset", table["preset"])
        if preset not in PRESETS:
            r.fail("sim.preset", f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        if data.get("preset", preset) != preset:
            r.fail("sim.preset", f"disagrees with preset = {data['preset']!r} in the config file")
        data["preset"] = preset
    for section in SIM_TABLES:
        if section in table:
            if not isinstance(table[section], Mapping):
                r.fail(f"sim.{section}", f"must be a table, got {_kind(table[section])}")
            merged = dict(data.get(section, {}))
            merged.update(table[section])
            data[section] = merged
    if trace is not None and "block_tokens" not in data.get("cluster", {}):
        try:
            base = topology_from_dict(data)
        except SimConfigError as exc:
            r.fail(f"sim.{exc.key}", str(exc))
        block_tokens = trace_block_tokens(trace.path, trace.format, base.block_tokens)
        data["cluster"] = {**data.get("cluster", {}), "block_tokens": block_tokens}
    try:
        topology = topology_from_dict(data)
    except SimConfigError as exc:
        r.fail(f"sim.{exc.key}", str(exc))
    for kind in topology.kinds():
        _check_eviction(r, f"sim.{kind}.eviction", topology.kind(kind).eviction,
                        live=trace is None)
    views = [_View(k, k) for k in topology.kinds() if k in ("hbm", "dram", "ssd")]
    _check_placement(r, "sim.policy.placement", topology.placement, views)
    _check_promotion(r, "sim.policy.promotion", topology.promotion)
    profile_raw = table.get("profile")
    try:
        if profile_raw is None:
            profile = load_profile(None)
        elif isinstance(profile_raw, Mapping):
            profile = profile_from_dict(profile_raw)
        else:
            profile = load_profile(r.file_path("sim.profile", profile_raw))
    except SimConfigError as exc:
        r.fail(f"sim.profile.{exc.key}" if isinstance(profile_raw, Mapping) else "sim.profile",
               str(exc))
    speed_raw = table.get("speed", "max")
    if isinstance(speed_raw, str) and speed_raw != "max":
        r.fail("sim.speed", f"must be \"max\" or virtual seconds per wall second (> 0), got "
                            f"{speed_raw!r}")
    speed = math.inf if speed_raw == "max" else r.number("sim.speed", speed_raw, above=0.0)
    return SimSetup(
        topology=topology,
        profile=profile,
        speed=speed,
        tick_s=r.number("sim.tick", table.get("tick", DEFAULT_SIM_TICK_S), above=0.0),
        request_sample=r.integer("sim.request_sample", table.get("request_sample", 1), 1),
    )


# ---------------------------------------------------------------------------------- the timeline


def _timeline(r: _Reader, raw: Any, scenario: Scenario) -> list[Action]:
    if raw is None:
        return []
    actions = []
    for i, entry in enumerate(_array(r, "timeline", raw)):
        path = f"timeline[{i}]"
        if not isinstance(entry, Mapping):
            r.fail(path, f"must be a table, got {_kind(entry)}")
        name = entry.get("command")
        if name is None:
            extra = [k for k in entry if k not in TIMELINE_KEYS]
            close = difflib.get_close_matches("command", extra, n=1)
            if close:
                r.fail(f"{path}.{close[0]}", _unknown(close[0], list(TIMELINE_KEYS)))
            r.fail(f"{path}.command", "missing: the control command to apply, one of "
                                      + ", ".join(COMMANDS), line=r.locator.line_of(path))
        if name not in COMMANDS:
            close = difflib.get_close_matches(str(name), list(COMMANDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            r.fail(f"{path}.command", f"unknown command {name!r}{hint}; known: "
                                      + ", ".join(COMMANDS))
        cls = COMMANDS[name]
        fields = list(cls.__struct_fields__)
        r.keys(path, entry, TIMELINE_KEYS, fields)
        if "at" not in entry:
            r.fail(f"{path}.at", "missing: when to apply it, seconds from the start",
                   line=r.locator.line_of(path))
        at = r.seconds(f"{path}.at", entry["at"])
        unit = "virtual seconds" if scenario.mode == "sim" else "seconds"
        if not 0.0 <= at < scenario.duration_s:
            r.fail(f"{path}.at", f"{at:g} is outside the run: actions go at 0 <= at < duration "
                                 f"({scenario.duration_s:g} {unit})")
        values = {k: v for k, v in entry.items() if k not in TIMELINE_KEYS}
        for key in _DURATION_FIELDS:
            if key in values and isinstance(values[key], str):
                values[key] = r.seconds(f"{path}.{key}", values[key])
        for key in _SIZE_FIELDS:
            if key in values and isinstance(values[key], str):
                from tiertop.tiers.units import parse_size

                try:
                    values[key] = parse_size(values[key])
                except ValueError as exc:
                    r.fail(f"{path}.{key}", str(exc))
        if name == "SetSimSpeed" and values.get("factor") == "max":
            values["factor"] = math.inf
        try:
            command: AnyCommand = msgspec.convert({"type": name, **values}, AnyCommand)
        except msgspec.ValidationError as exc:
            message = str(exc)
            m = re.search(r" - at `\$\.([A-Za-z0-9_]+)", message)
            if m:
                r.fail(f"{path}.{m[1]}", message[:m.start()])
            m = re.search(r"missing required field `([A-Za-z0-9_]+)`", message)
            if m:
                r.fail(f"{path}.{m[1]}", f"missing: {name} needs {', '.join(fields)}",
                       line=r.locator.line_of(path))
            r.fail(path, message)
        try:
            command.validate()
        except InvalidCommand as exc:
            r.fail(path, f"{name}: {exc}")
        _check_command(r, path, command, scenario)
        actions.append(Action(i, at, command, r.locator.line_of(path)))
    actions.sort(key=lambda a: (a.at_s, a.index))
    return actions


def _tier_choices(scenario: Scenario) -> tuple[list[str], dict[str, str]]:
    """Tier names of the scenario and their kinds."""
    if scenario.model is not None:
        return ([s.name for s in scenario.model.tiers],
                {s.name: s.kind for s in scenario.model.tiers})
    names = scenario.tier_names()
    return names, {k: k for k in names}


def _check_selector(r: _Reader, key: str, selector: str, scenario: Scenario) -> list[str]:
    """The tiers a selector names (errors for names the runtime would not know)."""
    names, kinds = _tier_choices(scenario)
    parsed = TierSelector.parse(selector)
    if parsed.every:
        return names
    if parsed.kind is not None:
        chosen = [n for n in names if kinds[n] == parsed.kind]
        if not chosen:
            r.fail(key, f"no tier of kind {parsed.kind!r}; kinds here: "
                        + ", ".join(dict.fromkeys(kinds.values())))
        return chosen
    name = parsed.name or ""
    if name in names:
        return [name]
    if scenario.sim is not None and name.startswith("pool@") and "pool" in names:
        rack = name[len("pool@"):]
        racks = scenario.sim.topology.racks
        if rack.isdigit() and int(rack) < racks:
            return [name]
        r.fail(key, f"no rack {rack!r}: racks are 0..{racks - 1}")
    known = ", ".join(names) + (", pool@RACK" if "pool" in names else "")
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    r.fail(key, f"unknown tier {name!r}{hint}; tiers here: {known} (or kind:KIND, *)")


def _check_command(r: _Reader, path: str, command: AnyCommand, scenario: Scenario) -> None:
    """The checks that need the scenario: tiers, policies, what the mode supports."""
    from tiertop.monitor import commands as c

    sim = scenario.sim
    name = command.name
    tier = getattr(command, "tier", None)
    chosen: list[str] = []
    if isinstance(tier, str):
        chosen = _check_selector(r, f"{path}.tier", tier, scenario)
    if isinstance(command, c.SetEvictionPolicy):
        _check_eviction(r, f"{path}.policy", command.policy)
    elif isinstance(command, c.SetPlacementPolicy):
        if sim is not None:
            views = [_View(k, k) for k in sim.topology.kinds() if k in ("hbm", "dram", "ssd")]
        else:
            assert scenario.model is not None
            views = [_View(s.name, s.kind) for s in scenario.model.tiers]
        _check_placement(r, f"{path}.policy", command.policy, views)
    elif isinstance(command, c.SetPromotionPolicy):
        _check_promotion(r, f"{path}.policy", command.policy)
    elif isinstance(command, c.SetWorkload):
        if scenario.trace is not None:
            r.fail(path, "SetWorkload: this scenario replays a trace; the workload is the trace")
    elif isinstance(command, c.Pause | c.Resume) and sim is not None:
        r.fail(f"{path}.command", f"{name} stops the simulator's virtual clock, which drives "
                                  "the timeline; use SetWorkload rate = 0 to stop arrivals")
    elif isinstance(command, c.SetSimSpeed | c.SetDrillDown) and sim is None:
        r.fail(f"{path}.command", f"{name} applies to sim scenarios; the model runtime runs "
                                  "on the wall clock and has no racks")
    elif isinstance(command, c.SetDrillDown) and sim is not None:
        bad = [rack for rack in command.racks if rack >= sim.topology.racks]
        if bad:
            r.fail(f"{path}.racks", f"no rack {bad[0]}: racks are 0..{sim.topology.racks - 1}")
    elif isinstance(command, c.InjectFault):
        if sim is not None:
            for t in chosen:
                if not (t.startswith("pool") or t == "remote"):
                    r.fail(f"{path}.tier", f"tier {t} is a GPU's own memory: the simulator "
                                           "faults shared tiers only (pool, pool@RACK, remote)")
        else:
            assert scenario.model is not None
            kinds = {s.name: s.kind for s in scenario.model.tiers}
            for t in chosen:
                if kinds[t] == "accounting":
                    r.fail(f"{path}.tier", f"tier {t} is accounting-only: it has no medium to "
                                           "fault")


# ---------------------------------------------------------------------------- phases, expect


def _phases(r: _Reader, raw: Any, duration: float) -> list[Phase]:
    if raw is None:
        return [Phase("all", 0.0, None)]
    entries = _array(r, "phases", raw)
    if not entries:
        r.fail("phases", "an empty list: leave [[phases]] out for one phase over the whole run")
    phases: list[Phase] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        path = f"phases[{i}]"
        r.keys(path, entry, PHASE_KEYS)
        if "name" not in entry:
            r.fail(f"{path}.name", "missing: phases are named", line=r.locator.line_of(path))
        name = r.string(f"{path}.name", entry["name"])
        if name == "(whole run)" or re.fullmatch(r"expect\[\d+\]", name):
            r.fail(f"{path}.name", f"{name!r} is reserved for the player's own ranges")
        if name in seen:
            r.fail(f"{path}.name", f"phase name {name!r} is already used by phases[{seen[name]}]")
        seen[name] = i
        start = r.seconds(f"{path}.start", entry.get("start", 0.0))
        end = r.seconds(f"{path}.end", entry["end"]) if "end" in entry else None
        if not 0.0 <= start < duration:
            r.fail(f"{path}.start", f"{start:g} is outside the run (0 <= start < duration "
                                    f"{duration:g})")
        if end is not None:
            if not end > start:
                r.fail(f"{path}.end", f"{end:g} is not after start {start:g}")
            if end > duration + 1e-9:
                r.fail(f"{path}.end", f"{end:g} is after the end of the run ({duration:g}); "
                                      "leave end out for 'until the end'")
            if abs(end - duration) < 1e-9:
                end = None
        phases.append(Phase(name, start, end))
    return phases


def _expectations(r: _Reader, raw: Any, scenario: Scenario) -> list[Expectation]:
    if raw is None:
        return []
    phase_names = [p.name for p in scenario.phases]
    tiers = scenario.tier_names()
    out = []
    for i, entry in enumerate(_array(r, "expect", raw)):
        path = f"expect[{i}]"
        r.keys(path, entry, EXPECT_KEYS)
        if "metric" not in entry:
            r.fail(f"{path}.metric", "missing: what to check, one of " + ", ".join(METRICS),
                   line=r.locator.line_of(path))
        metric_name = entry["metric"]
        metric = METRICS.get(metric_name) if isinstance(metric_name, str) else None
        if metric is None:
            close = difflib.get_close_matches(str(metric_name), list(METRICS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            r.fail(f"{path}.metric", f"unknown metric {metric_name!r}{hint}; known: "
                                     + ", ".join(METRICS))
        tier = entry.get("tier")
        if metric.scope == "tier" and metric.name != "evictions" and tier is None:
            r.fail(f"{path}.tier", f"missing: {metric.name} is a per-tier metric; tiers here: "
                                   + ", ".join(tiers), line=r.locator.line_of(path))
        if tier is not None:
            if metric.scope != "tier":
                r.fail(f"{path}.tier", f"{metric.name} is not a per-tier metric")
            tier = r.string(f"{path}.tier", tier)
            if tier not in tiers:
                close = difflib.get_close_matches(tier, tiers, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                r.fail(f"{path}.tier", f"unknown tier {tier!r}{hint}; tiers here: "
                                       + ", ".join(tiers))
        phase = entry.get("phase")
        if phase is not None and phase not in phase_names:
            r.fail(f"{path}.phase", f"unknown phase {phase!r}; phases: " + ", ".join(phase_names))
        between = None
        if "between" in entry:
            if phase is not None:
                r.fail(f"{path}.between", "give phase or between, not both")
            raw_between = entry["between"]
            if not isinstance(raw_between, list) or len(raw_between) != 2:
                r.fail(f"{path}.between", f"must be [START, END] in seconds, got {raw_between!r}")
            start = r.seconds(f"{path}.between", raw_between[0])
            end = r.seconds(f"{path}.between", raw_between[1])
            if not 0.0 <= start < end <= scenario.duration_s + 1e-9:
                r.fail(f"{path}.between", f"[{start:g}, {end:g}] must satisfy 0 <= START < END "
                                          f"<= duration ({scenario.duration_s:g})")
            between = (start, end)
        note = r.string(f"{path}.note", entry.get("note", ""), empty=True)
        if metric.scope == "check":
            for key in ("op", "value", "ref", "scale", "tier"):
                if key in entry:
                    r.fail(f"{path}.{key}", f"{metric.name} is a check: it takes no {key}")
            out.append(Expectation(i, metric.name, phase=phase, between=between, note=note))
            continue
        if "op" not in entry:
            r.fail(f"{path}.op", "missing: one of " + ", ".join(OPS),
                   line=r.locator.line_of(path))
        op = entry["op"]
        if op not in OPS:
            r.fail(f"{path}.op", f"unknown comparison {op!r}; one of " + ", ".join(OPS))
        ref = entry.get("ref")
        value = None
        if ("value" in entry) == (ref is not None):
            r.fail(f"{path}.value", "give value (a threshold) or ref (a phase to compare "
                                    "with), exactly one", line=r.locator.line_of(path))
        if ref is not None:
            if ref not in phase_names:
                r.fail(f"{path}.ref", f"unknown phase {ref!r}; phases: "
                                      + ", ".join(phase_names))
            if ref == phase:
                r.fail(f"{path}.ref", "compares a phase with itself")
        else:
            try:
                value = parse_value(metric.unit, entry["value"])
            except ValueError as exc:
                r.fail(f"{path}.value", f"{metric.name} is in {metric.unit}: {exc}")
        if "scale" in entry and ref is None:
            r.fail(f"{path}.scale", "scale goes with ref")
        scale = r.number(f"{path}.scale", entry.get("scale", 1.0))
        out.append(Expectation(i, metric.name, tier, op, value, phase, between, ref, scale,
                               note))
    return out


# ------------------------------------------------------------------------------------- bundled


def bundled_scenarios() -> list[tuple[str, Path]]:
    """(name, path) of every scenario shipped with tiertop, by name."""
    root = resources.files("tiertop.scenarios")
    out = []
    for item in root.iterdir():
        if item.name.endswith(".toml") and item.is_file():
            out.append((item.name[:-len(".toml")], Path(str(item))))
    return sorted(out)


def resolve_scenario(name_or_path: str) -> Path:
    """A scenario file: an existing path, else a bundled scenario by name.

    Raises:
        ScenarioError: Neither (the message lists the bundled names).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    bundled = dict(bundled_scenarios())
    stem = name_or_path[:-len(".toml")] if name_or_path.endswith(".toml") else name_or_path
    if stem in bundled:
        return bundled[stem]
    close = difflib.get_close_matches(stem, list(bundled), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ScenarioError(name_or_path, f"no such file, and no bundled scenario of that name{hint};"
                                      f" bundled: {', '.join(bundled)}")


def iter_bundled() -> Iterator[Scenario]:
    """Every bundled scenario, loaded and validated."""
    for _, path in bundled_scenarios():
        yield load_scenario(path)
