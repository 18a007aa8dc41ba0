"""GPU HBM tier: blocks in one preallocated CUDA byte tensor, placed by the arena's span allocator.

Torch is imported when a store is built, not when this module is imported, so tiers load on
machines without torch or without a GPU; there, building a :class:`CudaStore` raises
:class:`CudaUnavailable` saying why ("no CUDA device: ...").

Puts take host bytes (numpy arrays, bytes, memoryviews) or torch tensors (CUDA or CPU); gets copy
back to host (a new numpy array, or the caller's host buffer) or into the caller's tensor (a CUDA
tensor stays on the device: a device-to-device copy on the current stream).
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Any

import numpy as np

from ..block import Block, BlockHash
from ..errors import StoreUnavailable
from ..store import Buffer
from ..units import format_bytes
from .arena import DEFAULT_SLOT_BYTES, ArenaStore, round_up
from .dram import as_byte_array, writable_bytes


class CudaUnavailable(StoreUnavailable):
    """No CUDA device to build a GPU tier on (torch missing, no GPU, or no such device)."""


def _import_torch(purpose: str) -> ModuleType:
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise CudaUnavailable(f"{purpose}: torch is not installed ({exc})") from exc


def cuda_status() -> tuple[bool, str]:
    """Whether a CUDA device can be used, and why not (imports torch when it is installed)."""
    try:
        torch = _import_torch("no CUDA device")
    except CudaUnavailable as exc:
        return False, str(exc)
    if not torch.cuda.is_available():
        return False, _no_cuda_reason(torch)
    return True, f"{torch.cuda.device_count()} CUDA device(s)"


def _no_cuda_reason(torch: ModuleType) -> str:
    built = torch.version.cuda
    build = f"built with CUDA {built}" if built else "a CPU-only build"
    return (
        f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, {build})"
    )


class TorchArenaStore(ArenaStore[Any]):
    """Blocks in one preallocated ``torch.uint8`` tensor on any torch device.

    :class:`CudaStore` is this on a CUDA device, the form tiers use; on "cpu" it is a host arena
    through torch (handy to exercise the tensor paths without a GPU).
    """

    kind = "torch"

    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        slot_bytes: int | None = None,
        *,
        device: Any = "cpu",
        arena_bytes: int | None = None,
    ) -> None:
        torch = _import_torch(f"tier {name!r} needs torch")
        self._torch = torch
        slot = DEFAULT_SLOT_BYTES if slot_bytes is None else int(slot_bytes)
        if slot <= 0:
            raise ValueError(f"slot size of tier {name!r} must be > 0 B, got {slot}")
        size = round_up(max(int(capacity_bytes), int(arena_bytes or 0)), slot)
        super().__init__(name, capacity_bytes, arena_bytes=size, slot_bytes=slot)
        self.device = torch.device(device)
        self._arena: Any = torch.empty(size, dtype=torch.uint8, device=self.device)

    # ---------------------------------------------------------------- tensors

    def _source(self, payload: Any) -> Any:
        """The payload's bytes as a flat uint8 tensor (a view where possible)."""
        torch = self._torch
        if isinstance(payload, torch.Tensor):
            tensor = payload.detach()
            if not tensor.is_contiguous():
                tensor = tensor.contiguous()
            return tensor.reshape(-1).view(torch.uint8)
        array = as_byte_array(payload)
        if array.flags.writeable:
            return torch.from_numpy(array)
        with warnings.catch_warnings():  # only read from; torch warns about read-only arrays
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)

    def _destination(self, out: Any, nbytes: int) -> Any:
        """A flat uint8 tensor over the caller's output buffer (never a copy of it)."""
        torch = self._torch
        if isinstance(out, torch.Tensor):
            if not out.is_contiguous():
                raise ValueError("output tensor must be contiguous")
            dst = out.view(-1).view(torch.uint8)
        else:
            dst = torch.from_numpy(writable_bytes(out))
        if dst.numel() != nbytes:
            raise ValueError(f"output buffer holds {dst.numel()} B, block has {nbytes} B")
        return dst

    # ---------------------------------------------------------------- TierStore

    def _put(self, block: Block) -> None:
        if self._arena is None:
            raise StoreUnavailable(f"tier {self.name!r} is closed")
        nbytes = block.header.nbytes
        src = self._source(block.payload)
        if src.numel() != nbytes:
            raise ValueError(
                f"block {block.key:#018x}: payload has {src.numel()} B, header says {nbytes} B"
            )
        offset, dst = self._claim(nbytes)
        dst.copy_(src)
        self._index[block.key] = (offset, nbytes, block.header, dst)

    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        entry = self._index.get(key)
        if entry is None:
            self._check_open()
            return None
        stored = entry[3]
        if out is None:
            host = np.empty(entry[1], dtype=np.uint8)
            self._torch.from_numpy(host).copy_(stored)  # synchronous: host memory is pageable
            return Block(key, entry[2], host)
        self._destination(out, entry[1]).copy_(stored)
        return Block(key, entry[2], out)

    def _view(self, offset: int, nbytes: int) -> Any:
        return self._arena[offset : offset + nbytes]

    def _move(self, src: int, dst: int, nbytes: int) -> None:
        arena = self._arena
        source = arena[src : src + nbytes]
        if dst + nbytes > src:  # torch refuses overlapping copies: go through a temporary
            source = source.clone()
        arena[dst : dst + nbytes].copy_(source)

    def _release(self) -> None:
        self._arena = None

    def medium(self) -> str:
        return f"torch {self.device} tensor"

    def describe(self) -> str:
        return f"{self.name}: {self.medium()}, {self.layout()}"


class CudaStore(TorchArenaStore):
    """Blocks in GPU memory: one ``torch.empty(arena, dtype=uint8, device='cuda')`` arena.

    Args:
        name: the tier's name.
        capacity_bytes: payload bytes the tier may hold (raisable up to the arena size).
        slot_bytes: allocation granule (default 256 B, CUDA's own allocation alignment).
        device: a CUDA device ("cuda", "cuda:1", 1 or a ``torch.device``; default the current).
        arena_bytes: arena size (default ``capacity_bytes``), rounded up to whole slots.

    Raises:
        CudaUnavailable: torch is missing, there is no CUDA device, or not the one asked for.
    """

    kind = "cuda"

    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        slot_bytes: int | None = None,
        *,
        device: Any = None,
        arena_bytes: int | None = None,
    ) -> None:
        torch = _import_torch(f"no CUDA device for tier {name!r}")
        if not torch.cuda.is_available():
            raise CudaUnavailable(f"tier {name!r}: {_no_cuda_reason(torch)}")
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif isinstance(device, int):
            device = torch.device("cuda", device)
        else:
            device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"tier {name!r}: {device} is not a CUDA device")
        index = torch.cuda.current_device() if device.index is None else device.index
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise CudaUnavailable(f"tier {name!r}: no CUDA device {index} ({count} present)")
        device = torch.device("cuda", index)
        properties = torch.cuda.get_device_properties(device)
        self.device_name: str = properties.name
        self.device_memory_bytes: int = int(properties.total_memory)
        super().__init__(name, capacity_bytes, slot_bytes, device=device, arena_bytes=arena_bytes)

    def medium(self) -> str:
        return f"{self.device_name} ({self.device}, {format_bytes(self.device_memory_bytes)} HBM)"
