"""Command-line options shared by ``tiertop dash`` and ``tiertop demo``.

Imports nothing heavy: ``tiertop --help`` loads this module for every subcommand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_view_arguments", "load_keymap"]


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """``--read-only``, ``--theme``, ``--keymap``."""
    view = parser.add_argument_group("dashboard")
    view.add_argument("--read-only", action="store_true",
                      help="watch only: every control is disabled (and the dashboard says so)")
    view.add_argument("--theme", default=None, metavar="NAME",
                      help="Textual theme to start with, e.g. textual-dark, nord, gruvbox, "
                           "textual-light (change it live with t or the command palette)")
    view.add_argument("--keymap", default=None, metavar="FILE",
                      help='TOML file of binding id = "keys" to remap actions, e.g. '
                           'set-watermarks = "W" (ids are listed in the help screen, ?)')


def load_keymap(path: str | None) -> dict[str, str]:
    """Binding id -> keys from a TOML file (top level, or a ``[keys]`` table).

    Raises:
        ValueError: Unreadable file, or a value that is not a string.
    """
    if path is None:
        return {}
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"keymap {path}: {exc}") from None
    table = data.get("keys", data)
    if not isinstance(table, dict):
        raise ValueError(f"keymap {path}: [keys] must be a table of id = \"keys\"")
    out: dict[str, str] = {}
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"keymap {path}: {key} must be a string of keys, e.g. \"W\"")
        out[str(key)] = value.strip()
    return out
