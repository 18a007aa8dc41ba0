"""``tiertop plan``: ranking (table and JSON), errors, tier sizing from a recording or JSONL,
and calibration from a recording."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiertop.main import main
from tiertop.monitor.framing import MessageCodec
from tiertop.monitor.protocol import (
    TOPIC_KV,
    TOPIC_OF,
    Hello,
    RequestDone,
    TelemetryMessage,
    TierInfo,
    TierSample,
    TierStats,
    Topology,
)
from tiertop.monitor.recording import RecordingWriter
from tiertop.monitor.vllm_events import encode_batch
from tiertop.planner.catalog import load_catalog
from tiertop.planner.model import Workload, predict
from tiertop.runtime.telemetry import TelemetrySink
from tiertop.tiers.hierarchy import Hierarchy, TierConfig

from tests.monitor.event_collector import EventCollector

RANK_ARGS = ["plan", "--model", "llama-3-8b", "--batch-size", "32", "--input-len", "1024",
             "--output-len", "256", "--safety-factor", "1.1", "--slo-tps", "1000"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_ranking(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, *RANK_ARGS, "--slo-ttft-ms", "2000", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["model"] == "llama-3-8b"
    assert data["slo"] == {"min_tokens_per_s": 1000.0, "max_ttft_s": 2.0}
    ranking = data["ranking"]
    assert ranking and data["best"] == ranking[0]
    costs = [r["cost_per_million_tokens"] for r in ranking]
    assert costs == sorted(costs)
    for r in ranking:
        assert r["meets_slo"] and r["tokens_per_s"] >= 1000 and r["ttft_s"] <= 2.0
        assert r["kv_bytes_per_token"] == 131_072
        assert r["bound"] in ("compute", "hbm-bandwidth", "offload-transfer", "interconnect",
                              "overhead")
        assert set(r["memory_per_gpu"]) >= {"weights_bytes", "activations_bytes",
                                             "buffers_bytes", "kv_needed_bytes",
                                             "offload_fraction"}
    for r in data["missing_slo"]:
        assert not r["meets_slo"] and r["misses"]
    assert data["explanation"][0].startswith("Best: ")
    # the JSON agrees with the library
    c = load_catalog(use_env=False)
    best = data["best"]
    p = predict(c.model("llama-3-8b"), c.gpu(best["hardware"]),
                Workload(32, 1024, 256, safety_factor=1.1), best["gpus"])
    assert best["tokens_per_s"] == pytest.approx(p.tokens_per_s)


def test_table_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, *RANK_ARGS, "--hardware", "h100", "--hardware", "l4", "--gpus", "1")
    assert rc == 0
    assert "Llama 3 8B (llama-3-8b)" in out and "$/M tok" in out
    assert "Best: 1x h100" in out and "Bound by" in out
    rc, out, _ = run(capsys, *RANK_ARGS[:-1], "1e9")
    assert rc == 1 and "No instance meets the SLO" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["plan", "--model", "llama-9", "--batch-size", "1", "--input-len", "1",
      "--output-len", "1"], "unknown model 'llama-9'"),
    (["plan", "--model", "gpt2"], "ranking needs --batch-size, --input-len, --output-len"),
    (["plan", "--model", "gpt2", "--batch-size", "0", "--input-len", "1", "--output-len", "1"],
     "batch_size must be an integer >= 1"),
    (["plan", "--model", "gpt2", "--batch-size", "1", "--input-len", "1", "--output-len", "1",
      "--gpus", "two"], "--gpus 'two'"),
    (["plan", "--calibrate", "x.jsonl", "--model", "gpt2"], "exactly one --hardware"),
])
def test_errors_exit_2_with_a_message(capsys: pytest.CaptureFixture[str], argv: list[str],
                                      message: str) -> None:
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("tiertop plan: error: ") and message in err


def test_bad_catalogue_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[models.x]\nlayerz = 1\n")
    rc, _, err = run(capsys, "plan", "--list", "--catalog", str(tmp_path))
    assert rc == 2 and "unknown key 'layerz'" in err and "bad.toml" in err


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "plan", "--list", "--json")
    data = json.loads(out)
    assert rc == 0 and "h200" in data["hardware"] and "opt-66b" in data["models"]
    assert data["hardware"]["h100"]["sources"]["price"].startswith("AWS p5.48xlarge")


def test_from_jsonl_of_accesses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "accesses.jsonl"
    loop = [k for _ in range(10) for k in range(3000)]
    lines = [json.dumps(k) for k in loop[:10_000]] + [
        json.dumps({"keys": [f"{k:x}" for k in loop[i:i + 500]]})
        for i in range(10_000, len(loop), 500)]
    path.write_text("\n".join(lines) + '\n{"type": "RequestDone"}\n{"what": 1}\n')
    rc, out, _ = run(capsys, "plan", "--from-recording", str(path), "--tiers",
                     "gpu=500,dram=1000:0.9:0.8", "--sample-rate", "1", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["input"] == {"accesses": 30_000, "messages": 1, "events": 0, "skipped": 1}
    assert data["needed_blocks"] == 3000
    assert [t["name"] for t in data["tiers"]] == ["gpu", "dram"]
    dram = data["tiers"][1]
    assert dram["recommended_blocks"] > 2500 and dram["recommended_cumulative"] >= 0.89


# ------------------------------------------------------------------- a recorded session


TESTGPU = """
[hardware.testgpu]
name = "Test GPU"
memory_gib = 16
memory_bandwidth_gb_s = 200
peak_tflops = { fp16 = 20 }
host_link_gb_s = 16
interconnect_gb_s = 16
max_gpus = 1
compute_efficiency = 0.5
memory_efficiency = 0.5
host_link_efficiency = 0.8
interconnect_efficiency = 0.7
collective_latency_us = 10
step_overhead_ms = 0
price_usd_per_hour = 0.5
price_model = "test"
price_date = "today"
[hardware.testgpu.sources]
memory = "test"
compute = "test"
bandwidth = "test"
host_link = "test"
interconnect = "test"
price = "test"
"""


def write_recording(path: Path) -> None:
    """A session as a runtime would publish it: Hello, block events of a two-tier hierarchy
    serving a zipf trace, TierStats with its counters, and RequestDone messages timed by the
    predictor for gpt2 on testgpu with compute 0.2 / memory 0.4 / 1 ms overhead."""
    codec = MessageCodec()
    seqs: dict[bytes, int] = {}
    writer = RecordingWriter(path, fsync_interval_s=None)
    clock = 0.0

    def send(message: TelemetryMessage) -> None:
        topic = TOPIC_OF[type(message)].encode()
        message.source, message.epoch, message.clock = "test:1", 1, clock
        message.seq = seqs.setdefault(topic, 0)
        seqs[topic] += 1
        writer.append(1000.0 + clock, topic, message.seq, codec.encode(message))

    send(Hello(mode="sim", topology=Topology(tier_order=["gpu", "dram"], block_bytes=4096),
               tiers=[TierInfo(name="gpu", capacity_bytes=400 * 4096, block_bytes=4096),
                      TierInfo(name="dram", capacity_bytes=1200 * 4096, block_bytes=4096)]))
    pub = EventCollector()
    h = Hierarchy([TierConfig("gpu", 400 * 4096, high=1.0, low=1.0),
                   TierConfig("dram", 1200 * 4096, high=1.0, low=1.0)],
                  block_bytes=4096, sink=TelemetrySink(pub))  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    ranks = np.arange(1, 5001, dtype=np.float64) ** -0.9
    keys = rng.choice(5000, size=30_000, p=ranks / ranks.sum()).tolist()
    kv = TOPIC_KV.encode()
    for i in range(0, len(keys), 1000):
        clock = i / 1000
        h.run_trace(keys[i:i + 1000])
        seqs.setdefault(kv, 0)
        writer.append(1000.0 + clock, kv, seqs[kv], encode_batch(pub.events, clock))
        seqs[kv] += 1
        pub.events = []
        send(TierStats(tiers=[TierSample(name=t.name, capacity_bytes=t.capacity,
                                         high_watermark=1.0, low_watermark=1.0,
                                         hits=t.counters.hits,
                                         misses=h.lookups - t.counters.hits)
                              for t in h.tiers]))
    catalog = load_catalog(use_env=False)
    truth = catalog.gpu("l4").with_efficiencies(compute_efficiency=0.2, memory_efficiency=0.4,
                                                step_overhead_ms=1.0)
    for prompt, output in [(64, 8), (256, 16), (900, 4), (500, 24), (128, 12)]:
        p = predict(catalog.model("gpt2"), truth, Workload(1, prompt, output, safety_factor=1.0))
        clock += 1
        send(RequestDone(request_id=str(prompt), ttft_s=p.ttft_s, tpot_s=p.tpot_s,
                         prompt_tokens=prompt, output_tokens=output))
    writer.close()


def test_from_recording_and_calibrate(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    rec = tmp_path / "session.ttrec"
    write_recording(rec)
    rc, out, _ = run(capsys, "plan", "--from-recording", str(rec), "--sample-rate", "1",
                     "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["input"]["messages"] > 30
    assert [(t["name"], t["capacity_blocks"]) for t in data["tiers"]] == [
        ("gpu", 400), ("dram", 1200)]
    assert any("block events revealed" in n for n in data["notes"])  # gpu hits are unseen
    assert data["what_ifs"][0].startswith("if gpu were twice as large (400 -> 800 blocks)")
    rc, out, _ = run(capsys, "plan", "--from-recording", str(rec), "--sample-rate", "1")
    assert rc == 0 and "Miss-ratio curve (lru)" in out and "  dram: " in out

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "l4-like.toml").write_text(TESTGPU)
    rc, out, _ = run(capsys, "plan", "--calibrate", str(rec), "--model", "gpt2",
                     "--hardware", "l4", "--json")
    assert rc == 0
    result = json.loads(out)
    assert result["measurements"] == 5
    assert result["fitted"]["compute_efficiency"] == pytest.approx(0.2, rel=0.05)
    assert result["fitted"]["memory_efficiency"] == pytest.approx(0.4, rel=0.05)
    assert result["median_relative_error"]["tpot_after"] < 0.01
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"prompt_tokens": 100, "output_tokens": 5, "ttft_s": 0.01, "tpot_s": 0.004}\n'
                    '{"prompt_tokens": 700, "output_tokens": 9, "ttft_s": 0.03, "tpot_s": 0.005}\n')
    rc, out, _ = run(capsys, "plan", "--calibrate", str(runs), "--model", "gpt2",
                     "--hardware", "testgpu", "--catalog", str(tmp_path / "cat"))
    assert rc == 0 and "[hardware.testgpu]" in out and "TTFT ms measured" in out
    assert "underdetermined" in out  # 2 shapes for 3 factors
