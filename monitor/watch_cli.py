"""``tiertop watch``: a compact per-tier table every interval, like ``top -b``.

Connects a :class:`~tiertop.monitor.subscriber.TelemetrySubscriber` to a runtime's telemetry,
folds everything into a :class:`~tiertop.monitor.state.StateModel` and prints, every
``--interval`` seconds, a header (source, mode, epoch, message age, gaps, drops, request rate,
TTFT) and one row per tier; with ``--json``, one JSON object per line instead (stable keys, see
:func:`~tiertop.monitor.render_text.watch_record`). Plain text on stdout, messages on stderr.

Exit status: 0 after ``--count`` prints (or when stdout is closed), 1 when nothing arrived
within ``--timeout``, 2 on bad arguments or key files, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from .key_options import add_client_key_arguments, client_curve_from_args

DEFAULT_CONNECT = "tcp://127.0.0.1:5557"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", default=DEFAULT_CONNECT, metavar="ADDR",
                        help="the runtime's telemetry (PUB) endpoint (default: %(default)s)")
    parser.add_argument("--replay-addr", default=None, metavar="ADDR",
                        help="its replay/snapshot endpoint, to fill gaps and resync on join "
                             "(default: none; gaps are only counted)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between prints (default: %(default)s)")
    parser.add_argument("--window", type=float, default=None, metavar="S",
                        help="window of rates and percentiles in seconds (default: the "
                             "interval, at least 1)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per line instead of a table")
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="exit after N prints (default: run until interrupted)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="exit with status 1 if nothing arrives within S seconds")
    add_client_key_arguments(parser)


def _finite_only(value: Any) -> Any:
    """The same data with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_only(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import zmq

    from .render_text import render_table, watch_record
    from .state import StateModel
    from .subscriber import TelemetrySubscriber

    def err(text: str) -> None:
        print(f"tiertop watch: {text}", file=sys.stderr, flush=True)

    if args.interval <= 0:
        err("--interval must be > 0")
        return 2
    if args.count is not None and args.count < 1:
        err("--count must be >= 1")
        return 2
    try:
        curve = client_curve_from_args(args)
    except ValueError as exc:
        err(str(exc))
        return 2

    window = args.window if args.window is not None else max(args.interval, 1.0)
    model = StateModel(window_s=window)
    try:
        subscriber = TelemetrySubscriber(args.connect, args.replay_addr, curve=curve)
    except (zmq.ZMQError, RuntimeError) as exc:
        err(f"cannot connect to {args.connect}: {exc}")
        return 2

    clock = time.monotonic
    started = clock()
    next_print = started + args.interval
    printed = 0
    said_waiting = False
    try:
        while True:
            now = clock()
            wait_ms = max(0.0, (next_print - now) * 1000.0)
            messages = subscriber.poll(max_messages=2000, timeout_ms=wait_ms)
            if messages:
                model.fold_many(messages, received_at=clock())
            now = clock()
            if now < next_print:
                continue
            next_print += args.interval
            if next_print <= now:  # fell behind (a flood, a suspended terminal): catch up
                next_print = now + args.interval
            if not model.has_data:
                if not said_waiting:
                    err(f"waiting for telemetry from {args.connect}…")
                    said_waiting = True
                if args.timeout is not None and now - started >= args.timeout:
                    err(f"no telemetry from {args.connect} after {args.timeout:g}s")
                    return 1
                continue
            model.update_connection(
                subscriber.counters(), stale=subscriber.stale, in_sync=subscriber.in_sync
            )
            record = watch_record(model, now=now, window_s=window)
            if args.json:
                out = json.dumps(_finite_only(record), separators=(",", ":"), allow_nan=False)
            else:
                out = render_table(record, args.connect) + "\n"
            print(out, flush=True)
            printed += 1
            if args.count is not None and printed >= args.count:
                return 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tiertop watch | head`: the reader left
        # Point stdout at /dev/null so the interpreter's final flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    finally:
        subscriber.close()
