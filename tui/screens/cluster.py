"""The cluster view (simulator): racks as a heatmap, drill into a rack to see its GPUs.

``g`` opens it from the dashboard. Arrows move over the racks, Enter asks the simulator for
per-GPU detail of the rack under the cursor (``SetDrillDown``; it changes what is published,
not what is simulated, so it works read-only too), Tab moves to that rack's GPUs, ``m`` changes
what the colours and shades show (occupancy of each tier kind, hit ratio, load), Escape goes back.
The panel on the right says everything about the rack and GPU under the cursors in words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static
from tiertop.monitor.cluster_state import ClusterView, GpuView, RackView
from tiertop.monitor.commands import AnyCommand, SetDrillDown

from ..format import fmt_pct, fmt_rate
from ..palette import Palette
from ..session import Session
from ..widgets.cluster_map import Cell, HeatMap

__all__ = ["ClusterScreen", "metrics_of"]

Metric = tuple[str, Callable[[RackView | GpuView], float | None]]


def metrics_of(view: ClusterView) -> list[Metric]:
    """What the map can show: occupancy of each tier kind present, hit ratio, load."""
    kinds: list[str] = []
    for rack in view.racks:
        for kind in rack.occupancy:
            if kind not in kinds:
                kinds.append(kind)
    out: list[Metric] = [
        (f"occupancy {k}", (lambda kind: lambda v: v.occupancy.get(kind))(k)) for k in kinds
    ]
    out.append(("hit ratio", lambda v: v.hit_ratio))
    out.append(("load", lambda v: v.load))
    return out


class ClusterScreen(Screen[None]):
    """Racks × GPUs of a simulated cluster."""

    DEFAULT_CSS = """
    ClusterScreen #cluster-head { height: 2; background: $panel; padding: 0 1; }
    ClusterScreen #cluster-maps { width: 3fr; }
    ClusterScreen #cluster-detail {
        width: 2fr; min-width: 44; border: round $panel-lighten-2; padding: 0 1;
    }
    ClusterScreen .map-title { padding: 1 1 0 1; text-style: bold; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,g", "back", "Dashboard", id="cluster-back"),
        Binding("m", "metric", "Metric", id="cluster-metric"),
        Binding("tab", "switch", "Racks/GPUs", id="cluster-switch"),
    ]

    def __init__(
        self,
        session: Session,
        sender: Callable[[Sequence[AnyCommand]], Any],
        palette: Palette,
        *,
        refresh_s: float = 0.5,
    ) -> None:
        super().__init__(id="cluster")
        self.session = session
        self.sender = sender
        self.palette = palette
        self.refresh_s = refresh_s
        self.metric = 0
        self.view = ClusterView()
        self.rack_map = HeatMap(numeric_up_to=64, id="rack-map")
        self.gpu_map = HeatMap(numeric_up_to=128, id="gpu-map")
        self.head = Static(id="cluster-head")
        self.detail = Static(id="cluster-detail")
        self.gpu_title = Static("GPUs: Enter on a rack to drill into it", classes="map-title")
        #: The rack whose GPUs were last asked for (None: none yet).
        self.asked: int | None = None

    def compose(self) -> ComposeResult:
        yield self.head
        with Horizontal():
            with VerticalScroll(id="cluster-maps"):
                yield Static("racks", classes="map-title")
                yield self.rack_map
                yield self.gpu_title
                yield self.gpu_map
            with Vertical():
                yield self.detail
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self.refresh_view)
        self.refresh_view()
        self.rack_map.focus()

    # ---------------------------------------------------------------------------- render

    def refresh_view(self) -> None:
        with self.session.lock:
            view = self.session.model.cluster
            mode = self.session.model.mode
        self.view = view
        metrics = metrics_of(view)
        self.metric %= max(len(metrics), 1)
        label, fn = metrics[self.metric] if metrics else ("-", lambda v: None)
        self.rack_map.set_cells(
            [Cell(r.rack, fn(r), bool(r.faults)) for r in view.racks], self.palette)
        rack = self.rack_map.selected
        shown = next(iter(view.drill_racks), None) if view.drill_racks else None
        gpus: list[GpuView] = view.gpus.get(shown, []) if shown is not None else []
        self.gpu_map.set_cells([Cell(g.gpu, fn(g)) for g in gpus], self.palette)
        if shown is None:
            waiting = f" (asked for rack {self.asked}…)" if self.asked is not None else ""
            self.gpu_title.update(f"GPUs: Enter on a rack to drill into it{waiting}")
        else:
            self.gpu_title.update(f"GPUs of rack {shown} · {len(gpus)}")
        n_gpus = sum(r.gpus for r in view.racks)
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append(" cluster ", style=f"bold reverse {self.palette.primary}")
        head.append(f"  {len(view.racks)} racks · {n_gpus:,} GPUs  ·  showing: ")
        head.append(label, style="bold")
        head.append("  (m changes)  ·  tick ", style=self.palette.muted)
        head.append(str(view.tick) if view.tick is not None else "-")
        if mode and mode != "sim":
            head.append(f"  ⚠ the source is in {mode} mode: no cluster data",
                        style=f"bold {self.palette.warn}")
        head.append("\n")
        head.append(" shades: ·· none  ░░ <25%  ▒▒ <50%  ▓▓ <75%  ██ ≥75%  ! fault  "
                    "· numbers when few cells · Enter drill down · Tab racks/GPUs · Esc back",
                    style=self.palette.muted)
        if view.note:
            head.append(f"  · {view.note}", style=self.palette.muted)
        self.head.update(head)
        self.detail.update(self._detail(rack, label))

    def _detail(self, rack_cell: Cell | None, label: str) -> Text:
        p = self.palette
        out = Text()
        rack = next((r for r in self.view.racks if rack_cell and r.rack == rack_cell.key), None)
        if rack is None:
            out.append("no cluster data yet: the simulator sends ClusterStats every tick",
                       style=p.muted)
            return out
        out.append(f"rack {rack.rack}", style="bold")
        out.append(f"  {rack.gpus} GPUs\n")
        for kind, occ in rack.occupancy.items():
            out.append(f"  {kind:<6} {fmt_pct(occ):>6} full\n")
        out.append(f"  hit ratio {fmt_pct(rack.hit_ratio)}  "
                   f"evictions {fmt_rate(rack.evictions_per_s)}/s\n")
        out.append(f"  load {fmt_pct(rack.load)}  queue {rack.queue}  running {rack.running}\n")
        if rack.faults:
            out.append(f"  ⚡ fault on the pool: {', '.join(rack.faults)}\n", style=f"bold {p.bad}")
        drilled = self.view.drill_racks
        out.append("  GPUs: " + (f"detail for rack(s) {', '.join(map(str, drilled))}"
                                 if drilled else "none drilled into (Enter)") + "\n", style=p.muted)
        gpu_cell = self.gpu_map.selected
        if gpu_cell is not None:
            gpus = [g for gs in self.view.gpus.values() for g in gs]
            gpu = next((g for g in gpus if g.gpu == gpu_cell.key), None)
            if gpu is not None:
                out.append(f"\nGPU {gpu.gpu}", style="bold")
                out.append(f"  rack {gpu.rack} · {gpu.role or '-'}\n")
                for kind, occ in gpu.occupancy.items():
                    out.append(f"  {kind:<6} {fmt_pct(occ):>6} full\n")
                out.append(f"  hit ratio {fmt_pct(gpu.hit_ratio)}  load {fmt_pct(gpu.load)}\n")
                out.append(f"  queue {gpu.queue}  running {gpu.running}\n")
        return out

    # ---------------------------------------------------------------------------- actions

    def on_heat_map_moved(self, message: HeatMap.Moved) -> None:
        self.detail.update(self._detail(self.rack_map.selected, ""))

    def on_heat_map_activated(self, message: HeatMap.Activated) -> None:
        if message.heatmap is self.rack_map:
            self.asked = message.key
            self.sender([SetDrillDown([message.key])])
            self.refresh_view()

    def action_metric(self) -> None:
        self.metric += 1
        self.refresh_view()

    def action_switch(self) -> None:
        if self.rack_map.has_focus and self.gpu_map.cells:
            self.gpu_map.focus()
        else:
            self.rack_map.focus()

    def action_back(self) -> None:
        self.app.pop_screen()
