"""The planner's arithmetic: memory split, KV offload, prefill and decode time, throughput, cost.

One *instance* is ``gpus`` GPUs of one hardware entry serving one static batch with tensor
parallelism: ``batch_size`` requests arrive together, each with ``input_len`` prompt tokens (the
first ``prefix_len`` of them already cached) and ``output_len`` generated tokens. Everything is a
roofline estimate (Williams, Waterman, Patterson, "Roofline", CACM 2009): a step takes the larger
of its compute time and its device-memory time, plus the time of what cannot overlap with it.

Memory, per GPU (bytes):

* usable     = memory / safety_factor
* weights    = params x bytes(precision) / gpus
* activations = T x 2 x (4 x hidden + m x ffn_hidden / gpus) + batch x vocab x 4, with
  T = min(batch x new prompt tokens, max_batched_tokens) (chunked prefill: one chunk's
  intermediates of one layer live at a time; m = 3 for a gated MLP, else 2; fp32 logits)
* buffers    = runtime_overhead_gib (CUDA context, workspaces, allocator slack)
* KV capacity = usable - weights - activations - buffers (the instance does not fit when < 0)
* KV per token per GPU = 2 x layers x ceil(kv_heads / gpus) x head_dim x bytes(kv_precision)
  (Pope et al., "Efficiently Scaling Transformer Inference", 2022; with grouped-query attention
  only the KV heads count: Ainslie et al., "GQA", 2023)
* KV needed  = batch x ceil(L / block_tokens) x block_tokens x KV per token per GPU, L the
  longest context the run holds (input + output - 1: the last token's KV is never written)
* offload fraction = max(0, KV needed - KV capacity) / KV needed: what must live in host
  memory (or further tiers) at the peak.

Time (effective rates are catalogue peaks x efficiency factors):

* FLOPs per token per layer = 2 x (matmul weights of the layer) (Kaplan et al., "Scaling Laws",
  2020: ~2N per token); attention adds 4 x heads x head_dim per (query, key) pair; the LM head
  2 x hidden x vocab per sequence and step.
* prefill: FLOPs of the new prompt tokens (causal: token i of n new ones sees prefix + i keys),
  device bytes = the weights once per chunk + the KV written; the KV that does not fit on the
  GPU goes to the host once, over the host link, not overlapped (conservative).
* decode step j (j = 1 .. output_len - 1, context input_len + j): FLOPs of one token per
  sequence; device bytes = weights + the KV resident on the GPU; the offloaded KV is read over
  the host link every step (FlexGen-style offloading: Sheng et al., ICML 2023), not overlapped.
* tensor parallelism: each GPU does 1/gpus of the FLOPs; two all-reduces per layer per step of
  tokens x hidden x 2 bytes, ring cost 2 (g - 1) / g x bytes / interconnect bandwidth plus a
  fixed latency each (Shoeybi et al., "Megatron-LM", 2019).
* each forward pass (prefill chunk or decode step) adds ``step_overhead_ms``.

TTFT = prefill time; TPOT = decode time / (output_len - 1); tokens/s = batch x output_len /
(TTFT + decode time); cost per million output tokens = price x gpus / 3600 / tokens/s x 1e6.
The *bound* of a phase (or the whole run) is the term that takes most of its time: compute, HBM
bandwidth, offload transfer, interconnect or overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from .catalog import PRECISIONS, HardwareSpec, ModelSpec

__all__ = [
    "BOUNDS",
    "MemorySplit",
    "PhaseTime",
    "Prediction",
    "Workload",
    "kv_bytes_per_token",
    "predict",
]

#: The terms a run can be bound by, in the order ties are broken.
BOUNDS: Final = ("compute", "hbm-bandwidth", "offload-transfer", "interconnect", "overhead")
ACTIVATION_BYTES: Final = 2  # activations stay 16-bit whatever the weight precision
LOGIT_BYTES: Final = 4


@dataclass(frozen=True)
class Workload:
    """What one instance serves (one static batch).

    Attributes:
        batch_size: Requests served together.
        input_len: Prompt tokens per request.
        output_len: Tokens generated per request (>= 1; the first comes out of the prefill).
        precision: Weight precision and compute path (``fp16``, ``bf16``, ``fp8``, ``int8``).
        kv_precision: KV-cache precision (default: ``precision``).
        safety_factor: Plan to fill at most memory / safety_factor (>= 1).
        prefix_len: Prompt tokens whose KV is already cached (not computed).
        block_tokens: Tokens per KV block (memory is allocated in whole blocks).
        max_batched_tokens: Prompt tokens per prefill chunk.
        runtime_overhead_gib: Per-GPU memory held by the runtime besides weights, activations and
            KV (CUDA context, workspaces, allocator slack).
    """

    batch_size: int
    input_len: int
    output_len: int
    precision: str = "fp16"
    kv_precision: str | None = None
    safety_factor: float = 1.1
    prefix_len: int = 0
    block_tokens: int = 16
    max_batched_tokens: int = 8192
    runtime_overhead_gib: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "input_len", "output_len", "block_tokens",
                     "max_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.prefix_len, int) or self.prefix_len < 0:
            problems.append(f"prefix_len must be an integer >= 0, got {self.prefix_len!r}")
        elif isinstance(self.input_len, int) and self.prefix_len >= self.input_len:
            problems.append(
                f"prefix_len ({self.prefix_len}) must be below input_len ({self.input_len}): "
                "at least one prompt token is computed"
            )
        for name in ("precision", "kv_precision"):
            value = getattr(self, name)
            if value is not None and value not in PRECISIONS:
                problems.append(f"{name} must be one of {', '.join(PRECISIONS)}, got {value!r}")
        if not self.safety_factor >= 1.0:
            problems.append(f"safety_factor must be >= 1 (1.1 plans to fill 91% of memory), "
                            f"got {self.safety_factor}")
        if not self.runtime_overhead_gib >= 0:
            problems.append(f"runtime_overhead_gib must be >= 0, got {self.runtime_overhead_gib}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def kv_dtype(self) -> str:
        return self.kv_precision or self.precision

    @property
    def new_tokens(self) -> int:
        """Prompt tokens computed per request."""
        return self.input_len - self.prefix_len

    @property
    def peak_context(self) -> int:
        """Tokens with KV per request at the end of the run."""
        return self.input_len + max(self.output_len - 1, 0)


def kv_bytes_per_token(model: ModelSpec, precision: str = "fp16", gpus: int = 1) -> int:
    """KV bytes one token adds on one GPU: 2 (K and V) x layers x ceil(kv_heads / gpus) x
    head_dim x bytes per element (KV heads are split across tensor-parallel GPUs, replicated when
    there are fewer KV heads than GPUs)."""
    heads = -(-model.kv_heads // gpus)
    return 2 * model.layers * heads * model.head_dim * PRECISIONS[precision]


@dataclass(frozen=True)
class MemorySplit:
    """Memory of one GPU, in bytes."""

    total: float
    usable: float
    weights: float
    activations: float
    buffers: float
    kv_capacity: float
    kv_needed: float

    @property
    def fits(self) -> bool:
        return self.weights + self.activations + self.buffers <= self.usable

    @property
    def kv_on_gpu(self) -> float:
        return min(self.kv_needed, self.kv_capacity)

    @property
    def kv_offloaded(self) -> float:
        return self.kv_needed - self.kv_on_gpu

    @property
    def offload_fraction(self) -> float:
        return self.kv_offloaded / self.kv_needed if self.kv_needed > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "total_bytes": self.total, "usable_bytes": self.usable, "weights_bytes": self.weights,
            "activations_bytes": self.activations, "buffers_bytes": self.buffers,
            "kv_capacity_bytes": self.kv_capacity, "kv_needed_bytes": self.kv_needed,
            "kv_on_gpu_bytes": self.kv_on_gpu, "kv_offloaded_bytes": self.kv_offloaded,
            "offload_fraction": self.offload_fraction,
        }


@dataclass(frozen=True)
class PhaseTime:
    """One phase (prefill or all decode steps) on one GPU of the instance.

    The ``*_s`` parts add up to ``seconds``: of compute and HBM time, only the larger counts per
    step (they overlap); offload, interconnect and overhead add to it.
    """

    seconds: float
    compute_s: float
    memory_s: float
    offload_s: float
    interconnect_s: float
    overhead_s: float
    steps: int
    flops: float  # per GPU
    hbm_bytes: float  # per GPU
    offload_bytes: float  # per GPU, over the host link
    weights_bytes_per_step: float = 0.0
    kv_bytes_per_step: float = 0.0  # KV read from device memory (mean per step)
    offload_bytes_per_step: float = 0.0

    def parts(self) -> dict[str, float]:
        return dict(zip(BOUNDS, (self.compute_s, self.memory_s, self.offload_s,
                                 self.interconnect_s, self.overhead_s), strict=True))

    @property
    def bound(self) -> str:
        parts = self.parts()
        return max(BOUNDS, key=lambda b: (parts[b], -BOUNDS.index(b)))

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "steps": self.steps, "bound": self.bound,
                "parts_s": self.parts(), "flops_per_gpu": self.flops,
                "hbm_bytes_per_gpu": self.hbm_bytes, "offload_bytes_per_gpu": self.offload_bytes}


_NO_TIME = PhaseTime(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Prediction:
    """Everything the planner predicts for one model on one instance."""

    model: ModelSpec
    hardware: HardwareSpec
    gpus: int
    workload: Workload
    kv_bytes_per_token: int  # whole model, at the KV precision
    kv_bytes_per_token_per_gpu: int
    memory: MemorySplit
    prefill: PhaseTime
    decode: PhaseTime
    feasible: bool
    reason: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def ttft_s(self) -> float:
        return self.prefill.seconds if self.feasible else math.inf

    @property
    def tpot_s(self) -> float:
        if not self.feasible:
            return math.inf
        return self.decode.seconds / self.decode.steps if self.decode.steps else 0.0

    @property
    def e2e_s(self) -> float:
        return self.prefill.seconds + self.decode.seconds if self.feasible else math.inf

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second of the instance."""
        if not self.feasible:
            return 0.0
        return self.workload.batch_size * self.workload.output_len / self.e2e_s

    @property
    def price_per_hour(self) -> float:
        return self.hardware.price_usd_per_hour * self.gpus

    @property
    def cost_per_million_tokens(self) -> float:
        """US dollars per million output tokens."""
        tps = self.tokens_per_s
        return self.price_per_hour / 3600.0 / tps * 1e6 if tps > 0 else math.inf

    @property
    def bound(self) -> str:
        """The term that takes most of the whole run's time."""
        parts = {b: self.prefill.parts()[b] + self.decode.parts()[b] for b in BOUNDS}
        return max(BOUNDS, key=lambda b: (parts[b], -BOUNDS.index(b)))

    def bound_share(self) -> float:
        """Share of the run's time taken by :attr:`bound`."""
        total = self.e2e_s
        if not self.feasible or total <= 0:
            return 0.0
        b = self.bound
        return (self.prefill.parts()[b] + self.decode.parts()[b]) / total

    @property
    def label(self) -> str:
        return f"{self.gpus}x {self.hardware.key}"

    def as_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if math.isinf(x) or math.isnan(x) else x

        return {
            "hardware": self.hardware.key,
            "hardware_name": self.hardware.name,
            "gpus": self.gpus,
            "feasible": self.feasible,
            "reason": self.reason,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_bytes_per_token_per_gpu": self.kv_bytes_per_token_per_gpu,
            "memory_per_gpu": self.memory.as_dict(),
            "offload_fraction": self.memory.offload_fraction,
            "ttft_s": num(self.ttft_s),
            "tpot_s": num(self.tpot_s),
            "e2e_s": num(self.e2e_s),
            "tokens_per_s": self.tokens_per_s,
            "price_usd_per_hour": self.price_per_hour,
            "price_model": self.hardware.price_model,
            "price_date": self.hardware.price_date,
            "cost_per_million_tokens": num(self.cost_per_million_tokens),
            "bound": self.bound if self.feasible else None,
            "bound_share": self.bound_share(),
            "prefill": self.prefill.as_dict() if self.feasible else None,
            "decode": self.decode.as_dict() if self.feasible else None,
            "notes": list(self.notes),
        }


def _blocks_of(tokens: int | np.ndarray, block_tokens: int) -> Any:
    return -(-tokens // block_tokens) * block_tokens


def memory_split(model: ModelSpec, hw: HardwareSpec, w: Workload, gpus: int) -> MemorySplit:
    total = float(hw.memory_bytes)
    usable = total / w.safety_factor
    weights = model.params * PRECISIONS[w.precision] / gpus
    chunk = min(w.batch_size * w.new_tokens, w.max_batched_tokens)
    mlp = 3 if model.gated_mlp else 2
    activations = (chunk * ACTIVATION_BYTES * (4 * model.hidden + mlp * model.ffn_hidden / gpus)
                   + w.batch_size * model.vocab_size * LOGIT_BYTES)
    buffers = w.runtime_overhead_gib * 2**30
    capacity = max(0.0, usable - weights - activations - buffers)
    per_token = kv_bytes_per_token(model, w.kv_dtype, gpus)
    needed = float(w.batch_size * _blocks_of(w.peak_context, w.block_tokens) * per_token)
    return MemorySplit(total, usable, weights, activations, buffers, capacity, needed)


def _allreduce_s(hw: HardwareSpec, gpus: int, nbytes: float | np.ndarray) -> Any:
    ring = 2.0 * (gpus - 1) / gpus
    return hw.collective_latency_us * 1e-6 + ring * nbytes / hw.effective_interconnect_bw()


def predict(model: ModelSpec, hw: HardwareSpec, w: Workload, gpus: int = 1) -> Prediction:
    """Predict one model on ``gpus`` GPUs of ``hw`` for workload ``w`` (see the module doc)."""
    per_token_gpu = kv_bytes_per_token(model, w.kv_dtype, gpus)
    whole = kv_bytes_per_token(model, w.kv_dtype, 1)
    mem = memory_split(model, hw, w, gpus)
    notes: list[str] = []
    if w.peak_context > model.max_context:
        notes.append(f"context {w.peak_context} exceeds the model's {model.max_context} tokens")
    reason = ""
    if not hw.supports(w.precision):
        reason = (f"{hw.name} has no {w.precision} tensor cores "
                  f"(has: {', '.join(hw.peak_tflops)})")
    elif gpus < 1 or gpus > hw.max_gpus:
        reason = f"{gpus} GPUs: instances of {hw.name} have 1 to {hw.max_gpus}"
    elif model.heads % gpus:
        reason = f"{model.heads} attention heads do not split over {gpus} GPUs"
    elif not mem.fits:
        need = mem.weights + mem.activations + mem.buffers
        reason = (f"weights {mem.weights / 2**30:.1f} GiB + activations "
                  f"{mem.activations / 2**30:.1f} + buffers {mem.buffers / 2**30:.1f} = "
                  f"{need / 2**30:.1f} GiB per GPU exceed the usable {mem.usable / 2**30:.1f} GiB "
                  f"({hw.memory_gib:g} GiB / safety factor {w.safety_factor:g})")
    if reason:
        return Prediction(model, hw, gpus, w, whole, per_token_gpu, mem, _NO_TIME, _NO_TIME,
                          False, reason, tuple(notes))
    prefill = _prefill(model, hw, w, gpus, mem, per_token_gpu)
    decode = _decode(model, hw, w, gpus, mem, per_token_gpu)
    if mem.kv_offloaded > 0:
        notes.append(f"{mem.offload_fraction:.0%} of the KV cache lives in host memory at the "
                     f"peak ({mem.kv_offloaded / 2**30:.2f} GiB per GPU)")
    return Prediction(model, hw, gpus, w, whole, per_token_gpu, mem, prefill, decode, True, "",
                      tuple(notes))


def _prefill(model: ModelSpec, hw: HardwareSpec, w: Workload, gpus: int, mem: MemorySplit,
             per_token_gpu: int) -> PhaseTime:
    b, n, p = w.batch_size, w.new_tokens, w.prefix_len
    flops_total = (
        2.0 * model.layers * model.matmul_params_per_layer() * b * n
        + 2.0 * model.hidden * model.vocab_size * b
        + 4.0 * model.layers * model.heads * model.head_dim * b * (n * p + n * (n + 1) / 2)
    )
    flops = flops_total / gpus
    chunks = -(-(b * n) // w.max_batched_tokens)
    kv_after = float(b * _blocks_of(w.input_len, w.block_tokens) * per_token_gpu)
    kv_prefix = float(b * p * per_token_gpu)
    on_gpu = min(kv_after, mem.kv_capacity)
    hbm = chunks * mem.weights + on_gpu + min(kv_prefix, mem.kv_capacity)
    offload = max(0.0, kv_after - mem.kv_capacity)
    compute_s = flops / hw.effective_flops(w.precision)
    memory_s = hbm / hw.effective_memory_bw()
    offload_s = offload / hw.effective_host_link_bw()
    comm_s = 0.0
    if gpus > 1:
        per_chunk = _allreduce_s(hw, gpus, 0.0)
        comm_s = 2 * model.layers * (
            chunks * per_chunk
            + 2.0 * (gpus - 1) / gpus * b * n * model.hidden * ACTIVATION_BYTES
            / hw.effective_interconnect_bw()
        )
    overhead_s = chunks * hw.step_overhead_ms * 1e-3
    top = max(compute_s, memory_s)
    return PhaseTime(
        seconds=top + offload_s + comm_s + overhead_s,
        compute_s=compute_s if compute_s >= memory_s else 0.0,
        memory_s=memory_s if memory_s > compute_s else 0.0,
        offload_s=offload_s, interconnect_s=comm_s, overhead_s=overhead_s, steps=chunks,
        flops=flops, hbm_bytes=hbm, offload_bytes=offload,
        weights_bytes_per_step=mem.weights, kv_bytes_per_step=on_gpu / chunks,
        offload_bytes_per_step=offload / chunks,
    )


def _decode(model: ModelSpec, hw: HardwareSpec, w: Workload, gpus: int, mem: MemorySplit,
            per_token_gpu: int) -> PhaseTime:
    steps = w.output_len - 1
    if steps <= 0:
        return _NO_TIME
    b = w.batch_size
    context = w.input_len + np.arange(1, steps + 1, dtype=np.float64)
    flops = (
        2.0 * model.layers * model.matmul_params_per_layer() * b
        + 2.0 * model.hidden * model.vocab_size * b
        + 4.0 * model.layers * model.heads * model.head_dim * b * context
    ) / gpus
    kv = b * _blocks_of(context, w.block_tokens) * float(per_token_gpu)
    on_gpu = np.minimum(kv, mem.kv_capacity)
    off = kv - on_gpu
    hbm = mem.weights + on_gpu
    compute = flops / hw.effective_flops(w.precision)
    memory = hbm / hw.effective_memory_bw()
    offload = off / hw.effective_host_link_bw()
    comm = (2 * model.layers * _allreduce_s(hw, gpus, b * model.hidden * ACTIVATION_BYTES)
            if gpus > 1 else 0.0)
    overhead = hw.step_overhead_ms * 1e-3
    compute_wins = compute >= memory
    return PhaseTime(
        seconds=float(np.sum(np.maximum(compute, memory) + offload) + steps * (comm + overhead)),
        compute_s=float(np.sum(np.where(compute_wins, compute, 0.0))),
        memory_s=float(np.sum(np.where(compute_wins, 0.0, memory))),
        offload_s=float(np.sum(offload)),
        interconnect_s=float(steps * comm),
        overhead_s=float(steps * overhead),
        steps=steps,
        flops=float(np.sum(flops)),
        hbm_bytes=float(np.sum(hbm)),
        offload_bytes=float(np.sum(off)),
        weights_bytes_per_step=mem.weights,
        kv_bytes_per_step=float(np.mean(on_gpu)),
        offload_bytes_per_step=float(np.mean(off)),
    )
