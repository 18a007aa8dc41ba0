"""``tiertop export FILE --format csv|jsonl|parquet --out DIR [--plots]``: tables from a recording.

Writes the tables of :mod:`tiertop.monitor.export` (tier statistics over time, service figures,
block events, moves, requests, control changes, faults, marks; schema in
``docs/export-schema.md``), ``summary.json`` and ``manifest.json``; with ``--plots`` also PNG
figures and an ``index.html`` report (:mod:`tiertop.monitor.plots`). Never imports Textual.

Exit status: 0 on success (also for a damaged but readable recording, with warnings), 1 when the
file is not a readable recording or writing fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the recording")
    parser.add_argument("--format", choices=("csv", "jsonl", "parquet"), default="csv",
                        help="table format (default: %(default)s)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory to write into (created if missing)")
    parser.add_argument("--plots", action="store_true",
                        help="also write PNG figures and an index.html report")
    parser.add_argument("--phases", default=None, metavar="SPEC",
                        help="phases of summary.json, as for `tiertop replay --phases`")


def run(args: argparse.Namespace) -> int:
    from .export import export_recording
    from .recording import Recording, RecordingError
    from .summary import parse_phases, phases_at_controls

    def err(text: str) -> None:
        print(f"tiertop export: {text}", file=sys.stderr, flush=True)

    try:
        recording = Recording.open(args.file)
    except RecordingError as exc:
        err(str(exc))
        return 1
    with recording:
        phases = None
        if args.phases:
            try:
                if args.phases.strip() == "controls":
                    start = recording.start_time
                    controls = [e for e in recording.index if e.kind == "control"]
                    phases = phases_at_controls([e.t - start for e in controls],
                                                recording.duration_s,
                                                [e.label for e in controls])
                else:
                    phases = parse_phases(args.phases)
            except ValueError as exc:
                err(str(exc))
                return 2
        try:
            result = export_recording(recording, args.out, args.format, plots=args.plots,
                                      phases=phases)
        except (OSError, RuntimeError, RecordingError) as exc:
            err(str(exc))
            return 1
    for issue in result.issues:
        err(f"warning: {issue}")
    for name, rows in result.rows.items():
        print(f"{name}: {rows:,} rows")
    print(f"wrote {len(result.files)} files to {result.out_dir}"
          + (f" (report: {result.out_dir / 'index.html'})" if args.plots else ""))
    return 0
