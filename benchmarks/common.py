"""What every benchmark shares: the command line, machine facts, and the two output forms."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Figure:
    """One reported number, with its target when the issue names one."""

    name: str
    value: float | int | None
    unit: str = ""
    target: str = ""  # e.g. ">= 0.7"
    note: str = ""

    def meets_target(self) -> bool | None:
        if not self.target or self.value is None:
            return None
        op, _, bound = self.target.partition(" ")
        limit = float(bound.replace(",", ""))
        return float(self.value) >= limit if op == ">=" else float(self.value) <= limit


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a fast sanity run")
    return p


def report(title: str, figures: Sequence[Figure], as_json: bool,
           details: dict[str, Any] | None = None) -> None:
    if as_json:
        out: dict[str, Any] = {f.name: f.value for f in figures}
        out["targets"] = {f.name: f.target for f in figures if f.target}
        out["machine"] = machine_info()
        if details:
            out["details"] = details
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(title)
    width = max(len(f.name) for f in figures)
    for f in figures:
        met = f.meets_target()
        mark = "" if met is None else ("  ok" if met else "  MISSED")
        value = "n/a" if f.value is None else _fmt(f.value)
        target = f"(target {f.target})" if f.target else ""
        print(f"  {f.name:<{width}}  {value:>14} {f.unit:<8} {target}{mark}  {f.note}")
    info = machine_info()
    print(f"  machine: {info['cpus']} CPUs, {info['memory_gib']} GiB, Python {info['python']}")


def _fmt(value: float | int) -> str:
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    """The smallest of ``repeats`` timings (seconds): the run least disturbed by neighbours."""
    return min(fn() for _ in range(repeats))


def median_of(repeats: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(repeats))


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
