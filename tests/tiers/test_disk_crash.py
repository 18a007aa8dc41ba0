"""A DiskStore process killed with SIGKILL mid-write never leaves wrong bytes behind.

A child process writes blocks into a directory and is killed; the test then reopens the
directory and checks that every adopted block holds exactly the bytes of its key. The targeted
kills make the child stop half way through a payload write (it writes half, says so, and waits
for the signal), so the torn state on disk is the real one a kill leaves; the random kills land
wherever the child happens to be (mostly inside writes: its blocks are made up front).
"""

from __future__ import annotations

import inspect
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiertop.tiers.block import Block
from tiertop.tiers.stores.disk import SLOT_BYTES, DiskStore
from tiertop.tiers.stores.disk_format import record_span

KIB = 1024
CAPACITY = 1 << 30


def payload(key: int, scenario: str) -> bytes:
    """The bytes of block ``key`` (the child runs this very function's source)."""
    if scenario == "compact":
        size = (64 + 64 * (key % 3)) * 1024  # three sizes: compaction has holes to close
    else:
        size = (1024 if scenario == "loop" else 128) * 1024
    return np.random.default_rng(key).integers(0, 256, size, dtype=np.uint8).tobytes()


CHILD = r"""
import os, sys, time
import numpy as np
from tiertop.tiers.block import Block
from tiertop.tiers.stores.disk import DiskStore

""" + inspect.getsource(payload) + r"""

def block(key):
    return Block.from_array(key, np.frombuffer(payload(key, sys.argv[2]), dtype=np.uint8))

real_pwrite = os.pwrite
armed = False

def pwrite(fd, data, offset):
    view = memoryview(data)
    if armed and view.nbytes > 4096:  # a payload: write half of it, then wait for the kill
        real_pwrite(fd, view[: view.nbytes // 2], offset)
        print("mid-write", flush=True)
        time.sleep(60)
    return real_pwrite(fd, data, offset)

os.pwrite = pwrite
store = DiskStore("disk", 1 << 30, sys.argv[1])
scenario = sys.argv[2]
if scenario == "append":
    for key in (1, 2, 3):
        store.put(block(key))
    armed = True
    store.put(block(4))
elif scenario == "reuse":
    for key in (1, 2, 3):
        store.put(block(key))
    store.delete(2)
    armed = True
    store.put(block(5))  # the size of 2: it goes into 2's run
elif scenario == "compact":
    for key in range(1, 10):
        store.put(block(key))
    for key in (1, 2, 4):
        store.delete(key)
    armed = True
    store.compact()
else:  # "loop": puts (new keys and replacements) and deletes until killed
    first = int(sys.argv[3])
    blocks = [block(key) for key in range(first, first + 24)]
    print("started", flush=True)
    for i in range(10**9):
        store.put(blocks[i % 24])
        if i % 3 == 2:
            store.delete(blocks[(i + 7) % 24].key)
"""


def start_child(directory: Path, scenario: str, first_key: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), scenario, str(first_key)],
        stdout=subprocess.PIPE,
        text=True,
    )


def kill_when_it_says(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdout is not None
    said = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert said == line, f"child said {said!r} (exit {child.returncode})"
    assert child.returncode == -signal.SIGKILL


def check_every_block(store: DiskStore, scenario: str) -> None:
    """Every adopted block reads back exactly as its key's bytes; nothing is corrupt."""
    adopted = store.keys()
    for key in adopted:
        got = store.get(key)
        assert got is not None and bytes(got.view()) == payload(key, scenario), key
    assert store.stats.corrupt == 0


@pytest.mark.timeout(60)
def test_killed_mid_append_leaves_a_torn_tail_that_is_cut_off(tmp_path: Path) -> None:
    kill_when_it_says(start_child(tmp_path, "append"), "mid-write")
    store = DiskStore("disk", CAPACITY, tmp_path)
    try:
        assert store.keys() == [1, 2, 3]
        assert store.scan.torn_removed == 1 and store.scan.corrupt_removed == 0
        assert store.data_path.stat().st_size == 3 * record_span(128 * KIB) * SLOT_BYTES
        check_every_block(store, "append")
        store.put(Block.from_array(4, np.frombuffer(payload(4, "append"), np.uint8)))
        check_every_block(store, "append")
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_killed_mid_write_into_a_freed_run_leaves_it_free(tmp_path: Path) -> None:
    kill_when_it_says(start_child(tmp_path, "reuse"), "mid-write")
    store = DiskStore("disk", CAPACITY, tmp_path)
    try:
        assert store.keys() == [1, 3]  # 2 was deleted; 5 never got its header
        scan = store.scan
        assert scan.torn_removed == scan.corrupt_removed == scan.stale_removed == 0
        assert store.fragmentation().free_extents == 1
        check_every_block(store, "reuse")
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_killed_mid_compaction_loses_at_most_the_block_being_moved(tmp_path: Path) -> None:
    kill_when_it_says(start_child(tmp_path, "compact"), "mid-write")
    store = DiskStore("disk", CAPACITY, tmp_path)
    try:
        survivors = store.keys()
        assert set(survivors) <= {3, 5, 6, 7, 8, 9} and len(survivors) >= 5
        for key in survivors:  # whatever was adopted is exact; a lost block is a miss
            got = store.get(key)
            assert got is not None and bytes(got.view()) == payload(key, "compact")
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_killed_at_random_moments_never_leaves_wrong_bytes(tmp_path: Path) -> None:
    rng = random.Random(7)
    first_key = 1
    for _ in range(5):
        child = start_child(tmp_path, "loop", first_key)
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        try:
            child.wait(timeout=rng.uniform(0.05, 0.3))
        except subprocess.TimeoutExpired:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        store = DiskStore("disk", CAPACITY, tmp_path)
        try:
            assert store.scan.corrupt_removed == 0 and store.scan.torn_removed <= 1
            check_every_block(store, "loop")
        finally:
            store.close()
        first_key += 24  # the next child writes new keys over what this one left
