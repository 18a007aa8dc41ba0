"""Text building blocks of the dashboard: sparklines, the occupancy bar, value parsing.

Plain functions over numbers and strings (no widgets), so they are cheap to test and reuse. The
number formats are the ones ``tiertop watch`` prints (:mod:`tiertop.monitor.render_text`), so the
two views read the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tiertop.monitor.render_text import fmt_bytes, fmt_duration, fmt_name_span, fmt_rate

__all__ = [
    "SPARK_CHARS",
    "compact",
    "fmt_bytes",
    "fmt_duration",
    "fmt_name_span",
    "fmt_pct",
    "fmt_rate",
    "occupancy_cells",
    "parse_bytes",
    "parse_fraction",
    "parse_optional_float",
    "parse_optional_int",
    "resample",
    "sparkline",
    "unwrap",
]

FloatArray = npt.NDArray[np.float64]

#: Eight levels, lowest first; a missing point is a space.
SPARK_CHARS: Final = "▁▂▃▄▅▆▇█"
_SPARK_ARRAY: Final = np.array(list(SPARK_CHARS))
_PARTIAL: Final = " ▏▎▍▌▋▊▉"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A fraction as a percentage (``87.5%``); ``-`` when unknown."""
    return f"{float(x) * 100:.{digits}f}%" if _finite(x) else "-"


def resample(
    times: FloatArray, values: FloatArray, width: int, start: float, end: float
) -> FloatArray:
    """Mean of ``values`` in ``width`` equal time bins over ``[start, end]`` (NaN: empty bin).

    Points outside the range are ignored; NaN values do not count.
    """
    out = np.full(width, np.nan)
    if width <= 0 or len(times) == 0 or not end > start:
        return out
    ok = np.isfinite(values) & (times >= start) & (times <= end)
    if not ok.any():
        return out
    t, v = times[ok], values[ok]
    idx = np.minimum(((t - start) / (end - start) * width).astype(np.int64), width - 1)
    sums = np.bincount(idx, weights=v, minlength=width)
    counts = np.bincount(idx, minlength=width)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    # More bins than points: a bin between two near points is empty only because of the
    # rounding of times to bins; carry the previous value over such holes (not past the last
    # point, and not over real silences longer than the points' spacing).
    n_points = int(ok.sum())
    if width > n_points:
        reach = math.ceil(width / n_points)
        filled = np.flatnonzero(np.isfinite(out))
        last = int(filled[-1])
        prev_i, prev_v = -(1 << 30), math.nan
        for i in range(int(filled[0]), last + 1):
            if math.isfinite(out[i]):
                prev_i, prev_v = i, float(out[i])
            elif i - prev_i <= reach:
                out[i] = prev_v
    return out


def sparkline(values: Sequence[float] | FloatArray, lo: float | None = None,
              hi: float | None = None) -> str:
    """One character per value, scaled between ``lo`` (default 0, or the minimum when it is
    negative) and ``hi`` (default the maximum); NaN shows as a space."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return ""
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return " " * arr.size
    low = lo if lo is not None else min(0.0, float(finite.min()))
    high = hi if hi is not None else float(finite.max())
    span = high - low
    top = len(SPARK_CHARS) - 1
    if span <= 0:
        levels = np.full(arr.size, 0 if high <= 0 else top)
    else:
        with np.errstate(invalid="ignore"):
            levels = np.clip(np.rint((arr - low) / span * top), 0, top)
    chars = np.where(np.isfinite(arr), _SPARK_ARRAY[np.nan_to_num(levels).astype(np.int64)], " ")
    return "".join(chars.tolist())


def occupancy_cells(
    occupancy: float | None, width: int, low: float | None, high: float | None
) -> list[tuple[str, str]]:
    """The cells of an occupancy bar: ``(char, role)`` per cell.

    Roles: ``"fill"`` (used), ``"empty"``, ``"mark"`` (a watermark letter on an empty cell) and
    ``"mark-fill"`` (on a used cell). The low watermark shows as ``L`` and the high one as ``H``
    at their fraction of the width, so the marks read without colour; when both fall in the same
    cell, ``H`` wins.
    """
    if width <= 0:
        return []
    occ = min(max(float(occupancy), 0.0), 1.0) if occupancy is not None and _finite(
        occupancy) else 0.0
    eighths = round(occ * width * 8)
    full, part = divmod(eighths, 8)
    cells: list[tuple[str, str]] = []
    for i in range(width):
        if i < full:
            cells.append(("█", "fill"))
        elif i == full and part:
            cells.append((_PARTIAL[part], "fill"))
        else:
            cells.append(("░", "empty"))

    def mark(fraction: float | None, letter: str) -> None:
        if fraction is None or not _finite(fraction):
            return
        i = min(max(int(float(fraction) * width), 0), width - 1)
        filled = i < full or (i == full and part >= 4)
        cells[i] = (letter, "mark-fill" if filled else "mark")

    mark(low, "L")
    mark(high, "H")
    return cells


_BYTES_RE: Final = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.I)
_UNITS: Final = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1000, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1000**2, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40,
}


def parse_bytes(text: str) -> int:
    """``4MiB``, ``512K`` (binary), ``1.5GB`` (decimal), ``65536`` -> bytes.

    Raises:
        ValueError: Not a size, or not a positive whole number of bytes.
    """
    m = _BYTES_RE.match(text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text.strip()!r} is not a size; try 4MiB, 512K, 1.5GB or 65536")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{text.strip()!r} is not a positive size")
    return round(value)


def parse_fraction(text: str, what: str) -> float:
    """``0.9``, ``.9`` or ``90%`` -> 0.9 (no range check: the command checks it).

    Raises:
        ValueError: Not a number.
    """
    raw = text.strip()
    scale = 1.0
    if raw.endswith("%"):
        raw, scale = raw[:-1].strip(), 0.01
    try:
        value = float(raw) * scale
    except ValueError:
        raise ValueError(
            f"{what}: {text.strip()!r} is not a number (0..1, or a percentage)"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: {text.strip()!r} is not a finite number")
    return value


def parse_optional_float(text: str, what: str) -> float | None:
    """A float, or None for an empty field."""
    raw = text.strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{what}: {raw!r} is not a number") from None


def parse_optional_int(text: str, what: str) -> int | None:
    """An integer, or None for an empty field."""
    raw = text.strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{what}: {raw!r} is not a whole number") from None


def unwrap(value: Any, target: str) -> Any:
    """``{"dram": {...}}`` about target ``dram`` -> ``{...}`` (say the tier once)."""
    if isinstance(value, dict) and len(value) == 1 and target in value:
        return value[target]
    return value


def compact(value: Any) -> str:
    """A reply value in one short line: ``dram: high=0.5 low=0.4``, ``{}`` -> ``-``."""
    if isinstance(value, dict):
        if not value:
            return "-"
        parts = []
        for k, v in value.items():
            inner = compact(v)
            parts.append(f"{k}: {inner}" if isinstance(v, dict) else f"{k}={inner}")
        return " ".join(parts) if all(not isinstance(v, dict) for v in value.values()) \
            else "; ".join(parts)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(compact(v) for v in value) or "-"
    if value is None:
        return "-"
    return str(value)

