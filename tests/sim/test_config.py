"""Topology presets and config files, the calibration profile and its compute model."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiertop.runtime.sim.profile import Profile, SimConfigError, load_profile
from tiertop.runtime.sim.topology import PRESETS, load_topology, preset


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_presets_have_the_documented_shape() -> None:
    assert set(PRESETS) == {"single-node", "rack", "cluster-10k", "pd-10k"}
    cluster = preset("cluster-10k")
    assert (cluster.racks, cluster.gpus_per_rack, cluster.gpus) == (160, 64, 10_240)
    assert cluster.kinds() == ["hbm", "dram", "pool"]
    assert preset("pd-10k").pd.enabled and not cluster.pd.enabled
    assert preset("single-node").kinds() == ["hbm", "dram", "ssd"]
    for name in PRESETS:
        preset(name).validate()
    with pytest.raises(SimConfigError, match="unknown preset 'huge'"):
        preset("huge")


def test_config_file_overrides_a_preset(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", """
preset = "rack"
[cluster]
racks = 3
gpus_per_rack = 16
block_tokens = 32
[hbm]
bytes_per_gpu = "32GiB"
cache_fraction = 0.25
eviction = "arc"
[pool]
bytes_per_rack = "1TiB"
high = 0.8
low = 0.7
[remote]
bytes = "4TiB"
[pd]
enabled = true
transfer = "pull"
[router]
candidates = 3
[workload]
rate = 12.5
system_prompts = 2
""")
    topo = load_topology(None, path)
    assert (topo.racks, topo.gpus_per_rack, topo.block_tokens) == (3, 16, 32)
    assert topo.hbm.bytes == 32 << 30 and topo.hbm_cache_fraction == 0.25
    assert topo.hbm.eviction == "arc" and topo.pool.bytes == 1 << 40
    assert (topo.pool.high, topo.pool.low) == (0.8, 0.7)
    assert topo.kinds() == ["hbm", "dram", "pool", "remote"]
    assert topo.pd.enabled and topo.pd.transfer == "pull"
    assert topo.router.candidates == 3 and topo.workload.rate == 12.5
    assert topo.gpus_per_node == 8  # kept from the preset


@pytest.mark.parametrize(("text", "key"), [
    ("[cluster]\nrackz = 2\n", "cluster.rackz"),
    ("[hbm]\nbytes = 5\n", "hbm.bytes"),
    ("[gpu]\nflops = 1\n", "gpu"),
    ("colour = 'red'\n", "colour"),
    ("[pd]\ntransfer = 'teleport'\nenabled = true\n", "pd.transfer"),
    ("[hbm]\nhigh = 0.5\nlow = 0.6\n", "hbm.high"),
    ("[dram]\neviction = 'clairvoyant'\n", "dram.eviction"),
    ("[pool]\nbytes_per_rack = 'lots'\n", "pool.bytes_per_rack"),
    ("[cluster]\ngpus_per_node = 3\n", "cluster.gpus_per_node"),
])
def test_bad_config_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(SimConfigError) as info:
        load_topology(None, path)
    assert info.value.key == key


def test_profile_defaults_and_compute_model() -> None:
    profile = Profile()
    # 70B GQA: 2 (K, V) x 80 layers x 8 KV heads x 128 x 2 bytes = 320 KiB per token
    assert profile.kv_bytes_per_token == 320 * 1024
    assert 16 * profile.kv_bytes_per_token == 5 << 20  # a 16-token block
    assert profile.prefill_s_per_token == pytest.approx(2 * 70e9 / (989e12 * 0.5))
    assert profile.decode_weights_s == pytest.approx(140e9 / 3.35e12)
    # memory-bound decode grows with the batch's KV; compute-bound at a huge batch
    assert profile.decode_step_s(8, 10_000) == pytest.approx(
        (140e9 + 10_000 * 327_680) / 3.35e12)
    assert profile.decode_step_s(1000, 0) == pytest.approx(1000 * profile.prefill_s_per_token)
    assert profile.pcie.bandwidth == 64e9 and profile.nvme.latency == 200e-6
    assert profile.rdma.link(True).latency == 3e-6
    assert profile.rdma.link(False).latency == 15e-6


def test_profile_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.toml", """
[model]
name = "llama-3-8b"
params = 8e9
layers = 32
[gpu]
hbm_bandwidth = 4.8e12
[links.rdma]
bandwidth = 25e9
[scheduler]
max_decode_batch = 64
""")
    profile = load_profile(path)
    assert profile.model.name == "llama-3-8b"
    assert profile.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert profile.gpu.hbm_bandwidth == 4.8e12 and profile.gpu.peak_flops == 989e12
    assert profile.rdma.bandwidth == 25e9 and profile.rdma.intra_rack_latency == 3e-6
    assert profile.scheduler.max_decode_batch == 64


@pytest.mark.parametrize(("text", "key"), [
    ("[model]\nparameters = 1\n", "model.parameters"),
    ("[links.infiniband]\nbandwidth = 1\n", "links.infiniband"),
    ("[gpu]\npeak_flops = -1\n", "gpu.peak_flops"),
    ("[scheduler]\nmax_decode_batch = 2.5\n", "scheduler.max_decode_batch"),
    ("[fpga]\nx = 1\n", "fpga"),
])
def test_bad_profile_is_an_error(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SimConfigError) as info:
        load_profile(_write(tmp_path, "p.toml", text))
    assert info.value.key == key
