"""Control forms: fields in, commands validated, sent, the reply shown in the form.

One :class:`FormScreen` does the work for every control: it reads its fields, builds the
commands (a parse error or a value no runtime accepts is shown in the form and nothing is sent),
asks for confirmation when the action is destructive, sends through the app's sender, and then
either closes with the outcome (applied) or stays open showing the runtime's own error text.
The functions below build the form of each control.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Static
from tiertop.monitor.commands import (
    FAULT_KINDS,
    AnyCommand,
    InjectFault,
    PolicyOptions,
    SetCapacity,
    SetEvictionPolicy,
    SetPlacementPolicy,
    SetPromotionPolicy,
    SetSimSpeed,
    SetWatermarks,
    SetWorkload,
)

from ..control import Outcome
from ..format import (
    fmt_bytes,
    parse_bytes,
    parse_fraction,
    parse_optional_float,
    parse_optional_int,
)
from ..frame import TierFrame
from .confirm import ConfirmScreen

__all__ = [
    "EVICTION_POLICIES",
    "PLACEMENT_POLICIES",
    "PROMOTION_POLICIES",
    "Field",
    "FormScreen",
    "Sender",
    "capacity_form",
    "eviction_form",
    "fault_form",
    "parse_options",
    "policy_form",
    "sim_speed_form",
    "watermark_form",
    "workload_form",
]

#: Sends commands, returns how it went (the app's ``send``).
Sender = Callable[[Sequence[AnyCommand]], Awaitable[Outcome]]

#: Suggestions only: the runtime decides what it knows and says so when it does not.
EVICTION_POLICIES = ("lru", "fifo", "lfu", "arc", "s3fifo", "random", "belady")
PLACEMENT_POLICIES = ("top", "spill", "selective-write:8", "only:")
PROMOTION_POLICIES = ("never", "on-hit", "session-prefetch")


@dataclass(frozen=True, slots=True)
class Field:
    """One input of a form."""

    key: str
    label: str
    value: str = ""
    placeholder: str = ""
    suggestions: tuple[str, ...] = ()


@dataclass(slots=True)
class _State:
    sending: bool = False
    sent: list[list[str]] = field(default_factory=list)


class FormScreen(ModalScreen[Outcome | None]):
    """A control form. Enter (or Send) submits, Escape cancels.

    Args:
        sender: Sends the commands (the app's).
        title: What the form does.
        fields: Its inputs.
        build: Turns the typed values (by field key) into commands; raises ``ValueError`` with a
            message for the user when they do not make sense.
        note: A line under the title (current values, units).
        confirm: For destructive actions: the question to ask before sending.
    """

    DEFAULT_CSS = """
    FormScreen { align: center middle; }
    FormScreen > Vertical {
        width: 84; height: auto; max-height: 90%;
        padding: 1 2; border: heavy $accent; background: $surface;
    }
    FormScreen #form-title { text-style: bold; }
    FormScreen #form-note { color: $text-muted; margin-bottom: 1; }
    FormScreen .form-row { height: 3; }
    FormScreen .form-row Label { width: 26; padding: 1 1 0 0; text-align: right; }
    FormScreen .form-row Input { width: 1fr; }
    FormScreen #form-error { color: $text-error; text-style: bold; height: auto; }
    FormScreen #form-status { color: $text-muted; height: auto; }
    FormScreen #form-buttons { height: auto; align-horizontal: right; margin-top: 1; }
    FormScreen Button { margin-left: 2; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="form-cancel"),
        Binding("ctrl+s", "submit", "Send", id="form-send"),
        # Priority: move focus before the next key is handed to a field, so typing fast
        # (or pasting keys through tmux) cannot land in the field being left.
        Binding("tab", "app.focus_next", "Next field", show=False, priority=True,
                id="form-next-field"),
        Binding("shift+tab", "app.focus_previous", "Previous field", show=False,
                priority=True, id="form-previous-field"),
    ]

    def __init__(
        self,
        sender: Sender,
        *,
        title: str,
        fields: Sequence[Field],
        build: Callable[[dict[str, str]], list[AnyCommand]],
        note: str = "",
        confirm: Callable[[list[AnyCommand]], str] | None = None,
        form_id: str = "form",
    ) -> None:
        super().__init__(id=form_id)
        self.sender = sender
        self.form_title = title
        self.fields = list(fields)
        self.build = build
        self.note = note
        self.confirm = confirm
        self.state = _State()
        #: The last error shown ("" when none), for tests.
        self.error = ""

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.form_title, id="form-title")
            yield Static(self.note, id="form-note")
            for f in self.fields:
                with Horizontal(classes="form-row"):
                    yield Label(f.label)
                    yield Input(
                        value=f.value, placeholder=f.placeholder, id=f"field-{f.key}",
                        suggester=SuggestFromList(f.suggestions) if f.suggestions else None,
                        select_on_focus=True,
                    )
            yield Static("", id="form-error")
            yield Static("Enter sends · Esc cancels", id="form-status")
            with Horizontal(id="form-buttons"):
                yield Button("Send [enter]", variant="primary", id="form-send")
                yield Button("Cancel [esc]", id="form-cancel")

    def on_mount(self) -> None:
        if self.fields:
            self.query_one(f"#field-{self.fields[0].key}", Input).focus()

    def values(self) -> dict[str, str]:
        return {f.key: self.query_one(f"#field-{f.key}", Input).value for f in self.fields}

    def show_error(self, text: str) -> None:
        self.error = text
        self.query_one("#form-error", Static).update(f"✖ {text}" if text else "")

    def set_status(self, text: str) -> None:
        self.query_one("#form-status", Static).update(text)

    def action_cancel(self) -> None:
        if not self.state.sending:
            self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "form-send":
            self.action_submit()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_submit(self) -> None:
        """Validate, maybe confirm, then send."""
        if self.state.sending:
            return
        try:
            commands = self.build(self.values())
            if not commands:
                raise ValueError("nothing to change: fill in at least one field")
            for command in commands:
                command.validate()
        except ValueError as exc:  # InvalidCommand is a ValueError
            self.show_error(f"not sent: {exc}")
            return
        self.show_error("")
        if self.confirm is not None:
            question = self.confirm(commands)

            def answered(yes: bool | None) -> None:
                if yes:
                    self._go(commands)
                else:
                    self.set_status("cancelled: nothing sent")

            self.app.push_screen(ConfirmScreen(question, action="Send"), answered)
            return
        self._go(commands)

    def _go(self, commands: list[AnyCommand]) -> None:
        self.state.sending = True
        self.state.sent.append([c.name for c in commands])
        self.set_status("sending " + ", ".join(c.name for c in commands) + "…")
        self.run_worker(self._send(commands), group="form-send")

    async def _send(self, commands: list[AnyCommand]) -> None:
        try:
            outcome = await self.sender(commands)
        finally:
            self.state.sending = False
        if outcome.ok:
            self.dismiss(outcome)
            return
        self.show_error(outcome.text)
        self.set_status("nothing changed; fix the values and send again, or Esc")


# --------------------------------------------------------------------------------- helpers


def _frac(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def parse_options(text: str) -> PolicyOptions:
    """``k=v, k2=v2`` -> a dict with ints, floats and booleans where they parse."""
    out: PolicyOptions = {}
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key:
            raise ValueError(f"option {part!r}: expected key=value")
        value: str | int | float | bool
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        out[key] = value
    return out


def _size_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _tier_field(tier: TierFrame | None) -> Field:
    return Field("tier", "tier (name, kind:K or *)", tier.name if tier else "",
                 "dram · kind:disk · *")


# ----------------------------------------------------------------------------------- forms


def watermark_form(sender: Sender, tier: TierFrame) -> FormScreen:
    """High/low watermarks of a tier (fractions 0..1 or percentages)."""

    def build(v: dict[str, str]) -> list[AnyCommand]:
        high = parse_fraction(v["high"], "high watermark")
        low = parse_fraction(v["low"], "low watermark")
        return [SetWatermarks(v["tier"].strip(), high, low)]

    now = f"now: high {_frac(tier.high) or '-'}, low {_frac(tier.low) or '-'}"
    return FormScreen(
        sender, title=f"Watermarks · {tier.name}", form_id="form-watermarks",
        note=f"{now}. Above high the tier evicts down to low. 0..1 or a percentage.",
        fields=[_tier_field(tier), Field("high", "high", _frac(tier.high), "0.9 or 90%"),
                Field("low", "low", _frac(tier.low), "0.8 or 80%")],
        build=build,
    )


def capacity_form(sender: Sender, tier: TierFrame) -> FormScreen:
    """Capacity of a tier (shrinking evicts first)."""
    limit = tier.max_capacity_bytes

    def build(v: dict[str, str]) -> list[AnyCommand]:
        nbytes = parse_bytes(v["capacity"])
        if limit is not None and v["tier"].strip() == tier.name and nbytes > limit:
            raise ValueError(
                f"{fmt_bytes(nbytes)} is more than tier {tier.name}'s medium can hold "
                f"({fmt_bytes(limit)})"
            )
        return [SetCapacity(v["tier"].strip(), nbytes)]

    most = f", at most {fmt_bytes(limit)}" if limit is not None else ""
    return FormScreen(
        sender, title=f"Capacity · {tier.name}", form_id="form-capacity",
        note=f"now: {fmt_bytes(tier.capacity_bytes)}{most}. Shrinking evicts first. "
             "Sizes: 4MiB, 512K, 1.5GB, bytes.",
        fields=[_tier_field(tier),
                Field("capacity", "capacity", _size_text(tier.capacity_bytes), "4MiB")],
        build=build,
    )


def eviction_form(sender: Sender, tier: TierFrame) -> FormScreen:
    """Eviction policy of a tier (resident blocks are kept)."""

    def build(v: dict[str, str]) -> list[AnyCommand]:
        return [SetEvictionPolicy(v["tier"].strip(), v["policy"].strip(),
                                  parse_options(v["options"]))]

    return FormScreen(
        sender, title=f"Eviction policy · {tier.name}", form_id="form-eviction",
        note=f"now: {tier.policy or '-'}. Known here: {', '.join(EVICTION_POLICIES)} "
             "(the runtime decides).",
        fields=[_tier_field(tier),
                Field("policy", "policy", tier.policy, "lru", EVICTION_POLICIES),
                Field("options", "options (k=v, …)", "", "optional")],
        build=build,
    )


def policy_form(sender: Sender, placement: str, promotion: str) -> FormScreen:
    """Placement and promotion policies (hierarchy-wide); a blank field is left as it is."""

    def build(v: dict[str, str]) -> list[AnyCommand]:
        out: list[AnyCommand] = []
        if v["placement"].strip() and v["placement"].strip() != placement:
            out.append(SetPlacementPolicy(v["placement"].strip()))
        if v["promotion"].strip() and v["promotion"].strip() != promotion:
            out.append(SetPromotionPolicy(v["promotion"].strip()))
        return out

    return FormScreen(
        sender, title="Placement and promotion", form_id="form-policies",
        note=f"now: placement {placement or '-'}, promotion {promotion or '-'}. "
             "Change one or both.",
        fields=[Field("placement", "placement", placement, "top · spill · "
                      "selective-write:N · only:TIER", PLACEMENT_POLICIES),
                Field("promotion", "promotion", promotion, "never · on-hit · session-prefetch",
                      PROMOTION_POLICIES)],
        build=build,
    )


_WORKLOAD_FIELDS = (
    ("rate", "rate (requests/s)", float),
    ("new_conv_prob", "new conversation prob.", float),
    ("prompt_len_mean", "prompt tokens, mean", float),
    ("prompt_len_max", "prompt tokens, max", int),
    ("output_len_mean", "output tokens, mean", float),
    ("output_len_max", "output tokens, max", int),
    ("live_conversations", "live conversations", int),
)


def workload_form(sender: Sender, current: dict[str, object]) -> FormScreen:
    """Workload rate and shape; blank fields keep their value."""

    def build(v: dict[str, str]) -> list[AnyCommand]:
        changes: dict[str, float | int | None] = {}
        for key, label, kind in _WORKLOAD_FIELDS:
            if kind is int:
                changes[key] = parse_optional_int(v[key], label)
            else:
                changes[key] = parse_optional_float(v[key], label)
        if all(x is None for x in changes.values()):
            return []
        return [SetWorkload(**changes)]  # type: ignore[arg-type,unused-ignore]

    fields = [
        Field(key, label, "", f"now {current[key]}" if current.get(key) is not None
              else "unchanged")
        for key, label, _ in _WORKLOAD_FIELDS
    ]
    return FormScreen(
        sender, title="Workload", form_id="form-workload",
        note="Fill in what to change; blank fields keep their value. Rate 0 stops arrivals.",
        fields=fields, build=build,
    )


def fault_form(sender: Sender, tier: TierFrame) -> FormScreen:
    """Inject a fault (asks for confirmation)."""

    def build(v: dict[str, str]) -> list[AnyCommand]:
        kind = v["kind"].strip()
        duration = parse_optional_float(v["duration"], "duration")
        delay_ms = parse_optional_float(v["delay_ms"], "delay")
        delay = delay_ms / 1000.0 if delay_ms is not None else None
        return [InjectFault(v["tier"].strip(), kind, duration, delay)]

    def question(commands: list[AnyCommand]) -> str:
        c = commands[0]
        assert isinstance(c, InjectFault)
        how_long = f"for {c.duration_s:g} s" if c.duration_s else "until cleared (F)"
        extra = f", +{c.delay_s * 1e3:g} ms per operation" if c.delay_s else ""
        return f"Inject a '{c.kind}' fault into {c.tier} {how_long}{extra}?"

    return FormScreen(
        sender, title=f"Inject a fault · {tier.name}", form_id="form-fault",
        note=f"kinds: {', '.join(FAULT_KINDS)}. Blank duration: until cleared. "
             "Delay only for slow.",
        fields=[_tier_field(tier),
                Field("kind", "kind", "slow", " · ".join(FAULT_KINDS), FAULT_KINDS),
                Field("duration", "duration (s)", "10", "blank: until cleared"),
                Field("delay_ms", "delay per op (ms)", "", "slow only, e.g. 20")],
        build=build, confirm=question,
    )


def sim_speed_form(sender: Sender, speed: float | None) -> FormScreen:
    """Simulator clock speed."""

    def build(v: dict[str, str]) -> list[AnyCommand]:
        raw = v["factor"].strip().lower()
        factor = float("inf") if raw in ("max", "inf", "fastest") else parse_optional_float(
            raw, "speed factor")
        if factor is None:
            return []
        return [SetSimSpeed(factor)]

    now = "as fast as possible" if speed == 0 else (f"×{speed:g}" if speed else "-")
    return FormScreen(
        sender, title="Simulator speed", form_id="form-speed",
        note=f"now: {now}. Virtual seconds per wall second; 'max' for as fast as possible.",
        fields=[Field("factor", "speed factor", f"{speed:g}" if speed else "", "10 · 0.5 · max")],
        build=build,
    )
