"""``tiertop record``: record a runtime's telemetry stream to a file until Ctrl-C or --duration.

It is just another subscriber: it connects to the runtime's telemetry endpoint (and, with
``--replay-addr``, its replay endpoint, to fill gaps and start from a snapshot), and writes every
message it delivers, as received, to FILE (see :mod:`tiertop.monitor.recording`). The file is
readable at any moment, also after a crash. Messages go to stderr; the last line says what was
recorded.

Exit status: 0 after a clean stop, 1 when nothing arrived within ``--timeout`` or writing failed,
2 on bad arguments or an existing file without ``--force``, 130 on a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from .key_options import add_client_key_arguments, client_curve_from_args
from .watch_cli import DEFAULT_CONNECT


def _size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
    raw = text.strip().lower().replace("_", "")
    number = raw.rstrip("kmgib")
    unit = raw[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MiB, 2G)") from None
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", default=DEFAULT_CONNECT, metavar="ADDR",
                        help="the runtime's telemetry (PUB) endpoint (default: %(default)s)")
    parser.add_argument("--replay-addr", default=None, metavar="ADDR",
                        help="its replay/snapshot endpoint: fill gaps and start from a "
                             "snapshot (default: none)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the recording to write")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument("--max-bytes", type=_size, default=None, metavar="N",
                        help="size limit of the file (e.g. 500MiB); see --on-full")
    parser.add_argument("--on-full", choices=("drop-oldest", "stop"), default="drop-oldest",
                        help="at --max-bytes: drop the oldest data (default) or stop recording")
    parser.add_argument("--retain-s", type=float, default=None, metavar="S",
                        help="keep only about the last S seconds (drops the oldest data)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C or SIGTERM)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="give up with status 1 if nothing arrives within S seconds")
    parser.add_argument("--scenario", default=None, metavar="FILE",
                        help="scenario file whose text goes into the recording's header")
    add_client_key_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading
    import time
    from pathlib import Path

    import zmq

    from .recorder import Recorder
    from .recording import RecordingError

    def err(text: str) -> None:
        print(f"tiertop record: {text}", file=sys.stderr, flush=True)

    try:
        curve = client_curve_from_args(args)
    except ValueError as exc:
        err(str(exc))
        return 2
    scenario = None
    if args.scenario is not None:
        try:
            scenario = Path(args.scenario).read_text()
        except OSError as exc:
            err(f"cannot read {args.scenario}: {exc.strerror or exc}")
            return 2
    if Path(args.out).exists() and not args.force:
        err(f"{args.out} exists; --force replaces it")
        return 2
    try:
        recorder = Recorder(
            args.out, args.connect, args.replay_addr, curve=curve, scenario=scenario,
            max_bytes=args.max_bytes, retain_s=args.retain_s, on_full=args.on_full,
            overwrite=args.force,
        )
    except RecordingError as exc:
        err(str(exc))
        return 2
    except (OSError, zmq.ZMQError) as exc:
        err(f"cannot start: {exc}")
        return 2

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    recorder.start()
    err(f"recording {args.connect} to {args.out}; Ctrl-C to stop")
    started = time.monotonic()
    deadline = None if args.duration is None else started + args.duration
    status = 0
    said = False
    while not done.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            break
        wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
        done.wait(wait)
        counters = recorder.counters()
        if counters.error:
            err(f"writing failed: {counters.error}")
            status = 1
            break
        if counters.received == 0:
            if not said and time.monotonic() - started > 2.0:
                err(f"waiting for telemetry from {args.connect}…")
                said = True
            if args.timeout is not None and time.monotonic() - started >= args.timeout:
                err(f"no telemetry from {args.connect} after {args.timeout:g}s")
                status = 1
                break
    signal.signal(signal.SIGINT, signal.default_int_handler)
    counters = recorder.stop()
    if counters.error and status == 0:
        err(f"writing failed: {counters.error}")
        status = 1
    print(recorder.summary_line(), flush=True)
    return status
