"""Tier specifications as users write them, and opening the real stores they describe.

On the command line a tier is ``KIND:CAPACITY[,key=value...]``, e.g. ``dram:64MiB``,
``remote:128MiB,codec=zstd``, ``disk:1GiB,dir=/var/tmp/kv,fsync=batch``, ``numa:256MiB,node=1``.
Scenario files give the same keys as a TOML table. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hierarchy import DEFAULT_HIGH, DEFAULT_LOW, TierConfig, validate_watermarks
from .store import TierStore
from .units import parse_size

KINDS = ("dram", "numa", "remote", "disk", "cuda", "accounting")
COMMON_KEYS = {"kind", "name", "capacity", "high", "low", "eviction"}
KIND_KEYS: dict[str, set[str]] = {
    "dram": {"slot"},
    "numa": {"node", "slot", "latency_us", "bandwidth_gbps"},
    "remote": {"address", "codec", "timeout_s", "server_capacity"},
    "disk": {"dir", "fsync"},
    "cuda": {"device", "slot"},
    "accounting": set(),
}


@dataclass
class TierSpec:
    kind: str
    capacity_bytes: int
    name: str = ""
    high: float = DEFAULT_HIGH
    low: float = DEFAULT_LOW
    eviction: str = "lru"
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown tier kind {self.kind!r}; known: {', '.join(KINDS)}")
        self.name = self.name or self.kind
        validate_watermarks(self.name, self.high, self.low)
        unknown = set(self.options) - KIND_KEYS[self.kind]
        if unknown:
            allowed = sorted(COMMON_KEYS | KIND_KEYS[self.kind])
            raise ValueError(
                f"tier {self.name}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed for {self.kind}: {', '.join(allowed)}"
            )

    @classmethod
    def parse(cls, text: str) -> TierSpec:
        """Parse ``KIND:CAPACITY[,key=value...]``."""
        head, _, rest = text.partition(",")
        kind, sep, capacity = head.partition(":")
        if not sep or not capacity:
            raise ValueError(f"tier {text!r}: expected KIND:CAPACITY, e.g. dram:64MiB")
        values: dict[str, Any] = {"kind": kind.strip(), "capacity": capacity.strip()}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"tier {text!r}: option {item!r} is not key=value")
            values[key.strip()] = value.strip()
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TierSpec:
        """Build from a TOML table or parsed command-line options."""
        data = dict(values)
        try:
            kind = str(data.pop("kind"))
            capacity = parse_size(data.pop("capacity"))
        except KeyError as exc:
            raise ValueError(f"tier {dict(values)}: missing key {exc.args[0]!r}") from None
        name = str(data.pop("name", kind))
        try:
            high = float(data.pop("high", DEFAULT_HIGH))
            low = float(data.pop("low", DEFAULT_LOW))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tier {name}: watermarks must be numbers ({exc})") from None
        eviction = str(data.pop("eviction", "lru"))
        return cls(kind, capacity, name, high, low, eviction, {k: str(v) for k, v in data.items()})

    def describe(self) -> str:
        opts = "".join(f",{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.kind}:{self.capacity_bytes}{opts}"


class OpenTiers:
    """The stores behind a list of specs, and everything started for them (memory servers,
    temporary directories); ``close()`` releases all of it."""

    def __init__(self, specs: list[TierSpec], workdir: str | Path | None = None) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}; give one a name=...")
        self.specs = specs
        self.configs: list[TierConfig] = []
        self._stores: list[TierStore] = []
        self._servers: list[Any] = []
        self._tempdirs: list[Path] = []
        self._workdir = Path(workdir) if workdir is not None else None
        try:
            for spec in specs:
                store = self._open(spec)
                if store is not None:
                    self._stores.append(store)
                self.configs.append(TierConfig(
                    spec.name, spec.capacity_bytes, spec.high, spec.low, spec.eviction,
                    store=store, kind=None if store is not None else "accounting",
                ))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> OpenTiers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for store in self._stores:
            with contextlib.suppress(Exception):  # closing must release everything else
                store.close()
        self._stores.clear()
        for server in self._servers:
            server.stop()
        self._servers.clear()
        for path in self._tempdirs:
            shutil.rmtree(path, ignore_errors=True)
        self._tempdirs.clear()

    def _open(self, spec: TierSpec) -> TierStore | None:
        opts = spec.options
        if spec.kind == "accounting":
            return None
        if spec.kind == "dram":
            from .stores.dram import DramStore

            return DramStore(spec.name, spec.capacity_bytes, _int_opt(opts, "slot"))
        if spec.kind == "numa":
            from .stores.numa import NumaStore

            kwargs: dict[str, Any] = {}
            if "node" in opts:
                kwargs["node"] = int(opts["node"])
            if "slot" in opts:
                kwargs["slot_bytes"] = parse_size(opts["slot"])
            if "latency_us" in opts:
                kwargs["emulated_latency_s"] = float(opts["latency_us"]) * 1e-6
            if "bandwidth_gbps" in opts:
                kwargs["emulated_bandwidth_bytes_per_s"] = float(opts["bandwidth_gbps"]) * 1e9
            return NumaStore(spec.name, spec.capacity_bytes, **kwargs)
        if spec.kind == "remote":
            from .stores.remote import RemoteStore, spawn_memserver

            address = opts.get("address")
            if address is None:
                server_capacity = parse_size(opts.get("server_capacity", spec.capacity_bytes * 2))
                server = spawn_memserver(capacity=server_capacity)
                self._servers.append(server)
                address = server.address
            return RemoteStore(
                spec.name, address, spec.capacity_bytes, codec=opts.get("codec", "raw"),
                timeout_s=float(opts.get("timeout_s", 0.5)),
            )
        if spec.kind == "disk":
            from .stores.disk import DiskStore

            directory = opts.get("dir")
            if directory is None:
                base = str(self._workdir) if self._workdir is not None else None
                path = Path(tempfile.mkdtemp(prefix=f"tiertop-{spec.name}-", dir=base))
                self._tempdirs.append(path)
                directory = str(path)
            fsync = opts.get("fsync", "never")
            return DiskStore(spec.name, spec.capacity_bytes, directory, fsync=fsync)  # type: ignore[arg-type]
        if spec.kind == "cuda":
            from .stores.cuda import CudaStore

            return CudaStore(spec.name, spec.capacity_bytes, device=opts.get("device", "cuda"))
        raise AssertionError(spec.kind)


def _int_opt(opts: Mapping[str, str], key: str) -> int | None:
    return parse_size(opts[key]) if key in opts else None
