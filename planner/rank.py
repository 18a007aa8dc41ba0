"""Rank instances (hardware x GPU count) that meet a service-level objective, by cost.

Every hardware entry of the catalogue is tried with every tensor-parallel GPU count in
``gpu_counts`` it allows. An instance *meets* the SLO when it fits, delivers at least
``min_tokens_per_s`` output tokens per second and, when ``max_ttft_s`` is set, a TTFT no longer
than it. Meeting instances are ordered by cost per million output tokens (then fewer GPUs, then
lower TTFT); the others are kept with the reason they miss, for the explanation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .catalog import Catalog, ModelSpec
from .model import Prediction, Workload, predict

__all__ = ["SLO", "Candidate", "Ranking", "explain", "rank"]

DEFAULT_GPU_COUNTS = (1, 2, 4, 8)

_BOUND_WORDS = {
    "compute": "compute",
    "hbm-bandwidth": "HBM bandwidth",
    "offload-transfer": "offload transfer over the host link",
    "interconnect": "the GPU interconnect",
    "overhead": "fixed per-step overhead",
}


@dataclass(frozen=True)
class SLO:
    """What an instance must deliver: output tokens per second, and optionally a TTFT bound."""

    min_tokens_per_s: float = 0.0
    max_ttft_s: float | None = None

    def __post_init__(self) -> None:
        if not self.min_tokens_per_s >= 0:
            raise ValueError(f"min tokens/s must be >= 0, got {self.min_tokens_per_s}")
        if self.max_ttft_s is not None and not self.max_ttft_s > 0:
            raise ValueError(f"max TTFT must be > 0, got {self.max_ttft_s}")

    def misses(self, p: Prediction) -> tuple[str, ...]:
        """Why ``p`` does not meet the SLO (empty when it does)."""
        if not p.feasible:
            return (p.reason,)
        out = []
        if p.tokens_per_s < self.min_tokens_per_s:
            out.append(f"{p.tokens_per_s:,.1f} tokens/s < {self.min_tokens_per_s:,.1f}")
        if self.max_ttft_s is not None and p.ttft_s > self.max_ttft_s:
            out.append(f"TTFT {p.ttft_s * 1e3:,.1f} ms > {self.max_ttft_s * 1e3:,.1f} ms")
        return tuple(out)

    def describe(self) -> str:
        text = f">= {self.min_tokens_per_s:,.1f} tokens/s"
        if self.max_ttft_s is not None:
            text += f", TTFT <= {self.max_ttft_s * 1e3:,.1f} ms"
        return text


@dataclass(frozen=True)
class Candidate:
    prediction: Prediction
    misses: tuple[str, ...]

    @property
    def meets(self) -> bool:
        return not self.misses

    def as_dict(self) -> dict[str, Any]:
        return {**self.prediction.as_dict(), "meets_slo": self.meets,
                "misses": list(self.misses)}


@dataclass(frozen=True)
class Ranking:
    model: ModelSpec
    workload: Workload
    slo: SLO
    meeting: tuple[Candidate, ...]
    missing: tuple[Candidate, ...]  # fit, but miss the SLO
    infeasible: tuple[Candidate, ...]

    @property
    def best(self) -> Candidate | None:
        return self.meeting[0] if self.meeting else None

    def explanation(self) -> list[str]:
        return explain(self)

    def as_dict(self) -> dict[str, Any]:
        w = self.workload
        return {
            "model": self.model.key,
            "model_name": self.model.name,
            "workload": {
                "batch_size": w.batch_size, "input_len": w.input_len,
                "output_len": w.output_len, "prefix_len": w.prefix_len,
                "precision": w.precision, "kv_precision": w.kv_dtype,
                "safety_factor": w.safety_factor, "block_tokens": w.block_tokens,
                "max_batched_tokens": w.max_batched_tokens,
                "runtime_overhead_gib": w.runtime_overhead_gib,
            },
            "slo": {"min_tokens_per_s": self.slo.min_tokens_per_s,
                    "max_ttft_s": self.slo.max_ttft_s},
            "best": self.best.as_dict() if self.best else None,
            "ranking": [c.as_dict() for c in self.meeting],
            "missing_slo": [c.as_dict() for c in self.missing],
            "infeasible": [{"hardware": c.prediction.hardware.key, "gpus": c.prediction.gpus,
                            "reason": c.prediction.reason} for c in self.infeasible],
            "explanation": self.explanation(),
        }


def _cost_key(c: Candidate) -> tuple[float, int, float]:
    p = c.prediction
    return (p.cost_per_million_tokens, p.gpus, p.ttft_s)


def rank(
    catalog: Catalog,
    model: str | ModelSpec,
    workload: Workload,
    slo: SLO,
    *,
    hardware: Sequence[str] | None = None,
    gpu_counts: Sequence[int] = DEFAULT_GPU_COUNTS,
) -> Ranking:
    """Predict ``model`` on every instance and rank the ones meeting ``slo`` by cost.

    Args:
        catalog: Models and hardware.
        model: A model name or alias, or a spec.
        workload: The batch to serve.
        slo: What must be met.
        hardware: Names of the hardware entries to consider (default: all).
        gpu_counts: Tensor-parallel GPU counts to try (each limited by the entry's max_gpus).
    """
    spec = catalog.model(model) if isinstance(model, str) else model
    gpus_list = [catalog.gpu(name) for name in hardware] if hardware else list(
        catalog.hardware.values())
    if not gpu_counts or any(g < 1 for g in gpu_counts):
        raise ValueError(f"GPU counts must be >= 1, got {list(gpu_counts)}")
    meeting, missing, infeasible = [], [], []
    for hw in gpus_list:
        for g in sorted(set(gpu_counts)):
            if g > hw.max_gpus:
                continue
            p = predict(spec, hw, workload, g)
            c = Candidate(p, slo.misses(p))
            if not p.feasible:
                infeasible.append(c)
            elif c.meets:
                meeting.append(c)
            else:
                missing.append(c)
    meeting.sort(key=_cost_key)
    missing.sort(key=_cost_key)
    return Ranking(spec, workload, slo, tuple(meeting), tuple(missing), tuple(infeasible))


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.2f} GB"


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.2f} GiB"


def _bound_sentence(p: Prediction) -> str:
    """Why the best instance takes the time it takes, in one or two sentences."""
    hw = p.hardware
    w = p.workload
    d = p.decode
    phase = d if d.steps and d.seconds >= p.prefill.seconds else p.prefill
    name = "decode" if phase is d and d.steps else "prefill"
    b = p.bound
    share = p.bound_share()
    head = f"Bound by {_BOUND_WORDS[b]} ({share:.0%} of the run's time)"
    if b == "compute":
        peak = hw.peak_tflops[w.precision]
        return (f"{head}: {p.prefill.flops + d.flops:.3g} FLOP per GPU at "
                f"{hw.effective_flops(w.precision) / 1e12:,.0f} TFLOPS effective ({peak:g} "
                f"{w.precision} peak x {hw.compute_efficiency:g}).")
    if b == "hbm-bandwidth":
        return (f"{head}: each {name} step reads {_gb(phase.weights_bytes_per_step)} of weights "
                f"and {_gb(phase.kv_bytes_per_step)} of KV per GPU at "
                f"{hw.effective_memory_bw() / 1e9:,.0f} GB/s effective "
                f"({hw.memory_bandwidth_gb_s:g} GB/s x {hw.memory_efficiency:g}).")
    if b == "offload-transfer":
        return (f"{head}: {p.memory.offload_fraction:.0%} of the KV cache does not fit on the "
                f"GPU; each {name} step moves {_gb(phase.offload_bytes_per_step)} of it over "
                f"the host link at {hw.effective_host_link_bw() / 1e9:,.1f} GB/s effective "
                f"({hw.host_link_gb_s:g} GB/s x {hw.host_link_efficiency:g}). More GPU memory "
                "(a bigger GPU or more GPUs) or a smaller batch removes it.")
    if b == "interconnect":
        return (f"{head}: two all-reduces per layer per step over "
                f"{hw.effective_interconnect_bw() / 1e9:,.0f} GB/s effective and "
                f"{hw.collective_latency_us:g} us each; fewer GPUs would cut it.")
    return (f"{head}: {hw.step_overhead_ms:g} ms per forward pass outweighs the arithmetic "
            "(a small model or batch).")


def explain(r: Ranking) -> list[str]:
    """Plain-language reasons for the ranking's best choice (or why there is none)."""
    lines: list[str] = []
    best = r.best
    if best is None:
        lines.append(f"No instance meets the SLO ({r.slo.describe()}).")
        if r.missing:
            closest = max(r.missing, key=lambda c: c.prediction.tokens_per_s)
            p = closest.prediction
            lines.append(f"Closest: {p.label} ({p.hardware.name}): {'; '.join(closest.misses)}.")
        elif r.infeasible:
            lines.append(f"None fits: e.g. {r.infeasible[0].prediction.label}: "
                         f"{r.infeasible[0].prediction.reason}.")
        return lines
    p = best.prediction
    hw = p.hardware
    m = p.memory
    lines.append(
        f"Best: {p.label} ({hw.name}) at ${p.price_per_hour:,.3f}/h ({hw.price_model}, "
        f"{hw.price_date}): ${p.cost_per_million_tokens:,.3f} per million output tokens."
    )
    ttft = f"; TTFT {p.ttft_s * 1e3:,.1f} ms" + (
        f" <= {r.slo.max_ttft_s * 1e3:,.1f}" if r.slo.max_ttft_s is not None else "")
    lines.append(f"Meets the SLO: {p.tokens_per_s:,.1f} tokens/s >= "
                 f"{r.slo.min_tokens_per_s:,.1f}{ttft}; TPOT {p.tpot_s * 1e3:,.2f} ms.")
    lines.append(_bound_sentence(p) + f" Prefill is {p.prefill.bound}-bound, decode "
                 f"{p.decode.bound if p.decode.steps else 'absent'}"
                 f"{'-bound' if p.decode.steps else ''}.")
    offload = ("nothing offloaded" if m.kv_offloaded <= 0 else
               f"{m.offload_fraction:.0%} ({_gib(m.kv_offloaded)}) offloaded to host memory")
    lines.append(
        f"Memory per GPU: {_gib(m.usable)} usable of {hw.memory_gib:g} GiB (safety factor "
        f"{r.workload.safety_factor:g}): weights {_gib(m.weights)}, activations "
        f"{_gib(m.activations)}, buffers {_gib(m.buffers)}; KV {_gib(m.kv_needed)} needed of "
        f"{_gib(m.kv_capacity)} available: {offload}. KV per token: "
        f"{p.kv_bytes_per_token:,} B ({p.kv_bytes_per_token_per_gpu:,} B per GPU)."
    )
    if len(r.meeting) > 1:
        nxt = r.meeting[1].prediction
        ratio = nxt.cost_per_million_tokens / p.cost_per_million_tokens
        lines.append(f"Runner-up: {nxt.label} at ${nxt.cost_per_million_tokens:,.3f}/M "
                     f"({ratio:,.2f}x the cost).")
    cheaper = [c for c in r.missing
               if c.prediction.cost_per_million_tokens < p.cost_per_million_tokens]
    if cheaper:
        c = cheaper[0]
        lines.append(f"Cheaper but missing the SLO: {c.prediction.label} "
                     f"(${c.prediction.cost_per_million_tokens:,.3f}/M): {'; '.join(c.misses)}.")
    if math.isfinite(p.ttft_s) and p.notes:
        lines.extend(f"Note: {n}." for n in p.notes if "KV cache lives" not in n)
    lines.append("Prices are list prices with the date in the catalogue; they change: check "
                 "them (or override them with --catalog) before deciding.")
    return lines
