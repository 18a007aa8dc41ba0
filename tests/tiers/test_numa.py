"""NUMA discovery, binding with verified placement, and the stated fallback.

This machine decides which paths run for real: binding to a *remote* node needs two memory nodes
(skipped otherwise); allocation and verification on node 0 need libnuma; the fallback path and
sysfs parsing run everywhere.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np
import pytest
from tiertop.tiers.block import Block
from tiertop.tiers.numa_topology import (
    NumaBuffer,
    NumaNode,
    NumaTopology,
    discover_topology,
    load_libnuma,
    parse_cpulist,
    read_sysfs_nodes,
    verify_placement,
)
from tiertop.tiers.stores.dram import DramStore
from tiertop.tiers.stores.numa import NumaStore, NumaUnavailable

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

TOPOLOGY = discover_topology()
LIBNUMA, LIBNUMA_REASON = load_libnuma()
needs_libnuma = pytest.mark.skipif(LIBNUMA is None, reason=f"libnuma unusable: {LIBNUMA_REASON}")
needs_two_nodes = pytest.mark.skipif(
    len(TOPOLOGY.memory_nodes) < 2 or LIBNUMA is None,
    reason=f"binding to a remote node needs 2+ memory nodes and libnuma; this machine has "
    f"{TOPOLOGY.summary()}",
)


def make_block(key: int, nbytes: int) -> Block:
    rng = np.random.default_rng(key)
    return Block.from_array(key, rng.integers(0, 256, nbytes, dtype=np.uint8))


def fake_topology(
    nodes: int, *, my_node: int = 0, libnuma: bool = True, free: int = 4 * GIB
) -> NumaTopology:
    """A topology of ``nodes`` memory nodes where this process's CPUs are on ``my_node``."""
    mine = tuple(sorted(os.sched_getaffinity(0)))
    result = []
    for node_id in range(nodes):
        distances = {other: 10 if other == node_id else 21 for other in range(nodes)}
        cpus = mine if node_id == my_node else (1000 + node_id,)
        result.append(NumaNode(node_id, cpus, 8 * GIB, free, distances))
    lib = LIBNUMA if libnuma else None
    return NumaTopology(tuple(result), lib, "" if lib else "libnuma left out by the test")


# -------------------------------------------------------------------- discovery


def test_parse_cpulist() -> None:
    assert parse_cpulist("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_cpulist("") == ()
    assert parse_cpulist("5") == (5,)


def write_node(root: Path, node: int, cpus: str, total_kb: int, free_kb: int, dist: str) -> None:
    directory = root / f"node{node}"
    directory.mkdir(parents=True)
    (directory / "cpulist").write_text(cpus + "\n")
    (directory / "meminfo").write_text(
        f"Node {node} MemTotal:       {total_kb} kB\n"
        f"Node {node} MemFree:        {free_kb} kB\n"
        f"Node {node} MemUsed:        {total_kb - free_kb} kB\n"
    )
    (directory / "distance").write_text(dist + "\n")


def test_sysfs_tree_is_read(tmp_path: Path) -> None:
    write_node(tmp_path, 0, "0-3", 8 * MIB, 6 * MIB, "10 21 31")
    write_node(tmp_path, 1, "4-7", 8 * MIB, 7 * MIB, "21 10 21")
    write_node(tmp_path, 2, "", 16 * MIB, 16 * MIB, "31 21 10")  # memory only (CXL-like)
    (tmp_path / "online").write_text("0-2\n")
    nodes = read_sysfs_nodes(tmp_path)
    assert [n.id for n in nodes] == [0, 1, 2]
    assert nodes[0].cpus == (0, 1, 2, 3) and nodes[2].cpus == ()
    assert nodes[1].mem_total_bytes == 8 * GIB and nodes[1].mem_free_bytes == 7 * GIB
    assert nodes[0].distances == {0: 10, 1: 21, 2: 31}
    topology = discover_topology(tmp_path, libnuma_name=None)
    assert topology.local_node({1, 2}) == 0 and topology.local_node({5}) == 1
    # the farthest memory node from node 0 is the memory-only node 2; from node 2, node 0
    assert topology.remote_node(0) == 2
    assert topology.remote_node(2) == 0
    assert topology.remote_node(1) == 2  # both at 21: more free memory wins
    assert "3 NUMA nodes" in topology.summary()


def test_missing_sysfs_gives_no_nodes(tmp_path: Path) -> None:
    assert read_sysfs_nodes(tmp_path / "absent") == ()


def test_this_machines_topology_matches_sysfs() -> None:
    root = Path("/sys/devices/system/node")
    if not root.is_dir():
        pytest.skip("no /sys/devices/system/node here")
    listed = sorted(int(p.name[4:]) for p in root.glob("node[0-9]*"))
    assert list(TOPOLOGY.node_ids) == listed
    assert all(node.mem_total_bytes > 0 for node in TOPOLOGY.memory_nodes)
    assert TOPOLOGY.local_node() in TOPOLOGY.node_ids


# -------------------------------------------------------------------- binding and verification


@needs_libnuma
def test_memory_bound_to_node_0_is_verified_on_node_0() -> None:
    buffer = NumaBuffer(4 * MIB, 0, lib=LIBNUMA)
    untouched = buffer.verify()
    assert not untouched.ok and untouched.pages_on_node == 0  # pages are placed when touched
    buffer.touch()
    placement = buffer.verify()
    assert placement.ok, placement.summary()
    assert placement.pages_checked == placement.pages_total == 4 * MIB // LIBNUMA.page_size()
    assert placement.method in ("move_pages", "get_mempolicy")
    sampled = verify_placement(buffer.array, 0, lib=LIBNUMA, max_pages=16)
    assert sampled.ok and sampled.pages_checked == 16 and sampled.pages_total > 16
    assert "on node 0" in placement.summary()


@needs_libnuma
def test_numa_buffer_is_freed_when_its_last_view_goes() -> None:
    buffer = NumaBuffer(1 * MIB, 0, lib=LIBNUMA)
    view = buffer.array[10:20]
    del buffer
    gc.collect()
    view[:] = 7  # still valid memory
    assert view.sum() == 70
    finalizer_holder = NumaBuffer(1 * MIB, 0, lib=LIBNUMA)
    array = finalizer_holder.array
    assert not finalizer_holder.freed
    del array
    finalizer_holder.array = np.zeros(1, dtype=np.uint8)
    gc.collect()
    assert finalizer_holder.freed


@needs_libnuma
def test_store_binds_and_verifies_the_chosen_node() -> None:
    # Pretend this process runs on a (fake) node 1, so the node it binds to, the real node 0,
    # is "remote": the allocation, page touching and kernel query are all real.
    topology = fake_topology(2, my_node=1)
    store = NumaStore("remote", 1 * MIB, topology=topology)
    assert store.bound and store.fallback is None and store.node == 0
    assert not store.emulated and store.fallback_reason == ""
    assert store.placement is not None and store.placement.ok
    assert store.describe().startswith("remote: NUMA node 0, membind verified (256 pages)")
    assert store.kind == "numa"
    block = make_block(1, 200 * KIB)
    store.put(block)
    got = store.get(1)
    assert got is not None and bytes(got.view()) == bytes(block.view())
    # the arena really is the bound memory
    arena = store.arena._arena
    assert arena is not None and bytes(block.view()[:64]) in arena.tobytes()
    # and no emulated delay is added to a real binding
    assert store.delay_s(1 * MIB) == 0.0
    # closing hands the memory back to libnuma once nothing views it
    assert store._buffer is not None
    finalizer = store._buffer._finalizer
    del arena
    assert finalizer.alive
    store.close()
    gc.collect()
    assert not finalizer.alive


@needs_libnuma
def test_binding_to_a_node_that_is_not_there_fails_verification_and_falls_back() -> None:
    if 1 in TOPOLOGY.node_ids:
        pytest.skip("this machine has a real node 1")
    # a topology that claims a node 1 the kernel does not have: the pages land elsewhere
    store = NumaStore("remote", 1 * MIB, node=1, topology=fake_topology(2, my_node=0))
    assert store.fallback is not None
    assert store.fallback.code in ("verify_failed", "alloc_failed")
    assert "emulated" in store.describe()
    store.put(make_block(1, 4 * KIB))
    assert store.get(1) is not None


@needs_two_nodes
def test_store_binds_to_a_remote_node() -> None:
    store = NumaStore("remote", 8 * MIB)
    assert store.bound and store.node is not None and store.node != TOPOLOGY.local_node()
    assert store.placement is not None and store.placement.ok
    assert f"NUMA node {store.node}, membind verified" in store.describe()
    block = make_block(1, 1 * MIB)
    store.put(block)
    got = store.get(1)
    assert got is not None and bytes(got.view()) == bytes(block.view())


@needs_two_nodes
def test_every_memory_node_can_be_bound_and_verified() -> None:
    for node in TOPOLOGY.memory_nodes:
        buffer = NumaBuffer(2 * MIB, node.id, lib=LIBNUMA)
        buffer.touch()
        assert buffer.verify().ok, f"node {node.id}: {buffer.verify().summary()}"


# -------------------------------------------------------------------- fallback


def test_one_node_falls_back_to_a_stated_emulation() -> None:
    store = NumaStore("remote", 4 * MIB, topology=fake_topology(1))
    assert not store.bound and store.node is None and store.placement is None
    fallback = store.fallback
    assert fallback is not None and fallback.code == "single_node"
    assert fallback.reason == "one NUMA node"
    assert fallback.latency_s == 2e-6 and fallback.bandwidth_bytes_per_s == 40e9
    assert fallback.as_dict()["code"] == "single_node"
    assert store.emulated and store.fallback_reason == "one NUMA node: emulated +2.0 µs/op, 40 GB/s"
    assert store.describe().startswith("remote: emulated, one NUMA node, +2.0 µs/op, 40 GB/s")
    assert isinstance(store.inner, DramStore)
    # the stated figures are really applied
    block = make_block(1, 1 * MIB)
    started = time.perf_counter()
    store.put(block)
    got = store.get(1)
    took = time.perf_counter() - started
    assert took >= 2 * (2e-6 + MIB / 40e9)
    assert got is not None and bytes(got.view()) == bytes(block.view())
    assert store.used_bytes == store.inner.used_bytes == MIB


def test_this_machine_binds_or_says_why_not() -> None:
    store = NumaStore("remote", 1 * MIB)
    if len(TOPOLOGY.memory_nodes) < 2:
        assert store.fallback is not None and store.fallback.code == "single_node"
        assert "emulated, one NUMA node" in store.describe()
    elif LIBNUMA is None:
        assert store.fallback is not None and store.fallback.code == "no_libnuma"
    else:
        assert store.fallback is None and store.placement is not None and store.placement.ok


def test_no_libnuma_falls_back() -> None:
    store = NumaStore(
        "remote",
        1 * MIB,
        topology=fake_topology(2, libnuma=False),
        emulated_latency_s=5e-6,
        emulated_bandwidth_bytes_per_s=20e9,
    )
    assert store.fallback is not None and store.fallback.code == "no_libnuma"
    assert "remote: emulated, no libnuma, +5.0 µs/op, 20 GB/s" in store.describe()
    assert store.delay_s(20_000) == pytest.approx(5e-6 + 1e-6)


def test_unknown_node_and_small_node_fall_back() -> None:
    unknown = NumaStore("remote", 1 * MIB, node=7, topology=fake_topology(2))
    assert unknown.fallback is not None and unknown.fallback.code == "no_such_node"
    small = NumaStore("remote", 64 * MIB, topology=fake_topology(2, free=1 * MIB))
    assert small.fallback is not None and small.fallback.code == "node_too_small"


def test_required_binding_raises_instead_of_emulating() -> None:
    with pytest.raises(NumaUnavailable, match="one NUMA node"):
        NumaStore("remote", 1 * MIB, topology=fake_topology(1), allow_fallback=False)


def test_capacity_follows_the_arena() -> None:
    store = NumaStore("remote", 1 * MIB, arena_bytes=2 * MIB, topology=fake_topology(1))
    assert store.max_capacity() == 2 * MIB
    store.set_capacity(2 * MIB)
    assert store.capacity_bytes == store.inner.capacity_bytes == 2 * MIB
