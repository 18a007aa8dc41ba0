"""``tiertop sim``: the cluster simulator, live (publishing, taking commands) or headless.

Live (the default) paces a virtual clock at ``--speed`` (``--max-speed``: as fast as possible)
and serves telemetry and control like ``tiertop run``. ``--headless`` runs as fast as possible
without sockets and prints a summary (``--json``: one JSON object) when ``--duration`` virtual
seconds are over or the ``--trace`` ends.

Textbook checks: ``--capacity-blocks N --eviction POLICY`` makes one GPU with one tier of exactly
``N`` blocks under ``POLICY`` (watermarks at 1.0); ``--warmup N`` leaves the first ``N`` requests
out of the counts. ``belady`` needs ``--trace``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from typing import Any

from .topology import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to simulate")
    pick = what.add_mutually_exclusive_group()
    pick.add_argument("--preset", choices=sorted(PRESETS), default=None,
                      help="single-node (default), rack, cluster-10k (10,240 GPUs in 160 racks "
                           "of 64) or pd-10k (the same with prefill/decode separation)")
    pick.add_argument("--config", metavar="FILE",
                      help="a TOML topology file (see tiertop.runtime.sim.topology)")
    what.add_argument("--profile", metavar="FILE",
                      help="a TOML calibration profile (default: H100-class figures)")
    what.add_argument("--seed", type=int, default=0, help="seeds the workload and the router")
    what.add_argument("--rate", type=float, default=None,
                      help="override the generated workload's arrival rate (requests/s)")
    what.add_argument("--block-tokens", type=int, default=None,
                      help="tokens per KV block (default: the preset's; 512 for Mooncake traces)")

    clock = parser.add_argument_group("clock")
    pace = clock.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=None,
                      help="virtual seconds per wall second when live (default 1)")
    pace.add_argument("--max-speed", action="store_true", help="run as fast as possible")
    clock.add_argument("--duration", type=float, default=None,
                       help="virtual seconds to simulate (headless without a trace: default 10)")

    replay = parser.add_argument_group("trace replay")
    replay.add_argument("--trace", metavar="FILE", help="replay this trace instead of the "
                                                        "generated workload")
    replay.add_argument("--trace-format", choices=["mooncake", "burstgpt", "azure", "splitwise"],
                        default=None, help="the trace's format (default: detected)")
    replay.add_argument("--headless", action="store_true",
                        help="no sockets: run as fast as possible and print a summary")
    replay.add_argument("--json", action="store_true", help="with --headless: the summary as JSON")
    replay.add_argument("--warmup", type=int, default=0,
                        help="leave the first N requests out of the summary's counts")
    replay.add_argument("--capacity-blocks", type=int, default=None,
                        help="one GPU with one tier of exactly N blocks (textbook checks)")
    replay.add_argument("--eviction", default=None,
                        help="eviction policy of that tier (lru, fifo, lfu, arc, s3fifo, "
                             "random, belady); without --capacity-blocks: of every tier")

    net = parser.add_argument_group("telemetry and control (live)")
    net.add_argument("--publish", default="tcp://127.0.0.1:5557", help="telemetry PUB address")
    net.add_argument("--replay", default="tcp://127.0.0.1:5560",
                     help="replay/snapshot ROUTER address ('none' to disable)")
    net.add_argument("--control", default="tcp://127.0.0.1:5558", help="control ROUTER address")
    net.add_argument("--read-only", action="store_true", help="refuse every mutating command")
    net.add_argument("--tick", type=float, default=0.25, help="wall seconds between stats")
    net.add_argument("--server-key", help="CurveZMQ secret key file of this simulator")
    net.add_argument("--authorized-keys", help="directory of authorised client public keys")


def _topology(args: argparse.Namespace) -> Any:
    from .replay import trace_block_tokens
    from .topology import KINDS, load_topology

    topo = load_topology(args.preset, args.config)
    if args.rate is not None:
        topo = replace(topo, workload=replace(topo.workload, rate=args.rate))
    block_tokens = args.block_tokens
    if block_tokens is None and args.trace:
        block_tokens = trace_block_tokens(args.trace, args.trace_format, topo.block_tokens)
    if block_tokens is not None:
        topo = replace(topo, block_tokens=block_tokens)
    if args.capacity_blocks is not None:
        topo = topo.single_tier(args.capacity_blocks, args.eviction or "lru")
    elif args.eviction is not None:
        for kind in KINDS:
            topo = topo.with_kind(kind, replace(topo.kind(kind), eviction=args.eviction))
    topo.validate()
    return topo


def run(args: argparse.Namespace) -> int:
    from .profile import SimConfigError, load_profile

    try:
        if args.json and not args.headless:
            raise SimConfigError("json", "--json goes with --headless")
        if args.warmup < 0:
            raise SimConfigError("warmup", "--warmup must be >= 0")
        if args.duration is not None and not args.duration > 0:
            raise SimConfigError("duration", "--duration must be > 0 virtual seconds")
        topo = _topology(args)
        profile = load_profile(args.profile)
    except (SimConfigError, ValueError) as exc:
        print(f"tiertop sim: {exc}", file=sys.stderr)
        return 2
    if args.headless:
        return _headless(args, topo, profile)
    return _live(args, topo, profile)


def _headless(args: argparse.Namespace, topo: Any, profile: Any) -> int:
    from ..traces import TraceError
    from .replay import build_cluster, open_trace, run_headless

    duration = args.duration
    if duration is None and not args.trace:
        duration = 10.0
    try:
        trace = None
        if args.trace:
            belady = any(topo.kind(k).eviction == "belady" for k in topo.kinds())
            trace = open_trace(args.trace, args.trace_format, topo.block_tokens, whole=belady)
        cluster = build_cluster(topo, profile, trace=trace, seed=args.seed, warmup=args.warmup,
                                duration_s=duration)
        summary = run_headless(cluster, duration)
    except (TraceError, ValueError, OSError) as exc:
        print(f"tiertop sim: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_summary(summary))
    return 0


def render_summary(s: dict[str, Any]) -> str:
    """The headless summary as a few lines of text."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 1e3:.1f} ms"

    r = s["requests"]
    lines = [
        f"{s['preset']}: {s['gpus']} GPUs in {s['racks']} racks, {s['mode']}, "
        f"{s['block_tokens']}-token blocks; {s['virtual_s']:.2f} virtual s in "
        f"{s['wall_s']:.2f} wall s",
        f"requests: {r['arrived']} arrived, {r['completed']} completed, {r['failed']} failed "
        f"({r['warmup']} warm-up left out)",
        f"lookups {s['lookups']:,}, hits {s['hits']:,} ({pct(s['hit_rate'])}); evictions "
        f"{s['evictions']:,}, promotions {s['promotions']:,}, demotions {s['demotions']:,}",
    ]
    for kind, t in s["tiers"].items():
        lines.append(f"  {kind:<7} hits {t['hits']:>12,} ({pct(t['hit_rate'])})  evictions "
                     f"{t['evictions']:,}")
    for name, p in s["latency_s"].items():
        lines.append(f"  {name:<5} p50 {ms(p['p50'])}  p90 {ms(p['p90'])}  p99 {ms(p['p99'])}")
    return "\n".join(lines)


def _live(args: argparse.Namespace, topo: Any, profile: Any) -> int:
    import signal

    import zmq

    from .service import SimConfig, SimService

    curve = None
    try:
        if args.server_key:
            from tiertop.monitor.security import ServerCurve

            if not args.authorized_keys:
                raise ValueError("--server-key needs --authorized-keys DIR")
            curve = ServerCurve.from_files(args.server_key, args.authorized_keys)
        speed = math.inf if args.max_speed else (args.speed if args.speed is not None else 1.0)
        if not speed > 0:
            raise ValueError("--speed must be > 0")
        config = SimConfig(
            topology=topo, profile=profile, seed=args.seed, speed=speed,
            duration_s=args.duration, trace=args.trace, trace_format=args.trace_format,
            warmup=args.warmup, publish=args.publish,
            replay=None if args.replay == "none" else args.replay, control=args.control,
            read_only=args.read_only, tick_s=args.tick, curve=curve,
        )
        service = SimService(config)
    except (ValueError, OSError, zmq.ZMQError) as exc:  # e.g. an address already in use
        print(f"tiertop sim: could not start: {exc}", file=sys.stderr)
        return 1
    from tiertop.runtime.heap import freeze_heap

    freeze_heap()
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    try:
        for line in service.describe():
            print(line, flush=True)
        print("simulating; Ctrl-C to stop", flush=True)
        service.run()
    except ValueError as exc:  # a broken trace row (TraceError) met on the way
        print(f"tiertop sim: {exc}", file=sys.stderr)
        return 1
    finally:
        service.close()
    c = service.cluster
    print(f"simulated {c.now:.2f} virtual s: {c.completed} requests completed "
          f"({c.failed} failed)", flush=True)
    return 0
