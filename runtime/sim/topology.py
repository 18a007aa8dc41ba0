"""What the simulated cluster is made of: racks, GPUs, nodes, tiers, policies, router, workload.

The model
=========

- ``racks`` racks of ``gpus_per_rack`` GPUs; ``gpus_per_node`` GPUs share a node (host).
- Per GPU, an **HBM** budget for KV (``hbm.bytes_per_gpu``): ``hbm.cache_fraction`` of it is the
  ``hbm`` cache tier, the rest holds the KV of the requests the GPU is running (admission waits
  while it is full). With ``hbm.cache_blocks`` the cache tier is exactly that many blocks.
- Per node, host **DRAM** (``dram.bytes_per_node``) and a local **SSD** (``ssd.bytes_per_node``),
  split evenly among the node's GPUs: each GPU offloads into its own share, as vLLM/LMCache CPU
  offload does per worker.
- Per rack, a shared memory **pool** (``pool.bytes_per_rack``; CXL- or RDMA-attached), shared by
  the rack's GPUs.
- Optionally one cross-rack **remote** tier (``remote.bytes``) for the whole cluster.
- A size of 0 leaves that tier out.

Tier kinds in telemetry and commands are ``hbm``, ``dram``, ``pool``, ``ssd`` and ``remote``.

Presets
=======

==============  ======================  ============  =========================================
preset          GPUs                    block         tiers (per GPU unless said)
==============  ======================  ============  =========================================
single-node     8 (1 node)              16 tokens     hbm 24 GiB cache (of 48), dram 256 GiB,
                                                      ssd 1 TiB
rack            64 (8 nodes, 1 rack)    64 tokens     hbm 24 GiB, dram 64 GiB, pool 8 TiB/rack
cluster-10k     10,240 (160 racks x 64) 512 tokens    hbm 24 GiB, dram 64 GiB, pool 2 TiB/rack
pd-10k          as cluster-10k, half the GPUs prefill, half decode (push transfer)
==============  ======================  ============  =========================================

Blocks are coarser as the cluster grows (16 tokens as vLLM, 512 as Mooncake's traces): every
resident block costs the simulator ~200 B of Python state, and 512-token blocks keep the
cluster presets' full capacity (about 8 M blocks) within about 2 GB while the sizes stay those
of real machines. ``cluster.block_tokens`` changes it.

Config files (TOML)
===================

``preset = "NAME"`` picks the base (default ``single-node``); then any of these sections and keys
override it. An unknown section or key is an error. Sizes take units (``"48GiB"``) or bytes.

.. code-block:: toml

    preset = "rack"
    [cluster]   # racks, gpus_per_rack, gpus_per_node, block_tokens
    [hbm]       # bytes_per_gpu, cache_fraction, cache_blocks, eviction, high, low
    [dram]      # bytes_per_node, eviction, high, low
    [ssd]       # bytes_per_node, eviction, high, low
    [pool]      # bytes_per_rack, eviction, high, low
    [remote]    # bytes, eviction, high, low
    [policy]    # placement, promotion (of each GPU's hbm/dram/ssd hierarchy)
    [pd]        # enabled, prefill_share, transfer ("push" or "pull")
    [router]    # candidates, rack_candidates, affinity, memory_penalty_s, max_queue
    [workload]  # rate, new_conv_prob, prompt_mean, prompt_max, output_mean, output_max,
                # live_conversations, system_prompts, system_prompt_len, system_prompt_zipf,
                # max_context
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tiertop.tiers.hierarchy import validate_watermarks
from tiertop.tiers.policies.base import known_eviction_policies
from tiertop.tiers.units import parse_size

from ..workload import LengthSpec, WorkloadParams
from .profile import SimConfigError

__all__ = [
    "GPU_KINDS",
    "KINDS",
    "PRESETS",
    "PdConfig",
    "RouterConfig",
    "TierKindConfig",
    "Topology",
    "WorkloadConfig",
    "load_topology",
    "preset",
    "topology_from_dict",
]

#: Tier kinds, fastest first: the order of lookups and of telemetry.
KINDS: tuple[str, ...] = ("hbm", "dram", "pool", "ssd", "remote")
#: Kinds each GPU has a share of (its own hierarchy, in this order).
GPU_KINDS: tuple[str, ...] = ("hbm", "dram", "ssd")

GiB = 1 << 30
TiB = 1 << 40


@dataclass(frozen=True, slots=True)
class TierKindConfig:
    """One tier kind: its size (per GPU, node, rack or cluster: see the topology) and policy."""

    bytes: int = 0
    eviction: str = "lru"
    high: float = 0.95
    low: float = 0.85


@dataclass(frozen=True, slots=True)
class PdConfig:
    """Prefill/decode separation.

    Attributes:
        enabled: split GPUs into a prefill and a decode pool.
        prefill_share: fraction of each rack's GPUs that prefill (at least one of each).
        transfer: ``push`` (the prefill GPU sends KV as it is computed: the first chunk's
            transfer overlaps the rest of the prefill; the decode GPU reserves memory first) or
            ``pull`` (the decode GPU fetches the whole KV once the prefill is done and it has
            room).
    """

    enabled: bool = False
    prefill_share: float = 0.5
    transfer: str = "push"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Request routing (see ``router.py``).

    Attributes:
        candidates: GPUs scored per request, the session's last GPU included.
        rack_candidates: of those, how many are drawn from the session GPU's rack (they share
            its pool); the rest from the whole cluster.
        affinity: remember each session's GPU and score it first.
        memory_penalty_s: added to a GPU's estimate when its running-request memory is full.
        max_queue: round-robin skips GPUs with this many requests waiting.
    """

    candidates: int = 4
    rack_candidates: int = 1
    affinity: bool = True
    memory_penalty_s: float = 1.0
    max_queue: int = 64


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The generated workload (``WorkloadGenerator``) a preset starts with."""

    rate: float = 8.0
    new_conv_prob: float = 0.3
    prompt_mean: int = 256
    prompt_max: int = 2048
    output_mean: int = 128
    output_max: int = 1024
    live_conversations: int = 256
    system_prompts: int = 8
    system_prompt_len: int = 1024
    system_prompt_zipf: float = 1.0
    max_context: int | None = 16384

    def params(self, seed: int) -> WorkloadParams:
        params = WorkloadParams(
            lambda_rate=self.rate,
            new_conv_prob=self.new_conv_prob,
            seed=seed,
            prompt=LengthSpec.lognormal(self.prompt_mean, sigma=0.8, max=self.prompt_max),
            output=LengthSpec.lognormal(self.output_mean, sigma=0.5, max=self.output_max),
            max_live_conversations=self.live_conversations,
            system_prompts=self.system_prompts,
            system_prompt_len=self.system_prompt_len if self.system_prompts else 0,
            system_prompt_zipf=self.system_prompt_zipf,
            max_context_tokens=self.max_context,
        )
        params.validate()
        return params


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole simulated cluster (see the module docstring)."""

    name: str = "single-node"
    racks: int = 1
    gpus_per_rack: int = 8
    gpus_per_node: int = 8
    block_tokens: int = 16
    hbm: TierKindConfig = field(default_factory=lambda: TierKindConfig(48 * GiB))
    hbm_cache_fraction: float = 0.5
    hbm_cache_blocks: int | None = None
    dram: TierKindConfig = field(default_factory=TierKindConfig)
    ssd: TierKindConfig = field(default_factory=TierKindConfig)
    pool: TierKindConfig = field(default_factory=TierKindConfig)
    remote: TierKindConfig = field(default_factory=TierKindConfig)
    placement: str = "top"
    promotion: str = "on-hit"
    pd: PdConfig = field(default_factory=PdConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)

    @property
    def gpus(self) -> int:
        return self.racks * self.gpus_per_rack

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    def kind(self, kind: str) -> TierKindConfig:
        config: TierKindConfig = getattr(self, kind)
        return config

    def with_kind(self, kind: str, config: TierKindConfig) -> Topology:
        """This topology with tier kind ``kind`` configured as ``config``."""
        if kind not in KINDS:
            raise SimConfigError(kind, f"unknown tier kind {kind!r}; known: {', '.join(KINDS)}")
        changes: dict[str, Any] = {kind: config}
        return replace(self, **changes)

    def kinds(self) -> list[str]:
        """The tier kinds present (size > 0), fastest first."""
        return [k for k in KINDS
                if self.kind(k).bytes > 0 or (k == "hbm" and self.hbm_cache_blocks)]

    def single_tier(self, capacity_blocks: int, eviction: str) -> Topology:
        """One GPU with one tier of exactly ``capacity_blocks`` blocks, watermarks at 1.0 and
        ``eviction`` (the textbook cache the headless replay is checked against)."""
        return replace(
            self,
            name=f"{self.name}/single-tier",
            racks=1, gpus_per_rack=1, gpus_per_node=1,
            hbm=replace(self.hbm, eviction=eviction, high=1.0, low=1.0),
            hbm_cache_blocks=capacity_blocks,
            dram=TierKindConfig(), ssd=TierKindConfig(), pool=TierKindConfig(),
            remote=TierKindConfig(), pd=PdConfig(),
        )

    def validate(self) -> None:
        for key in ("racks", "gpus_per_rack", "gpus_per_node", "block_tokens"):
            if getattr(self, key) < 1:
                raise SimConfigError(f"cluster.{key}", f"cluster.{key} must be >= 1")
        if self.gpus_per_rack % self.gpus_per_node:
            raise SimConfigError(
                "cluster.gpus_per_node",
                f"cluster.gpus_per_node ({self.gpus_per_node}) must divide gpus_per_rack "
                f"({self.gpus_per_rack})",
            )
        if not 0.0 < self.hbm_cache_fraction < 1.0:
            raise SimConfigError("hbm.cache_fraction", "hbm.cache_fraction must be in (0, 1)")
        if self.hbm.bytes <= 0:
            raise SimConfigError("hbm.bytes_per_gpu", "hbm.bytes_per_gpu must be > 0")
        if self.hbm_cache_blocks is not None and self.hbm_cache_blocks < 1:
            raise SimConfigError("hbm.cache_blocks", "hbm.cache_blocks must be >= 1")
        known = known_eviction_policies()
        for kind in KINDS:
            config = self.kind(kind)
            try:
                validate_watermarks(kind, config.high, config.low)
            except ValueError as exc:
                raise SimConfigError(f"{kind}.high", str(exc)) from None
            if config.eviction not in known:
                raise SimConfigError(
                    f"{kind}.eviction",
                    f"unknown eviction policy {config.eviction!r} for {kind}; known: "
                    + ", ".join(known),
                )
        if self.pd.enabled:
            if self.pd.transfer not in ("push", "pull"):
                raise SimConfigError("pd.transfer", "pd.transfer must be 'push' or 'pull'")
            if not 0.0 < self.pd.prefill_share < 1.0:
                raise SimConfigError("pd.prefill_share", "pd.prefill_share must be in (0, 1)")
            if self.gpus_per_rack < 2:
                raise SimConfigError(
                    "pd.enabled", "prefill/decode separation needs >= 2 GPUs per rack"
                )
        router = self.router
        if router.candidates < 1 or not 0 <= router.rack_candidates <= router.candidates:
            raise SimConfigError(
                "router.candidates",
                "router.candidates must be >= 1 and rack_candidates in 0..candidates",
            )
        if router.memory_penalty_s < 0 or router.max_queue < 1:
            raise SimConfigError("router.max_queue",
                                 "router.memory_penalty_s must be >= 0, max_queue >= 1")
        try:
            self.workload.params(0)
        except ValueError as exc:
            raise SimConfigError("workload", f"workload: {exc}") from None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "preset": self.name, "racks": self.racks, "gpus": self.gpus, "nodes": self.nodes,
            "block_tokens": self.block_tokens, "kinds": self.kinds(),
            "pd": f"{self.pd.transfer}, prefill share {self.pd.prefill_share}"
            if self.pd.enabled else "off",
        }
        return out


# ---------------------------------------------------------------------------------- presets


def _single_node() -> Topology:
    return Topology(
        name="single-node", racks=1, gpus_per_rack=8, gpus_per_node=8, block_tokens=16,
        hbm=TierKindConfig(48 * GiB), dram=TierKindConfig(2 * TiB), ssd=TierKindConfig(8 * TiB),
        workload=WorkloadConfig(rate=8.0, live_conversations=256, system_prompts=8,
                                system_prompt_len=1024),
    )


def _rack() -> Topology:
    return Topology(
        name="rack", racks=1, gpus_per_rack=64, gpus_per_node=8, block_tokens=64,
        hbm=TierKindConfig(48 * GiB), dram=TierKindConfig(512 * GiB),
        pool=TierKindConfig(8 * TiB),
        workload=WorkloadConfig(rate=32.0, live_conversations=2048, system_prompts=16,
                                system_prompt_len=2048, prompt_mean=384, prompt_max=4096),
    )


def _cluster_10k() -> Topology:
    return Topology(
        name="cluster-10k", racks=160, gpus_per_rack=64, gpus_per_node=8, block_tokens=512,
        hbm=TierKindConfig(48 * GiB), dram=TierKindConfig(512 * GiB),
        pool=TierKindConfig(2 * TiB),
        workload=WorkloadConfig(rate=2048.0, new_conv_prob=0.3, prompt_mean=512,
                                prompt_max=4096, output_mean=128, output_max=512,
                                live_conversations=16384, system_prompts=64,
                                system_prompt_len=1024, max_context=8192),
    )


def _pd_10k() -> Topology:
    return replace(_cluster_10k(), name="pd-10k", pd=PdConfig(enabled=True, prefill_share=0.5,
                                                                transfer="push"))


PRESETS: dict[str, Callable[[], Topology]] = {
    "single-node": _single_node,
    "rack": _rack,
    "cluster-10k": _cluster_10k,
    "pd-10k": _pd_10k,
}


def preset(name: str) -> Topology:
    try:
        return PRESETS[name]()
    except KeyError:
        raise SimConfigError(
            "preset", f"unknown preset {name!r}; known: {', '.join(PRESETS)}"
        ) from None


# ------------------------------------------------------------------------------ config files


def _size(key: str, value: Any) -> int:
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected a size such as '64GiB' or bytes, got {value!r}")
        return parse_size(value)
    except ValueError as exc:
        raise SimConfigError(key, f"{key}: {exc}") from None


def _int(key: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SimConfigError(key, f"{key} must be an integer >= {low}, got {value!r}")
    return value


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SimConfigError(key, f"{key} must be a finite number, got {value!r}")
    return float(value)


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SimConfigError(key, f"{key} must be a non-empty string, got {value!r}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SimConfigError(key, f"{key} must be true or false, got {value!r}")
    return value


def _table(
    name: str, table: Any, allowed: Mapping[str, Callable[[str, Any], Any]]
) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise SimConfigError(name, f"[{name}] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        convert = allowed.get(key)
        if convert is None:
            raise SimConfigError(
                f"{name}.{key}",
                f"unknown key {name}.{key}; known in [{name}]: {', '.join(sorted(allowed))}",
            )
        out[key] = convert(f"{name}.{key}", value)
    return out


_TIER_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "eviction": _str, "high": _float, "low": _float,
}
_SIZE_KEY = {"hbm": "bytes_per_gpu", "dram": "bytes_per_node", "ssd": "bytes_per_node",
             "pool": "bytes_per_rack", "remote": "bytes"}
_SECTIONS = ("cluster", *KINDS, "policy", "pd", "router", "workload")


def topology_from_dict(data: Mapping[str, Any]) -> Topology:
    """A topology from parsed TOML (see the module docstring); unknown keys are errors."""
    unknown = [key for key in data if key != "preset" and key not in _SECTIONS]
    if unknown:
        raise SimConfigError(
            unknown[0], f"unknown config section or key {unknown[0]!r}; known: preset, "
            + ", ".join(f"[{s}]" for s in _SECTIONS),
        )
    topo = preset(_str("preset", data.get("preset", "single-node")))
    if "cluster" in data:
        values = _table("cluster", data["cluster"], {
            "racks": lambda k, v: _int(k, v, 1), "gpus_per_rack": lambda k, v: _int(k, v, 1),
            "gpus_per_node": lambda k, v: _int(k, v, 1),
            "block_tokens": lambda k, v: _int(k, v, 1),
        })
        topo = replace(topo, **values)
    for kind in KINDS:
        if kind not in data:
            continue
        size_key = _SIZE_KEY[kind]
        allowed: dict[str, Callable[[str, Any], Any]] = {**_TIER_KEYS, size_key: _size}
        if kind == "hbm":
            allowed["cache_fraction"] = _float
            allowed["cache_blocks"] = lambda k, v: _int(k, v, 1)
        values = _table(kind, data[kind], allowed)
        if "cache_fraction" in values:
            topo = replace(topo, hbm_cache_fraction=values.pop("cache_fraction"))
        if "cache_blocks" in values:
            topo = replace(topo, hbm_cache_blocks=values.pop("cache_blocks"))
        if size_key in values:
            values["bytes"] = values.pop(size_key)
        topo = topo.with_kind(kind, replace(topo.kind(kind), **values))
    if "policy" in data:
        topo = replace(topo, **_table("policy", data["policy"],
                                      {"placement": _str, "promotion": _str}))
    if "pd" in data:
        values = _table("pd", data["pd"], {
            "enabled": _bool, "prefill_share": _float, "transfer": _str,
        })
        topo = replace(topo, pd=replace(topo.pd, **values))
    if "router" in data:
        values = _table("router", data["router"], {
            "candidates": lambda k, v: _int(k, v, 1), "rack_candidates": _int,
            "affinity": _bool, "memory_penalty_s": _float,
            "max_queue": lambda k, v: _int(k, v, 1),
        })
        topo = replace(topo, router=replace(topo.router, **values))
    if "workload" in data:
        ints = ("prompt_mean", "prompt_max", "output_mean", "output_max",
                "live_conversations", "system_prompts", "system_prompt_len")
        allowed = {name: (lambda k, v: _int(k, v, 0)) for name in ints}
        allowed.update(rate=_float, new_conv_prob=_float, system_prompt_zipf=_float,
                       max_context=lambda k, v: _int(k, v, 2))
        values = _table("workload", data["workload"], allowed)
        topo = replace(topo, workload=replace(topo.workload, **values))
    topo.validate()
    return topo


def load_topology(preset_name: str | None = None, config: str | Path | None = None) -> Topology:
    """A preset, or a config file (whose own ``preset`` key, if any, must agree with
    ``preset_name`` when both are given)."""
    if config is None:
        topo = preset(preset_name or "single-node")
        topo.validate()
        return topo
    try:
        with open(config, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise SimConfigError("config", f"cannot read config {config}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError("config", f"config {config} is not valid TOML: {exc}") from exc
    if preset_name is not None:
        named = data.get("preset")
        if named is not None and named != preset_name:
            raise SimConfigError(
                "preset", f"--preset {preset_name} disagrees with preset = {named!r} in {config}"
            )
        data = {**data, "preset": preset_name}
    return topology_from_dict(data)
