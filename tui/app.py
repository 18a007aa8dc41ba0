"""The tiertop dashboard: watch and steer a runtime's KV tiers live.

:class:`DashboardApp` renders a :class:`~tiertop.tui.session.Session` (state model + lock +
ingest + controller) on timers — about 12 Hz for the status line, tier panels and service panel,
2 Hz for the event log and the requests table — and never per message. Every action is a
:class:`~textual.binding.Binding` with an id: it shows in the footer, the help screen (``?``) and
the command palette (``ctrl+p``), and ``--keymap`` can remap it. Controls open a form (values
checked before sending), destructive ones ask first, and every reply is shown where the user is
looking: in the form, as a notification and in the status line.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer
from tiertop.monitor.commands import (
    AnyCommand,
    ClearAll,
    ClearFaults,
    ClearTier,
    Pause,
    Resume,
    Snapshot,
)
from tiertop.monitor.protocol import MODE_SIM

from .control import Outcome
from .frame import (
    ZOOMS,
    ChangeLog,
    EventFilter,
    Frame,
    TierFrame,
    build_events,
    build_frame,
    build_requests,
    build_status,
    data_versions,
)
from .palette import Palette
from .replay_seek import SeekScreen
from .replay_session import ReplaySession
from .screens.confirm import ConfirmScreen
from .screens.forms import (
    FormScreen,
    capacity_form,
    eviction_form,
    fault_form,
    policy_form,
    sim_speed_form,
    watermark_form,
    workload_form,
)
from .screens.help import HelpRow, HelpScreen
from .session import Session
from .widgets.event_log import EventLog
from .widgets.requests_table import ROWS, RequestsTable
from .widgets.service_panel import ServicePanel
from .widgets.status_line import StatusLine
from .widgets.tier_panel import TierPanel

__all__ = ["ACTIONS", "CONTROL_ACTIONS", "DashboardApp", "UiAction"]


@dataclass(frozen=True, slots=True)
class UiAction:
    """One action of the dashboard: its binding (key, id, footer text), group and help."""

    binding: Binding
    group: str
    help: str


def _b(key: str, action: str, text: str, bid: str, group: str, help_text: str,
       show: bool = True, key_display: str | None = None) -> UiAction:
    return UiAction(Binding(key, action, text, show=show, id=bid, key_display=key_display),
                    group, help_text)


#: Every action, in the order the help screen lists them.
ACTIONS: Final[tuple[UiAction, ...]] = (
    _b("question_mark,f1", "help", "Help", "help", "View", "this help", key_display="?"),
    _b("q", "quit", "Quit", "quit", "View", "quit (tiertop demo also stops its runtime)"),
    _b("p", "freeze", "Pause view", "freeze-view", "View",
       "freeze the view; data keeps being collected (p again resumes)"),
    _b("z", "zoom(1)", "Zoom", "zoom-in", "View", "history window: 1m → 5m → 15m → all"),
    _b("Z", "zoom(-1)", "Zoom back", "zoom-out", "View", "history window, the other way",
       show=False),
    _b("right_square_bracket", "select_tier(1)", "Next tier", "next-tier", "View",
       "select the next tier (controls act on the selected tier)", show=False,
       key_display="]"),
    _b("left_square_bracket", "select_tier(-1)", "Previous tier", "previous-tier", "View",
       "select the previous tier", show=False, key_display="["),
    _b("slash", "filter_events", "Filter", "filter-events", "View",
       "filter the event log (kind:fault, tier:dram, text); Esc leaves the field",
       key_display="/"),
    _b("m", "toggle_moves", "Moves", "toggle-moves", "View",
       "hide or show block moves (promote/demote/drop) in the event log", show=False),
    _b("g", "cluster", "Cluster", "cluster-view", "View",
       "cluster heatmap (simulator): racks × GPUs, drill into a rack"),
    _b("M", "mrc", "MRC", "mrc", "View",
       "miss-ratio curve: hit ratio against cache size, each tier's capacity marked, what-ifs "
       "(M or Esc goes back)"),
    _b("t", "change_theme", "Theme", "theme", "View", "pick a colour theme", show=False),
    _b("r", "resync", "Resync", "resync", "View",
       "ask the runtime for a fresh snapshot of its state", show=False),
    _b("w", "watermarks", "Watermarks", "set-watermarks", "Tier",
       "set high/low watermarks of the selected tier"),
    _b("c", "capacity", "Capacity", "set-capacity", "Tier", "set the selected tier's capacity"),
    _b("e", "eviction", "Eviction", "set-eviction-policy", "Tier",
       "set the selected tier's eviction policy"),
    _b("f", "inject_fault", "Fault", "inject-fault", "Tier",
       "inject a fault (down, slow, corrupt, full) — asks first"),
    _b("F", "clear_faults", "Clear faults", "clear-faults", "Tier",
       "end injected faults on every tier — asks first", show=False),
    _b("x", "clear_tier", "Clear tier", "clear-tier", "Tier",
       "drop every block of the selected tier — asks first", show=False),
    _b("X", "clear_all", "Clear all", "clear-all", "Runtime",
       "drop every block in every tier — asks first", show=False),
    _b("o", "policies", "Policies", "set-policies", "Runtime",
       "placement and promotion policies"),
    _b("l", "workload", "Workload", "set-workload", "Runtime", "workload rate and shape"),
    _b("P", "pause_workload", "Pause/resume", "pause-resume", "Runtime",
       "pause or resume the workload (telemetry keeps flowing)"),
    _b("s", "sim_speed", "Speed", "set-sim-speed", "Runtime", "simulator clock speed",
       show=False),
    # Only while replaying a recording (tiertop dash --replay FILE).
    _b("space", "replay_toggle", "Play/pause", "replay-play-pause", "Replay",
       "play or pause the recording (at the end: play it from the start)", key_display="space"),
    _b("full_stop", "replay_step", "Step", "replay-step", "Replay",
       "pause and step one tick: every message up to the next tier statistics",
       key_display="."),
    _b("less_than_sign", "replay_speed(-1)", "Slow", "replay-slower", "Replay",
       "half the speed (down to ×0.25)", key_display="<"),
    _b("greater_than_sign", "replay_speed(1)", "Fast", "replay-faster", "Replay",
       "twice the speed (up to ×64)", key_display=">"),
    _b("left", "replay_seek_by(-10)", "-10s", "replay-back", "Replay", "seek 10 s back",
       key_display="←"),
    _b("right", "replay_seek_by(10)", "+10s", "replay-forward", "Replay",
       "seek 10 s forward", key_display="→"),
    _b("j", "replay_seek_to", "Seek", "replay-seek-to", "Replay",
       "seek to a time you type (90, 1:30, +30, -5)"),
    _b("n", "replay_change(1)", "Next change", "replay-next-change", "Replay",
       "seek just past the next control change"),
    _b("N", "replay_change(-1)", "Previous change", "replay-previous-change", "Replay",
       "seek just past the previous control change", show=False),
)

#: GIL switch interval while the dashboard runs (Python's default is 5 ms).
UI_SWITCH_INTERVAL_S: Final = 0.001
#: Garbage collector thresholds while the dashboard runs (Python's default: 700, 10, 10). A
#: message stream allocates fast; young collections stay cheap, full ones become rare.
GC_THRESHOLDS: Final = (20_000, 20, 50)

#: Actions that change the runtime (off when read-only).
CONTROL_ACTIONS: Final = frozenset({
    "watermarks", "capacity", "eviction", "inject_fault", "clear_faults", "clear_tier",
    "clear_all", "policies", "workload", "pause_workload", "sim_speed",
})
_TIER_ACTIONS: Final = frozenset({"watermarks", "capacity", "eviction", "inject_fault",
                                  "clear_tier"})


class DashboardApp(App[int]):
    """The dashboard.

    Args:
        session: What to show and steer.
        live: Start the session's ingest thread (tests leave it off and step the ingest).
        refresh_s: Period of the fast refresh (status, tiers, service).
        slow_refresh_s: Period of the slow refresh (event log, requests table).
        clock: Monotonic seconds (message age in the status line).
        keymap: Binding id -> keys, overriding the defaults.
        theme_name: A Textual theme to start with.
        close_session: Close the session when the app exits.
        tune_process: Tune the interpreter for a long-running dashboard (the command-line
            entry points do; tests leave the process as it is): a short GIL switch interval so
            the UI thread gets the GIL within a millisecond of wanting it, and a garbage
            collector that skips everything alive after start-up and runs less often, so
            full collections do not stall frames under a heavy message stream.
    """

    TITLE = "tiertop"
    AUTO_FOCUS = None
    CSS = """
    Screen { layout: vertical; }
    #body { height: 1fr; }
    #left { width: 3fr; }
    #right { width: 2fr; min-width: 50; }
    #tiers { height: auto; max-height: 75%; }
    #requests { min-height: 6; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [a.binding for a in ACTIONS]

    def __init__(
        self,
        session: Session,
        *,
        live: bool = True,
        refresh_s: float = 1 / 12,
        slow_refresh_s: float = 0.5,
        clock: Callable[[], float] | None = None,
        keymap: Mapping[str, str] | None = None,
        theme_name: str | None = None,
        close_session: bool = True,
        tune_process: bool = False,
    ) -> None:
        super().__init__()
        self.tune_process = tune_process
        self.session = session
        self.live = live
        self.refresh_s = refresh_s
        self.slow_refresh_s = slow_refresh_s
        self.clock = clock or session.clock
        self.close_session = close_session
        self._initial_keymap = dict(keymap or {})
        self._initial_theme = theme_name
        self.zoom = 0
        self.frozen = False
        self.selected = 0
        self.event_filter = EventFilter()
        #: The last control reply: (applied?, text).
        self.last_reply: tuple[bool, str] | None = None
        self.palette = Palette()
        self.frame: Frame | None = None
        self._panels: dict[str, TierPanel] = {}
        self._binding_state: tuple[object, ...] = ()
        # What the last refreshes drew from (see frame.data_versions).
        self._panel_version: tuple[object, ...] | None = None
        self._events_version: tuple[object, ...] | None = None
        self._requests_version: tuple[int, Palette] | None = None
        #: Changes kept for the event log's pinned lines.
        self.changes = ChangeLog()
        #: Fast refreshes done (each reads the model once).
        self.refreshes = 0
        #: A key press is being answered: the render timers wait until its frame is drawn.
        self.answering_key = False

    # --------------------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        # Kept as attributes: queries on the app look at the top screen, which may be a form.
        self.status_line = StatusLine(id="status", tape=self.session.tape)
        self.tiers_box = VerticalScroll(id="tiers")
        self.requests_table = RequestsTable(id="requests")
        self.service_panel = ServicePanel(id="service")
        self.event_log = EventLog(id="events")
        yield self.status_line
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield self.tiers_box
                yield self.requests_table
            with Vertical(id="right"):
                yield self.service_panel
                yield self.event_log
        yield Footer()

    def on_mount(self) -> None:
        if self.tune_process:
            self.call_after_refresh(_tune_interpreter)
        if self._initial_theme:
            self.theme = self._initial_theme
        if self._initial_keymap:
            self.update_keymap(self._initial_keymap)
        self.theme_changed_signal.subscribe(self, lambda _theme: self._theme_changed())
        self._theme_changed()
        for warning in self.session.warnings:
            self.notify(warning, title="warning", severity="warning", timeout=30)
        self.set_interval(self.refresh_s, lambda: self._on_timer(self.refresh_fast),
                          name="fast-refresh")
        self.set_interval(self.slow_refresh_s, lambda: self._on_timer(self.refresh_slow),
                          name="slow-refresh")
        if self.session.ingest is None and self.session.attach is not None:
            self.run_worker(self._connect_in_thread, thread=True, name="connect",
                            exit_on_error=False)
        elif self.live and self.session.ingest is not None:
            self.session.ingest.start()
        self.render_now()

    def _connect_in_thread(self) -> None:
        """Worker thread: connect the session (may wait for a runtime to start)."""
        session = self.session
        attach = session.attach
        assert attach is not None
        try:
            attach(session)
        except Exception as exc:
            session.error = str(exc) or type(exc).__name__
            self.call_from_thread(self.notify, session.error, title="cannot connect",
                                  severity="error", timeout=30)
            return
        if self.live and session.ingest is not None and not self._exit_requested():
            session.ingest.start()

    def _exit_requested(self) -> bool:
        return bool(getattr(self, "_exit", False)) or not self.is_running

    def on_unmount(self) -> None:
        if self.close_session:
            self.session.close()

    def _theme_changed(self) -> None:
        self.palette = Palette.from_variables(self.get_css_variables())
        self.render_now()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key) and not event.is_forwarded:
            self.answering_key = True
            self.call_after_refresh(self._key_answered)
        await super().on_event(event)

    def _key_answered(self) -> None:
        self.answering_key = False

    def _on_timer(self, refresh: Callable[[], None]) -> None:
        """A render timer's tick: while a key is being answered, right after its frame (the
        timer's work would delay the answer; the answer itself redraws what it changed)."""
        if self.answering_key:
            self.call_after_refresh(refresh)
        else:
            refresh()

    # ---------------------------------------------------------------------------- render

    def render_now(self) -> None:
        """Redraw everything from the model now (the timers do this on their own)."""
        self._panel_version = self._events_version = self._requests_version = None
        self.refresh_fast()
        self.refresh_slow()

    def refresh_fast(self) -> None:
        """Status line, tier panels and service panel, from one read of the model."""
        now = self.clock()
        status_line = self.status_line
        if self._dashboard_hidden():
            return
        if self.frozen:
            status_line.show(build_status(self.session, now, ZOOMS[self.zoom][0], True),
                             self.palette, self.last_reply)
            return
        panels, _, _ = data_versions(self.session)
        version = (panels, self.zoom, self.selected, self.palette)
        if version == self._panel_version and self.frame is not None:
            # Nothing the panels show has changed: only the status line moves (age, counts).
            status_line.show(build_status(self.session, now, ZOOMS[self.zoom][0], False),
                             self.palette, self.last_reply)
            return
        self._panel_version = version
        frame = build_frame(self.session, now, self.zoom)
        self.frame = frame
        self.refreshes += 1
        self._sync_panels(frame.tiers)
        if frame.tiers:
            self.selected = min(self.selected, len(frame.tiers) - 1)
        for tf in frame.tiers:
            self._panels[tf.name].show(tf, self.palette, tf.index == self.selected)
        self.service_panel.show(frame.service, [t.name for t in frame.tiers],
                                          self.palette)
        status_line.show(frame.status, self.palette, self.last_reply)
        state = (frame.status.mode, frame.status.controls_off, bool(frame.tiers))
        if state != self._binding_state:
            self._binding_state = state
            self.refresh_bindings()

    def _dashboard_hidden(self) -> bool:
        """A full-screen view (cluster, MRC) covers the panels: drawing them would be wasted."""
        return self.screen.id in ("cluster", "mrc")

    def refresh_slow(self) -> None:
        """Event log and requests table."""
        if self.frozen or self._dashboard_hidden():
            return
        _, events, requests = data_versions(self.session)
        log = self.event_log
        version = (events, self.event_filter, log.visible_lines, self.palette)
        if version != self._events_version:
            self._events_version = version
            log.show(build_events(self.session, self.event_filter, log.visible_lines,
                                  self.changes), self.palette)
        if (requests, self.palette) != self._requests_version:
            self._requests_version = (requests, self.palette)
            self.requests_table.show(build_requests(self.session, ROWS), self.palette)

    def _sync_panels(self, tiers: list[TierFrame]) -> None:
        names = [t.name for t in tiers]
        if names == list(self._panels):
            return
        container = self.tiers_box
        for name in [n for n in self._panels if n not in names]:
            self._panels.pop(name).remove()
        for i, t in enumerate(tiers):
            if t.name not in self._panels:
                panel = TierPanel(t.index, t.name, id=f"tier-{len(self._panels)}-{_css_id(t.name)}")
                self._panels[t.name] = panel
                # In the frame's order: a tier that gets data late lands where it belongs.
                after = next((self._panels[n] for n in names[i + 1:] if n in self._panels
                              and self._panels[n].parent is container), None)
                container.mount(panel, before=after)
        self._panels = {n: self._panels[n] for n in names}

    # --------------------------------------------------------------------------- helpers

    @property
    def tiers(self) -> list[TierFrame]:
        return self.frame.tiers if self.frame is not None else []

    def selected_tier(self) -> TierFrame | None:
        tiers = self.tiers
        return tiers[min(self.selected, len(tiers) - 1)] if tiers else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        replaying = isinstance(self.session, ReplaySession)
        if action.startswith("replay_"):
            return replaying
        if action == "resync" and replaying:
            return None
        if action in CONTROL_ACTIONS:
            if self.session.controls_disabled():
                # A replay never has them: the footer's room goes to the replay keys (the
                # status line, help and palette say why they are off).
                return False if replaying else None
            if action in _TIER_ACTIONS and not self.tiers:
                return None
            if action == "sim_speed" and self.session.model.mode != MODE_SIM:
                return None
        if action == "select_tier" and not self.tiers:
            return None
        if action == "cluster" and self.session.model.mode != MODE_SIM and not (
            self.session.model.cluster.racks
        ):
            return None
        return True

    async def send(self, commands: Sequence[AnyCommand]) -> Outcome:
        """Send commands off the UI thread; record and show the outcome."""
        outcome = await asyncio.to_thread(self.session.controller.send, list(commands))
        if outcome.rtt_s is not None:
            with self.session.lock:
                self.session.model.set_control_rtt(outcome.rtt_s, at=self.clock())
        self.report(outcome)
        return outcome

    def report(self, outcome: Outcome) -> None:
        self.last_reply = (outcome.ok, outcome.text)
        if outcome.ok:
            self.notify(f"✔ {outcome.text}", title="applied", timeout=6)
        else:
            title = "no answer" if outcome.error_code == "timeout" else "not applied"
            self.notify(f"✖ {outcome.text}", title=title, severity="error", timeout=12)
        self.refresh_fast()

    def _send_later(self, commands: Sequence[AnyCommand]) -> None:
        self.run_worker(self.send(commands), group="control")

    def _confirm_then_send(self, question: str, commands: Sequence[AnyCommand],
                           action: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._send_later(commands)
            else:
                self.notify("cancelled: nothing sent", timeout=3)

        self.push_screen(ConfirmScreen(question, action=action), answered)

    def _open_form(self, form: FormScreen) -> None:
        self.push_screen(form)

    def help_rows(self) -> list[HelpRow]:
        """Every action with its current keys (after remapping) and whether it is on."""
        keys_of: dict[str, list[str]] = {}
        for active in self.screen.active_bindings.values():
            bid = active.binding.id
            if bid:
                keys_of.setdefault(bid, []).append(self.get_key_display(active.binding))
        rows: list[HelpRow] = []
        for a in ACTIONS:
            b = a.binding
            assert b.id is not None
            keys = " ".join(dict.fromkeys(keys_of.get(b.id, []))) or "-"
            action = b.action.split("(")[0]
            note = ""
            if self.check_action(action, ()) is not True:
                talks = action in CONTROL_ACTIONS or action == "resync"
                note = self.session.controls_disabled() if talks else ""
                if action.startswith("replay_"):
                    note = "replay only: tiertop dash --replay FILE"
                note = note or ("simulator only" if action in ("sim_speed", "cluster")
                                else "no tiers yet")
            rows.append(HelpRow(keys, a.help, b.id, a.group, note))
        rows.append(HelpRow("ctrl+p", "command palette: every action by name", "command-palette",
                            "View"))
        return rows

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        off = self.session.controls_disabled()
        if off:
            yield SystemCommand("Controls are off", f"read-only: {off}", lambda: None)
        for a in ACTIONS:
            b = a.binding
            action = b.action
            name = action.split("(")[0]
            if name in ("help", "quit", "change_theme"):
                continue
            if self.check_action(name, ()) is not True:
                continue
            title = f"{b.description} [{b.key_display or b.key}]"
            yield SystemCommand(title, a.help, _runner(self, action))

    # --------------------------------------------------------------------------- actions

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_rows()))

    async def action_quit(self) -> None:
        self.exit(0)

    def action_freeze(self) -> None:
        self.frozen = not self.frozen
        self.render_now()
        if not self.frozen:
            self.refresh_fast()
        else:
            self.status_line.show(
                build_status(self.session, self.clock(), ZOOMS[self.zoom][0], True),
                self.palette, self.last_reply)

    def action_zoom(self, step: int) -> None:
        self.zoom = (self.zoom + step) % len(ZOOMS)
        # The new window's name and every history redrawn over it go out in the same frame.
        self._redraw_zoomed()

    def _redraw_zoomed(self) -> None:
        frozen, self.frozen = self.frozen, False
        self.refresh_fast()  # a zoom re-reads even a frozen view: the user asked to see it
        self.frozen = frozen
        if frozen:
            self.status_line.show(
                build_status(self.session, self.clock(), ZOOMS[self.zoom][0], True),
                self.palette, self.last_reply)

    def action_select_tier(self, step: int) -> None:
        n = len(self.tiers)
        if n:
            self.selected = (self.selected + step) % n
            self.refresh_fast()

    def on_tier_panel_selected(self, message: TierPanel.Selected) -> None:
        self.selected = message.index
        self.refresh_fast()

    def action_filter_events(self) -> None:
        self.event_log.focus_filter()

    def action_toggle_moves(self) -> None:
        hidden = self.event_log.toggle_moves()
        self.notify("block moves hidden in the event log" if hidden
                    else "block moves shown in the event log", timeout=3)

    def on_event_log_filter_changed(self, message: EventLog.FilterChanged) -> None:
        self.event_filter = message.filter
        self.refresh_slow()

    def action_cluster(self) -> None:
        from .screens.cluster import ClusterScreen

        self.push_screen(ClusterScreen(self.session, self._send_later, self.palette))

    def action_mrc(self) -> None:
        from .screens.mrc import MrcScreen

        if isinstance(self.screen, MrcScreen):
            self.pop_screen()
            return
        self.push_screen(MrcScreen(self.session, self.palette, frozen=lambda: self.frozen))

    def action_resync(self) -> None:
        self._send_later([Snapshot()])

    def action_watermarks(self) -> None:
        tier = self.selected_tier()
        if tier is not None:
            self._open_form(watermark_form(self.send, tier))

    def action_capacity(self) -> None:
        tier = self.selected_tier()
        if tier is not None:
            self._open_form(capacity_form(self.send, tier))

    def action_eviction(self) -> None:
        tier = self.selected_tier()
        if tier is not None:
            self._open_form(eviction_form(self.send, tier))

    def action_inject_fault(self) -> None:
        tier = self.selected_tier()
        if tier is not None:
            self._open_form(fault_form(self.send, tier))

    def action_policies(self) -> None:
        svc = self.frame.service if self.frame is not None else None
        self._open_form(policy_form(self.send, svc.placement_policy if svc else "",
                                    svc.promotion_policy if svc else ""))

    def action_workload(self) -> None:
        with self.session.lock:
            settings = dict(self.session.model.settings)
        current = settings.get("workload")
        self._open_form(workload_form(self.send, current if isinstance(current, dict) else {}))

    def action_sim_speed(self) -> None:
        hello = self.session.model.hello
        self._open_form(sim_speed_form(self.send, hello.speed if hello is not None else None))

    def action_pause_workload(self) -> None:
        paused = self.frame.service.paused if self.frame is not None else None
        self._send_later([Resume()] if paused else [Pause()])

    def action_clear_tier(self) -> None:
        tier = self.selected_tier()
        if tier is None:
            return
        blocks = f"{tier.used_blocks:,} blocks" if tier.used_blocks is not None else "its blocks"
        self._confirm_then_send(
            f"Drop every block of tier {tier.name} ({blocks})?", [ClearTier(tier.name)],
            "Clear")

    def action_clear_all(self) -> None:
        self._confirm_then_send("Drop every block in every tier?", [ClearAll()], "Clear all")

    # ------------------------------------------------------------------- replay controls

    def _replay(self, act: Callable[[ReplaySession], str]) -> None:
        """Run a replay control and show where it landed at once (a seek back also drops
        the pinned changes, which may lie in the future now)."""
        session = self.session
        if not isinstance(session, ReplaySession):
            return
        note = act(session)
        self.changes = ChangeLog()
        self.render_now()
        if note:
            self.notify(note, timeout=4)

    def action_replay_toggle(self) -> None:
        self._replay(ReplaySession.toggle)

    def action_replay_step(self) -> None:
        self._replay(ReplaySession.step)

    def action_replay_speed(self, direction: int) -> None:
        self._replay(lambda s: s.change_speed(direction))

    def action_replay_seek_by(self, seconds: float) -> None:
        self._replay(lambda s: s.seek_by(seconds))

    def action_replay_change(self, direction: int) -> None:
        self._replay(lambda s: s.seek_change(direction))

    def action_replay_seek_to(self) -> None:
        session = self.session
        if not isinstance(session, ReplaySession):
            return
        tape = session.tape()

        def chosen(position_s: float | None) -> None:
            if position_s is not None:
                self._replay(lambda s: s.seek_to(position_s))

        self.push_screen(SeekScreen(tape.position_s, tape.duration_s), chosen)

    def action_clear_faults(self) -> None:
        model = self.session.model
        with self.session.lock:  # every tier's, those without a panel too
            active = [f"{name}: {','.join(tier.faults)}" for name in model.tier_names()
                      if (tier := model.tier(name)) is not None and tier.faults]
        what = "; ".join(active) if active else "none active now"
        self._confirm_then_send(f"End injected faults on every tier ({what})?",
                                [ClearFaults()], "Clear faults")


def _tune_interpreter() -> None:
    """See ``tune_process`` of :class:`DashboardApp` (called once the first frame is drawn)."""
    sys.setswitchinterval(UI_SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()  # start-up objects (modules, widgets, styles) are never scanned again
    gc.set_threshold(*GC_THRESHOLDS)


def _runner(app: DashboardApp, action: str) -> Callable[[], Any]:
    async def run() -> None:
        await app.run_action(action)

    return run


def _css_id(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
