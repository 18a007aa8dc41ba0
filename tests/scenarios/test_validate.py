"""Scenario files are checked completely before anything starts: every kind of mistake is
rejected with the file, the line (or column) or key path, and the reason."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from tiertop.monitor.commands import InjectFault, SetWatermarks, SetWorkload
from tiertop.scenarios.format import METRICS, parse_duration, parse_value
from tiertop.scenarios.validate import (
    ScenarioError,
    bundled_scenarios,
    load_scenario,
    parse_scenario,
    resolve_scenario,
)

from tests.scenarios.helpers import sim_text

MODEL = """\
[scenario]
name = "t"
description = \"\"\"a description
over two lines\"\"\"
mode = "model"
duration = 10

[[tiers]]
kind = "dram"
capacity = "1MiB"

[[tiers]]
kind = "disk"
capacity = "4MiB"
"""


def error(text: str, name: str = "bad.toml") -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, name)
    return info.value


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line that starts with ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle)]
    return hits[occurrence - 1]


# ------------------------------------------------------------------------------ good files


def test_a_model_scenario_parses_into_its_parts() -> None:
    text = MODEL + """
[model]
strategy = "naive-spill"
tick = 0.5

[workload]
lambda_rate = 6.5
prompt = { kind = "uniform", min = 8, max = 24 }

[[timeline]]
at = "2.5s"
command = "SetWatermarks"
tier = "dram"
high = 0.6
low = 0.4

[[timeline]]
at = 1
command = "InjectFault"
tier = "kind:disk"
kind = "slow"
duration_s = "500ms"
delay_s = 0.002

[[phases]]
name = "one"
end = 5

[[phases]]
name = "two"
start = 5
end = 10

[[expect]]
metric = "hit_ratio"
tier = "dram"
op = ">="
value = "25%"
between = [2, 8]

[[expect]]
metric = "ttft_p99_s"
op = "<"
value = "200ms"
phase = "two"
"""
    s = parse_scenario(text, "good.toml")
    assert (s.name, s.mode, s.duration_s, s.seed) == ("t", "model", 10.0, 0)
    assert s.model is not None and s.model.strategy == "naive-spill" and s.model.tick_s == 0.5
    assert [t.name for t in s.model.tiers] == ["dram", "disk"]
    assert s.model.workload is not None and s.model.workload.lambda_rate == 6.5
    assert (s.model.workload.prompt.kind, s.model.workload.prompt.max) == ("uniform", 24)
    # sorted by time, the command structs of the control protocol
    assert [a.at_s for a in s.timeline] == [1.0, 2.5]
    assert s.timeline[0].command == InjectFault("kind:disk", "slow", 0.5, 0.002)
    assert s.timeline[1].command == SetWatermarks("dram", 0.6, 0.4)
    assert [(p.name, p.start_s, p.end_s) for p in s.phases] == [("one", 0, 5), ("two", 5, None)]
    assert s.expectations[0].between == (2.0, 8.0) and s.expectations[0].value == 0.25
    assert s.expectations[1].value == pytest.approx(0.2)
    assert s.expectations[0].describe() == "dram hit_ratio >= 25% between 2 s and 8 s"


def test_a_sim_scenario_parses_with_its_topology() -> None:
    s = parse_scenario(sim_text(seed=9), "sim.toml")
    assert s.sim is not None
    topo = s.sim.topology
    assert (topo.gpus, topo.hbm_cache_blocks, topo.workload.rate) == (2, 400, 3.0)
    assert s.tier_names() == ["hbm", "dram"]
    assert s.sim.speed == math.inf and s.sim.tick_s == 0.5 and s.seed == 9


def test_without_phases_there_is_one_phase_over_the_whole_run() -> None:
    s = parse_scenario(MODEL)
    assert [(p.name, p.start_s, p.end_s) for p in s.phases] == [("all", 0.0, None)]
    assert s.model is not None and s.model.workload is not None  # tiertop run's defaults


@pytest.mark.parametrize(("name", "path"), bundled_scenarios())
def test_every_bundled_scenario_validates(name: str, path: Path) -> None:
    s = load_scenario(path)
    assert s.name == name and s.description
    assert s.expectations, "a bundled scenario says what it shows"
    assert resolve_scenario(name) == path
    if s.mode == "model":
        assert s.duration_s <= 40  # short: a tiny model, under a minute of wall time
    assert s.text == path.read_text()


def test_the_bundled_set_covers_the_experiments() -> None:
    names = {name for name, _ in bundled_scenarios()}
    assert {"strategies", "policy-shootout", "burst", "remote-failure", "watermark-sweep",
            "cluster-10k"} <= names
    cluster = load_scenario(resolve_scenario("cluster-10k"))
    assert cluster.sim is not None and cluster.sim.topology.gpus == 10_240
    failure = load_scenario(resolve_scenario("remote-failure"))
    commands = [(a.command.name, getattr(a.command, "kind", None)) for a in failure.timeline]
    assert ("InjectFault", "down") in commands and ("ClearFaults", None) in commands
    assert any(e.metric == "no_wrong_kv" for e in failure.expectations)


def test_the_documented_example_validates() -> None:
    docs = Path(__file__).parents[2] / "docs" / "scenarios.md"
    block = re.search(r"## Example\n\n```toml\n(.*?)```", docs.read_text(), re.S)
    assert block is not None
    s = parse_scenario(block[1], "example.toml")
    assert s.name == "dram-squeeze" and len(s.expectations) == 4


def test_resolving_an_unknown_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ScenarioError) as info:
        resolve_scenario("burts")
    assert "did you mean 'burst'?" in str(info.value)
    assert "policy-shootout" in str(info.value)


# ------------------------------------------------------------------------------- bad files


def test_toml_syntax_error_gives_line_and_column() -> None:
    text = MODEL + "\n[[timeline]]\nat = \n"
    e = error(text)
    assert (e.file, e.line, e.column) == ("bad.toml", line_of(text, "at ="), 6)
    assert str(e).startswith(f"bad.toml:{e.line}:6: not valid TOML: ")


def test_unknown_key_names_its_path_and_line_and_suggests() -> None:
    text = MODEL + """
[[timeline]]
at = 1
command = "Pause"

[[timeline]]
at = 2
command = "Resume"

[[timeline]]
at = 3
comand = "Pause"
"""
    e = error(text)
    assert e.key == "timeline[2].comand"
    assert e.line == line_of(text, "comand")
    assert "unknown key 'comand' (did you mean 'command'?)" in e.reason
    assert str(e) == f"bad.toml:{e.line}: timeline[2].comand: {e.reason}"


def test_line_numbers_survive_multi_line_strings() -> None:
    text = MODEL + '\n[model]\nstratgy = "lru-tiering"\n'
    e = error(text)
    assert (e.key, e.line) == ("model.stratgy", line_of(text, "stratgy"))


@pytest.mark.parametrize(("extra", "key", "reason"), [
    ("[timline]\n", "timline", "unknown key 'timline' (did you mean 'timeline'?)"),
    ('[model]\nname = "tiny"\ncolour = 1\n', "model.colour", "unknown key 'colour'"),
    ('[[tiers]]\nkind = "disk"\ncapacity = "1MiB"\nfsynk = "never"\nname = "d2"\n',
     "tiers[2].fsynk", "unknown key 'fsynk' (did you mean 'fsync'?)"),
    ("[workload]\nlambda_rat = 3\n", "workload.lambda_rat", "did you mean 'lambda_rate'?"),
    ('[[timeline]]\nat = 1\ncommand = "SetWatermarks"\ntier = "dram"\nhigh = 0.9\nlow = 0.5\n'
     'hihg = 1\n', "timeline[0].hihg", "known: at, command, tier, high, low"),
    ('[[phases]]\nname = "a"\nbegin = 1\n', "phases[0].begin", "unknown key 'begin'"),
    ('[[expect]]\nmetric = "requests"\nop = ">"\nvalue = 1\nphse = "a"\n', "expect[0].phse",
     "did you mean 'phase'?"),
])
def test_unknown_keys_everywhere(extra: str, key: str, reason: str) -> None:
    text = MODEL + "\n" + extra
    e = error(text)
    assert e.key == key and reason in e.reason
    leaf = key.rsplit(".", 1)[-1]
    lines = [i for i, line in enumerate(text.splitlines(), 1)
             if line.startswith((f"{leaf} =", f"[{leaf}]"))]
    assert e.line == lines[-1]


@pytest.mark.parametrize(("extra", "key", "reason"), [
    # unknown tier: in a command, in an expectation
    ('[[timeline]]\nat = 1\ncommand = "ClearTier"\ntier = "dramm"\n', "timeline[0].tier",
     "unknown tier 'dramm' (did you mean 'dram'?); tiers here: dram, disk"),
    ('[[timeline]]\nat = 1\ncommand = "ClearTier"\ntier = "kind:remote"\n', "timeline[0].tier",
     "no tier of kind 'remote'"),
    ('[[expect]]\nmetric = "hits"\ntier = "remote"\nop = ">"\nvalue = 0\n', "expect[0].tier",
     "unknown tier 'remote'"),
    # unknown policy: eviction (tier and command), placement, strategy, promotion
    ('[[tiers]]\nkind = "dram"\nname = "d2"\ncapacity = 4096\neviction = "lruu"\n',
     "tiers[2].eviction", "unknown eviction policy 'lruu'"),
    ('[[timeline]]\nat = 1\ncommand = "SetEvictionPolicy"\ntier = "dram"\npolicy = "clock"\n',
     "timeline[0].policy", "unknown eviction policy 'clock'; known: arc, belady"),
    ('[[timeline]]\nat = 1\ncommand = "SetEvictionPolicy"\ntier = "dram"\npolicy = "belady"\n',
     "timeline[0].policy", "belady needs the future access sequence"),
    ('[[timeline]]\nat = 1\ncommand = "SetPlacementPolicy"\npolicy = "remote-only"\n',
     "timeline[0].policy", "strategy 'remote-only' needs a tier of kind remote or numa"),
    ('[[timeline]]\nat = 1\ncommand = "SetPlacementPolicy"\npolicy = "only:ssd"\n',
     "timeline[0].policy", "placement 'only' names tier 'ssd', which is not configured"),
    ('[model]\nstrategy = "lru"\n', "model.strategy", "unknown strategy 'lru'"),
    ('[model]\npromotion = "eager"\n', "model.promotion", "unknown promotion policy 'eager'"),
    # actions outside the duration
    ('[[timeline]]\nat = 10\ncommand = "Pause"\n', "timeline[0].at",
     "10 is outside the run: actions go at 0 <= at < duration (10 seconds)"),
    ('[[timeline]]\nat = "-1s"\ncommand = "Pause"\n', "timeline[0].at", "expected seconds"),
    # bad values: the command's own validate(), types, units, ranges
    ('[[timeline]]\nat = 1\ncommand = "SetWatermarks"\ntier = "dram"\nhigh = 0.5\nlow = 0.9\n',
     "timeline[0]", "SetWatermarks: low watermark 0.9 for tier dram is above its high "
                    "watermark 0.5"),
    ('[[timeline]]\nat = 1\ncommand = "SetWatermarks"\ntier = "dram"\nhigh = "x"\nlow = 0.5\n',
     "timeline[0].high", "Expected `float`, got `str`"),
    ('[[timeline]]\nat = 1\ncommand = "SetWatermarks"\ntier = "dram"\nhigh = 0.9\n',
     "timeline[0].low", "missing: SetWatermarks needs tier, high, low"),
    ('[[timeline]]\nat = 1\ncommand = "SetWorkload"\n', "timeline[0]",
     "SetWorkload changes nothing"),
    ('[[timeline]]\nat = 1\ncommand = "SetCapacity"\ntier = "dram"\nbytes = "lots"\n',
     "timeline[0].bytes", "not a size: 'lots'"),
    ('[[timeline]]\nat = 1\ncommand = "InjectFault"\ntier = "disk"\nkind = "melt"\n',
     "timeline[0]", "unknown fault kind 'melt'"),
    ('[[timeline]]\nat = 1\ncommand = "SetSimSpeed"\nfactor = 2\n', "timeline[0].command",
     "SetSimSpeed applies to sim scenarios"),
    ('[[timeline]]\nat = 1\ncommnd = "Pause"\n', "timeline[0].commnd",
     "did you mean 'command'?"),
    ('[[timeline]]\nat = 1\ncommand = "SetWatermark"\n', "timeline[0].command",
     "unknown command 'SetWatermark' (did you mean 'SetWatermarks'?)"),
    ('[[tiers]]\nkind = "ram"\ncapacity = 1\n', "tiers[2].kind", "unknown tier kind 'ram'"),
    ('[[tiers]]\nkind = "dram"\ncapacity = "big"\nname = "d2"\n', "tiers[2].capacity",
     "not a size: 'big'"),
    ('[[tiers]]\nkind = "dram"\ncapacity = "1MiB"\n', "tiers[2].name",
     "tier name 'dram' is already used by tiers[0]"),
    ('[[tiers]]\nkind = "dram"\nname = "d2"\ncapacity = 4096\nhigh = 0.5\nlow = 0.7\n',
     "tiers[2].low", "low"),
    ("[workload]\nlambda_rate = -1\n", "workload.lambda_rate",
     "lambda_rate must be a number >= 0.0 requests/s, got -1"),
    ("[workload]\nprompt = { mean = 50, max = 20 }\n", "workload.prompt.mean",
     "prompt.mean 50 is outside prompt.min..max (1..20)"),
    ("[workload]\nseed = 3\n", "workload.seed", "the workload is seeded by [scenario] seed"),
    ('[model]\nname = "gpt5"\n', "model.name", "neither a built-in shape"),
    ('[model]\nstrategy = "lru-tiering"\nplacement = "spill"\n', "model.placement",
     "give strategy or placement, not both"),
    # phases and expectations
    ('[[phases]]\nname = "a"\nstart = 5\nend = 20\n', "phases[0].end",
     "20 is after the end of the run (10)"),
    ('[[phases]]\nname = "a"\nend = 5\n[[phases]]\nname = "a"\nstart = 5\n', "phases[1].name",
     "phase name 'a' is already used by phases[0]"),
    ('[[expect]]\nmetric = "hitratio"\ntier = "dram"\nop = ">"\nvalue = 0\n', "expect[0].metric",
     "unknown metric 'hitratio' (did you mean 'hit_ratio'?)"),
    ('[[expect]]\nmetric = "hit_ratio"\nop = ">"\nvalue = 0\n', "expect[0].tier",
     "hit_ratio is a per-tier metric"),
    ('[[expect]]\nmetric = "ttft_p99_s"\nop = "<"\nvalue = "50%"\n', "expect[0].value",
     "ttft_p99_s is in seconds: expected seconds (a number) or a duration"),
    ('[[expect]]\nmetric = "requests"\nop = "=>"\nvalue = 1\n', "expect[0].op",
     "unknown comparison '=>'"),
    ('[[expect]]\nmetric = "requests"\nop = ">"\nvalue = 1\nphase = "nope"\n', "expect[0].phase",
     "unknown phase 'nope'; phases: all"),
    ('[[expect]]\nmetric = "requests"\nop = ">"\nvalue = 1\nbetween = [5, 12]\n',
     "expect[0].between", "must satisfy 0 <= START < END <= duration (10)"),
    ('[[expect]]\nmetric = "no_wrong_kv"\nop = "=="\n', "expect[0].op",
     "no_wrong_kv is a check: it takes no op"),
    ('[[expect]]\nmetric = "requests"\nop = ">"\n', "expect[0].value",
     "give value (a threshold) or ref (a phase to compare with), exactly one"),
    # tables that belong to the other mode
    ('[sim]\npreset = "rack"\n', "sim", '[sim] belongs to mode = "sim" scenarios'),
])
def test_model_scenario_mistakes(extra: str, key: str, reason: str) -> None:
    text = MODEL + "\n" + extra
    e = error(text)
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    assert e.file == "bad.toml" and e.line is not None
    assert str(e).startswith(f"bad.toml:{e.line}: {key}: ")


@pytest.mark.parametrize(("change", "key", "reason"), [
    (('preset = "single-node"', 'preset = "rak"'), "sim.preset", "unknown preset 'rak'"),
    (("[sim.hbm]\ncache_blocks = 400", "[sim.hbm]\ncache_block = 400"),
     "sim.hbm.cache_block", "unknown key hbm.cache_block"),
    (("rate = 3.0", "rate = -3.0"), "sim.workload", "workload"),
    (("tick = 0.5", "tick = 0"), "sim.tick", "must be > 0"),
    (("tick = 0.5", 'speed = "fast"'), "sim.speed", 'must be "max" or virtual seconds'),
    (('tier = "hbm"\nhigh = 0.3', 'tier = "pool"\nhigh = 0.3'), "timeline[0].tier",
     "unknown tier 'pool'; tiers here: hbm, dram"),
    (('command = "SetWatermarks"\ntier = "hbm"\nhigh = 0.3\nlow = 0.2',
      'command = "InjectFault"\ntier = "dram"\nkind = "down"'), "timeline[0].tier",
     "tier dram is a GPU's own memory: the simulator faults shared tiers only"),
    (('command = "SetWatermarks"\ntier = "hbm"\nhigh = 0.3\nlow = 0.2', 'command = "Pause"'),
     "timeline[0].command", "Pause stops the simulator's virtual clock"),
    (('command = "SetWatermarks"\ntier = "hbm"\nhigh = 0.3\nlow = 0.2',
      'command = "SetDrillDown"\nracks = [1]'), "timeline[0].racks",
     "no rack 1: racks are 0..0"),
    (('[sim]\npreset = "single-node"', '[workload]\nlambda_rate = 1\n[sim]\npreset = "rack"'),
     "workload", '[workload] belongs to mode = "model" scenarios'),
    (("at = 10\n", "at = 25\n"), "timeline[0].at",
     "25 is outside the run: actions go at 0 <= at < duration (20 virtual seconds)"),
])
def test_sim_scenario_mistakes(change: tuple[str, str], key: str, reason: str) -> None:
    text = sim_text()
    assert change[0] in text
    e = error(text.replace(change[0], change[1], 1), "sim.toml")
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    assert e.line is not None


def test_missing_essentials() -> None:
    assert error("").reason.startswith("missing the [scenario] table")
    e = error('[scenario]\nmode = "model"\n')
    assert (e.key, e.line) == ("scenario.duration", 1)
    e = error('[scenario]\nduration = 5\nmode = "film"\n')
    assert (e.key, e.line, e.reason) == ("scenario.mode", 3,
                                         "must be one of model, sim, got 'film'")
    e = error('[scenario]\nduration = 5\nmode = "model"\n')
    assert e.key == "tiers" and "at least one [[tiers]]" in e.reason


def test_files_it_names_must_exist(tmp_path: Path) -> None:
    text = MODEL + '\n[trace]\npath = "nope.jsonl"\n'
    e = error(text, str(tmp_path / "x.toml"))
    assert e.key == "trace.path" and f"no such file: {tmp_path / 'nope.jsonl'}" in e.reason
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "missing.toml")
    assert "cannot read the scenario" in str(info.value)


def test_a_trace_replaces_the_workload(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 600, "output_length": 4, '
                     '"hash_ids": [1, 2]}\n')
    text = MODEL + '\n[trace]\npath = "t.jsonl"\nspeed = 2\n'
    s = parse_scenario(text, tmp_path / "x.toml")
    assert s.trace is not None and s.trace.path == trace and s.trace.speed == 2.0
    assert s.model is not None and s.model.workload is None
    e = error(text + "[workload]\nlambda_rate = 2\n", str(tmp_path / "x.toml"))
    assert e.key == "workload" and "not both" in e.reason
    e = error(text + '[[timeline]]\nat = 1\ncommand = "SetWorkload"\nrate = 2\n',
              str(tmp_path / "x.toml"))
    assert "the workload is the trace" in e.reason


# ------------------------------------------------------------------------------------ values


def test_value_syntax() -> None:
    assert parse_duration("200ms") == pytest.approx(0.2)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2m") == 120.0
    assert parse_duration(3) == 3.0
    assert parse_value("fraction", "50%") == 0.5 and parse_value("fraction", 0.25) == 0.25
    assert parse_value("bytes", "1MiB") == 1 << 20
    assert parse_value("seconds", "250us") == pytest.approx(250e-6)
    for unit, raw in [("fraction", "200ms"), ("count", "5"), ("seconds", "fast"),
                      ("bytes", True)]:
        with pytest.raises(ValueError):
            parse_value(unit, raw)  # type: ignore[arg-type]


def test_every_metric_is_a_summary_key() -> None:
    from tiertop.monitor.summary import COUNTERS

    tier_keys = {*COUNTERS, "hit_ratio", "occupancy_mean", "occupancy_end", "used_bytes_end",
                 "capacity_bytes_end", "get_p50_s", "get_p99_s", "get_mean_s"}
    service_keys = {"requests", "failed", "output_tokens", "request_rate", "tokens_per_s",
                    "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_mean_s",
                    "prefix_hit_ratio", "restored_share", "recomputed_share", "migrations",
                    "evictions", "control_changes", "faults", "restarts"}
    for metric in METRICS.values():
        if metric.scope == "tier":
            assert metric.name in tier_keys
        elif metric.scope == "service":
            assert metric.name in service_keys
    assert METRICS["no_wrong_kv"].scope == "check"


def test_set_workload_fields_come_from_the_command() -> None:
    text = MODEL + ('\n[[timeline]]\nat = 1\ncommand = "SetWorkload"\nrate = 9\n'
                    'new_conv_prob = 0.1\n')
    s = parse_scenario(text)
    assert s.timeline[0].command == SetWorkload(rate=9.0, new_conv_prob=0.1)
