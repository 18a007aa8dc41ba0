"""Time to first token with a restored prefix, per tier, against full recomputation.

Run ``python -m benchmarks.runtime`` for a table or ``--json`` for one JSON object.

Setup (defaults): the gpt2-small shape (12 layers, 12 heads, 768 hidden, 1024 positions; seeded
random weights, float32) on the CPU. A request's context is a 1008-token cached prefix (63 blocks
of 16 tokens) followed by 16 new prompt tokens: 1024 tokens, exactly the model's positions. One
token is generated (``max_new_tokens=1``), so TTFT = restore + prefill + first token.

- **recompute**: the engine with an empty hierarchy prefills all 1024 tokens.
- **restore from a tier**: the 63 prefix blocks (73,728 B/token, 1,179,648 B/block, 74.3 MB in
  all) were put into a one-tier hierarchy by serving the prefix once; each measured request
  restores them with ``hierarchy.get(key, out=slot)`` into the engine's reusable buffer, builds
  the ``DynamicCache`` and prefills only the 16 new tokens. Tiers: ``dram`` (host DRAM arena),
  ``disk`` (the disk tier's slab file; before every measured request it is fsynced and dropped
  from the page cache with ``posix_fadvise(DONTNEED)``, so reads come from the device),
  ``disk_pagecache`` (the same file left in the page cache), ``remote`` (a memory-server process
  on loopback, codec raw) and ``remote_lz4``.

Every measurement is repeated (``--repeats``, default 5) after one warm-up, the tiers and the
recompute interleaved in each round; figures are medians, and each ratio is a median TTFT over the
median recompute TTFT of the same run. torch runs with one intra-op thread fewer than the CPUs
this process may use, at least one (``--threads`` to change it). No request stores blocks during
measurement, so every round sees the same tier contents.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tiertop.runtime.engine import ModelEngine, RequestResult
from tiertop.runtime.model import load_model
from tiertop.tiers.hierarchy import Hierarchy, TierConfig
from tiertop.tiers.store import TierStore
from tiertop.tiers.stores.disk import DATA_NAME, DiskStore
from tiertop.tiers.stores.dram import DramStore
from tiertop.tiers.stores.remote import MemServerProcess, RemoteStore, spawn_memserver

from benchmarks.common import Figure, machine_info, parser, report

TARGETS = {
    "ttft_restore_dram_vs_recompute": "<= 0.3",
    "ttft_restore_disk_vs_recompute": "<= 0.6",
    "ttft_restore_remote_vs_recompute": "<= 0.5",
}
SUBSCRIBER = r"""
import sys
from tiertop.monitor.state import StateModel
from tiertop.monitor.subscriber import TelemetrySubscriber
sub, model = TelemetrySubscriber(sys.argv[1]), StateModel()
print("ready", flush=True)
while True:
    model.fold_many(sub.poll(1000, 100))
"""


def telemetry_overhead(model: Any, block_size: int, rounds: int, new_tokens: int
                       ) -> tuple[float, dict[str, Any]]:
    """Tokens/s serving requests with telemetry published to a live subscriber (a separate
    process folding into the StateModel) over tokens/s with no sink at all, interleaved."""
    import subprocess
    import time

    from tiertop.monitor.protocol import RequestDone
    from tiertop.runtime.publisher import TelemetryPublisher
    from tiertop.runtime.telemetry import StatsBuilder, TelemetrySink

    capacity = 64 * model.block_bytes(block_size)
    publisher = TelemetryPublisher("tcp://127.0.0.1:0", None)
    reader = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, publisher.address],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        reader.stdout.readline()
        engines = {}
        for label, sink in (("on", TelemetrySink(publisher)), ("off", None)):
            hierarchy = Hierarchy(
                [TierConfig("dram", capacity // 2, store=DramStore("dram", capacity // 2)),
                 TierConfig("dram2", capacity, store=DramStore("dram2", capacity))],
                sink=sink,
            )
            engines[label] = (ModelEngine(model, hierarchy, block_size=block_size), hierarchy)
        stats = StatsBuilder(engines["on"][1], time.time)
        rng = random.Random(3)
        prompts = [[rng.randrange(model.vocab_size) for _ in range(8 * block_size)]
                   for _ in range(rounds)]
        totals = {"on": [0, 0.0], "off": [0, 0.0]}
        for i, prompt in enumerate(prompts):  # both engines serve the same requests
            for label in (("on", "off") if i % 2 else ("off", "on")):
                engine, _ = engines[label]
                started = time.perf_counter()
                result = engine.serve(prompt, max_new_tokens=new_tokens)
                if label == "on":
                    publisher.publish(RequestDone(request_id=str(i), ttft_s=result.ttft_s,
                                                  output_tokens=result.output_tokens))
                    publisher.publish(stats.build())
                totals[label][0] += result.output_tokens
                totals[label][1] += time.perf_counter() - started
        on = totals["on"][0] / totals["on"][1]
        off = totals["off"][0] / totals["off"][1]
        sent = publisher.counters().sent_messages
        return on / off, {"tokens_per_s_on": round(on, 1), "tokens_per_s_off": round(off, 1),
                          "requests": rounds, "new_tokens": new_tokens,
                          "messages_sent": sent}
    finally:
        reader.kill()
        reader.wait()
        publisher.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def drop_page_cache(directory: Path) -> int:
    """fsync the disk tier's slab file under ``directory`` and ask the kernel to drop its cached
    pages (``POSIX_FADV_DONTNEED``); returns the number of files. Only that file is affected."""
    count = 0
    for path in directory.glob(DATA_NAME):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        count += 1
    return count


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else "runtime benchmark")
    p.add_argument("--model", default="gpt2-small", help="tiny, gpt2-small or a checkpoint path")
    p.add_argument("--prefix-blocks", type=int, default=63)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=16, help="new prompt tokens after the prefix")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--disk-dir", default=None, help="directory for the disk tier (default: tmp)")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.repeats = "tiny", 3

    # All CPUs but one: the memory server, the disk I/O and the neighbours of a shared machine
    # need one, and an OpenMP team that loses a core to them stalls at every barrier (on a busy
    # 2-CPU machine, 2 threads ran a 16-token prefill 3-5x slower than 1 thread).
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) - 1)
    torch.set_num_threads(threads)
    log(f"loading {args.model} ...")
    model = load_model(args.model, seed=0, device=args.device)
    bs = args.block_size
    prefix_len = args.prefix_blocks * bs
    total = prefix_len + args.new_tokens
    if total > model.n_positions:
        p.error(f"{prefix_len} + {args.new_tokens} tokens exceed {model.n_positions} positions")
    rng = random.Random(1)
    prefix = [rng.randrange(model.vocab_size) for _ in range(prefix_len)]
    context = prefix + [rng.randrange(model.vocab_size) for _ in range(args.new_tokens)]
    prefix_bytes = args.prefix_blocks * model.block_bytes(bs)
    capacity = 2 * prefix_bytes + (16 << 20)

    workdir = tempfile.TemporaryDirectory(prefix="tiertop-bench-", dir=args.disk_dir)
    disk_dir = Path(workdir.name) / "disk"
    server: MemServerProcess | None = None
    stores: list[TierStore] = []
    try:
        server = spawn_memserver(capacity)
        dram = DramStore("dram", capacity, prefault=True)
        disk = DiskStore("disk", capacity, disk_dir)
        remote = RemoteStore("remote", server.address, capacity, codec="raw", timeout_s=30.0)
        remote_lz4 = RemoteStore("remote", server.address, capacity, codec="lz4", timeout_s=30.0)
        stores = [dram, disk, remote, remote_lz4]
        # remote and remote_lz4 share one server: remote_lz4's engine seeds its block hashes
        # differently, so each holds its own copy of the prefix there.
        engines: dict[str, ModelEngine] = {}
        for label, store, seed in (
            ("dram", dram, None),
            ("disk", disk, None),
            ("remote", remote, None),
            ("remote_lz4", remote_lz4, 0x1234),
        ):
            hierarchy = Hierarchy([TierConfig(store.name, capacity, store=store)])
            engine = ModelEngine(model, hierarchy, block_size=bs, hash_seed=seed)
            log(f"filling {label}: {args.prefix_blocks} blocks ({prefix_bytes / 1e6:.1f} MB)")
            filled = engine.serve(prefix, max_new_tokens=1)
            if filled.blocks_stored != args.prefix_blocks:
                raise RuntimeError(f"{label}: stored {filled.blocks_stored} blocks")
            engine.store_blocks = False
            engines[label] = engine
        engines["disk_pagecache"] = engines["disk"]
        empty = Hierarchy([TierConfig("none", 1 << 20, store=DramStore("none", 1 << 20))])
        recompute = ModelEngine(model, empty, block_size=bs, store_blocks=False)

        def run(engine: ModelEngine, before: Callable[[], object] | None = None) -> RequestResult:
            if before is not None:
                before()
            return engine.serve(context, max_new_tokens=1)

        cases: dict[str, tuple[ModelEngine, Callable[[], object] | None]] = {
            "recompute": (recompute, None),
            "dram": (engines["dram"], None),
            "disk": (engines["disk"], lambda: drop_page_cache(disk_dir)),
            "disk_pagecache": (engines["disk_pagecache"], None),
            "remote": (engines["remote"], None),
            "remote_lz4": (engines["remote_lz4"], None),
        }
        samples: dict[str, list[RequestResult]] = {name: [] for name in cases}
        for round_index in range(args.repeats + 1):  # round 0 warms up
            order = list(cases) if round_index % 2 else list(reversed(cases))
            for name in order:
                engine, before = cases[name]
                result = run(engine, before)
                expected = 0 if name == "recompute" else prefix_len
                if result.restored_tokens != expected:
                    raise RuntimeError(f"{name}: restored {result.restored_tokens} tokens")
                if round_index:
                    samples[name].append(result)
            log(f"round {round_index}/{args.repeats} done")
    finally:
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()
        if server is not None:
            server.stop()
        workdir.cleanup()

    def med(name: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in samples[name]))

    standard = (args.model, args.prefix_blocks, bs, args.new_tokens) == ("gpt2-small", 63, 16, 16)
    base = med("recompute", "ttft_s")
    figures = [Figure("ttft_recompute", base * 1e3, "ms", note=f"{total} tokens prefilled")]
    for name in ("dram", "disk", "disk_pagecache", "remote", "remote_lz4"):
        ttft = med(name, "ttft_s")
        key = f"ttft_restore_{name}_vs_recompute"
        figures.append(
            Figure(
                f"ttft_restore_{name}",
                ttft * 1e3,
                "ms",
                note=f"restore {med(name, 'restore_s') * 1e3:.1f} ms + prefill "
                f"{med(name, 'prefill_s') * 1e3:.1f} ms",
            )
        )
        # the targets are stated for the gpt2-small shape with the default sizes
        target = TARGETS.get(key, "") if standard else ""
        figures.append(Figure(key, ttft / base, "", target=target))
    log("measuring telemetry overhead ...")
    overhead, overhead_details = telemetry_overhead(model, bs, 6 if args.quick else 16, 32)
    figures.append(Figure("telemetry_overhead", round(overhead, 3), "", ">= 0.97",
                          "tokens/s with telemetry to a live subscriber / without"))

    details: dict[str, Any] = {
        "setup": {
            "model": model.describe(),
            "device": str(model.device),
            "block_size": bs,
            "prefix_tokens": prefix_len,
            "prefix_blocks": args.prefix_blocks,
            "new_prompt_tokens": args.new_tokens,
            "context_tokens": total,
            "max_new_tokens": 1,
            "prefix_bytes": prefix_bytes,
            "repeats": args.repeats,
            "statistic": "median",
            "targets_apply": standard,
            "torch_threads": threads,
            "disk": f"{disk_dir} (page cache dropped before each 'disk' request)",
            "remote": "memory server process on tcp://127.0.0.1, codecs raw and lz4",
        },
        "per_tier_ms": {
            name: {
                "ttft": med(name, "ttft_s") * 1e3,
                "restore": med(name, "restore_s") * 1e3,
                "prefill": med(name, "prefill_s") * 1e3,
                "fetch": statistics.median(sum(r.fetch_latency_s.values()) for r in samples[name])
                * 1e3,
                "ttft_all": [round(r.ttft_s * 1e3, 2) for r in samples[name]],
            }
            for name in samples
        },
        "machine": {
            **machine_info(),
            "cpu_model": cpu_model(),
            "torch": torch.__version__,
            "transformers": _transformers_version(),
            "torch_threads": threads,
            "cuda": torch.cuda.get_device_name() if model.device.type == "cuda" else None,
        },
        "telemetry_overhead": overhead_details,
    }
    title = (
        f"runtime: TTFT with a {prefix_len}-token prefix ({args.prefix_blocks} x {bs}) restored "
        f"+ {args.new_tokens} new tokens vs full recompute of {total}; {model.describe()}; "
        f"{threads} torch threads; medians of {args.repeats}"
    )
    report(title, figures, args.json, details)
    if not args.json:
        print(
            f"  cpu: {cpu_model()}; torch {torch.__version__}, "
            f"transformers {_transformers_version()}"
        )
    return 0


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


if __name__ == "__main__":
    raise SystemExit(main())
