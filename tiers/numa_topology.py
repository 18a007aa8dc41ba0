"""NUMA nodes of this machine, memory bound to one of them, and proof of where pages landed.

Discovery reads sysfs (``/sys/devices/system/node``: each node's CPUs, memory and distances) and
loads libnuma (``libnuma.so.1``) through ctypes. Binding allocates with ``numa_alloc_onnode``;
:func:`verify_placement` then asks the kernel where the (touched) pages really are, with
``move_pages(2)`` in query mode (``nodes=NULL``) or, failing that, ``get_mempolicy(2)`` with
``MPOL_F_NODE | MPOL_F_ADDR`` page by page. Nothing here raises on a machine without NUMA: the
topology says what is missing, and callers fall back (see ``stores.numa``).
"""

from __future__ import annotations

import ctypes
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SYSFS_NODE_ROOT = Path("/sys/devices/system/node")
LIBNUMA_NAME = "libnuma.so.1"
MPOL_F_NODE = 1 << 0
MPOL_F_ADDR = 1 << 1
DEFAULT_VERIFY_PAGES = 65536
"""Pages checked by default: every page of arenas up to 256 MiB (4 KiB pages), evenly spread
samples beyond."""


class NumaError(RuntimeError):
    """A NUMA operation failed (libnuma missing, allocation refused, placement query failed)."""


# -------------------------------------------------------------------- sysfs


def parse_cpulist(text: str) -> tuple[int, ...]:
    """'0-3,8,10-11' -> (0, 1, 2, 3, 8, 10, 11); '' -> ()."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.extend(range(int(low), int(high) + 1))
        else:
            cpus.append(int(part))
    return tuple(cpus)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _meminfo(text: str | None) -> dict[str, int]:
    """'Node 0 MemTotal:  5466324 kB' lines -> {'MemTotal': bytes}."""
    values: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        # ["Node", "0", "MemTotal:", "5466324", "kB"]
        if len(parts) >= 4 and parts[2].endswith(":"):
            try:
                number = int(parts[3])
            except ValueError:
                continue
            scale = 1024 if len(parts) > 4 and parts[4] == "kB" else 1
            values[parts[2][:-1]] = number * scale
    return values


@dataclass(frozen=True, slots=True)
class NumaNode:
    """One NUMA node as sysfs describes it."""

    id: int
    cpus: tuple[int, ...]
    mem_total_bytes: int
    mem_free_bytes: int
    #: SLIT distances to each node, by node id (10 means local).
    distances: dict[int, int] = field(default_factory=dict)

    @property
    def has_memory(self) -> bool:
        return self.mem_total_bytes > 0


def read_sysfs_nodes(root: Path | str = SYSFS_NODE_ROOT) -> tuple[NumaNode, ...]:
    """The nodes listed under ``root`` (empty when there is no such directory)."""
    root = Path(root)
    try:
        entries = sorted(
            int(entry.name[4:])
            for entry in root.iterdir()
            if entry.name.startswith("node") and entry.name[4:].isdigit()
        )
    except OSError:
        return ()
    nodes: list[NumaNode] = []
    for node_id in entries:
        directory = root / f"node{node_id}"
        meminfo = _meminfo(_read(directory / "meminfo"))
        distance_values = [int(v) for v in (_read(directory / "distance") or "").split()]
        distances = dict(zip(entries, distance_values, strict=False))
        nodes.append(
            NumaNode(
                id=node_id,
                cpus=parse_cpulist(_read(directory / "cpulist") or ""),
                mem_total_bytes=meminfo.get("MemTotal", 0),
                mem_free_bytes=meminfo.get("MemFree", 0),
                distances=distances,
            )
        )
    return tuple(nodes)


# -------------------------------------------------------------------- libnuma


class LibNuma:
    """The few libnuma calls tiertop needs, through ctypes."""

    def __init__(self, name: str = LIBNUMA_NAME) -> None:
        lib = ctypes.CDLL(name, use_errno=True)
        self.name = name
        self._lib = lib
        c = ctypes
        lib.numa_available.restype = c.c_int
        lib.numa_available.argtypes = []
        lib.numa_max_node.restype = c.c_int
        lib.numa_max_node.argtypes = []
        lib.numa_node_size64.restype = c.c_longlong
        lib.numa_node_size64.argtypes = [c.c_int, c.POINTER(c.c_longlong)]
        lib.numa_alloc_onnode.restype = c.c_void_p
        lib.numa_alloc_onnode.argtypes = [c.c_size_t, c.c_int]
        lib.numa_free.restype = None
        lib.numa_free.argtypes = [c.c_void_p, c.c_size_t]
        lib.numa_pagesize.restype = c.c_int
        lib.numa_pagesize.argtypes = []
        # libnuma exports both its own name and the bare syscall wrappers
        move_pages = getattr(lib, "numa_move_pages", None) or getattr(lib, "move_pages", None)
        if move_pages is not None:
            move_pages.restype = c.c_long
            move_pages.argtypes = [
                c.c_int,
                c.c_ulong,
                c.c_void_p,  # void **pages
                c.c_void_p,  # const int *nodes (NULL: query)
                c.c_void_p,  # int *status
                c.c_int,
            ]
        self._move_pages = move_pages
        get_mempolicy = getattr(lib, "get_mempolicy", None)
        if get_mempolicy is not None:
            get_mempolicy.restype = c.c_long
            get_mempolicy.argtypes = [
                c.POINTER(c.c_int),
                c.c_void_p,
                c.c_ulong,
                c.c_void_p,
                c.c_ulong,
            ]
        self._get_mempolicy = get_mempolicy

    def available(self) -> bool:
        """libnuma's own check (-1 when the kernel has no NUMA or its syscalls are blocked)."""
        return bool(self._lib.numa_available() >= 0)

    def max_node(self) -> int:
        return int(self._lib.numa_max_node())

    def page_size(self) -> int:
        return int(self._lib.numa_pagesize())

    def node_size(self, node: int) -> tuple[int, int]:
        """(total, free) bytes of a node; (-1, -1) when libnuma cannot tell."""
        free = ctypes.c_longlong(-1)
        total = int(self._lib.numa_node_size64(node, ctypes.byref(free)))
        return total, int(free.value)

    def alloc_onnode(self, nbytes: int, node: int) -> int:
        """Address of ``nbytes`` bound to ``node`` (pages are placed when first touched)."""
        address = self._lib.numa_alloc_onnode(nbytes, node)
        if not address:
            errno = ctypes.get_errno()
            raise NumaError(
                f"numa_alloc_onnode({nbytes}, {node}) failed: {os.strerror(errno) if errno else ''}"
            )
        return int(address)

    def free(self, address: int, nbytes: int) -> None:
        self._lib.numa_free(address, nbytes)

    def page_nodes(
        self, page_addresses: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.int32], str]:
        """The node of each page (negative errno for pages not present), and the method used."""
        pages = np.ascontiguousarray(page_addresses, dtype=np.uint64)
        status = np.full(pages.size, -1, dtype=np.int32)
        if pages.size == 0:
            return status, "none"
        problem = "move_pages not exported by libnuma"
        if self._move_pages is not None:
            ctypes.set_errno(0)
            result = self._move_pages(0, pages.size, pages.ctypes.data, None, status.ctypes.data, 0)
            if result == 0:
                return status, "move_pages"
            problem = f"move_pages failed: {os.strerror(ctypes.get_errno())}"
        if self._get_mempolicy is None:
            raise NumaError(f"{problem}; get_mempolicy not exported either")
        node = ctypes.c_int(-1)
        for i, address in enumerate(pages.tolist()):
            ctypes.set_errno(0)
            if self._get_mempolicy(ctypes.byref(node), None, 0, address, MPOL_F_NODE | MPOL_F_ADDR):
                raise NumaError(
                    f"{problem}; get_mempolicy failed: {os.strerror(ctypes.get_errno())}"
                )
            status[i] = node.value
        return status, "get_mempolicy"


@cache
def _load_libnuma(name: str) -> tuple[LibNuma | None, str]:
    try:
        lib = LibNuma(name)
    except OSError as exc:
        return None, f"{name} not loadable ({exc})"
    except AttributeError as exc:
        return None, f"{name} lacks a needed symbol ({exc})"
    if not lib.available():
        return None, "numa_available() returned -1 (no NUMA support in the kernel, or blocked)"
    return lib, ""


def load_libnuma(name: str = LIBNUMA_NAME) -> tuple[LibNuma | None, str]:
    """libnuma when it loads and reports NUMA available, else None and why (cached)."""
    return _load_libnuma(name)


# -------------------------------------------------------------------- topology


@dataclass(frozen=True, slots=True)
class NumaTopology:
    """The machine's NUMA nodes and whether memory can be bound to them."""

    nodes: tuple[NumaNode, ...]
    libnuma: LibNuma | None
    #: Why libnuma cannot be used ('' when it can).
    libnuma_reason: str = ""

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(node.id for node in self.nodes)

    @property
    def memory_nodes(self) -> tuple[NumaNode, ...]:
        """Nodes with memory (a CPU-only node cannot hold an arena)."""
        return tuple(node for node in self.nodes if node.has_memory)

    @property
    def can_bind(self) -> bool:
        return self.libnuma is not None

    def node(self, node_id: int) -> NumaNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no NUMA node {node_id} (nodes: {list(self.node_ids)})")

    def local_node(self, cpus: set[int] | None = None) -> int | None:
        """The node holding most of ``cpus`` (default: the CPUs this process may run on)."""
        if cpus is None:
            try:
                cpus = set(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = set()
        best: tuple[int, int] | None = None
        for node in self.nodes:
            mine = len(cpus.intersection(node.cpus))
            if mine and (best is None or mine > best[0]):
                best = (mine, node.id)
        return None if best is None else best[1]

    def remote_node(self, local: int | None = None) -> int | None:
        """The memory node farthest from ``local`` (default: this process's node), preferring
        more free memory, then the lowest id; None when no memory node other than local exists."""
        if local is None:
            local = self.local_node()
        local_distances = {} if local is None else self.node(local).distances
        candidates = [node for node in self.memory_nodes if node.id != local]
        if not candidates:
            return None
        best = max(
            candidates,
            key=lambda n: (local_distances.get(n.id, 0), n.mem_free_bytes, -n.id),
        )
        return best.id

    def summary(self) -> str:
        """'2 NUMA nodes (0: 64.0 GiB, 1: 64.0 GiB), libnuma ok'."""
        parts = ", ".join(f"{n.id}: {n.mem_total_bytes / 2**30:.1f} GiB" for n in self.nodes)
        binding = "libnuma ok" if self.libnuma else f"no binding: {self.libnuma_reason}"
        plural = "" if len(self.nodes) == 1 else "s"
        return f"{len(self.nodes)} NUMA node{plural} ({parts}), {binding}"


def discover_topology(
    sysfs_root: Path | str = SYSFS_NODE_ROOT, libnuma_name: str | None = LIBNUMA_NAME
) -> NumaTopology:
    """Read the nodes from sysfs and load libnuma (``libnuma_name=None``: do not try)."""
    nodes = read_sysfs_nodes(sysfs_root)
    if libnuma_name is None:
        return NumaTopology(nodes, None, "libnuma not tried")
    lib, reason = load_libnuma(libnuma_name)
    if lib is not None and not nodes:
        # no sysfs (a container without /sys): ask libnuma
        found = []
        for node_id in range(lib.max_node() + 1):
            total, free = lib.node_size(node_id)
            if total > 0:
                found.append(NumaNode(node_id, (), total, max(free, 0), {}))
        nodes = tuple(found)
    return NumaTopology(nodes, lib, reason)


# -------------------------------------------------------------------- bound memory and proof


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the pages of a buffer are, as the kernel reports it."""

    node: int  # where they should be
    pages_total: int
    pages_checked: int
    #: Pages found on each node; a negative key is an errno (e.g. -2, ENOENT: not yet touched).
    by_node: dict[int, int]
    method: str  # "move_pages" or "get_mempolicy"

    @property
    def pages_on_node(self) -> int:
        return self.by_node.get(self.node, 0)

    @property
    def ok(self) -> bool:
        """Every checked page is on the intended node."""
        return self.pages_checked > 0 and self.pages_on_node == self.pages_checked

    def summary(self) -> str:
        sampled = "" if self.pages_checked == self.pages_total else f" of {self.pages_total}"
        where = ", ".join(
            (f"node {k}: {v}" if k >= 0 else f"{os.strerror(-k)}: {v}")
            for k, v in sorted(self.by_node.items())
        )
        return (
            f"{self.pages_on_node}/{self.pages_checked}{sampled} pages on node {self.node} "
            f"({self.method}; {where})"
        )


def page_addresses(
    address: int, nbytes: int, page_size: int, max_pages: int
) -> tuple[npt.NDArray[np.uint64], int]:
    """Page-aligned addresses covering ``[address, address + nbytes)``: all of them, or
    ``max_pages`` spread evenly (first and last included); and the total page count."""
    first = address // page_size
    last = (address + max(nbytes, 1) - 1) // page_size
    total = last - first + 1
    if total <= max_pages:
        index = np.arange(first, last + 1, dtype=np.uint64)
    else:
        index = np.unique(np.linspace(first, last, max_pages).astype(np.uint64))
    return index * np.uint64(page_size), total


def verify_placement(
    buffer: npt.NDArray[Any] | int,
    node: int,
    *,
    nbytes: int | None = None,
    lib: LibNuma | None = None,
    max_pages: int = DEFAULT_VERIFY_PAGES,
) -> Placement:
    """Ask the kernel which node each page of ``buffer`` (an array, or an address with
    ``nbytes``) is on. Pages must have been touched to be placed at all."""
    if lib is None:
        lib, reason = load_libnuma()
        if lib is None:
            raise NumaError(f"cannot verify NUMA placement: {reason}")
    if isinstance(buffer, np.ndarray):
        address = int(buffer.ctypes.data)
        size = int(buffer.nbytes) if nbytes is None else nbytes
    else:
        if nbytes is None:
            raise ValueError("give nbytes with a raw address")
        address, size = int(buffer), nbytes
    pages, total = page_addresses(address, size, lib.page_size(), max_pages)
    status, method = lib.page_nodes(pages)
    values, counts = np.unique(status, return_counts=True)
    by_node = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    return Placement(node, total, int(pages.size), by_node, method)


class NumaBuffer:
    """``nbytes`` of memory bound to ``node`` with libnuma, seen as a numpy uint8 array.

    The memory is returned to libnuma when the last array viewing it is gone (a finalizer on the
    ctypes object every view keeps alive), so no view can outlive it.
    """

    def __init__(self, nbytes: int, node: int, *, lib: LibNuma | None = None) -> None:
        if nbytes <= 0:
            raise ValueError(f"a NUMA buffer needs > 0 bytes, got {nbytes}")
        if lib is None:
            lib, reason = load_libnuma()
            if lib is None:
                raise NumaError(f"cannot bind memory to NUMA node {node}: {reason}")
        self.lib = lib
        self.node = node
        self.nbytes = nbytes
        self.address = lib.alloc_onnode(nbytes, node)
        raw = (ctypes.c_uint8 * nbytes).from_address(self.address)
        free: Callable[[int, int], None] = lib.free
        self._finalizer = weakref.finalize(raw, free, self.address, nbytes)
        self.array: npt.NDArray[np.uint8] = np.frombuffer(memoryview(raw), dtype=np.uint8)

    def touch(self) -> None:
        """Write every page, so the kernel places them all (on the bound node)."""
        self.array.fill(0)

    def verify(self, *, max_pages: int = DEFAULT_VERIFY_PAGES) -> Placement:
        return verify_placement(self.array, self.node, lib=self.lib, max_pages=max_pages)

    @property
    def freed(self) -> bool:
        return not self._finalizer.alive
