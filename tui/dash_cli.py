"""``tiertop dash``: open the dashboard on a running runtime, or on a recording.

``--connect`` alone is enough: the runtime's Hello names its replay and control addresses. Give
``--replay-addr`` / ``--control`` to override them, ``--read-only`` to watch without controls,
and ``--client-key``/``--server-key`` for a runtime that requires CurveZMQ. ``--record FILE``
records the stream the dashboard folds, finished when it quits (see
:mod:`tiertop.tui.replay_record`).

``--replay FILE`` plays a recording through the same state model and screens instead (no
runtime, controls off; see :mod:`tiertop.tui.replay_session`), at ``--speed`` and starting
``--paused`` if asked.

Exit status: 0 when the user quits, 2 on bad arguments, key files, a file that is not a
recording or a recording that cannot be created.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tiertop.monitor.key_options import add_client_key_arguments, client_curve_from_args

from .options import add_view_arguments, load_keymap
from .replay_record import add_record_argument, start_session_recording

if TYPE_CHECKING:
    from collections.abc import Callable

    from tiertop.monitor.security import ClientCurve

    from .session import Session

DEFAULT_CONNECT = "tcp://127.0.0.1:5557"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", default=DEFAULT_CONNECT, metavar="ADDR",
                        help="the runtime's telemetry (PUB) endpoint (default: %(default)s)")
    parser.add_argument("--control", default=None, metavar="ADDR",
                        help="its control endpoint (default: the one its Hello announces)")
    parser.add_argument("--replay-addr", default=None, metavar="ADDR",
                        help="its replay/snapshot endpoint (default: the one its Hello "
                             "announces)")
    add_client_key_arguments(parser)
    add_record_argument(parser)
    replay = parser.add_argument_group("replay")
    replay.add_argument("--replay", default=None, metavar="FILE",
                        help="play a recording instead of connecting: space plays/pauses, "
                             ". steps one tick, < > change speed, ←/→ seek 10 s, j seeks to a "
                             "time, n/N jump to the next/previous control change")
    replay.add_argument("--speed", type=float, default=1.0, metavar="X",
                        help="replay speed, 0.25 to 64 (default: %(default)s)")
    replay.add_argument("--paused", action="store_true", help="open the replay paused")
    add_view_arguments(parser)
    # For benchmarks/dashboard.py: what the dashboard drew and ingested, as JSON, at exit.
    parser.add_argument("--stats-out", default=None, help=argparse.SUPPRESS)


def write_stats(path: str, app: object, session: object) -> None:
    """Counters of a finished dashboard run (frames refreshed, messages folded, stream, the
    live MRC's feed)."""
    import json

    from .app import DashboardApp
    from .session import Session

    assert isinstance(app, DashboardApp) and isinstance(session, Session)
    ingest = session.ingest
    with session.lock:
        health = session.model.source_health()
        folded_events = sum(
            session.model.messages.get(k, 0) for k in ("KvEventBatch",)
        )
        subscriber = dict(session.model.subscriber)
        mrc = session.mrc.stats()
    stats = {
        "refreshes": app.refreshes,
        "folded_messages": ingest.folded if ingest is not None else 0,
        "kv_batches": folded_events,
        "subscriber": subscriber,
        "gaps": health["gaps"],
        "unrecovered": health["unrecovered"],
        "messages": health["messages"],
        "mrc": mrc,
    }
    with open(path, "w", encoding="utf-8") as out:
        json.dump(stats, out)


def run(args: argparse.Namespace) -> int:
    from .app import DashboardApp

    def err(text: str) -> None:
        print(f"tiertop dash: {text}", file=sys.stderr, flush=True)

    try:
        curve = client_curve_from_args(args)
    except ValueError as exc:
        err(str(exc))
        return 2
    try:
        keymap = load_keymap(args.keymap)
    except ValueError as exc:
        err(str(exc))
        return 2
    if args.replay is not None:
        if args.record is not None:
            err("--record and --replay do not go together: a replay records nothing new "
                "(copy the file instead)")
            return 2
        replay = replay_session(args, err)
        if replay is None:
            return 2
        session = replay
    elif args.paused or args.speed != 1.0:
        err("--speed and --paused go with --replay FILE")
        return 2
    else:
        session = live_session(args, curve)
        if not start_session_recording(session, args.record, "tiertop dash", err):
            return 2
    app = DashboardApp(session, keymap=keymap, theme_name=args.theme, tune_process=True)
    try:
        app.run()
        if args.stats_out:
            write_stats(args.stats_out, app, session)
    finally:
        session.close()
        if (summary := session.record_summary()) is not None:
            print(summary, flush=True)
    return 0


def live_session(args: argparse.Namespace, curve: ClientCurve | None) -> Session:
    """A session that connects to the runtime at ``--connect`` once the dashboard is up."""
    from .session import Endpoints, Session, connect_live

    endpoints = Endpoints(args.connect, args.replay_addr, args.control)

    def attach(session: Session) -> None:
        connect_live(session, endpoints, curve=curve)

    session = Session(read_only=args.read_only, target=args.connect, attach=attach)
    if args.control is not None:
        session.controller.address = args.control
    return session


def replay_session(args: argparse.Namespace, err: Callable[[str], None]) -> Session | None:
    """The session of ``--replay FILE`` (None, said through ``err``, when it cannot be)."""
    from tiertop.monitor.recording import RecordingError

    from .replay_session import open_replay

    try:
        return open_replay(args.replay, speed=args.speed, paused=args.paused)
    except RecordingError as exc:
        err(f"--replay: {exc}")
    except ValueError as exc:
        err(f"--speed: {exc}")
    return None
