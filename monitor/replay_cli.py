"""``tiertop replay FILE --headless``: replay a recording and print the per-phase summary.

The recording is folded through the same state model as live data, as fast as possible, and
the summary ``tiertop play`` prints comes out: per phase, per-tier hit ratios, evictions,
migrations, latency percentiles and throughput (``--json`` for a machine-readable form).
``--info`` only describes the file (what, from where, how long, what is damaged). A damaged
file (truncated by a crash, corrupted) is replayed as far as it is readable, with warnings.

The dashboard replays with ``tiertop dash --replay FILE``. This command never imports Textual.

Exit status: 0 on success (also for a damaged but readable file), 1 when the file is not a
readable recording, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the recording")
    parser.add_argument("--headless", action="store_true",
                        help="no dashboard: print the summary (the dashboard replays with "
                             "`tiertop dash --replay FILE`)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--phases", default=None, metavar="SPEC",
                        help="phases as [NAME=]START:END,... in seconds from the start "
                             "(e.g. warmup=0:30,burst=30:90,90:), or 'controls' to split at "
                             "every control change (default: one phase, the whole session)")
    parser.add_argument("--info", action="store_true",
                        help="only describe the file and its index, no replay")


def run(args: argparse.Namespace) -> int:
    import json

    from .recording import Recording, RecordingError
    from .replay import Replayer
    from .summary import parse_phases, phases_at_controls, render_summary, summarize_replay

    def err(text: str) -> None:
        print(f"tiertop replay: {text}", file=sys.stderr, flush=True)

    if not (args.headless or args.info):
        err("the interactive replay is `tiertop dash --replay FILE`; use --headless for the "
            "summary or --info for a description")
        return 2
    try:
        recording = Recording.open(args.file)
    except RecordingError as exc:
        err(str(exc))
        return 1
    with recording:
        if args.info:
            if args.json:
                print(json.dumps(_info(recording), indent=2, default=str))
            else:
                print("\n".join(recording.describe()))
                for entry in recording.index:
                    print(f"  {entry.t - recording.start_time:10.2f} s  {entry.kind:<8} "
                          f"{entry.label}")
            return 0
        replayer = Replayer(recording)
        phases = None
        if args.phases:
            try:
                if args.phases.strip() == "controls":
                    phases = phases_at_controls(
                        [replayer.position_of(e) for e in replayer.controls],
                        replayer.duration_s, [e.label for e in replayer.controls])
                else:
                    phases = parse_phases(args.phases)
            except ValueError as exc:
                err(str(exc))
                return 2
        if not args.json:
            for line in recording.describe():
                print(line)
            print()
        summary = summarize_replay(replayer, phases)
        if args.json:
            issues = list(recording.issues) + list(replayer.issues)
            summary.info = {"recording": str(recording.path), "issues": issues}
            print(json.dumps(summary.as_dict(), indent=2, allow_nan=False))
        else:  # the recording's own issues were printed with its description
            summary.info = {"recording": str(recording.path), "issues": replayer.issues}
            print(render_summary(summary))
    return 0


def _info(recording: object) -> dict[str, object]:
    from .recording import Recording

    assert isinstance(recording, Recording)
    hello = recording.hello
    return {
        "path": str(recording.path),
        "file_bytes": recording.file_bytes,
        "header": {k: v for k, v in recording.header.items() if k != "hello"},
        "runtime": None if hello is None else {
            "mode": hello.mode, "host": hello.host, "pid": hello.pid,
            "model": hello.topology.model, "tiers": [t.name for t in hello.tiers],
        },
        "records": recording.records,
        "chunks": len(recording.chunks),
        "keyframes": len(recording.keyframes),
        "duration_s": recording.duration_s,
        "index": [
            {"time_s": e.t - recording.start_time, "kind": e.kind, "label": e.label}
            for e in recording.index
        ],
        "complete": recording.complete,
        "issues": recording.issues,
    }
