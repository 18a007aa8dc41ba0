"""``tiertop memserver``: serve a remote KV memory tier over ZeroMQ.

Only argument handling lives here (``tiertop --help`` imports this module); the server itself, and
pyzmq with it, is imported when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from .units import format_bytes, parse_size

DEFAULT_BIND = "tcp://127.0.0.1:5600"
DEFAULT_CAPACITY = "1GiB"


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to listen on (default {DEFAULT_BIND}; port 0 or * picks a free one)",
    )
    parser.add_argument(
        "--capacity",
        type=_size_arg,
        default=DEFAULT_CAPACITY,
        metavar="SIZE",
        help=f"most payload bytes held in RAM: 512MiB, 1GiB, 65536... (default {DEFAULT_CAPACITY})",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        metavar="PID",
        help="exit when this process (the one that started the server) is gone",
    )


def run(args: argparse.Namespace) -> int:
    import signal

    import zmq

    from .memserver import MemServer, ServerStopped, keep_freed_memory

    keep_freed_memory()
    try:
        server = MemServer(args.bind, args.capacity, parent_pid=args.parent_pid)
    except zmq.ZMQError as exc:
        print(f"tiertop memserver: cannot bind {args.bind}: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        raise ServerStopped(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    reason = "stopped"
    try:
        _say(
            f"tiertop memserver listening on {server.address} (pid {server.pid}, "
            f"capacity {format_bytes(server.capacity)}, epoch {server.epoch:#018x})"
        )
        reason = server.serve()
    except KeyboardInterrupt:
        reason = "interrupted"
    except ServerStopped as exc:
        reason = f"stopped by {exc}"
    finally:
        signal.signal(signal.SIGTERM, previous)
        info = server.info()
        server.close()
    _say(
        f"tiertop memserver {reason}: served {info.requests} requests, "
        f"held {info.blocks} blocks ({format_bytes(info.used)})"
    )
    return 0


def _say(line: str) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):  # whoever read our stdout is gone
        print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server on its own: ``python -m tiertop.tiers.memserver_cli``."""
    parser = argparse.ArgumentParser(prog="tiertop memserver", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
