"""A short model scenario end to end: `tiertop play --json` as a subprocess starts the model
runtime in-process, applies a timeline action through the control client, and summarises the
telemetry it read; the change is published and its effect shows in the next phase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scenarios.helpers import tiertop

pytestmark = pytest.mark.slow

SCENARIO = """\
[scenario]
name = "model-e2e"
description = "squeeze DRAM watermarks under load"
mode = "model"
duration = 5
seed = 1

[model]
tick = 0.2

[[tiers]]
kind = "dram"
capacity = "256KiB"

[[tiers]]
kind = "disk"
capacity = "2MiB"

[workload]
lambda_rate = 8.0
new_conv_prob = 0.2
max_live_conversations = 8
output = { kind = "fixed", mean = 4 }

[[phases]]
name = "before"
end = 2.5

[[phases]]
name = "after"
start = 2.5

[[timeline]]
at = 2.5
command = "SetWatermarks"
tier = "dram"
high = 0.3
low = 0.2

[[expect]]
metric = "requests"
op = ">"
value = 0
phase = "after"

[[expect]]
metric = "no_wrong_kv"
"""


def test_model_scenario_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "model-e2e.toml"
    path.write_text(SCENARIO)
    done = tiertop("play", str(path), "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    assert result["scenario"]["name"] == "model-e2e" and result["scenario"]["mode"] == "model"
    summary = result["summary"]
    assert summary["source"]["mode"] == "model" and summary["source"]["tiers"] == ["dram", "disk"]
    before, after = summary["phases"]
    assert (before["name"], after["name"]) == ("before", "after")
    for phase in (before, after):
        assert set(phase["tiers"]) == {"dram", "disk"}
        for key in ("hit_ratio", "hits", "misses", "evictions", "promotions", "demotions",
                    "occupancy_mean", "occupancy_end", "get_p50_s", "get_p99_s"):
            assert key in phase["tiers"]["dram"]
        for key in ("requests", "failed", "request_rate", "tokens_per_s", "ttft_p50_s",
                    "ttft_p99_s", "tpot_p50_s", "restored_share", "migrations",
                    "control_changes"):
            assert key in phase["service"]
        assert phase["service"]["requests"] > 0

    # The action went through the control client and the runtime applied it...
    (action,) = result["timeline"]
    assert action["applied"] and action["command"] == "SetWatermarks"
    assert action["old"] == {"dram": {"high": 0.9, "low": 0.8}}
    assert action["new"] == {"dram": {"high": 0.3, "low": 0.2}}
    assert 2.5 <= action["sent_at_s"] < 3.5
    # ...its ControlChange was published and read...
    assert after["service"]["control_changes"] == 1
    assert before["service"]["control_changes"] == 0
    # ...and its effect shows: DRAM was fuller than the new high watermark before, and after
    # the change it demotes and stays under it.
    assert before["tiers"]["dram"]["occupancy_end"] > 0.3
    assert after["tiers"]["dram"]["occupancy_end"] <= 0.3 + 1e-9
    assert after["tiers"]["dram"]["demotions"] > 0

    # KV integrity: every restored token came from a verified hit.
    integrity = result["integrity"]
    assert integrity["failed_requests"] == 0 and integrity["restored_tokens"] > 0
    for tier in integrity["tiers"].values():
        assert tier["restored_tokens"] <= tier["hits"] * integrity["block_tokens"]
    assert result["passed"] and all(e["passed"] for e in result["expectations"])
    assert result["run"]["wall_s"] > 5.0
