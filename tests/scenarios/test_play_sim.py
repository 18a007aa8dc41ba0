"""Playing simulator scenarios: exact replays from a seed, exit codes, recordings, headless."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiertop.monitor.recording import Recording
from tiertop.monitor.replay import Replayer
from tiertop.monitor.summary import summarize_replay
from tiertop.scenarios.player import play
from tiertop.scenarios.validate import load_scenario

from tests.scenarios.helpers import tiertop, write_sim


def deterministic_part(stdout: str) -> str:
    """The JSON result without its ``run`` section (wall time, recording, warnings)."""
    result = json.loads(stdout)
    del result["run"]
    return json.dumps(result, sort_keys=True)


def test_same_seed_same_summary_byte_for_byte(tmp_path: Path) -> None:
    path = write_sim(tmp_path)
    first = tiertop("play", str(path), "--json", env={"PYTHONHASHSEED": "1"})
    assert first.returncode == 0, first.stderr
    # another process, another hash seed, paced instead of flat out: the same result
    second = tiertop("play", str(path), "--json", "--speed", "400",
                     env={"PYTHONHASHSEED": "2"})
    assert second.returncode == 0, second.stderr
    assert deterministic_part(first.stdout) == deterministic_part(second.stdout)

    result = json.loads(first.stdout)
    before, after = result["summary"]["phases"]
    assert (before["name"], after["name"]) == ("before", "after")
    assert before["service"]["requests"] > 0 and after["service"]["requests"] > 0
    # the action happened at exactly 10 virtual s, and its effect shows
    (action,) = result["timeline"]
    assert action["applied"] and action["sent_at_s"] == 10.0
    assert action["new"] == {"hbm": {"high": 0.3, "low": 0.2}}
    assert after["service"]["control_changes"] == 1 and before["service"]["control_changes"] == 0
    assert after["tiers"]["hbm"]["demotions"] > 0 == before["tiers"]["hbm"]["demotions"]
    assert after["tiers"]["hbm"]["occupancy_end"] <= 0.3
    assert result["passed"] and all(e["passed"] for e in result["expectations"])

    # a different seed is a different run (the comparison above can fail)
    other = write_sim(tmp_path, seed=5, name="other-seed")
    third = tiertop("play", str(other), "--json")
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["summary"] != result["summary"]


def test_a_failing_expectation_exits_1_and_says_why(tmp_path: Path) -> None:
    extra = """
[[expect]]
metric = "hit_ratio"
tier = "hbm"
op = ">="
value = "99%"
phase = "before"
note = "cannot hold"
"""
    path = write_sim(tmp_path, extra=extra)
    done = tiertop("play", str(path))
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "FAIL" in line]
    assert len(lines) == 1
    assert lines[0].startswith("tiertop play: FAIL expect[2]: hbm hit_ratio >= 99% in phase "
                               "before: measured ")
    measured = float(lines[0].split("measured ")[1].split("%")[0])
    assert 0 < measured < 99
    assert "FAILED: 1 of 3 expectation(s) failed" in done.stdout
    assert "PASS expect[0]" in done.stdout  # the others are still reported

    as_json = tiertop("play", str(path), "--json")
    assert as_json.returncode == 1
    result = json.loads(as_json.stdout)
    assert not result["passed"]
    check = result["expectations"][2]
    assert not check["passed"] and check["measured"] == pytest.approx(measured / 100, abs=1e-4)


def test_a_broken_file_exits_2_before_anything_starts(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    text = write_sim(tmp_path).read_text().replace('command = "SetWatermarks"',
                                                   'comand = "SetWatermarks"')
    path.write_text(text)
    done = tiertop("play", str(path), "--json")
    assert done.returncode == 2
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("comand"))
    assert done.stderr.strip().startswith(
        f"tiertop play: {path}:{line}: timeline[0].comand: unknown key 'comand' "
        "(did you mean 'command'?)")
    assert done.stdout == ""
    assert tiertop("play", "no-such-scenario").returncode == 2
    not_a_recording = tmp_path / "notes.txt"
    not_a_recording.write_text("keep me")
    done = tiertop("play", str(write_sim(tmp_path)), "--record", str(not_a_recording))
    assert done.returncode == 2 and "is not a tiertop recording" in done.stderr
    assert not_a_recording.read_text() == "keep me"
    assert tiertop("play", str(path), "--check").returncode == 2
    assert tiertop("play", str(write_sim(tmp_path)), "--check").returncode == 0


def test_record_writes_a_recording_the_reader_opens(tmp_path: Path) -> None:
    scenario = load_scenario(write_sim(tmp_path))
    out = tmp_path / "run.ttrec"
    result = play(scenario, record=out)
    assert result.passed and result.recording == str(out)
    with Recording.open(out) as recording:
        assert recording.ok and recording.complete
        assert recording.scenario == scenario.text
        assert recording.header["meta"]["phases"] == [["before", 0.0, 10.0],
                                                      ["after", 10.0, None]]
        assert recording.hello is not None and recording.hello.mode == "sim"
        controls = [e for e in recording.index if e.kind == "control"]
        assert len(controls) == 1 and controls[0].label.startswith("SetWatermarks hbm")
        assert controls[0].t - recording.start_time == pytest.approx(10.0)
        # Replayed through the same summary, the counts are the play's.
        replayed = summarize_replay(Replayer(recording), scenario.phases)
    for live, again in zip(result.summary.phases, replayed.phases, strict=True):
        assert live.name == again.name
        for tier in ("hbm", "dram"):
            for key in ("hits", "misses", "evictions", "demotions", "promotions"):
                assert live.tiers[tier][key] == again.tiers[tier][key], (live.name, tier, key)
        assert live.service["requests"] == again.service["requests"]
    assert result.summary.phases[1].tiers["hbm"]["demotions"] > 0


def test_play_never_imports_textual(tmp_path: Path) -> None:
    path = write_sim(tmp_path)
    code = f"""
import sys
from tiertop.main import main
status = main(["play", {str(path)!r}, "--json"])
# (tiertop's parser imports each command's argument module, tui ones included, but those
# never import Textual; the dashboard app does.)
loaded = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual.")
                or m == "tiertop.tui.app")
print("LOADED", loaded, file=sys.stderr)
sys.exit(10 + status if loaded else status)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["passed"]
    assert "LOADED []" in done.stderr


def test_list_names_every_bundled_scenario() -> None:
    done = tiertop("play", "--list")
    assert done.returncode == 0
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    for name in ("strategies", "policy-shootout", "burst", "remote-failure",
                 "watermark-sweep", "cluster-10k"):
        assert name in rows and "broken" not in rows[name]
    assert "[sim, 24 virtual s] 10,240 GPUs" in rows["cluster-10k"]


def test_dash_says_clearly_when_the_dashboard_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiertop.main import main
    from tiertop.scenarios import play_cli

    monkeypatch.setattr(play_cli, "dash_available", lambda: "Textual is not installed")
    assert main(["play", str(write_sim(tmp_path)), "--dash"]) == 2
    err = capsys.readouterr().err
    assert "--dash: the dashboard is not available (Textual is not installed)" in err
    command = play_cli.dash_command({"telemetry": "tcp://127.0.0.1:1",
                                     "control": "tcp://127.0.0.1:2",
                                     "replay": "tcp://127.0.0.1:3"})
    assert command[1:] == ["-m", "tiertop", "dash", "--connect", "tcp://127.0.0.1:1",
                           "--control", "tcp://127.0.0.1:2", "--replay-addr",
                           "tcp://127.0.0.1:3"]


def test_speed_is_for_sim_scenarios_only() -> None:
    done = tiertop("play", "burst", "--speed", "2")
    assert done.returncode == 2
    assert "--speed applies to sim scenarios" in done.stderr


def _mooncake(path: Path) -> Path:
    rows = []
    for i in range(60):  # 4 requests a second, sharing leading blocks in three families
        family = [[1, 2, 3], [4, 5], [6]][i % 3]
        ids = [*family, 1000 + i]
        rows.append({"timestamp": 250 * i, "input_length": 512 * len(ids) - 100,
                     "output_length": 8, "hash_ids": ids})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_trace_drives_the_simulator(tmp_path: Path) -> None:
    _mooncake(tmp_path / "trace.jsonl")
    path = tmp_path / "trace-sim.toml"
    path.write_text("""
[scenario]
name = "trace-sim"
mode = "sim"
duration = 20
[sim]
preset = "single-node"
[sim.hbm]
cache_blocks = 64
[trace]
path = "trace.jsonl"
[[expect]]
metric = "requests"
op = "=="
value = 60
[[expect]]
metric = "no_wrong_kv"
""")
    scenario = load_scenario(path)
    assert scenario.sim is not None and scenario.sim.topology.block_tokens == 512  # Mooncake's
    result = play(scenario)
    assert result.passed, result.failures()
    (phase,) = result.summary.phases
    assert phase.tiers["hbm"]["hits"] > 0  # the families' shared prefixes are reused


def test_the_model_replays_a_trace_with_repeating_tokens(tmp_path: Path) -> None:
    from tiertop.runtime.trace_workload import TraceWorkload
    from tiertop.runtime.workload import WorkloadError

    trace = _mooncake(tmp_path / "trace.jsonl")
    workload = TraceWorkload(trace, speed=2.0, vocab_size=1000, max_context=1024, seed=0)
    assert workload.next_arrival_s == 0.0
    first = workload.requests_until(0.5)  # speed 2: the first 5 arrivals (0, 125, ... 500 ms)
    assert [r.request_id for r in first] == [0, 1, 2, 3, 4]
    assert workload.next_arrival_s == pytest.approx(0.625)
    a, _, _, d, _ = first
    # requests 0 and 3 share their first three 512-token blocks: the same tokens, cut to fit
    assert len(a.context_tokens) + a.max_new_tokens <= 1024
    assert workload.clipped == 4  # request 2 (two blocks, 924 tokens) fits as it is
    shared = min(len(a.context_tokens), len(d.context_tokens))
    assert (a.context_tokens[:shared] == d.context_tokens[:shared]).all()
    assert int(a.context_tokens.max()) < 1000
    with pytest.raises(WorkloadError, match="the workload is the trace"):
        workload.apply_set_workload({"rate": 1.0})
