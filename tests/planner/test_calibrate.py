"""Calibration: the optimiser, reading measurements, and recovering known factors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tiertop.planner.calibrate import (
    Measurement,
    MeasurementError,
    calibrate,
    load_measurements,
    nelder_mead,
)
from tiertop.planner.catalog import load_catalog
from tiertop.planner.model import Workload, predict


def test_nelder_mead_finds_a_minimum() -> None:
    def rosenbrock(x: list[float]) -> float:
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    x, value = nelder_mead(rosenbrock, [-1.2, 1.0], max_iter=2000)
    assert value < 1e-8
    assert x == pytest.approx([1.0, 1.0], abs=1e-3)


def test_calibration_recovers_known_factors() -> None:
    """Measurements made by the predictor itself with known factors (plus 3 % noise) are fitted
    back to those factors, and predicted-vs-measured gets close."""
    c = load_catalog(use_env=False)
    model, hw = c.model("gpt2"), c.gpu("a10g")
    truth = hw.with_efficiencies(compute_efficiency=0.31, memory_efficiency=0.62,
                                 step_overhead_ms=3.0)
    rng = random.Random(1)
    measured = []
    for batch, prompt, output in [(1, 64, 16), (4, 512, 2), (16, 1000, 24), (1, 900, 8),
                                  (16, 128, 16), (4, 32, 24)]:
        p = predict(model, truth, Workload(batch, prompt, output, safety_factor=1.0))
        for _ in range(2):
            measured.append(Measurement(prompt, output, p.ttft_s * rng.uniform(0.97, 1.03),
                                        p.tpot_s * rng.uniform(0.97, 1.03), batch_size=batch))
    result = calibrate(model, hw, measured)
    assert result.fitted["compute_efficiency"] == pytest.approx(0.31, rel=0.1)
    assert result.fitted["memory_efficiency"] == pytest.approx(0.62, rel=0.1)
    assert result.fitted["step_overhead_ms"] == pytest.approx(3.0, rel=0.1)
    assert result.loss_after < result.loss_before / 100
    errors = result.error_summary()
    assert errors["ttft_after"] < 0.05 < errors["ttft_before"]
    assert errors["tpot_after"] < 0.05 < errors["tpot_before"]
    assert "host_link_efficiency" in result.fixed
    assert result.toml_snippet().startswith("[hardware.a10g]\n")
    assert len(result.rows) == 6 and result.rows[0].count == 2


def test_load_measurements_reads_request_done_records(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    lines = [
        {"type": "Hello", "source": "x"},  # another message: skipped
        {"type": "RequestDone", "prompt_tokens": 100, "output_tokens": 10, "ttft_s": 0.05,
         "tpot_s": 0.01, "prefix_tokens": {"dram": 64, "disk": 16},
         "fetch_latency_s": {"dram": 0.001, "disk": 0.002}, "sample_rate": 0.5},
        {"prompt_tokens": 50, "output_tokens": 5, "ttft_s": 0.02, "tpot_s": 0.004,
         "recomputed_tokens": 30, "batch_size": 4},
        {"prompt_tokens": 50, "output_tokens": 5, "ttft_s": 0.0, "tpot_s": 0.0,
         "error": "model failed"},  # failed: skipped
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    got = load_measurements(path)
    assert got == [
        Measurement(100, 10, 0.05, 0.01, batch_size=1, prefix_tokens=80, fetch_s=0.003,
                    weight=2.0),
        Measurement(50, 5, 0.02, 0.004, batch_size=4, prefix_tokens=20),
    ]


def test_load_measurements_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_tokens": 5}\n')
    with pytest.raises(MeasurementError, match=r"bad.jsonl:1: missing 'output_tokens'"):
        load_measurements(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt_tokens": \n')
    with pytest.raises(MeasurementError, match=r"broken\.jsonl:1: not JSON"):
        load_measurements(broken)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"type": "Hello"}\n')
    with pytest.raises(MeasurementError, match="no usable measurement"):
        load_measurements(empty)


def test_calibration_refuses_shapes_that_cannot_run() -> None:
    c = load_catalog(use_env=False)
    with pytest.raises(MeasurementError, match="cannot run on 1x t4"):
        calibrate(c.model("llama-3-70b"), c.gpu("t4"), [Measurement(10, 10, 0.1, 0.01)])
