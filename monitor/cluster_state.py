"""The cluster simulator's per-rack and per-GPU picture, folded from ``ClusterStats``.

:class:`ClusterFold` is what :class:`~tiertop.monitor.state.StateModel` uses; a dashboard reads
``StateModel.cluster``, a :class:`ClusterView`:

``ClusterView``
    ``racks``: one :class:`RackView` per rack, by rack id (empty for a runtime that is not a
    cluster); ``gpus``: for each drilled-into rack id, its GPUs as :class:`GpuView` s, by GPU id;
    ``drill_racks``: the racks the source sends per-GPU detail for (set with ``SetDrillDown``);
    ``note``: the source's own words on sampling; ``clock``: the message clock of the latest
    ClusterStats (None before any); ``tick``: its tick.
``RackView``
    ``rack`` (id), ``gpus`` (count), ``occupancy`` (tier kind -> fraction 0..1 of the rack's
    capacity of that kind), ``hit_ratio`` (block hits over block lookups of the requests the
    rack served over the last ``window_s`` of message clock; None when it served no lookup in
    the window), ``evictions_per_s`` (over the same window; 0.0 without one), ``load``
    (fraction of the running-request KV memory in use), ``queue`` (requests waiting),
    ``running`` (requests in service) and ``faults`` (active faults on the rack's pool).
``GpuView``
    ``gpu`` (id), ``rack``, ``role`` (``colocated``, ``prefill`` or ``decode``),
    ``occupancy`` (its own tiers), ``hit_ratio`` (window, as for racks), ``queue``,
    ``running`` and ``load``.

Deterministic and bounded: time comes from message clocks only; each rack and GPU keeps at most
``max_samples`` history points, histories of GPUs whose rack is no longer drilled into are
dropped, and at most ``max_racks`` racks and ``max_gpus`` GPUs are kept (the rest of a larger
message is ignored and counted in :attr:`ClusterFold.truncated`). Never imports Textual.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .protocol import ClusterStats

__all__ = ["ClusterFold", "ClusterView", "GpuView", "RackView"]


@dataclass(frozen=True, slots=True)
class RackView:
    """One rack as a dashboard shows it (see the module docstring)."""

    rack: int
    gpus: int
    occupancy: dict[str, float]
    hit_ratio: float | None
    evictions_per_s: float
    load: float
    queue: int = 0
    running: int = 0
    faults: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU of a drilled-into rack (see the module docstring)."""

    gpu: int
    occupancy: dict[str, float]
    hit_ratio: float | None
    queue: int
    rack: int = 0
    role: str = ""
    running: int = 0
    load: float = 0.0


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The whole cluster picture (see the module docstring)."""

    racks: list[RackView] = field(default_factory=list)
    gpus: dict[int, list[GpuView]] = field(default_factory=dict)
    drill_racks: list[int] = field(default_factory=list)
    note: str = ""
    clock: float | None = None
    tick: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for snapshots and JSON); dict keys of ``gpus`` become strings."""
        return {
            "racks": [_plain(r) for r in self.racks],
            "gpus": {str(k): [_plain(g) for g in v] for k, v in self.gpus.items()},
            "drill_racks": list(self.drill_racks),
            "note": self.note,
            "clock": self.clock,
            "tick": self.tick,
        }


def _plain(view: RackView | GpuView) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in view.__slots__:
        value = getattr(view, name)
        out[name] = list(value) if isinstance(value, tuple) else (
            dict(value) if isinstance(value, dict) else value
        )
    return out


class _History:
    """(time, hits, lookups, evictions) points of one rack or GPU, oldest first."""

    __slots__ = ("points",)

    def __init__(self, max_samples: int) -> None:
        self.points: deque[tuple[float, int, int, int]] = deque(maxlen=max_samples)

    def add(self, t: float, hits: int, lookups: int, evictions: int, window_s: float) -> None:
        points = self.points
        if points:
            last = points[-1]
            if hits < last[1] or lookups < last[2] or evictions < last[3] or t < last[0]:
                points.clear()  # counters went backwards: the source restarted
            elif t == last[0]:
                points.pop()  # the same instant again (a duplicate): keep the newer values
        points.append((t, hits, lookups, evictions))
        horizon = t - window_s
        # Keep one point at or before the horizon: the baseline of the window.
        while len(points) >= 2 and points[1][0] <= horizon:
            points.popleft()

    def window(self) -> tuple[float | None, float]:
        """(hit ratio, evictions per second) between the baseline and the latest point."""
        points = self.points
        if len(points) < 2:
            return None, 0.0
        t0, h0, l0, e0 = points[0]
        t1, h1, l1, e1 = points[-1]
        lookups = l1 - l0
        ratio = (h1 - h0) / lookups if lookups > 0 else None
        span = t1 - t0
        return ratio, ((e1 - e0) / span if span > 0 else 0.0)


class ClusterFold:
    """Folds ``ClusterStats`` into a :class:`ClusterView` (see the module docstring).

    Args:
        window_s: Message-clock seconds the hit ratios and eviction rates are taken over.
        max_samples: History points kept per rack or GPU.
        max_racks: Racks kept (a larger message is cut and counted).
        max_gpus: GPU rows kept from the drilled-into racks.
    """

    def __init__(
        self,
        window_s: float = 5.0,
        *,
        max_samples: int = 256,
        max_racks: int = 16_384,
        max_gpus: int = 4096,
    ) -> None:
        if window_s <= 0 or max_samples < 2:
            raise ValueError("window_s must be > 0 and max_samples >= 2")
        self.window_s = window_s
        self.max_samples = max_samples
        self.max_racks = max_racks
        self.max_gpus = max_gpus
        self.truncated = 0
        self.folded = 0
        self._last: ClusterStats | None = None
        self._time: float | None = None
        self._racks: dict[int, _History] = {}
        self._gpus: dict[int, _History] = {}
        self._view: ClusterView | None = ClusterView()

    def reset(self) -> None:
        """Forget every history (the source restarted)."""
        self._last = None
        self._time = None
        self._racks.clear()
        self._gpus.clear()
        self._view = ClusterView()

    def fold(self, message: ClusterStats, t: float) -> None:
        """Fold one message; ``t`` is its time on the reader's timeline (message clock)."""
        last = self._last
        if last is not None and self._time is not None and t < self._time:
            return  # older than what was folded (a replayed duplicate)
        self.folded += 1
        window = self.window_s
        racks = message.racks
        if len(racks) > self.max_racks:
            self.truncated += len(racks) - self.max_racks
            racks = racks[: self.max_racks]
        histories = self._racks
        for sample in racks:
            history = histories.get(sample.rack)
            if history is None:
                history = histories[sample.rack] = _History(self.max_samples)
            history.add(t, sample.hits, sample.lookups, sample.evictions, window)
        gpus = message.gpus
        if len(gpus) > self.max_gpus:
            self.truncated += len(gpus) - self.max_gpus
            gpus = gpus[: self.max_gpus]
        kept = self._gpus
        seen: set[int] = set()
        for gpu in gpus:
            seen.add(gpu.gpu)
            history = kept.get(gpu.gpu)
            if history is None:
                history = kept[gpu.gpu] = _History(self.max_samples)
            history.add(t, gpu.hits, gpu.lookups, gpu.evictions, window)
        for gpu_id in [g for g in kept if g not in seen]:
            del kept[gpu_id]  # its rack is no longer drilled into
        self._last = ClusterStats(
            tick=message.tick, interval_s=message.interval_s, racks=racks, gpus=gpus,
            drill_racks=list(message.drill_racks), sample_note=message.sample_note,
            clock=message.clock,
        )
        self._time = t
        self._view = None

    def view(self) -> ClusterView:
        """The current picture (cached until the next fold)."""
        if self._view is not None:
            return self._view
        last = self._last
        if last is None:
            self._view = ClusterView()
            return self._view
        racks: list[RackView] = []
        for sample in sorted(last.racks, key=lambda s: s.rack):
            ratio, evictions = self._racks[sample.rack].window()
            racks.append(RackView(
                rack=sample.rack, gpus=sample.gpus, occupancy=dict(sample.occupancy),
                hit_ratio=ratio, evictions_per_s=evictions, load=sample.load,
                queue=sample.queue, running=sample.running, faults=tuple(sample.faults),
            ))
        gpus: dict[int, list[GpuView]] = {}
        for gpu in sorted(last.gpus, key=lambda g: (g.rack, g.gpu)):
            ratio, _ = self._gpus[gpu.gpu].window()
            gpus.setdefault(gpu.rack, []).append(GpuView(
                gpu=gpu.gpu, occupancy=dict(gpu.occupancy), hit_ratio=ratio, queue=gpu.queue,
                rack=gpu.rack, role=gpu.role, running=gpu.running, load=gpu.load,
            ))
        self._view = ClusterView(
            racks=racks, gpus=gpus, drill_racks=list(last.drill_racks), note=last.sample_note,
            clock=last.clock, tick=last.tick,
        )
        return self._view
