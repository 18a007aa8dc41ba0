"""``--record FILE`` on ``tiertop dash`` and ``tiertop demo``: record what the dashboard folds.

The dashboard's own subscriber, in its ingest process, hands every message it delivers to a
:class:`~tiertop.monitor.recorder.Recorder` there (see
:meth:`~tiertop.tui.session.Session.record_to` and :mod:`tiertop.monitor.ingest_process`), so the
file holds exactly what the dashboard folded, with no second socket; the recorder's thread
compresses and writes. The file is finished when the dashboard quits (or the ingest process sees
the dashboard gone), and readable up to its last complete chunk if it is killed.

Imports nothing heavy until a recording starts: ``tiertop --help`` loads this module.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

__all__ = ["add_record_argument", "start_session_recording"]


def add_record_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", default=None, metavar="FILE",
                        help="record the telemetry the dashboard shows to FILE (replaces an "
                             "earlier recording; see `tiertop dash --replay` and `tiertop "
                             "replay`)")


def start_session_recording(session: Session, path: str | None, who: str,
                            err: Callable[[str], None]) -> bool:
    """Have ``session`` record to ``path`` (nothing when None); False, said through ``err``,
    when the file cannot be made (checked now, before the dashboard opens)."""
    if path is None:
        return True
    from tiertop.monitor.recorder import check_record_path
    from tiertop.monitor.recording import RecordingError

    try:
        check_record_path(path)
    except (RecordingError, OSError) as exc:
        err(f"--record: {exc}")
        return False
    session.record_to(path, meta={"recorded_by": who})
    return True
