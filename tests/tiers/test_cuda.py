"""The GPU HBM arena store (and the torch tensor arena it is built on).

The ``cuda`` cases run on a machine with a CUDA GPU and skip elsewhere; the same checks run on the
torch CPU device everywhere torch is installed, so the tensor paths are exercised on every machine.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from tiertop.tiers.block import Block
from tiertop.tiers.errors import StoreFull, StoreUnavailable
from tiertop.tiers.health import Health
from tiertop.tiers.stores.cuda import CudaStore, CudaUnavailable, TorchArenaStore, cuda_status

torch = pytest.importorskip("torch", reason="torch is not installed")

KIB = 1024
MIB = 1024 * KIB
HAS_CUDA = bool(torch.cuda.is_available())
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="torch.cuda.is_available() is False")

DEVICES = [
    pytest.param("cpu", id="torch-cpu"),
    pytest.param("cuda", id="cuda", marks=[needs_cuda, pytest.mark.cuda]),
]


def make_store(device: str, capacity: int, **kwargs: Any) -> TorchArenaStore:
    if device == "cuda":
        return CudaStore("gpu", capacity, **kwargs)
    return TorchArenaStore("gpu", capacity, device="cpu", **kwargs)


def make_block(key: int, shape: tuple[int, ...] = (2, 2, 16, 4, 8)) -> Block:
    rng = np.random.default_rng(key)
    return Block.from_array(key, rng.standard_normal(shape).astype(np.float16))


# -------------------------------------------------------------------- without a GPU


def test_importing_the_module_does_not_import_torch() -> None:
    code = (
        "import sys; import tiertop.tiers.stores.cuda as c; "
        "assert 'torch' not in sys.modules, 'torch imported at module level'; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
def test_without_a_gpu_construction_says_there_is_no_cuda_device() -> None:
    with pytest.raises(CudaUnavailable, match="no CUDA device"):
        CudaStore("gpu", 1 * MIB)
    assert issubclass(CudaUnavailable, StoreUnavailable)
    usable, reason = cuda_status()
    assert not usable and "no CUDA device" in reason


@needs_cuda
def test_a_cpu_device_is_not_a_cuda_store() -> None:
    with pytest.raises(ValueError, match="not a CUDA device"):
        CudaStore("gpu", 1 * MIB, device="cpu")


# -------------------------------------------------------------------- on each device


@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_from_host_to_host(device: str) -> None:
    store = make_store(device, 1 * MIB)
    block = make_block(1)
    store.put(block)
    got = store.get(1)
    assert got is not None and isinstance(got.payload, np.ndarray)
    assert got.header == block.header and got.verify()
    np.testing.assert_array_equal(got.to_array(), block.to_array())
    assert store._arena.device.type == device
    # a get is a copy: replacing the block leaves what was returned intact
    store.put(Block.from_array(1, np.zeros(block.header.shape, dtype=np.float16)))
    np.testing.assert_array_equal(got.to_array(), block.to_array())


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_payloads_and_tensor_outputs(device: str) -> None:
    store = make_store(device, 1 * MIB)
    host = make_block(2)
    tensor = torch.from_numpy(host.to_array().copy()).to(device)
    store.put(Block(2, host.header, tensor))
    tensor.zero_()  # the store holds its own copy
    out = torch.empty(host.header.shape, dtype=torch.float16, device=device)
    got = store.get(2, out)
    assert got is not None and got.payload is out
    np.testing.assert_array_equal(out.cpu().numpy(), host.to_array())
    # into a host numpy buffer and a bytearray too
    out_np = np.empty(host.header.shape, dtype=np.float16)
    assert store.get(2, out_np) is not None
    np.testing.assert_array_equal(out_np, host.to_array())
    raw = bytearray(host.header.nbytes)
    assert store.get(2, raw) is not None and bytes(raw) == bytes(host.view())
    with pytest.raises(ValueError, match="holds"):
        store.get(2, torch.empty(3, dtype=torch.uint8, device=device))
    with pytest.raises(ValueError, match="contiguous"):
        store.get(2, torch.empty(host.header.nbytes * 2, dtype=torch.uint8, device=device)[::2])


@pytest.mark.parametrize("device", DEVICES)
def test_capacity_and_stats(device: str) -> None:
    block = make_block(3)
    nbytes = block.header.nbytes
    store = make_store(device, 2 * nbytes, arena_bytes=4 * nbytes)
    assert store.max_capacity() == 4 * nbytes
    store.put(block)
    store.put(make_block(4))
    with pytest.raises(StoreFull):
        store.put(make_block(5))
    store.set_capacity(4 * nbytes)
    store.put(make_block(5))
    assert store.get(3) is not None and store.get(99) is None
    assert store.delete(4)
    stats = store.stats
    assert (stats.puts, stats.gets, stats.hits, stats.misses, stats.deletes) == (3, 2, 1, 1, 1)
    assert stats.errors == 1 and stats.bytes_in == 3 * nbytes and stats.bytes_out == nbytes
    assert store.used_bytes == 2 * nbytes and store.num_blocks == 2


@pytest.mark.parametrize("device", DEVICES)
def test_compaction_moves_blocks_on_the_device(device: str) -> None:
    store = make_store(device, 10 * KIB, slot_bytes=1 * KIB)
    sizes = {1: 2 * KIB, 2: 1 * KIB, 3: 2 * KIB, 4: 1 * KIB, 5: 4 * KIB}
    blocks = {
        key: Block.from_array(key, np.random.default_rng(key).integers(0, 256, size, np.uint8))
        for key, size in sizes.items()
    }
    for block in blocks.values():
        store.put(block)
    store.delete(2)
    store.delete(4)
    assert store.fragmentation().external_ratio == 1.0  # two 1 KiB holes, largest class 4 KiB
    blocks[6] = Block.from_array(6, np.full(2 * KIB, 9, np.uint8))
    store.put(blocks[6])
    assert store.compactions == 1
    for key in (1, 3, 5, 6):
        got = store.get(key)
        assert got is not None and bytes(got.view()) == bytes(blocks[key].view())


@pytest.mark.parametrize("device", DEVICES)
def test_close_releases_the_arena(device: str) -> None:
    store = make_store(device, 1 * MIB)
    store.put(make_block(1))
    store.close()
    assert store.health is Health.DOWN and store._arena is None
    with pytest.raises(StoreUnavailable):
        store.get(1)


# -------------------------------------------------------------------- GPU only


@needs_cuda
@pytest.mark.cuda
def test_cuda_store_allocates_its_arena_in_gpu_memory_and_names_the_gpu() -> None:
    before = torch.cuda.memory_allocated()
    store = CudaStore("gpu", 64 * MIB)
    assert torch.cuda.memory_allocated() - before >= 64 * MIB
    assert store.kind == "cuda"
    name = torch.cuda.get_device_name(store.device)
    text = store.describe()
    assert text.startswith(f"gpu: {name} (cuda:")
    assert "64 MiB arena, 256 B slots" in text
    store.close()


@needs_cuda
@pytest.mark.cuda
def test_cuda_store_rejects_a_device_that_does_not_exist() -> None:
    with pytest.raises(CudaUnavailable, match="no CUDA device"):
        CudaStore("gpu", 1 * MIB, device=torch.cuda.device_count())
