"""``tiertop play SCENARIO``: play a scenario file headless and print a per-phase summary.

SCENARIO is a path or the name of a bundled scenario (``tiertop play --list``). The file is
checked completely before anything starts (``--check`` stops there). The run prints a summary
table per phase (the one ``tiertop replay --headless`` prints), what each timeline action did,
the KV integrity figures and each expectation's outcome; ``--json`` prints all of it as one JSON
object instead. ``--record FILE`` records the telemetry stream (``tiertop replay FILE``,
``tiertop export FILE``). ``--dash`` plays it with the dashboard attached (sim scenarios then run
at ``--speed``, default the scenario's or 1x).

This command never imports Textual (``--dash`` runs ``tiertop dash`` as a separate process).

Exit status: 0 when every expectation held (and every action was applied), 1 when one did not
(each failure is named with the measured value) or the run itself failed, 2 for a broken
scenario file or bad arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from typing import Any


def _speed(text: str) -> float:
    if text == "max":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a speed: {text!r} (a number > 0, or max)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"speed must be > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", metavar="SCENARIO",
                        help="a scenario file, or the name of a bundled scenario (see --list)")
    parser.add_argument("--list", action="store_true",
                        help="list the bundled scenarios with a one-line description")
    parser.add_argument("--check", action="store_true",
                        help="only validate the scenario file (exit 0 when it is fine, 2 when "
                             "not)")
    parser.add_argument("--json", action="store_true",
                        help="print the result (summary, timeline, expectations) as JSON")
    parser.add_argument("--record", metavar="FILE", default=None,
                        help="record the telemetry stream to FILE (replaces an earlier "
                             "recording)")
    parser.add_argument("--dash", action="store_true",
                        help="play with the dashboard attached (`tiertop dash` in this "
                             "terminal); the summary follows when it is closed")
    parser.add_argument("--speed", type=_speed, default=None, metavar="X",
                        help="sim scenarios: virtual seconds per wall second, or max "
                             "(default: max headless; with --dash the scenario's, or 1)")


def _err(text: str) -> None:
    print(f"tiertop play: {text}", file=sys.stderr, flush=True)


def _list() -> int:
    from .validate import ScenarioError, bundled_scenarios, load_scenario

    rows = []
    for name, path in bundled_scenarios():
        try:
            s = load_scenario(path)
            unit = "virtual s" if s.mode == "sim" else "s"
            rows.append((name, f"[{s.mode}, {s.duration_s:g} {unit}] {s.description}"))
        except ScenarioError as exc:
            rows.append((name, f"(broken: {exc})"))
    width = max((len(name) for name, _ in rows), default=0)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


def dash_available() -> str | None:
    """Why ``--dash`` cannot work here (None when it can), without importing Textual."""
    from importlib.util import find_spec

    try:
        if find_spec("textual") is None:
            return "Textual is not installed"
        if find_spec("tiertop.tui.dash_cli") is None:
            return "the dashboard (tiertop.tui.dash_cli) is not part of this installation"
    except (ImportError, ValueError) as exc:
        return f"the dashboard cannot be found: {exc}"
    return None


def dash_command(addresses: Mapping[str, str]) -> list[str]:
    """The ``tiertop dash`` command line that attaches to a runtime at ``addresses``."""
    command = [sys.executable, "-m", "tiertop", "dash", "--connect", addresses["telemetry"]]
    if addresses.get("control"):
        command += ["--control", addresses["control"]]
    if addresses.get("replay"):
        command += ["--replay-addr", addresses["replay"]]
    return command


class _Dashboard:
    """Starts ``tiertop dash`` on the runtime once it serves; waits for it to close."""

    def __init__(self) -> None:
        self.proc: Any = None
        self._tty: Any = None

    def start(self, addresses: Mapping[str, str]) -> None:
        import subprocess

        # The terminal, even when this command's output goes to a file (--json > out.json).
        try:
            self._tty = open("/dev/tty", "r+b", buffering=0)  # noqa: SIM115 (closed in stop)
        except OSError:
            self._tty = None
        tty = self._tty
        self.proc = subprocess.Popen(dash_command(addresses), stdin=tty, stdout=tty, stderr=tty)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> None:
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
        if self._tty is not None:
            self._tty.close()
            self._tty = None


def run(args: argparse.Namespace) -> int:
    import json

    from .player import Player, PlayError
    from .validate import ScenarioError, load_scenario, resolve_scenario

    if args.list:
        return _list()
    if args.scenario is None:
        _err("give a scenario file or a bundled scenario's name (`tiertop play --list`)")
        return 2
    try:
        scenario = load_scenario(resolve_scenario(args.scenario))
    except ScenarioError as exc:
        _err(str(exc))
        return 2
    if args.check:
        print(f"{scenario.path}: ok ({scenario.mode} scenario {scenario.name!r}, "
              f"{scenario.duration_s:g} s, {len(scenario.timeline)} action(s), "
              f"{len(scenario.phases)} phase(s), {len(scenario.expectations)} expectation(s))")
        return 0
    speed = args.speed
    if speed is not None and scenario.mode != "sim":
        _err("--speed applies to sim scenarios; a model scenario runs on the wall clock")
        return 2
    dashboard = None
    if args.dash:
        why = dash_available()
        if why is not None:
            _err(f"--dash: the dashboard is not available ({why}); play without --dash, or "
                 "attach one later with `tiertop dash --connect ADDR`")
            return 2
        dashboard = _Dashboard()
        if scenario.mode == "sim" and speed is None:
            assert scenario.sim is not None
            speed = scenario.sim.speed if math.isfinite(scenario.sim.speed) else 1.0
    if args.record is not None:
        import os

        from tiertop.monitor.recording import is_recording

        if os.path.exists(args.record) and not is_recording(args.record):
            _err(f"--record: {args.record} exists and is not a tiertop recording; not "
                 "overwriting it")
            return 2
    log = None if dashboard is not None else (lambda text: print(text, file=sys.stderr,
                                                                 flush=True))
    player = Player(
        scenario, record=args.record, speed=speed, log=log,
        on_start=dashboard.start if dashboard is not None else None,
        hold=dashboard.wait if dashboard is not None else None,
        await_reader=dashboard.alive if dashboard is not None else None,
    )
    try:
        result = player.play()
    except (PlayError, OSError, ValueError) as exc:  # ValueError: e.g. a broken trace row
        _err(f"the run failed: {exc}")
        return 1
    finally:
        if dashboard is not None:
            dashboard.stop()
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, allow_nan=False, default=str))
    else:
        print(result.render())
    if not result.passed:
        for line in result.failures():
            _err(line)
        return 1
    return 0
