"""The planner's arithmetic against hand-computed examples."""

from __future__ import annotations

import math

import pytest
from tiertop.planner.catalog import HardwareSpec, ModelSpec, load_catalog
from tiertop.planner.model import Workload, kv_bytes_per_token, predict
from tiertop.planner.rank import SLO, explain, rank

# A toy model: 2 layers, d = 64, 4 heads of 16 (no GQA), MLP 256, vocabulary 1000.
# Matmul weights per layer = 64*64 (Q) + 2*64*64 (K, V) + 64*64 (O) + 2*64*256 (MLP) = 49,152.
# KV per token at fp16 = 2 (K, V) x 2 layers x 4 heads x 16 x 2 bytes = 512 B.
TOY = ModelSpec(key="toy", name="toy", family="test", layers=2, hidden=64, heads=4, kv_heads=4,
                head_dim=16, ffn_hidden=256, vocab_size=1000, params=1_000_000,
                max_context=4096, source="test")
WEIGHTS = 2_000_000  # 1e6 params x 2 bytes
# Activations of batch 2 x 30 prompt tokens: 60 tokens x 2 B x (4*64 + 2*256) + 2 x 1000 x 4 B.
ACTIVATIONS = 60 * 2 * (4 * 64 + 2 * 256) + 2 * 1000 * 4  # = 100,160


def gpu(memory_bytes: float = 2**30, **over: float) -> HardwareSpec:
    data = dict(
        key="toygpu", name="Toy GPU", memory_gib=memory_bytes / 2**30,
        memory_bandwidth_gb_s=100, peak_tflops={"fp16": 1.0}, host_link_gb_s=10,
        interconnect_gb_s=50, max_gpus=8, compute_efficiency=0.5, memory_efficiency=1.0,
        host_link_efficiency=0.5, interconnect_efficiency=1.0, collective_latency_us=0.0,
        step_overhead_ms=1.0, price_usd_per_hour=3.6, price_model="test", price_date="now",
        sources={},
    )
    data.update(over)
    return HardwareSpec(**data)  # type: ignore[arg-type]


def work(output_len: int = 2, **over: object) -> Workload:
    args: dict[str, object] = dict(batch_size=2, input_len=30, output_len=output_len,
                                   safety_factor=1.0, runtime_overhead_gib=0.0)
    args.update(over)
    return Workload(**args)  # type: ignore[arg-type]


def test_kv_bytes_per_token_gpt2_and_gqa() -> None:
    c = load_catalog(use_env=False)
    gpt2 = c.model("gpt2")
    assert gpt2.kv_bytes_per_token() == 2 * 12 * 12 * 64 * 2 == 36_864
    assert gpt2.kv_bytes_per_token("fp8") == 18_432
    llama = c.model("llama-3-8b")  # GQA: 8 KV heads for 32 query heads
    assert llama.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072
    assert kv_bytes_per_token(llama, "fp16", gpus=2) == 65_536  # KV heads split over GPUs
    big = c.model("llama-3-70b")
    assert kv_bytes_per_token(big, "fp16", gpus=8) == 2 * 80 * 1 * 128 * 2 == 40_960
    assert kv_bytes_per_token(TOY, "fp16", gpus=8) == 2 * 2 * 1 * 16 * 2  # 4 heads: replicated


def test_memory_split_by_hand() -> None:
    p = predict(TOY, gpu(), work())
    m = p.memory
    assert (m.weights, m.activations, m.buffers) == (WEIGHTS, ACTIVATIONS, 0.0)
    assert m.usable == 2**30
    assert m.kv_capacity == 2**30 - WEIGHTS - ACTIVATIONS
    # peak context 30 + (2 - 1) = 31 tokens -> 2 blocks of 16 = 32 tokens, x 2 requests
    assert m.kv_needed == 2 * 32 * 512
    halved = predict(TOY, gpu(), work(safety_factor=2.0)).memory
    assert halved.usable == 2**29
    assert TOY.matmul_params_per_layer() == 49_152


def test_offload_fraction_at_the_boundary() -> None:
    need = 2 * 32 * 512  # batch 2 x 32 tokens (2 blocks) x 512 B
    exact = gpu(WEIGHTS + ACTIVATIONS + need)
    p = predict(TOY, exact, work(output_len=3))  # peak context 32: exactly the capacity
    assert p.memory.kv_capacity == need
    assert p.memory.offload_fraction == 0.0
    assert p.decode.offload_s == 0.0
    one_more = predict(TOY, exact, work(output_len=4))  # 33 tokens: a third block each
    assert one_more.memory.kv_needed == 2 * 48 * 512
    assert one_more.memory.offload_fraction == pytest.approx(1 / 3)
    # Only the last decode step (context 33) overflows: 2 x 48 x 512 - need = 16,384 B read over
    # the host link at 10 GB/s x 0.5.
    assert one_more.decode.offload_s == pytest.approx(16_384 / 5e9)
    assert one_more.decode.offload_bytes == 16_384
    assert predict(TOY, gpu(WEIGHTS + ACTIVATIONS), work()).memory.offload_fraction == 1.0


def test_prefill_and_decode_times_by_hand() -> None:
    p = predict(TOY, gpu(), work())
    # Prefill FLOPs: 2 x 2 layers x 49,152 x 60 tokens + LM head 2 x 64 x 1000 x 2 sequences
    # + attention 4 x 2 x 4 x 16 x 2 x (30 x 31 / 2) = 11,796,480 + 256,000 + 476,160.
    assert p.prefill.flops == 12_528_640
    # compute 12,528,640 / (1 TFLOPS x 0.5) = 25.06 us beats HBM: weights + the KV written
    # (2 x 32 tokens x 512 B) = 2,032,768 B / 100 GB/s = 20.33 us; + 1 ms per forward pass.
    assert p.prefill.hbm_bytes == WEIGHTS + 2 * 32 * 512
    assert p.prefill.bound == "overhead"
    assert p.prefill.compute_s == pytest.approx(12_528_640 / 5e11)
    assert p.prefill.memory_s == 0.0
    assert p.ttft_s == pytest.approx(12_528_640 / 5e11 + 1e-3)
    # One decode step, context 31: FLOPs 2 x 2 x 49,152 x 2 + 256,000 + 4 x 2 x 4 x 16 x 2 x 31
    # = 680,960 (1.36 us) against HBM 2,000,000 + 2 x 32 x 512 = 2,032,768 B (20.33 us).
    assert p.decode.flops == 680_960
    assert p.decode.memory_s == pytest.approx(2_032_768 / 1e11)
    assert p.decode.compute_s == 0.0
    assert p.tpot_s == pytest.approx(2_032_768 / 1e11 + 1e-3)
    e2e = 12_528_640 / 5e11 + 2_032_768 / 1e11 + 2e-3
    assert p.e2e_s == pytest.approx(e2e)
    assert p.tokens_per_s == pytest.approx(2 * 2 / e2e)
    # $3.60/h = $0.001/s
    assert p.cost_per_million_tokens == pytest.approx(0.001 * e2e / 4 * 1e6)
    assert p.bound == "overhead"
    fast = predict(TOY, gpu(step_overhead_ms=0.0), work())
    assert (fast.prefill.bound, fast.decode.bound, fast.bound) == (
        "compute", "hbm-bandwidth", "compute")


def test_prefix_tokens_are_not_computed() -> None:
    cold = predict(TOY, gpu(), work())
    warm = predict(TOY, gpu(), work(prefix_len=20))
    # 10 new tokens each, attending to 20 cached ones: attention 4 x 2 x 4 x 16 x 2 x
    # (10 x 20 + 10 x 11 / 2), linear 2 x 2 x 49,152 x 20.
    assert warm.prefill.flops == 2 * 2 * 49_152 * 20 + 256_000 + 4 * 2 * 4 * 16 * 2 * 255
    assert warm.prefill.flops < cold.prefill.flops
    assert warm.memory.kv_needed == cold.memory.kv_needed


def test_tensor_parallel_costs_and_splits() -> None:
    one = predict(TOY, gpu(step_overhead_ms=0.0), work())
    two = predict(TOY, gpu(step_overhead_ms=0.0, collective_latency_us=5.0), work(), gpus=2)
    assert two.memory.weights == WEIGHTS / 2
    assert two.prefill.flops == one.prefill.flops / 2
    # decode: 2 all-reduces per layer x 2 layers, each 5 us + 2 (2 - 1) / 2 x (2 x 64 x 2 B)
    # / 50 GB/s
    assert two.decode.interconnect_s == pytest.approx(4 * (5e-6 + 256 / 50e9))
    assert two.price_per_hour == 7.2


def test_infeasible_instances_say_why() -> None:
    c = load_catalog(use_env=False)
    assert "no fp8 tensor cores" in predict(c.model("gpt2"), c.gpu("a100-80gb"),
                                            Workload(1, 10, 10, precision="fp8")).reason
    assert "25 attention heads do not split over 2 GPUs" in predict(
        c.model("gpt2-xl"), c.gpu("h100"), Workload(1, 10, 10), gpus=2).reason
    too_big = predict(c.model("llama-3-70b"), c.gpu("t4"), Workload(1, 10, 10))
    assert not too_big.feasible and "exceed the usable" in too_big.reason
    assert math.isinf(too_big.ttft_s) and too_big.tokens_per_s == 0.0


def test_workload_validation() -> None:
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        Workload(0, 10, 10)
    with pytest.raises(ValueError, match=r"prefix_len .* must be below input_len"):
        Workload(1, 10, 10, prefix_len=10)
    with pytest.raises(ValueError, match="safety_factor must be >= 1"):
        Workload(1, 10, 10, safety_factor=0.9)
    with pytest.raises(ValueError, match="precision must be one of"):
        Workload(1, 10, 10, precision="fp4")


def _catalog_with(*gpus: HardwareSpec) -> object:
    from tiertop.planner.catalog import Catalog

    return Catalog({"toy": TOY}, {g.key: g for g in gpus}, (), {"toy": "toy"},
                   {g.key: g.key for g in gpus})


def test_an_instance_that_just_misses_the_slo() -> None:
    cheap = gpu(key="cheap", price_usd_per_hour=1.0)
    fast = gpu(key="fast", price_usd_per_hour=5.0, memory_bandwidth_gb_s=1000,
               step_overhead_ms=0.5)
    catalog = _catalog_with(cheap, fast)
    cheap_tps = predict(TOY, cheap, work()).tokens_per_s
    just_above = SLO(min_tokens_per_s=cheap_tps * 1.001)
    r = rank(catalog, "toy", work(), just_above, gpu_counts=[1])  # type: ignore[arg-type]
    assert [c.prediction.hardware.key for c in r.meeting] == ["fast"]
    assert [c.prediction.hardware.key for c in r.missing] == ["cheap"]
    assert r.missing[0].misses[0].endswith(f"< {cheap_tps * 1.001:,.1f}")
    lines = explain(r)
    assert lines[0].startswith("Best: 1x fast")
    assert any(line.startswith("Cheaper but missing the SLO: 1x cheap") for line in lines)
    at = SLO(min_tokens_per_s=cheap_tps)
    r2 = rank(catalog, "toy", work(), at, gpu_counts=[1])  # type: ignore[arg-type]
    assert r2.best is not None and r2.best.prediction.hardware.key == "cheap"
    assert [c.prediction.hardware.key for c in r2.meeting] == ["cheap", "fast"]
    ttft = SLO(max_ttft_s=predict(TOY, cheap, work()).ttft_s * 0.999)
    r3 = rank(catalog, "toy", work(), ttft, gpu_counts=[1])  # type: ignore[arg-type]
    assert r3.best is not None and r3.best.prediction.hardware.key == "fast"
    assert "TTFT" in r3.missing[0].misses[0]


def test_ranking_orders_by_cost_and_lists_the_rest() -> None:
    c = load_catalog(use_env=False)
    r = rank(c, "llama-3-70b", Workload(16, 1024, 128), SLO(100))
    costs = [x.prediction.cost_per_million_tokens for x in r.meeting]
    assert costs == sorted(costs) and costs
    assert all(x.prediction.tokens_per_s >= 100 for x in r.meeting)
    assert {"t4"} <= {x.prediction.hardware.key for x in r.infeasible}
    data = r.as_dict()
    assert data["best"]["hardware"] == r.meeting[0].prediction.hardware.key
    none = rank(c, "llama-3-70b", Workload(16, 1024, 128), SLO(1e9))
    assert none.best is None and none.explanation()[0].startswith("No instance meets")
