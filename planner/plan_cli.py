"""``tiertop plan``: rank hardware for a model and workload, size tiers from observed accesses,
or calibrate the predictor from measured runs.

Three modes (see ``docs/planner.md``):

* ``tiertop plan --model M --batch-size B --input-len I --output-len O --slo-tps T`` ranks every
  catalogue instance meeting the SLO by cost and explains the best one; ``--json`` prints one
  JSON object instead. Exit status 0 when some instance meets the SLO, 1 when none does.
* ``tiertop plan --from-recording FILE`` builds the miss-ratio curve of the block accesses in a
  tiertop recording (or a JSONL of accesses or block events) and recommends tier capacities and
  watermarks.
* ``tiertop plan --calibrate FILE --model M --hardware H`` fits H's efficiency factors to the
  measured requests in FILE and prints predicted vs measured, and a catalogue override.

Errors in the input (unknown model, invalid catalogue, unreadable file) print one message and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .catalog import PRECISIONS, Catalog, CatalogError, load_catalog

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    work = parser.add_argument_group("workload (ranking)")
    work.add_argument("--model", help="model name or alias (see --list)")
    work.add_argument("--batch-size", type=int, help="requests served together")
    work.add_argument("--input-len", type=int, help="prompt tokens per request")
    work.add_argument("--output-len", type=int, help="generated tokens per request")
    work.add_argument("--prefix-len", type=int, default=0,
                      help="prompt tokens already cached (not computed; default 0)")
    work.add_argument("--precision", choices=list(PRECISIONS), default="fp16",
                      help="weights and compute (default fp16)")
    work.add_argument("--kv-precision", choices=list(PRECISIONS),
                      help="KV cache (default: --precision)")
    work.add_argument("--safety-factor", type=float, default=1.1,
                      help="plan to fill at most memory / FACTOR (default 1.1)")
    work.add_argument("--block-tokens", type=int, default=16, help="tokens per KV block")
    work.add_argument("--max-batched-tokens", type=int, default=8192,
                      help="prompt tokens per prefill chunk (default 8192)")
    work.add_argument("--runtime-overhead-gib", type=float, default=1.0,
                      help="per-GPU memory the runtime holds besides weights/activations/KV")
    slo = parser.add_argument_group("service-level objective")
    slo.add_argument("--slo-tps", type=float, default=0.0,
                     help="minimum output tokens per second of one instance")
    slo.add_argument("--slo-ttft-ms", type=float, help="maximum time to first token, ms")
    inst = parser.add_argument_group("instances")
    inst.add_argument("--hardware", action="append", metavar="NAME",
                      help="consider only these hardware entries (repeatable)")
    inst.add_argument("--gpus", default="1,2,4,8",
                      help="tensor-parallel GPU counts to try (default 1,2,4,8)")
    inst.add_argument("--top", type=int, default=10, help="rows of the ranking shown")
    parser.add_argument("--catalog", action="append", metavar="DIR", default=[],
                        help="extra catalogue directory or file (repeatable; also "
                             "$TIERTOP_CATALOG)")
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    rec = parser.add_argument_group("tier sizing from observed accesses")
    rec.add_argument("--from-recording", metavar="FILE",
                     help="tiertop recording, or JSONL of accesses / block events")
    rec.add_argument("--tiers", metavar="NAME=BLOCKS[:HIGH:LOW],...",
                     help="tiers fastest first, when the file does not describe them")
    rec.add_argument("--policy", default="lru",
                     help="eviction policy of the curve (lru exact; others simulated)")
    rec.add_argument("--target-hit-ratio", type=float,
                     help="hit ratio to size for (default: best reachable - tolerance)")
    rec.add_argument("--tolerance", type=float, default=0.01,
                     help="hit ratio a lower low watermark may cost (default 0.01)")
    rec.add_argument("--sample-rate", type=float, default=None,
                     help="SHARDS sampling rate (default 0.02; 1 = exact)")
    rec.add_argument("--max-keys", type=int, default=None,
                     help="most sampled blocks tracked (default 16384)")
    cal = parser.add_argument_group("calibration")
    cal.add_argument("--calibrate", metavar="FILE",
                     help="JSONL of RequestDone-like records (or a recording) to fit "
                          "--hardware's efficiency factors for --model")


class _UsageError(ValueError):
    pass


def run(args: argparse.Namespace) -> int:
    try:
        catalog = load_catalog(args.catalog)
        if args.list:
            return _list(catalog, args.json)
        if args.from_recording:
            return _from_recording(args)
        if args.calibrate:
            return _calibrate(catalog, args)
        return _rank(catalog, args)
    except (CatalogError, _UsageError, KeyError, ValueError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"tiertop plan: error: {message}", file=sys.stderr)
        return 2


# -------------------------------------------------------------------------------- ranking


def _gpu_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _UsageError(f"--gpus {text!r}: expected comma-separated integers") from None
    if not counts or any(c < 1 for c in counts):
        raise _UsageError(f"--gpus {text!r}: counts must be >= 1")
    return counts


def _workload(args: argparse.Namespace) -> Any:
    from .model import Workload

    missing = [f"--{n.replace('_', '-')}" for n in ("model", "batch_size", "input_len",
                                                     "output_len") if getattr(args, n) is None]
    if missing:
        raise _UsageError(f"ranking needs {', '.join(missing)} (or use --list, "
                          "--from-recording or --calibrate)")
    return Workload(
        batch_size=args.batch_size, input_len=args.input_len, output_len=args.output_len,
        precision=args.precision, kv_precision=args.kv_precision,
        safety_factor=args.safety_factor, prefix_len=args.prefix_len,
        block_tokens=args.block_tokens, max_batched_tokens=args.max_batched_tokens,
        runtime_overhead_gib=args.runtime_overhead_gib,
    )


def _rank(catalog: Catalog, args: argparse.Namespace) -> int:
    from .rank import SLO, rank

    workload = _workload(args)
    slo = SLO(args.slo_tps, None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1e3)
    ranking = rank(catalog, args.model, workload, slo, hardware=args.hardware,
                   gpu_counts=_gpu_counts(args.gpus))
    if args.json:
        json.dump(ranking.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if ranking.best else 1
    _print_ranking(ranking, args.top)
    return 0 if ranking.best else 1


def _fmt_ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:,.1f}" if ms < 10_000 else f"{ms:,.0f}"


def _print_ranking(ranking: Any, top: int) -> None:
    from rich.table import Table

    console = _console()
    w = ranking.workload
    m = ranking.model
    console.print(
        f"[bold]{m.name}[/bold] ({m.key}): batch {w.batch_size}, input {w.input_len}, output "
        f"{w.output_len}, {w.precision} (KV {w.kv_dtype}), safety factor {w.safety_factor:g}; "
        f"SLO {ranking.slo.describe()}", highlight=False,
    )
    table = Table(show_lines=False)
    for name, justify in (("#", "right"), ("instance", "left"), ("tokens/s", "right"),
                          ("TTFT ms", "right"), ("TPOT ms", "right"), ("KV/GPU GiB", "right"),
                          ("offload", "right"), ("bound", "left"), ("$/h", "right"),
                          ("$/M tok", "right"), ("SLO", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    rows = list(ranking.meeting[:top])
    shown_missing = list(ranking.missing[:3])  # the cheapest that miss: context for the choice
    for i, c in enumerate(rows + shown_missing, 1):
        p = c.prediction
        slo_text = "meets"
        if not c.meets:
            what = [word for word, hit in (("tps", "tokens/s" in " ".join(c.misses)),
                                           ("TTFT", "TTFT" in " ".join(c.misses))) if hit]
            slo_text = "misses " + ", ".join(what)
        table.add_row(
            str(i) if c.meets else "-", f"{p.gpus}x {p.hardware.key}", f"{p.tokens_per_s:,.1f}",
            _fmt_ms(p.ttft_s), _fmt_ms(p.tpot_s), f"{p.memory.kv_needed / 2**30:,.2f}",
            f"{p.memory.offload_fraction:.0%}", p.bound, f"{p.price_per_hour:,.3f}",
            f"{p.cost_per_million_tokens:,.3f}", slo_text,
        )
    console.print(table)
    hidden = len(ranking.meeting) - len(rows)
    extra = []
    if hidden > 0:
        extra.append(f"{hidden} more meeting the SLO")
    if ranking.infeasible:
        extra.append(f"{len(ranking.infeasible)} instances that do not fit or cannot run "
                     "(--json lists them)")
    if extra:
        console.print("(" + "; ".join(extra) + ")")
    for line in ranking.explanation():
        console.print(line, highlight=False)


def _console() -> Any:
    from rich.console import Console

    # Wide enough for the ranking table when the output is a pipe or a file (rich would assume
    # 80 columns); a terminal keeps its own width.
    return Console(width=None if sys.stdout.isatty() else 132)


def _list(catalog: Catalog, as_json: bool) -> int:
    if as_json:
        out = {
            "sources": list(catalog.sources),
            "models": {k: {**m.__dict__, "aliases": list(m.aliases)}
                       for k, m in catalog.models.items()},
            "hardware": {k: {**h.__dict__, "aliases": list(h.aliases),
                             "peak_tflops": dict(h.peak_tflops), "sources": dict(h.sources)}
                         for k, h in catalog.hardware.items()},
        }
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.table import Table

    console = _console()
    models = Table(title="models")
    for col in ("name", "layers", "hidden", "heads", "KV heads", "head dim", "params",
                "KV B/token fp16"):
        models.add_column(col)
    for m in catalog.models.values():
        models.add_row(m.key, str(m.layers), str(m.hidden), str(m.heads), str(m.kv_heads),
                       str(m.head_dim), f"{m.params / 1e9:.2f}B", f"{m.kv_bytes_per_token():,}")
    console.print(models)
    hw = Table(title="hardware (per GPU)")
    for col in ("name", "GiB", "GB/s", "fp16 TFLOPS", "host GB/s", "max GPUs", "$/h", "price"):
        hw.add_column(col)
    for h in catalog.hardware.values():
        hw.add_row(h.key, f"{h.memory_gib:g}", f"{h.memory_bandwidth_gb_s:g}",
                   f"{h.peak_tflops.get('fp16', float('nan')):g}", f"{h.host_link_gb_s:g}",
                   str(h.max_gpus), f"{h.price_usd_per_hour:g}",
                   f"{h.price_model}, {h.price_date}")
    console.print(hw)
    console.print("catalogue files: " + ", ".join(catalog.sources), highlight=False)
    return 0


# ------------------------------------------------------------------------ from a recording


def _from_recording(args: argparse.Namespace) -> int:
    from tiertop.monitor.mrc import DEFAULT_MAX_KEYS, DEFAULT_RATE, MissRatioCurve, MrcTracker

    from .capacity import advise, parse_tiers
    from .recordings import feed_file

    rate = DEFAULT_RATE if args.sample_rate is None else args.sample_rate
    max_keys = DEFAULT_MAX_KEYS if args.max_keys is None else args.max_keys
    declared = parse_tiers(args.tiers) if args.tiers else None
    policies: dict[str, list[int]] = {}
    if args.policy != "lru":
        tiers = declared
        if tiers is None:  # a first, cheap pass learns the tiers the file describes
            probe = MrcTracker(MissRatioCurve(rate=min(rate, 0.001), max_keys=64))
            feed_file(args.from_recording, probe)
            tiers = probe.tiers
        total = sum(t.capacity_blocks for t in tiers)
        if total <= 0:
            raise _UsageError(f"--policy {args.policy} needs the tier capacities up front: "
                              "pass --tiers NAME=BLOCKS,...")
        policies[args.policy] = sorted({max(1, round(total * f)) for f in
                                        (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1, 1.5, 2,
                                         3, 4)} | _cumulative_sizes(tiers))
    curve = MissRatioCurve(rate=rate, max_keys=max_keys, policies=policies)
    tracker = MrcTracker(curve)
    counts = feed_file(args.from_recording, tracker)
    if declared is not None:
        tracker.set_tiers(declared)
    advice = advise(tracker, target=args.target_hit_ratio, tolerance=args.tolerance,
                    policy=args.policy)
    if args.json:
        json.dump({**advice.as_dict(), "input": counts}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"read {args.from_recording}: {counts['accesses']:,} accesses, "
          f"{counts['events']:,} block events, {counts['messages']:,} messages")
    for line in advice.lines():
        print(line)
    return 0


def _cumulative_sizes(tiers: Any) -> set[int]:
    out, total = set(), 0
    for t in tiers:
        total += t.effective_blocks
        out.add(max(1, total))
    return out


# ------------------------------------------------------------------------------ calibration


def _calibrate(catalog: Catalog, args: argparse.Namespace) -> int:
    from .calibrate import calibrate, load_measurements

    if not args.model or not args.hardware or len(args.hardware) != 1:
        raise _UsageError("--calibrate needs --model and exactly one --hardware")
    model = catalog.model(args.model)
    hw = catalog.gpu(args.hardware[0])
    gpus = _gpu_counts(args.gpus)
    if args.gpus == "1,2,4,8":
        gpus = [1]
    if len(gpus) != 1:
        raise _UsageError("--calibrate takes one --gpus count (the one the runs used)")
    measurements = load_measurements(args.calibrate)
    result = calibrate(model, hw, measurements, precision=args.precision, gpus=gpus[0])
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.table import Table

    console = _console()
    console.print(f"calibrated {hw.key} for {model.key} from {result.measurements} measured "
                  f"requests ({len(result.rows)} shapes)", highlight=False)
    table = Table()
    for col in ("batch", "prompt", "prefix", "output", "n", "TTFT ms measured", "before",
                "after", "TPOT ms measured", "before", "after"):
        table.add_column(col, justify="right")
    rows = result.rows
    if len(rows) > 24:  # spread the shown rows over the whole range of shapes
        step = len(rows) / 24
        rows = tuple(rows[int(i * step)] for i in range(24))
    for r in rows:
        table.add_row(str(r.batch_size), str(r.prompt_tokens), str(r.prefix_tokens),
                      str(r.output_tokens), str(r.count), _fmt_ms(r.measured_ttft_s),
                      _fmt_ms(r.before_ttft_s), _fmt_ms(r.after_ttft_s),
                      f"{r.measured_tpot_s * 1e3:,.2f}", f"{r.before_tpot_s * 1e3:,.2f}",
                      f"{r.after_tpot_s * 1e3:,.2f}")
    console.print(table)
    if len(rows) < len(result.rows):
        console.print(f"({len(rows)} of {len(result.rows)} shapes shown; --json has all)")
    errors = result.error_summary()
    console.print(
        f"median |error|: TTFT {errors['ttft_before']:.0%} -> {errors['ttft_after']:.0%}, "
        f"TPOT {errors['tpot_before']:.0%} -> {errors['tpot_after']:.0%}", highlight=False)
    for name, value in result.fitted.items():
        console.print(f"  {name}: {getattr(hw, name):g} -> {value:.4g}", highlight=False)
    for name, why in result.fixed.items():
        console.print(f"  {name}: {why}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print("catalogue override (save as DIR/calibrated.toml, use with --catalog DIR):",
                  highlight=False)
    console.print(result.toml_snippet(), highlight=False, markup=False)
    return 0
