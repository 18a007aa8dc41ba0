"""The remote tier when its memory server dies, stalls or restarts, and the server's command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from tiertop.tiers.block import Block
from tiertop.tiers.errors import StoreUnavailable
from tiertop.tiers.health import Health
from tiertop.tiers.store import TierStore
from tiertop.tiers.stores.remote import (
    MemServerProcess,
    RemoteStore,
    RequestLost,
    spawn_memserver,
)

MIB = 1024 * 1024
TIMEOUT_S = 0.5
PROBE_S = 0.1
AT_ONCE_S = 0.1  # "fails at once": no network wait at all
RETRY_S = 0.2


def kv_block(key: int, nbytes: int = 256 * 1024) -> Block:
    values = np.random.default_rng(key).standard_normal(nbytes // 4).astype(np.float32)
    return Block.from_array(key, values)


class Servers:
    """Memory servers started by a test, all stopped at its end."""

    def __init__(self) -> None:
        self.started: list[MemServerProcess] = []

    def start(self, bind: str = "tcp://127.0.0.1:0") -> MemServerProcess:
        handle = spawn_memserver(16 * MIB, bind)
        self.started.append(handle)
        return handle

    def stop_all(self) -> None:
        for handle in self.started:
            handle.stop(timeout_s=2.0)


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def transitions() -> list[tuple[Health, Health, str]]:
    return []


def make_store(address: str, transitions: list[tuple[Health, Health, str]]) -> RemoteStore:
    tier = RemoteStore(
        "remote",
        address,
        16 * MIB,
        timeout_s=TIMEOUT_S,
        probe_timeout_s=PROBE_S,
        retry_interval_s=RETRY_S,
        max_retry_interval_s=RETRY_S,
    )

    def listen(store: TierStore, old: Health, new: Health, reason: str) -> None:
        transitions.append((old, new, reason))

    tier.health_listener = listen
    return tier


def timed(fn: object, *args: object) -> float:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        fn(*args)  # type: ignore[operator]
    return time.monotonic() - started


def wait_past_backoff() -> None:
    time.sleep(RETRY_S * 1.5)


def recovered(tier: RemoteStore, within_s: float = 5.0) -> bool:
    """Whether the tier is ok again within ``within_s`` (pinging after each back-off)."""
    deadline = time.monotonic() + within_s
    while tier.refresh_health() is not Health.OK:
        if time.monotonic() > deadline:
            return False
        time.sleep(RETRY_S / 2)
    return True


def test_sigkill_then_restart_on_the_same_address(
    servers: Servers, transitions: list[tuple[Health, Health, str]]
) -> None:
    server = servers.start()
    tier = make_store(server.address, transitions)
    try:
        blocks = [kv_block(key) for key in range(1, 5)]
        for block in blocks:
            tier.put(block)
        old_epoch = tier.epoch
        server.kill()  # SIGKILL: no goodbye, blocks gone

        # the first get waits for its deadline, then the tier is down
        assert timed(tier.get, 1) < TIMEOUT_S + 0.4
        assert tier.health is Health.DOWN
        assert transitions[-1][:2] == (Health.OK, Health.DOWN)
        assert "did not answer" in tier.describe()
        # within the back-off every operation fails at once, nothing changes
        assert timed(tier.get, 2) < AT_ONCE_S
        assert timed(tier.put, kv_block(9)) < AT_ONCE_S
        assert tier.num_blocks == 4 and 9 not in tier
        assert tier.stats.errors >= 3
        # after the back-off a dead server costs one short ping, not a full timeout
        wait_past_backoff()
        assert timed(tier.get, 3) < PROBE_S + 0.2 < TIMEOUT_S
        assert tier.health is Health.DOWN

        restarted = servers.start(server.address)  # same port, new process, empty RAM
        assert restarted.address == server.address
        wait_past_backoff()
        assert recovered(tier)
        assert tier.epoch != old_epoch
        assert tier.restarts == 1 and tier.blocks_lost == 4
        assert tier.num_blocks == 0 and tier.used_bytes == 0
        assert transitions[-1][:2] == (Health.DOWN, Health.OK)
        assert "restarted" in transitions[-1][2] and "4 blocks lost" in transitions[-1][2]
        assert tier.get(1) is None  # the old blocks are gone, and the store knows it
        block = kv_block(20)
        tier.put(block)
        got = tier.get(20)
        assert got is not None and bytes(got.view()) == bytes(block.view())
        assert f"pid {restarted.pid}" in tier.describe()
    finally:
        tier.close()


def test_a_quick_restart_is_noticed_by_its_new_epoch(
    servers: Servers, transitions: list[tuple[Health, Health, str]]
) -> None:
    server = servers.start()
    tier = make_store(server.address, transitions)
    tier.timeout_s = 2.0  # enough for the socket to reconnect by itself
    try:
        for key in range(1, 4):
            tier.put(kv_block(key))
        server.kill()
        servers.start(server.address)
        # The request reaches the new server without the tier ever going down; the reply's
        # epoch tells it the blocks are gone.
        assert tier.get(1) is None
        assert tier.health is Health.OK and tier.restarts == 1
        assert tier.num_blocks == 0 and tier.used_bytes == 0
        tier.put(kv_block(5))
        assert tier.server_stats().blocks == 1
    finally:
        tier.close()


def test_stalled_server_recovers_with_its_blocks_and_no_orphans(
    servers: Servers, transitions: list[tuple[Health, Health, str]]
) -> None:
    server = servers.start()
    tier = make_store(server.address, transitions)
    try:
        tier.put(kv_block(1))
        tier.put(kv_block(2))
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RequestLost):
                tier.put(kv_block(3))  # reaches the server, which answers too late
            assert 3 not in tier and tier.health is Health.DOWN
            assert tier.delete(2)  # queued: the server is told when it answers again
            assert 2 not in tier
        finally:
            os.kill(server.pid, signal.SIGCONT)
        wait_past_backoff()
        assert recovered(tier)
        assert tier.restarts == 0  # same epoch: the blocks are still there
        got = tier.get(1)
        assert got is not None and bytes(got.view()) == bytes(kv_block(1).view())
        # the late put and the queued delete were settled before anything else
        assert not tier.server_contains(3)
        assert not tier.server_contains(2)
        info = tier.server_stats()
        assert (info.blocks, info.used) == (1, tier.used_bytes)
    finally:
        tier.close()


def test_a_clear_while_down_is_applied_when_the_server_answers_again(
    servers: Servers, transitions: list[tuple[Health, Health, str]]
) -> None:
    server = servers.start()
    tier = make_store(server.address, transitions)
    try:
        for key in range(1, 4):
            tier.put(kv_block(key))
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable):
                tier.get(1)
            assert tier.health is Health.DOWN
            assert tier.clear() == 3 * 256 * 1024  # succeeds locally at once
            assert tier.num_blocks == 0
        finally:
            os.kill(server.pid, signal.SIGCONT)
        wait_past_backoff()
        assert recovered(tier) and tier.restarts == 0
        info = tier.server_stats()
        assert (info.blocks, info.used) == (0, 0)
    finally:
        tier.close()


def test_store_starts_while_its_server_is_down(
    servers: Servers, transitions: list[tuple[Health, Health, str]]
) -> None:
    server = servers.start()
    address = server.address
    server.kill()
    tier = make_store(address, transitions)
    try:
        assert tier.health is Health.DOWN
        assert "not reached yet" in tier.describe()
        assert timed(tier.put, kv_block(1)) < AT_ONCE_S
        with pytest.raises(StoreUnavailable, match="no capacity"):
            RemoteStore("remote", address, timeout_s=TIMEOUT_S)
        servers.start(address)
        wait_past_backoff()
        tier.put(kv_block(1))
        assert tier.health is Health.OK and 1 in tier
    finally:
        tier.close()


# ---------------------------------------------------------------- the command


def test_memserver_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tiertop", "memserver", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "--capacity" in result.stdout and "--bind" in result.stdout


def test_memserver_refuses_a_bad_capacity() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tiertop", "memserver", "--capacity", "lots"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "not a size" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_memserver_command_prints_its_address_and_exits_cleanly(sig: signal.Signals) -> None:
    command = [sys.executable, "-m", "tiertop", "memserver", "--bind", "tcp://127.0.0.1:0"]
    process = subprocess.Popen(
        [*command, "--capacity", "8MiB"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on tcp://127.0.0.1:" in line and "8 MiB" in line
        address = line.split("listening on ")[1].split()[0]
        tier = RemoteStore("remote", address, timeout_s=2.0)
        try:
            assert tier.capacity_bytes == 8 * MIB
            tier.put(kv_block(1))
        finally:
            tier.close()
        process.send_signal(sig)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert "held 1 blocks" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_spawned_server_reports_startup_failure(servers: Servers) -> None:
    server = servers.start()
    with pytest.raises(RuntimeError, match="did not start"):
        spawn_memserver(MIB, server.address)  # the address is taken


def test_a_spawned_server_exits_with_the_process_that_started_it(tmp_path: object) -> None:
    script = (
        "from tiertop.tiers.stores.remote import spawn_memserver\n"
        "import os\n"
        "server = spawn_memserver('1MiB')\n"
        "print(server.pid, flush=True)\n"
        "os._exit(0)  # no stop(): the server must notice on its own\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    alive = _running(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (gone) parent's reaper counts as exited
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
