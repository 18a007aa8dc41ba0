"""``tiertop keys``: make CurveZMQ key pairs for runtimes and clients.

Make one pair for the runtime and one per client; give the runtime its ``NAME.key_secret`` and a
directory holding the ``.key`` files of the clients it admits, and give each client its own
``NAME.key_secret`` plus the runtime's ``.key``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory to write the key files into (created if missing)")
    parser.add_argument("--name", default="tiertop",
                        help="base name of the files: NAME.key (public), NAME.key_secret "
                             "(secret) (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing key files of that name")


def run(args: argparse.Namespace) -> int:
    from .security import create_key_pair

    try:
        public, secret = create_key_pair(args.out, args.name, overwrite=args.force)
    except FileExistsError as exc:
        print(f"tiertop keys: {exc}; choose another --name or pass --force", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"tiertop keys: {exc}", file=sys.stderr)
        return 1
    print(f"public key: {public}  (give it to peers: a client's goes into the runtime's "
          "authorised-clients directory, the runtime's to its clients)")
    print(f"secret key: {secret}  (mode 0600; keep it on this machine)")
    return 0
