"""Fit the predictor's efficiency factors to measured runs, and show predicted vs measured.

A measurement is one request (or one batch): its shape (batch size, prompt tokens, cached prefix
tokens, output tokens) and what was measured: TTFT and TPOT. tiertop's runtime publishes exactly
that in ``RequestDone`` messages, so measurements come from

* a JSONL file of ``RequestDone``-like objects, one per line (``prompt_tokens``,
  ``output_tokens``, ``ttft_s``, ``tpot_s``; optional ``batch_size`` (default 1),
  ``prefix_tokens`` (an int, or per-tier counts as ``RequestDone`` has them),
  ``recomputed_tokens``, ``fetch_latency_s`` (seconds, or per tier), ``sample_rate``,
  ``error``); other keys are ignored, lines with a ``type`` other than ``RequestDone`` are
  skipped (so a JSONL export of a whole telemetry stream works), failed requests are skipped;
* a tiertop recording, when :mod:`tiertop.monitor.recording` can read it (the same messages).

The fit: for one model on one hardware entry, find ``compute_efficiency`` and
``memory_efficiency`` in (0, 1] and ``step_overhead_ms`` >= 0 (plus ``host_link_efficiency``
when some measured run offloads KV) minimising a robust (Cauchy, scale 0.5) loss of the log
errors of TTFT and TPOT (relative errors, so short and long requests weigh alike; an outlier such
as a request that queued counts little), with Nelder-Mead (Nelder & Mead,
Computer Journal 1965) on unconstrained transforms (logit for efficiencies, log for the
overhead). Measured TTFT is taken net of ``fetch_latency_s`` (time spent restoring cached KV,
which the predictor does not model). Requests that queued behind others report queueing in their
TTFT: calibrate from runs at low load.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import HardwareSpec, ModelSpec
from .model import Prediction, Workload, predict

__all__ = [
    "CalibrationResult",
    "Measurement",
    "MeasurementError",
    "calibrate",
    "load_measurements",
    "measurements_from_messages",
    "nelder_mead",
]


class MeasurementError(ValueError):
    """A measurement file or record cannot be used."""


@dataclass(frozen=True)
class Measurement:
    """One measured request or batch."""

    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    tpot_s: float
    batch_size: int = 1
    prefix_tokens: int = 0
    fetch_s: float = 0.0
    weight: float = 1.0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, self.prompt_tokens, self.prefix_tokens, self.output_tokens)


def _total(value: Any) -> float:
    if isinstance(value, Mapping):
        return float(sum(float(v) for v in value.values()))
    return float(value or 0)


def measurement_from_record(record: Mapping[str, Any], where: str = "record") -> Measurement | None:
    """A measurement from a ``RequestDone``-like mapping; None for records to skip (another
    message type, a failed request, nothing measured)."""
    kind = record.get("type")
    if kind not in (None, "RequestDone"):
        return None
    if record.get("error"):
        return None
    try:
        prompt = int(record["prompt_tokens"])
        output = int(record["output_tokens"])
        ttft = float(record["ttft_s"])
        tpot = float(record.get("tpot_s", 0.0))
    except KeyError as exc:
        raise MeasurementError(f"{where}: missing {exc.args[0]!r} (needs prompt_tokens, "
                               "output_tokens, ttft_s and tpot_s)") from None
    except (TypeError, ValueError) as exc:
        raise MeasurementError(f"{where}: {exc}") from None
    if prompt < 1 or output < 1 or not ttft > 0:
        return None
    # Restored prompt tokens: per tier in ``prefix_tokens`` when the runtime says; otherwise
    # what ``recomputed_tokens`` leaves (0 there means "not reported": RequestDone's default).
    prefix = int(_total(record.get("prefix_tokens", 0)))
    recomputed = int(record.get("recomputed_tokens", 0) or 0)
    if not record.get("prefix_tokens") and recomputed > 0:
        prefix = max(0, prompt - recomputed)
    prefix = min(prefix, prompt - 1)
    rate = float(record.get("sample_rate", 1.0) or 1.0)
    return Measurement(
        prompt_tokens=prompt, output_tokens=output, ttft_s=ttft, tpot_s=max(tpot, 0.0),
        batch_size=int(record.get("batch_size", 1)), prefix_tokens=prefix,
        fetch_s=_total(record.get("fetch_latency_s", 0.0)), weight=1.0 / rate,
    )


def measurements_from_messages(messages: Iterable[Any]) -> list[Measurement]:
    """Measurements from decoded telemetry messages (``RequestDone`` ones; others ignored)."""
    out = []
    for m in messages:
        if type(m).__name__ != "RequestDone":
            continue
        fields = {name: getattr(m, name) for name in m.__struct_fields__}
        got = measurement_from_record({**fields, "type": "RequestDone"})
        if got is not None:
            out.append(got)
    return out


def load_measurements(path: str | Path) -> list[Measurement]:
    """Measurements from a JSONL file (see the module docstring) or a tiertop recording."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(64).lstrip()
    except OSError as exc:
        raise MeasurementError(f"{p}: cannot read: {exc}") from None
    if head[:1] not in (b"{", b""):
        from .recordings import read_messages

        return measurements_from_messages(read_messages(p))
    out = []
    with p.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MeasurementError(f"{p}:{number}: not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise MeasurementError(f"{p}:{number}: expected a JSON object per line")
            got = measurement_from_record(record, f"{p}:{number}")
            if got is not None:
                out.append(got)
    if not out:
        raise MeasurementError(f"{p}: no usable measurement (RequestDone-like records with "
                               "prompt_tokens, output_tokens, ttft_s, tpot_s)")
    return out


# ------------------------------------------------------------------------------ the optimiser


def nelder_mead(
    f: Callable[[list[float]], float],
    x0: Sequence[float],
    *,
    step: float = 0.5,
    max_iter: int = 400,
    tol: float = 1e-10,
) -> tuple[list[float], float]:
    """Minimise ``f`` from ``x0`` with the Nelder-Mead simplex (standard coefficients:
    reflection 1, expansion 2, contraction 0.5, shrink 0.5). Returns (x, f(x))."""
    n = len(x0)
    simplex = [list(map(float, x0))]
    for i in range(n):
        x = list(map(float, x0))
        x[i] += step
        simplex.append(x)
    values = [f(x) for x in simplex]
    for _ in range(max_iter):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if abs(values[-1] - values[0]) <= tol * (1.0 + abs(values[0])):
            break
        centroid = [sum(x[i] for x in simplex[:-1]) / n for i in range(n)]
        worst = simplex[-1]

        def toward(t: float, worst: list[float] = worst,
                   centroid: list[float] = centroid) -> list[float]:
            return [c + t * (w - c) for c, w in zip(centroid, worst, strict=True)]

        reflected = toward(-1.0)
        fr = f(reflected)
        if fr < values[0]:
            expanded = toward(-2.0)
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = toward(0.5 if fr >= values[-1] else -0.5)
            fc = f(contracted)
            if fc < min(fr, values[-1]):
                simplex[-1], values[-1] = contracted, fc
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, pt, strict=True)]
                                    for pt in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    i = min(range(n + 1), key=values.__getitem__)
    return simplex[i], values[i]


# ------------------------------------------------------------------------------- calibration


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


@dataclass(frozen=True)
class ShapeRow:
    """Predicted vs measured for one request shape (medians over its measurements)."""

    batch_size: int
    prompt_tokens: int
    prefix_tokens: int
    output_tokens: int
    count: int
    measured_ttft_s: float
    measured_tpot_s: float
    before_ttft_s: float
    before_tpot_s: float
    after_ttft_s: float
    after_tpot_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CalibrationResult:
    model: ModelSpec
    before: HardwareSpec
    after: HardwareSpec
    fitted: dict[str, float]
    fixed: dict[str, str]  # factors not fitted, and why
    loss_before: float
    loss_after: float
    rows: tuple[ShapeRow, ...]
    measurements: int
    notes: tuple[str, ...] = field(default=())

    def error_summary(self) -> dict[str, float]:
        """Median absolute relative error of TTFT and TPOT, before and after."""
        def med(pairs: list[tuple[float, float]]) -> float:
            errs = [abs(p / m - 1) for p, m in pairs if m > 0]
            return statistics.median(errs) if errs else math.nan

        rows = self.rows
        return {
            "ttft_before": med([(r.before_ttft_s, r.measured_ttft_s) for r in rows]),
            "ttft_after": med([(r.after_ttft_s, r.measured_ttft_s) for r in rows]),
            "tpot_before": med([(r.before_tpot_s, r.measured_tpot_s) for r in rows
                                if r.output_tokens > 1]),
            "tpot_after": med([(r.after_tpot_s, r.measured_tpot_s) for r in rows
                               if r.output_tokens > 1]),
        }

    def toml_snippet(self) -> str:
        """A catalogue override carrying the fitted factors (put it in a --catalog DIR)."""
        lines = [f"[hardware.{self.after.key}]",
                 f"# calibrated on {self.measurements} measured requests of {self.model.key}"]
        for name, value in self.fitted.items():
            lines.append(f"{name} = {value:.4g}")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.key, "hardware": self.before.key,
            "measurements": self.measurements, "fitted": self.fitted, "fixed": self.fixed,
            "loss_before": self.loss_before, "loss_after": self.loss_after,
            "median_relative_error": self.error_summary(),
            "rows": [r.as_dict() for r in self.rows], "notes": list(self.notes),
        }


def _predictions(model: ModelSpec, hw: HardwareSpec, shapes: Iterable[tuple[int, int, int, int]],
                 precision: str, gpus: int) -> dict[tuple[int, int, int, int], Prediction]:
    out = {}
    for shape in shapes:
        batch, prompt, prefix, output = shape
        w = Workload(batch, prompt, output, precision=precision, safety_factor=1.0,
                     prefix_len=prefix)
        p = predict(model, hw, w, gpus)
        if not p.feasible:
            raise MeasurementError(f"shape batch={batch} prompt={prompt} output={output} "
                                   f"cannot run on {gpus}x {hw.key}: {p.reason}")
        out[shape] = p
    return out


#: Scale of the robust loss on log errors: errors well beyond it (a request that queued, a
#: hiccup) count roughly logarithmically instead of quadratically.
CAUCHY_SCALE = 0.5
_OVERHEAD_LOG_RANGE = (math.log(1e-4), math.log(1e5))  # ms


def _rho(r: float) -> float:
    """Cauchy loss of a log error: r**2 near 0, logarithmic far out."""
    c2 = CAUCHY_SCALE * CAUCHY_SCALE
    return c2 * math.log1p(r * r / c2)


def _loss(ms: Sequence[Measurement], preds: Mapping[tuple[int, int, int, int], Prediction]
          ) -> float:
    total = 0.0
    for m in ms:
        p = preds[m.shape]
        measured = max(m.ttft_s - m.fetch_s, 1e-9)
        total += m.weight * _rho(math.log(max(p.ttft_s, 1e-12) / measured))
        if m.output_tokens > 1 and m.tpot_s > 0:
            total += m.weight * _rho(math.log(max(p.tpot_s, 1e-12) / m.tpot_s))
    return total


def calibrate(
    model: ModelSpec,
    hw: HardwareSpec,
    measurements: Sequence[Measurement],
    *,
    precision: str = "fp16",
    gpus: int = 1,
) -> CalibrationResult:
    """Fit ``hw``'s efficiency factors for ``model`` to ``measurements``."""
    if not measurements:
        raise MeasurementError("no measurements to calibrate from")
    shapes = sorted({m.shape for m in measurements})
    before = _predictions(model, hw, shapes, precision, gpus)
    offloads = any(p.memory.kv_offloaded > 0 for p in before.values())
    names = ["compute_efficiency", "memory_efficiency", "step_overhead_ms"]
    fixed = {"interconnect_efficiency": "not fitted: one GPU per measurement" if gpus == 1
             else "not fitted"}
    if offloads:
        names.append("host_link_efficiency")
    else:
        fixed["host_link_efficiency"] = "not fitted: no measured run offloads KV"

    def decode(x: Sequence[float]) -> dict[str, float]:
        out = {}
        for name, v in zip(names, x, strict=True):
            out[name] = math.exp(v) if name == "step_overhead_ms" else _sigmoid(v)
        return out

    def start(overhead_ms: float, scale: float) -> list[float]:
        return [math.log(overhead_ms) if n == "step_overhead_ms"
                else _logit(getattr(hw, n) * scale) for n in names]

    def objective(x: list[float]) -> float:
        factors = decode(x)
        if any(v <= 0 for k, v in factors.items() if k != "step_overhead_ms"):
            return math.inf
        if not _OVERHEAD_LOG_RANGE[0] <= x[names.index("step_overhead_ms")] <= (
                _OVERHEAD_LOG_RANGE[1]):
            return math.inf  # keeps the simplex out of the flat "no overhead at all" plateau
        return _loss(measurements, _predictions(model, hw.with_efficiencies(**factors), shapes,
                                                precision, gpus))

    # Several starts (the overhead and the efficiencies trade off against each other), each
    # polished by restarts from its best point (escapes an early collapse of the simplex).
    best_x: list[float] = []
    best_loss = math.inf
    for overhead_ms, scale in ((max(hw.step_overhead_ms, 0.01), 1.0), (1.0, 1.0),
                               (10.0, 0.2), (0.1, 0.2)):
        x, value = nelder_mead(objective, start(overhead_ms, scale), step=1.0)
        x, value = nelder_mead(objective, x, step=0.3)
        if value < best_loss:
            best_x, best_loss = x, value
    fitted = decode(best_x)
    after_hw = hw.with_efficiencies(**fitted)
    after = _predictions(model, after_hw, shapes, precision, gpus)
    rows = []
    for shape in shapes:
        group = [m for m in measurements if m.shape == shape]
        b, prompt, prefix, output = shape
        rows.append(ShapeRow(
            batch_size=b, prompt_tokens=prompt, prefix_tokens=prefix, output_tokens=output,
            count=len(group),
            measured_ttft_s=statistics.median(max(m.ttft_s - m.fetch_s, 1e-9) for m in group),
            measured_tpot_s=statistics.median(m.tpot_s for m in group),
            before_ttft_s=before[shape].ttft_s, before_tpot_s=before[shape].tpot_s,
            after_ttft_s=after[shape].ttft_s, after_tpot_s=after[shape].tpot_s,
        ))
    notes = []
    if len(shapes) < len(names):
        notes.append(f"only {len(shapes)} distinct shape(s) for {len(names)} factors: the fit "
                     "is underdetermined; measure more prompt and output lengths")
    for name, value in fitted.items():
        if name != "step_overhead_ms" and value > 0.98:
            notes.append(f"{name} fitted at {value:.2f}: the catalogue's peak for {hw.key} may "
                         "be too low")
    return CalibrationResult(
        model=model, before=hw, after=after_hw, fitted=fitted, fixed=fixed,
        loss_before=_loss(measurements, before), loss_after=best_loss, rows=tuple(rows),
        measurements=len(measurements), notes=tuple(notes),
    )
