"""The `swapnet` command: convert a model into a block store, run it under a budget, inspect a store."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

from .errors import SwapNetError
from .sizes import format_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swapnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a model into an execution-ordered block store")
    p.add_argument("model", help="torchvision:NAME, transformers:PRESET|CONFIG, or package.module:factory")
    p.add_argument("--out", required=True, help="store directory to create")
    p.add_argument("--weights", help="local checkpoint (.safetensors, or a state dict read with weights_only=True)")
    p.add_argument("--input", help="example input: an image file[@HxW] or random:NxCxHxW (default: per model)")
    p.add_argument("--force", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("run", help="run a store under a weight budget")
    p.add_argument("store")
    p.add_argument("--budget", required=True, help="e.g. 96MB, 64MiB, 25%%, 1/4, 0.25x")
    p.add_argument("--input", help="an image file[@HxW] or random:NxCxHxW (default: the conversion's)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs (after one warm-up)")
    p.add_argument("--io", choices=("direct", "mmap"), default="direct")
    p.add_argument("--prefetch", type=int, choices=(0, 1), default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare-resident", action="store_true",
                   help="also run the fully resident model (needs its full memory) and compare outputs")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("info", help="describe a store")
    p.add_argument("store")
    p.add_argument("--verify", action="store_true", help="read every unit and check its checksum")
    p.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="swapnet: %(levelname)s: %(message)s")
    try:
        return {"convert": _convert, "run": _run, "info": _info}[args.command](args)
    except (SwapNetError, ValueError, OSError) as e:
        print(f"swapnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _convert(args) -> int:
    from .store import convert

    t0 = time.perf_counter()
    store = convert(args.model, args.out, weights=args.weights, input_spec=args.input,
                    force=args.force, progress=not args.quiet)
    pinned = sum(u.pinned for u in store.units)
    print(f"{store.path}: {len(store.units)} units ({pinned} pinned), {format_bytes(store.total_bytes)}, "
          f"converted in {time.perf_counter() - t0:.1f} s" + ("; random weights" if store.random_weights else ""))
    return 0


def _run(args) -> int:
    import torch

    from .models import call_model, make_input, max_abs_diff
    from .runtime import SwapModel, load_resident
    from .store import BlockStore

    if args.repeat < 1:
        raise ValueError("--repeat must be at least 1")
    store = BlockStore(args.store)
    x = make_input(args.input or store.default_input).to(args.device)
    swapped = SwapModel(store, args.budget, device=args.device, io=args.io, prefetch=args.prefetch)
    resident = load_resident(store, args.device) if args.compare_resident else None
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)

    def timed(model):
        t = time.perf_counter()
        out = call_model(model, store.call, x)
        sync()
        return out, (time.perf_counter() - t) * 1000

    with torch.no_grad():
        out_s, _ = timed(swapped)  # warm-up
        out_r = timed(resident)[0] if resident is not None else None
        swapped.reset_stats()
        times_s, times_r = [], []
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            times_s.append(timed(swapped)[1])
            if resident is not None:
                times_r.append(timed(resident)[1])
    stats = swapped.stats
    result = {
        "store": str(store.path), "model": store.ref, "random_weights": store.random_weights,
        "input": args.input or store.default_input, "io": args.io, "effective_io": swapped._reader.effective_mode,
        "device": args.device, "plan": swapped.plan.kind, "blocks": len(swapped.plan.blocks),
        "budget_bytes": swapped.budget_bytes, "arena_bytes": swapped.plan.arena_bytes,
        "model_weight_bytes": store.total_bytes,
        "max_abs_diff": max_abs_diff(out_r, out_s) if resident is not None else None,
        "swapped_ms_median": statistics.median(times_s),
        "resident_ms_median": statistics.median(times_r) if times_r else None,
        "peak_resident_weight_bytes": stats.peak_resident_weight_bytes,
        "bytes_read": stats.bytes_read // max(stats.calls, 1),
        "stalls": stats.misses, "stall_ms_per_call": stats.stall_seconds * 1000 / max(stats.calls, 1),
        "read_ms_per_call": stats.read_seconds * 1000 / max(stats.calls, 1), "repeat": args.repeat,
    }
    swapped.close()
    if args.json:
        print(json.dumps(result))
        return 0
    note = " (random weights)" if store.random_weights else ""
    print(f"{store.ref}{note}, input {result['input']}, io {result['effective_io']}, {swapped.plan.describe()}")
    print(f"{'':18}{'median ms':>10}{'peak weights':>16}{'read per call':>16}")
    if resident is not None:
        print(f"{'resident':18}{result['resident_ms_median']:10.1f}{format_bytes(store.total_bytes):>16}{'-':>16}")
    print(f"{'swapped':18}{result['swapped_ms_median']:10.1f}{format_bytes(result['peak_resident_weight_bytes']):>16}"
          f"{format_bytes(result['bytes_read']):>16}")
    if resident is not None:
        diff = result["max_abs_diff"]
        print(f"swapped/resident {result['swapped_ms_median'] / result['resident_ms_median']:.2f}x, "
              f"budget {format_bytes(result['budget_bytes'])} = {result['budget_bytes'] / store.total_bytes:.0%} "
              f"of the weights, max |diff| {diff:g}" + (" (bit-identical)" if diff == 0 else ""))
    print(f"stall {result['stall_ms_per_call']:.1f} ms/call, out-of-order loads {result['stalls']}")
    return 0


def _info(args) -> int:
    from .io import BlockReader, HostBuffer
    from .plan import minimum_budget, segments
    from .store import BlockStore

    store = BlockStore(args.store)
    ordered, detached = segments(store)
    info = {"store": str(store.path), "model": store.ref, "task": store.task, "random_weights": store.random_weights,
            "units": len(store.units), "pinned_units": sum(u.pinned for u in store.units),
            "weight_bytes": store.total_bytes, "pinned_bytes": store.pinned_bytes,
            "segments": len(ordered), "never_called_units": len(detached),
            "minimum_budget_bytes": minimum_budget(store), "minimum_budget_bytes_no_prefetch": minimum_budget(store, 0)}
    if args.verify:
        units = store.units
        buf = HostBuffer(units[-1].end - units[0].offset)
        reader = BlockReader(store.weights_path, "direct")
        try:
            reader.read_into(units, buf.view)
        finally:
            reader.close()
            buf.close()
        info["verified"] = True
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:32} {format_bytes(v) + f' ({v})' if k.endswith('bytes') else v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
