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
from .store import STORE_DTYPES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swapnet", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a model into an execution-ordered block store")
    p.add_argument("model", help="torchvision:NAME, transformers:PRESET|CONFIG|FOLDER, or package.module:factory")
    p.add_argument("--out", required=True, help="store directory to create")
    p.add_argument("--weights", help="local checkpoint (.safetensors, or a state dict read with weights_only=True), "
                   "or DEFAULT: torchvision's pretrained weights from the torch hub cache (never downloaded)")
    p.add_argument("--input", help="example input: an image file[@HxW] or random:NxCxHxW (default: per model)")
    p.add_argument("--dtype", default="float32", choices=STORE_DTYPES,
                   help="store (and compute) floating-point weights in this dtype (default float32)")
    p.add_argument("--slice", default="auto", metavar="auto|off|SIZE",
                   help="cut layers larger than twice SIZE into output slices where that is bit-identical "
                        "(auto: 1/64 of the weights, at least 1 MiB; off: never)")
    p.add_argument("--force", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("run", help="run a store under a weight budget")
    p.add_argument("store", help="a block store made by `swapnet convert`")
    p.add_argument("--budget", required=True, help="e.g. 96MB, 64MiB, 25%%, 1/4, 0.25x")
    p.add_argument("--input", help="an image file[@HxW] or random:NxCxHxW (default: the conversion's)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs after one warm-up (default 5)")
    _io_options(p)
    _plan_options(p)
    p.add_argument("--compare-resident", action="store_true",
                   help="also run the fully resident model (needs its full memory) and compare outputs")
    p.add_argument("--calibrate", action="store_true",
                   help="keep the read and compute rates this run found in the store's profile.json: later plans "
                        "of the store (any budget, the coordinator's too) are made for them, and may cut differently")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("plan", help="cut a store into blocks for a budget and predict the latency")
    p.add_argument("store", help="a block store made by `swapnet convert`")
    p.add_argument("--budget", required=True, help="e.g. 96MB, 64MiB, 25%%, 1/4, 0.25x")
    p.add_argument("--input", help="the input to profile with (default: the conversion's)")
    _io_options(p)
    _plan_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("info", help="describe a store")
    p.add_argument("store", help="a block store made by `swapnet convert`")
    p.add_argument("--verify", action="store_true", help="read every unit and check its checksum")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="swapnet: %(levelname)s: %(message)s")
    try:
        if hasattr(args, "device"):  # a CUDA device where there is none: one line, before any work
            from .device import resolve_device
            args.device = str(resolve_device(args.device))
        return {"convert": _convert, "run": _run, "plan": _plan, "info": _info}[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - every error is one line; --debug shows where it came from
        if args.debug:
            import traceback
            traceback.print_exc()
        lines = str(e).strip().splitlines() or [type(e).__name__]  # a library's message may run on
        ours = isinstance(e, (SwapNetError, ValueError, OSError))
        print(f"swapnet: error: {'' if ours else type(e).__name__ + ': '}{lines[0]}"
              + ("" if ours or args.debug else " (--debug shows the traceback)"), file=sys.stderr)
        return 2


def _io_options(p) -> None:
    p.add_argument("--io", choices=("direct", "mmap"), default="direct",
                   help="direct: O_DIRECT reads into the arena, no page cache (default); mmap: compute on mapped pages")
    p.add_argument("--prefetch", type=int, choices=(0, 1), default=1,
                   help="1: read the next block while the current one computes (default); 0: read on demand")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, or auto (cuda where there is one)")
    p.add_argument("--verify", choices=("first", "always", "never"), default="first",
                   help="check unit checksums on first read and when the file changes (default), always, never")


def _plan_options(p) -> None:
    p.add_argument("--plan", choices=("optimal", "greedy", "uniform"), default="optimal",
                   help="how to cut blocks (optimal: profile, then dynamic programming; default)")
    p.add_argument("--activation-reserve", default="0",
                   help="memory the budget keeps for activations, e.g. 64MiB (default 0: the budget is for weights)")
    p.add_argument("--reprofile", action="store_true", help="measure again instead of using profile.json")


def _make_plan(args, store, x):
    from .compose import plan_for, profile_for

    reserve = 0 if str(args.activation_reserve).strip() in ("0", "") else args.activation_reserve
    profile = profile_for(store, args.budget, example_input=x, device=args.device, io=args.io, refresh=args.reprofile)
    t = time.perf_counter()  # planning alone: profiling happens once per store and input
    plan, _ = plan_for(store, args.budget, args.plan, device=args.device, io=args.io, prefetch=args.prefetch,
                       activation_reserve=reserve, profile=profile)
    return plan, profile, time.perf_counter() - t


def _plan(args) -> int:
    from .plan import minimum_budget
    from .store import BlockStore

    store = BlockStore(args.store)
    plan, profile, seconds = _make_plan(args, store, store.make_input(args.input))
    minimum, unsliced = minimum_budget(store, args.prefetch), minimum_budget(store, args.prefetch, slices=False)
    result = plan.as_dict() | {"store": str(store.path), "model": store.ref, "random_weights": store.random_weights,
                               "model_weight_bytes": store.total_bytes, "planning_ms": seconds * 1000,
                               "minimum_budget_bytes": minimum, "minimum_budget_unsliced_bytes": unsliced,
                               "io_profile": {"mode": profile.io.mode, "latency_s": profile.io.latency_s,
                                              "bandwidth_bytes_per_s": profile.io.bandwidth_bytes_per_s},
                               "resident_ms": profile.compute.total_s * 1000}
    if args.json:
        print(json.dumps(result))
        return 0
    pred = plan.prediction
    print(f"{store.ref}{' (random weights)' if store.random_weights else ''}: {plan.describe()}")
    print(f"minimum budget {format_bytes(minimum)} ({format_bytes(unsliced)} with no layer sliced)")
    print(f"planned in {seconds * 1000:.1f} ms; read path {profile.io.mode}: "
          f"{profile.io.bandwidth_bytes_per_s / 2**20:.0f} MiB/s + {profile.io.latency_s * 1e6:.0f} us per read")
    print(f"{'block':>6}{'units':>14}{'bytes':>12}  first unit")
    for b in plan.blocks:
        tag = "resident" if b.resident else ("on demand" if not b.in_sequence else "")
        print(f"{b.index:>6}{f'{b.units[0]}-{b.units[-1]}':>14}{format_bytes(b.nbytes):>12}  "
              f"{store.units[b.units[0]].name} {tag}")
    print(f"predicted latency {pred.latency_s * 1000:.1f} ms = compute {pred.compute_s * 1000:.1f} ms "
          f"+ exposed I/O {pred.exposed_io_s * 1000:.1f} ms (resident model {profile.compute.total_s * 1000:.1f} ms); "
          f"reads {format_bytes(pred.read_bytes)} per call")
    if pred.peak_bytes is not None:
        print(f"predicted peak memory {format_bytes(pred.peak_bytes)} = arena {format_bytes(plan.arena_bytes)} "
              f"+ activations {format_bytes(pred.peak_bytes - plan.arena_bytes)}")
    return 0


def _convert(args) -> int:
    from .identity import weights_summary
    from .store import convert

    t0 = time.perf_counter()
    from .sizes import parse_size

    slicing = args.slice if args.slice in ("auto", "off") else parse_size(args.slice)
    store = convert(args.model, args.out, weights=args.weights, input_spec=args.input,
                    force=args.force, progress=not args.quiet, dtype=args.dtype, slice_bytes=slicing)
    pinned = sum(u.pinned for u in store.units)
    print(f"{store.path}: {len(store.units)} units ({pinned} pinned), {format_bytes(store.total_bytes)} {store.dtype}, "
          f"converted in {time.perf_counter() - t0:.1f} s; {weights_summary(store.manifest.get('weights', {}))}")
    return 0


def _run(args) -> int:
    import torch

    from .calibrate import drifted, recalibrate
    from .models import call_model, map_inputs, max_abs_diff
    from .plan import predict
    from .runtime import SwapModel, load_resident
    from .store import BlockStore

    if args.repeat < 1:
        raise ValueError("--repeat must be at least 1")
    store = BlockStore(args.store)
    x = map_inputs(store.make_input(args.input), lambda t: t.to(args.device))
    plan, profile, _seconds = _make_plan(args, store, x)
    swapped = SwapModel(store, plan, device=args.device, io=args.io, verify=args.verify)
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
    calibrated = recalibrate(swapped, profile, remember=args.calibrate) if plan.prediction else profile
    result = {
        "store": str(store.path), "model": store.ref, "random_weights": store.random_weights,
        "input": args.input or store.default_input, "io": args.io, "effective_io": swapped._reader.effective_mode,
        "device": args.device, "plan": plan.kind, "blocks": len(plan.blocks),
        "predicted_ms": plan.prediction.latency_s * 1000 if plan.prediction else None,
        "predicted_calibrated_ms": predict(store, plan, calibrated).latency_s * 1000 if plan.prediction else None,
        "read_scale": calibrated.io.scale / profile.io.scale, "reads_observed": len(swapped.reads),
        "compute_scale": calibrated.compute.scale / profile.compute.scale, "calls_observed": len(swapped.computes),
        "calibration_kept": bool(args.calibrate and plan.prediction),
        "resident_block_bytes": plan.resident_bytes, "pinned_bytes": plan.pinned_bytes,
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
    if result["predicted_ms"] is not None:
        rscale, cscale = result["read_scale"], result["compute_scale"]
        print(f"predicted {result['predicted_ms']:.1f} ms from the profile; {result['predicted_calibrated_ms']:.1f} ms "
              f"at the rates this run's {result['reads_observed']} block reads and {result['calls_observed']} calls ran "
              f"(reads took {rscale:.2f}x the profile's time, compute {cscale:.2f}x"
              + ("; kept in profile.json for the next plans)" if args.calibrate else
                 "; --calibrate keeps them for the next plans)" if drifted(rscale) or drifted(cscale) else ")"))
    return 0


def _info(args) -> int:
    from .io import BlockReader
    from .memory import HostBuffer
    from .plan import minimum_budget, segments
    from .store import BlockStore

    store = BlockStore(args.store)
    ordered, detached = segments(store)
    info = {"store": str(store.path), "model": store.ref, "task": store.task, "random_weights": store.random_weights,
            "units": len(store.units), "pinned_units": sum(u.pinned for u in store.units),
            "weight_bytes": store.total_bytes, "pinned_bytes": store.pinned_bytes,
            "segments": len(ordered), "never_called_units": len(detached),
            "minimum_budget_bytes": minimum_budget(store), "minimum_budget_no_prefetch_bytes": minimum_budget(store, 0),
            "minimum_budget_unsliced_bytes": minimum_budget(store, slices=False),
            "slicing": store.slicing.get("mode", "off"), "sliced_layers": len(store.sliced_layers),
            "layers_kept_whole": store.slicing.get("whole", {})}
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
            if k == "layers_kept_whole":
                for path, why in v.items():
                    print(f"{'kept whole: ' + path:32} {why}")
                continue
            print(f"{k:32} {format_bytes(v) + f' ({v})' if k.endswith('bytes') else v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
