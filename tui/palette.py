"""Colours for Rich text inside widgets, taken from the current Textual theme.

Colour is only ever a second channel: every state it marks is also written in words or symbols
(``OK``, ``⚠ DEGRADED``, ``✖ DOWN``, ``H``/``L`` marks), so the dashboard reads the same in
monochrome, to colour-blind users and in ``tmux capture-pane``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SEVERITY_SYMBOLS", "Palette"]

#: Words and symbols that carry severity without colour.
SEVERITY_SYMBOLS = {"ok": "OK", "degraded": "⚠ DEGRADED", "down": "✖ DOWN"}


@dataclass(frozen=True)
class Palette:
    """Rich style strings for the dashboard's roles."""

    ok: str = "#4EBF71"
    warn: str = "#FEA62B"
    bad: str = "#B93C5B"
    accent: str = "#FEA62B"
    primary: str = "#0178D4"
    muted: str = "#8a8a8a"
    fill: str = "#0178D4"
    empty: str = "#3a3a3a"

    @staticmethod
    def from_variables(v: dict[str, Any]) -> Palette:
        """From ``App.get_css_variables()`` of the current theme."""

        def pick(*names: str, default: str) -> str:
            for name in names:
                value = v.get(name)
                if isinstance(value, str) and value.startswith("#"):
                    return value[:7]
            return default

        return Palette(
            ok=pick("text-success", "success", default=Palette.ok),
            warn=pick("text-warning", "warning", default=Palette.warn),
            bad=pick("text-error", "error", default=Palette.bad),
            accent=pick("text-accent", "accent", default=Palette.accent),
            primary=pick("text-primary", "primary", default=Palette.primary),
            muted=pick("foreground-darken-3", "foreground-darken-2", default=Palette.muted),
            fill=pick("primary-lighten-1", "primary", default=Palette.fill),
            empty=pick("panel-lighten-2", "panel-lighten-1", "surface-lighten-2",
                       default=Palette.empty),
        )

    def health(self, health: str) -> str:
        return {"ok": self.ok, "degraded": self.warn}.get(health, self.bad)
