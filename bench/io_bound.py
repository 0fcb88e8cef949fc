#!/usr/bin/env python3
"""The I/O-bound regime (a Jetson's: compute in milliseconds, weights read at 0.3-3 GB/s), emulated with
inputs small enough that a forward computes in a fraction of the time its weights take to read.

For each network and budget: resident, ours (direct and mmap io), naive swapping and accelerate, in
worker processes that take turns (bench/peers.py's machinery), and the physical bound
    bound = max(resident latency, (weight bytes - budget) / storage bandwidth),
the bandwidth measured in the same run, after every round, by reading as many bytes as that budget
leaves unkept (a burst of the forward's own length, from a random place in the store file) with four
concurrent O_DIRECT streams: this machine's disk gives short bursts up to twice its sustained rate. Cold storage (each page-cache contender drops the file first) is the
regime that matters; ours with direct io never uses the page cache. A float16 store of the largest
network shows what half the bytes buy.

  .venv/bin/python bench/io_bound.py [--quick] [--repeat N] [--cold-repeat N] [--models a,b] [--stores DIR]

Prints a table and the checks, writes bench/results/io_bound.json (io_bound_quick.json with --quick)
and bench/results/io_bound.png (latency against budget, the bound drawn).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
from common import open_or_convert, storage_bandwidth  # noqa: E402

# name: (model reference, input, store dtype, contenders)
ALL = peers.CONTENDERS
MODELS = {
    "convnext_large": ("torchvision:convnext_large", "random:1x3x32x32", "float32", ALL),
    "resnet50": ("torchvision:resnet50", "random:1x3x32x32", "float32", ALL),
    "vit_b_16": ("torchvision:vit_b_16?image_size=32", "random:1x3x32x32", "float32", ALL),
    "depth_anything_base": ("transformers:depth-anything-base", "random:1x3x28x28", "float32", ALL),
    "convnext_large_fp16": ("torchvision:convnext_large", "random:1x3x32x32", "float16", ("resident", "ours_direct")),
}
QUICK = {"resnet50": MODELS["resnet50"]}
SHARES, QUICK_SHARES = ("1/2", "1/4", "1/6", "1/10"), ("1/2", "1/4")


def add_bounds(rows: list[dict], bandwidth: dict[str, dict[str, list[float]]]) -> None:
    """The bound, and ours against it, per row: the bandwidth is that of bursts as long as the row's
    unkept bytes, measured between this run's rounds (the resident row takes all of its model's)."""
    for r in rows:
        per_budget = bandwidth[r["model"]]
        samples = per_budget.get(str(r["budget_bytes"])) or [v for vs in per_budget.values() for v in vs]
        bw = statistics.median(samples)
        resident = next(x["median_ms"] for x in rows if x["model"] == r["model"] and x["contender"] == "resident"
                        and x["storage"] == r["storage"])
        unkept = max(r["weight_bytes"] - r["budget_bytes"], 0)
        r["storage_bandwidth_bytes_per_s"] = bw
        r["storage_bandwidth_spread"] = [min(samples), max(samples)]
        r["bound_ms"] = max(resident, unkept / bw * 1000)
        r["ratio_to_bound"] = r["median_ms"] / r["bound_ms"]
        r["unkept_bytes"] = unkept
        if r["contender"].startswith("ours_"):
            r["excess_read_share"] = (r["bytes_loaded_per_call"] - unkept) / r["weight_bytes"]
            r["prediction_error"] = r["predicted_ms"] / r["median_ms"] - 1
            if "predicted_calibrated_ms" in r:
                r["prediction_calibrated_error"] = r["predicted_calibrated_ms"] / r["median_ms"] - 1


def burst_bandwidths(store, shares, samples: dict[str, list[float]], rng) -> None:
    """One sample per budget: the storage's rate for a burst of what a forward at that budget cannot
    keep (weights - budget), from a random place in the file. This disk gives a short burst up to
    twice what it sustains, so the bound is read at the forward's own burst length, next to it in time."""
    from swapnet_core import minimum_budget
    from swapnet_core.sizes import parse_size
    floor = minimum_budget(store)
    for share in shares:
        budget = max(parse_size(share, of=store.total_bytes), floor)
        unkept = store.total_bytes - budget
        if unkept > 0:
            samples.setdefault(str(budget), []).append(
                storage_bandwidth(store.weights_path, nbytes=unkept, start=rng.randrange(store.total_bytes)))


def add_run_predictions(rows: list[dict], store, spec: str) -> None:
    """The cost model given the storage as this run found it: the same plan, predicted again with the
    run's measured bandwidth in place of the profile's. The profile is measured once, right after the
    store was written; this machine's virtual disk then reads at up to twice its sustained rate, and
    its rate drifts 2x within a run, so the cached prediction mixes the model's error with the disk's
    drift. Kept beside it: `predicted_ms` (the profile's, what the planner used)."""
    from dataclasses import replace
    from swapnet_core.compose import plan_for
    from swapnet_core.plan import predict
    from swapnet_core.profile import Profile
    x = store.make_input(spec, seed=1)
    for r in rows:
        if r["contender"] != "ours_direct":
            continue
        plan, profile = plan_for(store, r["budget_bytes"], example_input=x, io="direct")
        in_run = Profile(profile.compute, replace(profile.io, bandwidth_bytes_per_s=r["storage_bandwidth_bytes_per_s"]))
        r["predicted_in_run_ms"] = predict(store, plan, in_run).latency_s * 1000
        r["prediction_in_run_error"] = r["predicted_in_run_ms"] / r["median_ms"] - 1


def checks(rows: list[dict]) -> list[str]:
    """The issue's targets, read from this run: ours (direct, cold) at every budget."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = sorted((r for r in rows if r["model"] == model and r["contender"] == "ours_direct" and r["storage"] == "cold"),
                      key=lambda r: r["budget_bytes"])
        if not ours:
            continue
        bound = max(r["ratio_to_bound"] for r in ours)
        excess = max(r["excess_read_share"] for r in ours)
        worst_pred = max(abs(r["prediction_error"]) for r in ours)
        in_run = [abs(r["prediction_in_run_error"]) for r in ours if "prediction_in_run_error" in r]
        worst_in_run = max(in_run) if in_run else float("nan")
        calibrated = [abs(r["prediction_calibrated_error"]) for r in ours if "prediction_calibrated_error" in r]
        worst_calibrated = max(calibrated) if calibrated else float("nan")
        rises = [(a["budget_fraction"], b["budget_fraction"]) for a, b in zip(ours, ours[1:])
                 if b["median_ms"] > a["median_ms"] * 1.03]
        lines.append(f"{model:22} ours/bound <= {bound:.2f} {peers_mark(bound <= 1.10)}   "
                     f"read beyond weights-budget <= {excess:+.1%} of weights {peers_mark(excess <= 0.10)}   "
                     f"prediction within {worst_calibrated:.0%} {peers_mark(worst_calibrated <= 0.10)} "
                     f"(calibrated by ours' reads and compute; with the probe's bandwidth {worst_in_run:.0%}, the profile's "
                     f"{worst_pred:.0%})   "
                     f"latency non-increasing in budget {peers_mark(not rises)}{'' if not rises else ' (rises: ' + ', '.join(f'{a}->{b}' for a, b in rises) + ')'}")
    return lines


def peers_mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_table(rows: list[dict]) -> None:
    from swapnet_core.sizes import format_bytes
    head = (f"{'model':22}{'budget':>8}{'contender':>12}{'cold ms':>9}{'warm ms':>9}{'bound':>8}{'/bound':>8}"
            f"{'read/call':>11}{'W-B':>11}{'pred ms':>9}{'GB/s':>7}{'|diff|':>8}")
    print(head)
    print("-" * len(head))
    by = {(r["model"], r["budget_bytes"], r["contender"], r["storage"]): r for r in rows}
    for (model, budget, c, storage), k in by.items():
        if storage != "cold":
            continue
        w = by[(model, budget, c, "warm")]
        read = k["bytes_loaded_per_call"] if c.startswith("ours_") or c == "naive" else k["storage_read_bytes_per_call"]
        pred = f"{k.get('predicted_calibrated_ms', k['predicted_ms']):9.0f}" if "predicted_ms" in k else f"{'':9}"
        print(f"{model:22}{k['budget_fraction'] + ('*' if k['min_feasible'] else ''):>8}{c:>12}{k['median_ms']:9.0f}"
              f"{w['median_ms']:9.0f}{k['bound_ms']:8.0f}{k['ratio_to_bound']:8.2f}{format_bytes(read):>11}"
              f"{format_bytes(k['unkept_bytes']):>11}{pred}{k['storage_bandwidth_bytes_per_s'] / 1e9:7.2f}"
              f"{k['max_abs_diff']:8.0g}")
    print("cold = page cache dropped before each forward (the regime that matters); bound = max(resident, (weights - "
          "budget) / bandwidth), the bandwidth measured in this run; pred = the cost model calibrated by ours' own reads and compute; read/call = bytes the contender read per forward; "
          "* = raised to the model's minimum budget")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from report import CONTENDER_STYLE, share_value

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and r["storage"] == "cold"]
        for c in dict.fromkeys(r["contender"] for r in mine):
            pts = sorted((share_value(r["budget_fraction"]), r["median_ms"]) for r in mine if r["contender"] == c)
            color, label = CONTENDER_STYLE[c]
            if c == "resident":
                ax.axhline(pts[0][1], color=color, lw=1, label=label)
            else:
                ax.plot(*zip(*pts), "o-", color=color, label=label, ms=4)
        bound = sorted({(share_value(r["budget_fraction"]), r["bound_ms"]) for r in mine if r["contender"] == "ours_direct"})
        ax.plot(*zip(*bound), "k--", lw=1.5, label="physical bound")
        ax.set_xscale("log")
        ax.set_yscale("log")
        shares = sorted({share_value(r["budget_fraction"]) for r in mine if r["contender"] != "resident"})
        ax.set_xticks(shares, [f"1/{round(1 / v)}" for v in shares])
        ax.minorticks_off()
        ax.set_xlabel("budget (share of the weights)")
        ax.set_title(model, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("latency per forward, ms (cold storage)")
    legend = {}
    for ax in axes[0]:  # every contender once, whichever panel has it
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="resnet50 at 1/2 and 1/4 only")
    ap.add_argument("--repeat", type=int, help="warm forwards per contender (default 5, quick 3)")
    ap.add_argument("--cold-repeat", type=int, help="cold forwards per contender (default 5, quick 3)")
    ap.add_argument("--models", help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--stores", default="stores/bench_io", help="where converted stores are kept between runs "
                    "(apart from the other suites': the same networks are traced here with small inputs)")
    ap.add_argument("--out", help="default bench/results/io_bound.json (io_bound_quick.json with --quick)")
    ap.add_argument("--plot-only", help="draw the picture again from a results JSON, run nothing")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.plot_only).read_text())["rows"], Path(args.plot_only).with_suffix(".png"))
        return 0
    import torch
    models = {k: v for k, v in MODELS.items() if k in args.models.split(",")} if args.models else \
        QUICK if args.quick else MODELS
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.cold_repeat = args.cold_repeat or (3 if args.quick else 5)
    out = Path(args.out or f"bench/results/io_bound{'_quick' if args.quick else ''}.json")
    shares = QUICK_SHARES if args.quick else SHARES
    rows, bandwidth, failures, started = [], {}, [], time.time()
    rng = random.Random(0)
    import accelerate

    def save():  # after every model: a long run that stops late keeps what it measured
        result = {"machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                              "torch": torch.__version__, "accelerate": accelerate.__version__,
                              "python": platform.python_version()},
                  "quick": args.quick, "repeat": {"warm": args.repeat, "cold": args.cold_repeat},
                  "bandwidth_samples_bytes_per_s": bandwidth, "checks": checks(rows), "failures": failures,
                  "seconds": time.time() - started, "rows": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))

    with tempfile.TemporaryDirectory(prefix="io-bound-", dir=args.stores if Path(args.stores).exists() else None) as tmp:
        for name, (ref, spec, dtype, contenders) in models.items():
            samples = bandwidth.setdefault(name, {})
            mine = peers.bench_model(name, ref, spec, shares, args, Path(tmp), contenders=contenders, dtype=dtype,
                                     between_rounds=lambda store, s=samples: burst_bandwidths(store, shares, s, rng),
                                     failures=failures)
            add_bounds(mine, bandwidth)
            add_run_predictions(mine, open_or_convert(name, ref, spec, args.stores, dtype), spec)
            rows += mine
            save()
    print_table(rows)
    print()
    print("\n".join(checks(rows)))
    for f in failures:
        print(f"{f['model']}: {f['contender']} at {f['budget_fraction']} could not run: {f['error']}")
    picture = out.with_suffix(".png")
    plot(rows, picture)
    print(f"\nwrote {out} and {picture} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
