"""``--client-key``/``--server-key``, shared by every command that reads or steers a runtime.

Kept apart from :mod:`tiertop.monitor.security` so that building the command line imports no
ZeroMQ.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .security import ClientCurve


def add_client_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client-key", default=None, metavar="FILE",
                        help="CurveZMQ: this client's NAME.key_secret (with --server-key)")
    parser.add_argument("--server-key", default=None, metavar="FILE",
                        help="CurveZMQ: the runtime's public NAME.key (with --client-key)")


def client_curve_from_args(args: argparse.Namespace) -> ClientCurve | None:
    """The CURVE settings those options name (None without them); ValueError says what is
    wrong with them."""
    if (args.client_key is None) != (args.server_key is None):
        raise ValueError("--client-key and --server-key go together")
    if args.client_key is None:
        return None
    from .security import ClientCurve

    try:
        return ClientCurve.from_files(args.client_key, args.server_key)
    except OSError as exc:
        raise ValueError(str(exc)) from None
