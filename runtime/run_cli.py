"""``tiertop run``: start the runtime (model mode) and serve until Ctrl-C, SIGTERM or --duration."""

from __future__ import annotations

import argparse

DEFAULT_TIERS = ["dram:1MiB", "remote:2MiB", "disk:8MiB"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="tiny",
                       help="tiny (default), gpt2-small (124M shape), or a local checkpoint PATH; "
                            "weights are seeded random, nothing is downloaded")
    model.add_argument("--seed", type=int, default=0, help="seeds the weights and the workload")
    model.add_argument("--device", default=None, help="cpu (default) or cuda")
    model.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    model.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: 1 for tiny, torch's choice otherwise)")

    tiers = parser.add_argument_group("tiers")
    tiers.add_argument("--tier", action="append", metavar="KIND:CAPACITY[,k=v...]",
                       help="a tier, fastest first; repeat for more (default: "
                            + " ".join(DEFAULT_TIERS) + "). Kinds: dram, numa, remote, disk, "
                            "cuda. Options: high=, low=, eviction=, name=, and per kind e.g. "
                            "remote: address=, codec=; disk: dir=, fsync=; numa: node=")
    tiers.add_argument("--strategy", default="lru-tiering",
                       help="local-only, remote-only, disk-only, naive-spill, lru-tiering")
    tiers.add_argument("--placement", help="instead of --strategy: top, spill, "
                                           "selective-write[:N], only:TIER")
    tiers.add_argument("--promotion", help="never, on-hit, session-prefetch")

    load = parser.add_argument_group("workload")
    load.add_argument("--rate", type=float, default=4.0, help="Poisson arrivals per second")
    load.add_argument("--new-conv-prob", type=float, default=0.3,
                      help="probability a request starts a new conversation")
    load.add_argument("--prompt-mean", type=int, default=48, help="mean new-prompt tokens")
    load.add_argument("--output-mean", type=int, default=16, help="mean output tokens")
    load.add_argument("--live-conversations", type=int, default=32)
    load.add_argument("--system-prompts", type=int, default=4,
                      help="shared system prompts new conversations start with (0: none)")
    load.add_argument("--system-prompt-len", type=int, default=96)
    load.add_argument("--duration", type=float, default=None, help="seconds, then exit")
    load.add_argument("--trace", metavar="FILE",
                      help="replay a trace instead of the generated workload: Mooncake JSONL, "
                           "BurstGPT, Azure or Splitwise CSV; ends when the trace is served")
    load.add_argument("--trace-format", choices=["mooncake", "burstgpt", "azure", "splitwise"],
                      help="the trace's format (default: detected)")
    load.add_argument("--speed", type=float, default=1.0,
                      help="trace time scaling (2.0 replays twice as fast)")
    load.add_argument("--max-requests", type=int, default=None, help="stop the trace after N")

    net = parser.add_argument_group("telemetry and control")
    net.add_argument("--publish", default="tcp://127.0.0.1:5557", help="telemetry PUB address")
    net.add_argument("--replay", default="tcp://127.0.0.1:5560",
                     help="replay/snapshot ROUTER address ('none' to disable)")
    net.add_argument("--control", default="tcp://127.0.0.1:5558", help="control ROUTER address")
    net.add_argument("--read-only", action="store_true", help="refuse every mutating command")
    net.add_argument("--tick", type=float, default=0.25, help="seconds between TierStats")
    net.add_argument("--server-key", help="CurveZMQ secret key file of this runtime (enables "
                                          "authentication and encryption of control)")
    net.add_argument("--authorized-keys", help="directory of authorised client public keys")
    parser.add_argument("--workdir", help="where temporary tier files go (default: system temp)")
    parser.add_argument("--record", metavar="FILE",
                        help="record the telemetry stream to FILE (replaces an earlier "
                             "recording; see `tiertop replay` and `tiertop export`)")


def run(args: argparse.Namespace) -> int:
    import signal
    import sys

    from tiertop.tiers.spec import TierSpec

    from .model_runtime import ModelRuntime, RuntimeConfig
    from .workload import LengthSpec, WorkloadParams

    try:
        specs = [TierSpec.parse(text) for text in (args.tier or DEFAULT_TIERS)]
        workload = WorkloadParams(
            lambda_rate=args.rate,
            new_conv_prob=args.new_conv_prob,
            seed=args.seed,
            prompt=LengthSpec.lognormal(args.prompt_mean, sigma=0.5, min=1,
                                        max=max(args.prompt_mean * 4, 1)),
            output=LengthSpec.lognormal(args.output_mean, sigma=0.3, min=1,
                                        max=max(args.output_mean * 4, 1)),
            max_live_conversations=args.live_conversations,
            system_prompts=args.system_prompts,
            system_prompt_len=args.system_prompt_len if args.system_prompts else 0,
        )
        workload.validate()
        curve = None
        if args.server_key:
            from tiertop.monitor.security import ServerCurve

            if not args.authorized_keys:
                raise ValueError("--server-key needs --authorized-keys DIR")
            curve = ServerCurve.from_files(args.server_key, args.authorized_keys)
        config = RuntimeConfig(
            tiers=specs,
            model=args.model,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            block_size=args.block_size,
            strategy=None if args.placement else args.strategy,
            placement=args.placement,
            promotion=args.promotion,
            workload=workload,
            publish=args.publish,
            replay=None if args.replay == "none" else args.replay,
            control=args.control,
            read_only=args.read_only,
            tick_s=args.tick,
            duration_s=args.duration,
            curve=curve,
            workdir=args.workdir,
        )
    except ValueError as exc:
        print(f"tiertop run: {exc}", file=sys.stderr)
        return 2
    try:
        runtime = ModelRuntime(config)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"tiertop run: could not start: {exc}", file=sys.stderr)
        return 1
    recorder = None
    if args.record:
        from tiertop.monitor.recorder import record_runtime
        from tiertop.monitor.recording import RecordingError

        try:
            if curve is not None:
                raise RecordingError("--record cannot subscribe to a CurveZMQ runtime; run "
                                     "`tiertop record --client-key ...` beside it instead")
            recorder = record_runtime(args.record, runtime.addresses)
        except (RecordingError, OSError, ValueError) as exc:
            print(f"tiertop run: --record: {exc}", file=sys.stderr)
            runtime.close()
            return 2
    if args.trace:
        from .trace_workload import TraceWorkload
        from .traces import TraceError

        info = runtime.model.info
        try:
            runtime.workload = TraceWorkload(  # type: ignore[assignment]
                args.trace, args.trace_format, vocab_size=info.vocab_size,
                max_context=info.n_positions, seed=args.seed, speed=args.speed,
                max_requests=args.max_requests)
        except (TraceError, OSError, ValueError) as exc:
            print(f"tiertop run: --trace: {exc}", file=sys.stderr)
            runtime.close()
            return 2
    from tiertop.runtime.heap import freeze_heap

    freeze_heap()
    signal.signal(signal.SIGTERM, lambda *_: runtime.stop())
    signal.signal(signal.SIGINT, lambda *_: runtime.stop())
    try:
        for line in runtime.describe():
            print(line, flush=True)
        print("serving; Ctrl-C to stop", flush=True)
        runtime.run()
    finally:
        if recorder is not None:
            from tiertop.monitor.recorder import finish_runtime_recording

            finish_runtime_recording(recorder, runtime.publisher)
            print(recorder.summary_line(), flush=True)
        runtime.close()
    print(f"served {runtime.completed} requests ({runtime.failed} failed, "
          f"{runtime.rejected_requests} rejected by a full queue)", flush=True)
    return 0
