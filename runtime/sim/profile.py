"""The calibration profile: what the simulated hardware and model cost, from a TOML file.

Defaults are public H100-class (SXM) figures and a Llama-3-70B-shaped model:

===========================  ==============================  =================================
what                         default                         where it is used
===========================  ==============================  =================================
``gpu.peak_flops``           989e12 FLOP/s (BF16 dense)      prefill compute
``gpu.prefill_efficiency``   0.5 (model FLOPs utilisation)   prefill compute
``gpu.hbm_bandwidth``        3.35e12 B/s                     decode steps, HBM hits (free)
``links.pcie``               64e9 B/s, 2 µs (Gen5 x16)       host DRAM tier <-> GPU
``links.rdma``               12.5e9 B/s effective,           rack pool, KV transfer,
                             3 µs intra-rack, 15 µs cross     remote tier
``links.nvme``               7e9 B/s, 200 µs                 local SSD tier
``model``                    70e9 params, 80 layers, 8 KV    KV bytes per token, compute
                             heads of 128, 2 bytes
===========================  ==============================  =================================

Compute model (deliberately first-order, stated so results can be checked by hand):

- KV bytes per token = 2 (K and V) x layers x KV heads x head dim x bytes per value; for the
  default 70B GQA shape 2 x 80 x 8 x 128 x 2 = 327,680 B = 320 KiB per token, so a 16-token
  block holds 5 MiB and a 512-token block (Mooncake's granularity) 160 MiB.
- prefill: 2 x params FLOPs per computed token at ``peak_flops x prefill_efficiency``
  (0.283 ms per token for the defaults; attention's quadratic term is left out);
- decode: one step per output token for the whole batch, taking
  ``max(weights + batch KV bytes) / hbm_bandwidth, batch x 2 x params / effective FLOPS)``:
  memory-bound (42 ms for 140 GB of weights) until the batch is large;
- fetching n blocks from a tier: the link's latency once, plus n x block bytes / bandwidth.

A profile file has the sections ``[model]``, ``[gpu]``, ``[links.pcie]``, ``[links.rdma]``,
``[links.nvme]`` and ``[scheduler]``; any key may be left out (the default stays) and an unknown
section or key is an error, never ignored.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "GpuProfile",
    "Link",
    "ModelShape",
    "Profile",
    "SchedulerProfile",
    "SimConfigError",
    "load_profile",
]


class SimConfigError(ValueError):
    """A simulator profile or topology setting is wrong; ``key`` names it (``"gpu.peak_flops"``).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The served model's shape (sizes only; no weights exist)."""

    name: str = "llama-3-70b"
    params: float = 70e9
    layers: int = 80
    kv_heads: int = 8
    head_dim: int = 128
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class GpuProfile:
    peak_flops: float = 989e12
    prefill_efficiency: float = 0.5
    hbm_bandwidth: float = 3.35e12


@dataclass(frozen=True, slots=True)
class Link:
    """A transfer path: ``latency`` once per transfer, then ``bandwidth`` bytes per second."""

    bandwidth: float
    latency: float = 0.0

    def seconds(self, nbytes: float) -> float:
        return self.latency + nbytes / self.bandwidth


@dataclass(frozen=True, slots=True)
class RdmaLink:
    bandwidth: float = 12.5e9
    intra_rack_latency: float = 3e-6
    cross_rack_latency: float = 15e-6

    def link(self, same_rack: bool) -> Link:
        latency = self.intra_rack_latency if same_rack else self.cross_rack_latency
        return Link(self.bandwidth, latency)


@dataclass(frozen=True, slots=True)
class SchedulerProfile:
    """Serving-engine settings that shape timings.

    Attributes:
        prefill_chunk_tokens: tokens per prefill chunk; with push transfer in
            prefill/decode mode the first chunk's KV starts moving while the rest computes.
        max_decode_batch: most requests one GPU decodes at once (continuous batching).
    """

    prefill_chunk_tokens: int = 512
    max_decode_batch: int = 256


@dataclass(frozen=True, slots=True)
class Profile:
    """Every cost the simulator uses (see the module docstring)."""

    model: ModelShape = field(default_factory=ModelShape)
    gpu: GpuProfile = field(default_factory=GpuProfile)
    pcie: Link = field(default_factory=lambda: Link(64e9, 2e-6))
    rdma: RdmaLink = field(default_factory=RdmaLink)
    nvme: Link = field(default_factory=lambda: Link(7e9, 200e-6))
    scheduler: SchedulerProfile = field(default_factory=SchedulerProfile)

    # ------------------------------------------------------------------ the compute model

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token

    @property
    def prefill_s_per_token(self) -> float:
        """Seconds to compute one prompt token (2 x params FLOPs at effective FLOPS)."""
        return 2.0 * self.model.params / (self.gpu.peak_flops * self.gpu.prefill_efficiency)

    @property
    def decode_weights_s(self) -> float:
        """The memory-bound floor of one decode step: reading every weight once."""
        return self.model.weight_bytes / self.gpu.hbm_bandwidth

    def decode_step_s(self, batch: int, kv_tokens: int) -> float:
        """One decode step of ``batch`` requests holding ``kv_tokens`` tokens of KV in all."""
        memory = self.decode_weights_s + kv_tokens * self.kv_bytes_per_token / (
            self.gpu.hbm_bandwidth
        )
        return max(memory, batch * self.prefill_s_per_token)

    def describe(self) -> dict[str, Any]:
        """The figures a reader wants to see, as plain data."""
        return {
            "model": self.model.name,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "prefill_ms_per_token": round(self.prefill_s_per_token * 1e3, 4),
            "decode_step_ms_min": round(self.decode_weights_s * 1e3, 3),
        }


_SECTIONS: dict[str, tuple[str, type[Any]]] = {
    "model": ("model", ModelShape),
    "gpu": ("gpu", GpuProfile),
    "links.pcie": ("pcie", Link),
    "links.rdma": ("rdma", RdmaLink),
    "links.nvme": ("nvme", Link),
    "scheduler": ("scheduler", SchedulerProfile),
}


def _number(key: str, value: Any, kind: type, positive: bool = True) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SimConfigError(key, f"{key} must be a number, got {value!r}")
    if kind is int:
        if not float(value).is_integer():
            raise SimConfigError(key, f"{key} must be a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise SimConfigError(key, f"{key} must be a finite number > 0, got {value!r}")
    return value


def _section(section: str, cls: type[Any], current: Any, table: Mapping[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{section}.{key}"
        spec = known.get(key)
        if spec is None:
            raise SimConfigError(
                path, f"unknown profile key {path!r}; known in [{section}]: "
                + ", ".join(sorted(known)),
            )
        if spec.type in ("str", str):
            if not isinstance(value, str) or not value:
                raise SimConfigError(path, f"{path} must be a non-empty string, got {value!r}")
            changes[key] = value
        else:
            kind = int if spec.type in ("int", int) else float
            changes[key] = _number(path, value, kind, positive=not key.endswith("latency"))
    return replace(current, **changes)


def profile_from_dict(data: Mapping[str, Any], base: Profile | None = None) -> Profile:
    """A profile from parsed TOML (see the module docstring); unknown keys are errors."""
    profile = base or Profile()
    for section, table in _sections_of(data):
        attr, cls = _SECTIONS[section]
        profile = replace(profile, **{attr: _section(section, cls, getattr(profile, attr), table)})
    return profile


def _sections_of(data: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(section name, table)`` pairs, ``[links.X]`` flattened, every name checked."""
    out: list[tuple[str, Mapping[str, Any]]] = []
    for name, value in data.items():
        if name == "links" and isinstance(value, Mapping):
            out.extend((f"links.{link}", table) for link, table in value.items())
        else:
            out.append((name, value))
    for section, table in out:
        if section not in _SECTIONS:
            raise SimConfigError(
                section, f"unknown profile section [{section}]; known: "
                + ", ".join(f"[{s}]" for s in _SECTIONS),
            )
        if not isinstance(table, Mapping):
            raise SimConfigError(section, f"[{section}] must be a table")
    return out


def load_profile(path: str | Path | None) -> Profile:
    """The default profile, or the one in the TOML file ``path`` (over the defaults)."""
    if path is None:
        return Profile()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise SimConfigError("profile", f"cannot read profile {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError("profile", f"profile {path} is not valid TOML: {exc}") from exc
    return profile_from_dict(data)
