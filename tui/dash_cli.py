"""``tiertop dash``: open the dashboard on a running runtime.

``--connect`` alone is enough: the runtime's Hello names its replay and control addresses. Give
``--replay-addr`` / ``--control`` to override them, ``--read-only`` to watch without controls,
and ``--client-key``/``--server-key`` for a runtime that requires CurveZMQ.

Exit status: 0 when the user quits, 2 on bad arguments or key files.
"""

from __future__ import annotations

import argparse
import sys

from tiertop.monitor.key_options import add_client_key_arguments, client_curve_from_args

from .options import add_view_arguments, load_keymap

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
    add_view_arguments(parser)
    # For benchmarks/dashboard.py: what the dashboard drew and ingested, as JSON, at exit.
    parser.add_argument("--stats-out", default=None, help=argparse.SUPPRESS)


def write_stats(path: str, app: object, session: object) -> None:
    """Counters of a finished dashboard run (frames refreshed, messages folded, stream)."""
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
    stats = {
        "refreshes": app.refreshes,
        "folded_messages": ingest.folded if ingest is not None else 0,
        "kv_batches": folded_events,
        "subscriber": subscriber,
        "gaps": health["gaps"],
        "unrecovered": health["unrecovered"],
        "messages": health["messages"],
    }
    with open(path, "w", encoding="utf-8") as out:
        json.dump(stats, out)


def run(args: argparse.Namespace) -> int:
    from .app import DashboardApp
    from .session import Endpoints, Session, connect_live

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
    endpoints = Endpoints(args.connect, args.replay_addr, args.control)

    def attach(session: Session) -> None:
        connect_live(session, endpoints, curve=curve)

    session = Session(read_only=args.read_only, target=args.connect, attach=attach)
    if args.control is not None:
        session.controller.address = args.control
    app = DashboardApp(session, keymap=keymap, theme_name=args.theme, tune_process=True)
    try:
        app.run()
        if args.stats_out:
            write_stats(args.stats_out, app, session)
    finally:
        session.close()
    return 0
