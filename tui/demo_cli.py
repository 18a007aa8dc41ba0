"""``tiertop demo``: start a runtime with small tiers and open the dashboard on it.

The runtime is ``tiertop run`` with a tiny GPT-2-shaped model on a 1 MiB DRAM tier, a 2 MiB
remote memory-server tier and an 8 MiB disk tier, so evictions, demotions and promotions start
within seconds; ``--sim`` runs the cluster simulator's ``rack`` preset instead. The dashboard
opens at once and connects when the runtime is up (loading the model takes a few seconds).
Quitting the dashboard stops the runtime and everything it started and removes its temporary
files. ``--record FILE`` records what the dashboard shows (replay it with ``tiertop dash
--replay FILE``).
"""

from __future__ import annotations

import argparse
import sys

from .options import add_view_arguments, load_keymap
from .replay_record import add_record_argument, start_session_recording

DEMO_TIERS = ("dram:1MiB", "remote:2MiB", "disk:8MiB")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sim", action="store_true",
                        help="run the cluster simulator (tiertop sim --preset rack) instead")
    parser.add_argument("--rate", type=float, default=6.0,
                        help="requests per second of the model runtime (default: %(default)s)")
    parser.add_argument("--tier", action="append", metavar="KIND:CAP[,k=v]",
                        help="tiers of the model runtime, fastest first (default: "
                             + " ".join(DEMO_TIERS) + ")")
    parser.add_argument("--keep-log", action="store_true",
                        help="keep the runtime's log and print where it is")
    add_record_argument(parser)
    add_view_arguments(parser)


def runtime_args(args: argparse.Namespace) -> list[str]:
    """The ``tiertop`` arguments of the runtime the demo starts."""
    ports = ["--publish", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
             "--replay", "tcp://127.0.0.1:0"]
    if args.sim:
        return ["sim", "--preset", "rack", *ports]
    tiers: list[str] = []
    for spec in args.tier or DEMO_TIERS:
        tiers += ["--tier", spec]
    return ["run", *tiers, "--rate", f"{args.rate:g}", "--new-conv-prob", "0.3",
            "--tick", "0.25", *ports]


def run(args: argparse.Namespace) -> int:
    import signal

    from .app import DashboardApp
    from .launcher import RuntimeProcess
    from .session import Endpoints, Session, connect_live

    def err(text: str) -> None:
        print(f"tiertop demo: {text}", file=sys.stderr, flush=True)

    if args.sim:
        from tiertop.main import SUBCOMMANDS

        if "sim" not in SUBCOMMANDS:
            err("--sim needs `tiertop sim` (the cluster simulator), which this build lacks")
            return 2
    if not args.rate > 0:
        err("--rate must be > 0")
        return 2
    try:
        keymap = load_keymap(args.keymap)
    except ValueError as exc:
        err(str(exc))
        return 2

    session = Session(read_only=args.read_only)
    if not start_session_recording(session, args.record, "tiertop demo", err):
        return 2
    runtime = RuntimeProcess(runtime_args(args), keep_dir=args.keep_log)
    what = "simulator" if args.sim else "runtime"
    session.target = f"{what} pid {runtime.pid}"
    session.note = f"starting the {what} (pid {runtime.pid}); loading takes a few seconds…"

    def attach(s: Session) -> None:
        addresses = runtime.wait_addresses(cancelled=lambda: s.closed)
        connect_live(s, Endpoints(addresses["telemetry"], addresses.get("replay"),
                                  addresses.get("control")))

    session.attach = attach
    app = DashboardApp(session, keymap=keymap, theme_name=args.theme, tune_process=True)

    def on_signal(signum: int, _frame: object) -> None:
        app.exit(128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        app.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        session.close()
        code = runtime.stop()
        if args.keep_log:
            print(f"runtime log: {runtime.log_path}", flush=True)
        if (summary := session.record_summary()) is not None:
            print(summary, flush=True)
    if code not in (0, None, -signal.SIGTERM):
        err(f"the {what} exited with status {code}")
    return app.return_code or 0
