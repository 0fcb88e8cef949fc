#!/usr/bin/env python3
"""Resident vs. swapped for the zoo networks at 1/2, 1/4 and 1/6 of their weight bytes (or the minimum
feasible budget, if higher): the optimal plan in both io modes, and the greedy and uniform cuts (direct
io) for contrast, each with the planner's prediction. Runs are interleaved so drift hits all alike;
figures are medians of one run. Prints a table and writes bench/results/swap_vs_resident.json.

  .venv/bin/python bench/swap_vs_resident.py [--quick] [--repeat N] [--stores DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from swapnet_core import open_swapped, load_profile, load_resident, make_plan, minimum_budget
from swapnet_core.models import call_model, make_input, max_abs_diff
from swapnet_core.sizes import format_bytes, parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import open_or_convert, p95  # noqa: E402

MODELS = {
    "fasterrcnn_resnet50_fpn": ("torchvision:fasterrcnn_resnet50_fpn?min_size=480&max_size=640", "random:1x3x480x640"),
    "deeplabv3_resnet101": ("torchvision:deeplabv3_resnet101", "random:1x3x480x640"),
    "vit_b_16": ("torchvision:vit_b_16", "random:1x3x224x224"),
    "depth_anything_base": ("transformers:depth-anything-base", "random:1x3x364x490"),
}
QUICK = {"resnet50": ("torchvision:resnet50", "random:1x3x224x224")}
SHARES = ("1/2", "1/4", "1/6")
CONTENDERS = (("direct", "optimal"), ("mmap", "optimal"), ("direct", "greedy"), ("direct", "uniform"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small model, same table")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stores", default="stores/bench", help="where converted stores are kept between runs")
    ap.add_argument("--out", help="default bench/results/swap_vs_resident.json (swap_vs_resident_quick.json with --quick: the quick\n"
                         "run never overwrites the full results)")
    args = ap.parse_args()
    args.out = args.out or f"bench/results/swap_vs_resident{'_quick' if args.quick else ''}.json"
    models = QUICK if args.quick else MODELS
    rows = []
    for name, (ref, spec) in models.items():
        store = open_or_convert(name, ref, spec, args.stores)
        x = make_input(spec, seed=1)
        resident = load_resident(store)
        configs = []
        profiles = {io: load_profile(store, x, "cpu", io) for io in {io for io, _ in CONTENDERS}}
        for share in SHARES:
            budget = max(parse_size(share, of=store.total_bytes), minimum_budget(store))
            for io, kind in CONTENDERS:
                t = time.perf_counter()
                plan = make_plan(store, budget, kind, profiles[io])
                planning_ms = (time.perf_counter() - t) * 1000
                configs.append((share, budget, io, open_swapped(store, budget, io=io, plan=plan), planning_ms))
        with torch.no_grad():
            want = call_model(resident, store.call, x)  # warm-up and reference
            diffs = {id(c[3]): max_abs_diff(want, call_model(c[3], store.call, x)) for c in configs}
            times = {"resident": []} | {id(c[3]): [] for c in configs}
            for m in [c[3] for c in configs]:
                m.reset_stats()
            for _ in tqdm(range(args.repeat), desc=name, file=sys.stderr, leave=False):
                for key, model in [("resident", resident)] + [(id(c[3]), c[3]) for c in configs]:
                    t = time.perf_counter()
                    call_model(model, store.call, x)
                    times[key].append((time.perf_counter() - t) * 1000)
        resident_ms = statistics.median(times["resident"])
        for share, budget, io, model, planning_ms in configs:
            s, plan, prof = model.stats, model.plan, profiles[io]
            ms = statistics.median(times[id(model)])
            read_per_call = sum(b.nbytes for b in plan.blocks if b.in_sequence and not b.resident)
            bound_ms = max(prof.compute.total_s, read_per_call / prof.io.bandwidth_bytes_per_s) * 1000
            rows.append({
                "model": name, "ref": ref, "input": spec, "weight_bytes": store.total_bytes,
                "budget_fraction": share, "budget_bytes": budget,
                "min_feasible": budget > parse_size(share, of=store.total_bytes), "io": io,
                "effective_io": model._reader.effective_mode, "plan": plan.kind, "blocks": len(plan.blocks),
                "resident_blocks": sum(b.resident for b in plan.blocks), "planning_ms": planning_ms,
                "resident_ms_median": resident_ms, "swapped_ms_median": ms, "ratio": ms / resident_ms,
                "predicted_ms": plan.prediction.latency_s * 1000, "prediction_error": ms / (plan.prediction.latency_s * 1000) - 1,
                "physical_bound_ms": bound_ms, "ratio_to_bound": ms / bound_ms,
                "swapped_ms_p95": p95(times[id(model)]),
                "stall_ms_per_call": s.stall_seconds * 1000 / s.calls, "read_ms_per_call": s.read_seconds * 1000 / s.calls,
                "peak_resident_weight_bytes": s.peak_resident_weight_bytes, "arena_bytes": plan.arena_bytes,
                "bytes_read_per_call": read_per_call, "read_bandwidth_bytes_per_s": prof.io.bandwidth_bytes_per_s,
                "max_abs_diff": diffs[id(model)],
            })
            model.close()
        del resident
    print_table(rows)
    result = {"machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version()},
              "repeat": args.repeat, "warm_page_cache": "not dropped (direct io bypasses it; mmap reads it)",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    return 0


def print_table(rows) -> None:
    head = (f"{'model':22}{'budget':>7}{'io':>7}{'plan':>8}{'blocks':>7}{'resident':>9}{'swapped':>9}{'predicted':>10}"
            f"{'ratio':>7}{'/bound':>7}{'stall':>7}{'peak weights':>13}{'budget':>11}{'|diff|':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        share = r["budget_fraction"] + ("*" if r["min_feasible"] else "")
        print(f"{r['model']:22}{share:>7}{r['io']:>7}{r['plan']:>8}{r['blocks']:>7}{r['resident_ms_median']:9.1f}"
              f"{r['swapped_ms_median']:9.1f}{r['predicted_ms']:10.1f}{r['ratio']:7.2f}{r['ratio_to_bound']:7.2f}"
              f"{r['stall_ms_per_call']:7.1f}{format_bytes(r['peak_resident_weight_bytes']):>13}"
              f"{format_bytes(r['budget_bytes']):>11}{r['max_abs_diff']:7.0g}")
    print("times in ms (medians); ratio = swapped / resident; /bound = swapped / max(compute, bytes read / bandwidth)")
    print("* budget raised to the minimum feasible for this model")


if __name__ == "__main__":
    sys.exit(main())
