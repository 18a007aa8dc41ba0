"""The ``tiertop`` command: one parser, subcommands imported only when they run.

Each subcommand lives next to the part it drives; this module only wires arguments to them, so a
headless command never imports Textual and ``tiertop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from tiertop import __version__

Handler = Callable[[argparse.Namespace], int]

# name -> (module that defines `add_arguments(parser)` and `run(args) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("tiertop.runtime.run_cli", "start the runtime: a model serving a workload on tiers"),
    "sim": ("tiertop.runtime.sim.sim_cli",
            "run the cluster simulator (live, or headless trace replay)"),
    "memserver": ("tiertop.tiers.memserver_cli", "serve a remote KV memory tier over ZeroMQ"),
    "keys": ("tiertop.monitor.keys_cli", "make CurveZMQ key pairs for runtimes and clients"),
    "watch": ("tiertop.monitor.watch_cli",
              "print a compact per-tier table every second (like top -b)"),
    "demo": ("tiertop.tui.demo_cli", "start a runtime and open the dashboard on it"),
    "dash": ("tiertop.tui.dash_cli", "open the dashboard on a running runtime"),
    "record": ("tiertop.monitor.record_cli", "record a runtime's telemetry stream to a file"),
    "replay": ("tiertop.monitor.replay_cli",
               "replay a recording headless and print its per-phase summary"),
    "export": ("tiertop.monitor.export_cli",
               "export a recording as CSV/JSON lines/Parquet tables, with --plots a report"),
    "plan": ("tiertop.planner.plan_cli", "rank hardware and size tiers for a model and workload"),
    "play": ("tiertop.scenarios.play_cli",
             "play a scenario file headless and print a per-phase summary"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiertop",
        description="Live monitor and controller for tiered LLM KV-cache memory.",
    )
    parser.add_argument("--version", action="version", version=f"tiertop {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    run: Handler = importlib.import_module(args._module).run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
