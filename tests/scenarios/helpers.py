"""Scenario texts and a command runner shared by the scenario tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: A short simulator scenario (about half a second of simulation): one node of two GPUs with
#: a small HBM cache over DRAM; at 10 virtual s the HBM watermarks drop.
SIM = """\
[scenario]
name = "short-sim"
description = "a short simulator scenario for tests"
mode = "sim"
duration = 20
seed = {seed}

[sim]
preset = "single-node"
tick = 0.5
[sim.cluster]
racks = 1
gpus_per_rack = 2
gpus_per_node = 2
[sim.hbm]
cache_blocks = 400
[sim.dram]
bytes_per_node = "16GiB"
[sim.ssd]
bytes_per_node = 0
[sim.workload]
rate = 3.0
prompt_mean = 256
prompt_max = 1024
output_mean = 32
output_max = 128
system_prompts = 8
system_prompt_len = 512

[[phases]]
name = "before"
end = 10

[[phases]]
name = "after"
start = 10

[[timeline]]
at = 10
command = "SetWatermarks"
tier = "hbm"
high = 0.3
low = 0.2

[[expect]]
metric = "occupancy_mean"
tier = "hbm"
op = "<="
value = "30%"
phase = "after"

[[expect]]
metric = "no_wrong_kv"
{extra}"""


def sim_text(seed: int = 4, extra: str = "") -> str:
    return SIM.format(seed=seed, extra=extra)


def write_sim(directory: Path, seed: int = 4, extra: str = "", name: str = "short-sim") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(sim_text(seed, extra))
    return path


def tiertop(*args: str, timeout: float = 120.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tiertop ARGS`` and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tiertop", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False)
