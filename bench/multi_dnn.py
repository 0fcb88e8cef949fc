#!/usr/bin/env python3
"""Three networks (detector, segmenter, depth) whose weights are >= 3x the total budget, fed at fixed
rates with relative deadlines equal to their periods, under each scheduling policy; then EDF at 3x
overload, and EDF with preemption. Real models, real swapping. Prints a table, writes
bench/results/multi_dnn.json and a timeline picture bench/results/multi_dnn_timeline.png.

How the load is chosen: each model's swapped latency L at its budget share is measured alone; the
periods are T = n * L / U for n models at a total utilisation U (default 0.6), which one worker can
serve. Overload divides the periods by 3.

  .venv/bin/python bench/multi_dnn.py [--quick] [--seconds S] [--utilisation U]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
from tqdm import tqdm

from swapnet_core import minimum_budget
from swapnet_core.models import make_input
from swapnet_core.scheduler import Scheduler
from swapnet_core.sizes import align_up, format_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import open_or_convert  # noqa: E402

FULL = {
    "detection": ("torchvision:fasterrcnn_resnet50_fpn?min_size=320&max_size=426", "random:1x3x320x426"),
    "segmentation": ("torchvision:deeplabv3_resnet50", "random:1x3x240x320"),
    "depth": ("transformers:depth-anything-base", "random:1x3x196x252"),
}
QUICK = {
    "detection": ("torchvision:ssdlite320_mobilenet_v3_large", "random:1x3x320x320"),
    "segmentation": ("torchvision:lraspp_mobilenet_v3_large", "random:1x3x240x320"),
    "depth": ("transformers:depth-anything-small", "random:1x3x140x182"),
}
OVERSUBSCRIPTION = 3.2  # total weights / total budget


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller models and inputs, short runs, same table")
    ap.add_argument("--seconds", type=float, help="length of each run (default 150, quick 20)")
    ap.add_argument("--utilisation", type=float, default=0.6)
    ap.add_argument("--stores", default="stores/bench")
    ap.add_argument("--out", help="default bench/results/multi_dnn.json (multi_dnn_quick.json with --quick: the quick\n"
                         "run never overwrites the full results)")
    args = ap.parse_args()
    args.out = args.out or f"bench/results/multi_dnn{'_quick' if args.quick else ''}.json"
    models = QUICK if args.quick else FULL
    seconds = args.seconds or (20 if args.quick else 150)

    stores, inputs = {}, {}
    for name, (ref, spec) in models.items():
        stores[name] = open_or_convert(ref.replace(":", "_").replace("?", "_").replace("&", "_"), ref, spec, args.stores)
        inputs[name] = make_input(spec, seed=1)
    total_weights = sum(s.total_bytes for s in stores.values())
    total = int(total_weights / OVERSUBSCRIPTION)
    budgets = share_budget(stores, total)
    print(f"weights {format_bytes(total_weights)} over a total budget of {format_bytes(total)} "
          f"({total_weights / total:.2f}x): " + ", ".join(f"{n} {format_bytes(b)}" for n, b in budgets.items()))

    latency = calibrate(stores, inputs, budgets, total)
    n = len(stores)
    periods = {name: n * latency[name] / args.utilisation for name in stores}
    print("alone, swapped: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in latency.items())
          + f"; periods at utilisation {args.utilisation}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in periods.items()))

    runs = [("edf", False, 1.0), ("fifo", False, 1.0), ("rr", False, 1.0), ("edf", True, 1.0),
            ("edf", False, 3.0), ("fifo", False, 3.0)]
    results = []
    timeline = None
    for policy, preemption, load in tqdm(runs, desc="runs", file=sys.stderr):
        run = feed(stores, inputs, budgets, total, policy, preemption,
                   {k: v / load for k, v in periods.items()}, seconds)
        run.update({"policy": policy, "preemption": preemption, "load": load})
        results.append(run)
        if policy == "edf" and not preemption and load == 1.0:
            timeline = run.pop("_timeline")
        run.pop("_timeline", None)

    print_table(results)
    out = {"models": {k: {"ref": models[k][0], "input": models[k][1], "weight_bytes": stores[k].total_bytes,
                          "budget_bytes": budgets[k], "alone_ms": latency[k] * 1000, "period_ms": periods[k] * 1000}
                      for k in stores},
           "total_budget_bytes": total, "total_weight_bytes": total_weights, "utilisation": args.utilisation,
           "seconds_per_run": seconds, "threads": torch.get_num_threads(), "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    png = Path(args.out).with_name(Path(args.out).stem + "_timeline.png")
    draw_timeline(timeline, png, periods, total)
    print(f"\nwrote {args.out} and {png}")
    return 0


def share_budget(stores, total):
    """Shares proportional to weights, each at least its model's minimum."""
    minimum = {n: align_up(minimum_budget(s), 4096) for n, s in stores.items()}
    weights = sum(s.total_bytes for s in stores.values())
    budgets = {n: max(minimum[n], int(total * s.total_bytes / weights) // 4096 * 4096) for n, s in stores.items()}
    over = sum(budgets.values()) - total
    if over > 0:  # take the excess from those above their minimum, largest first
        for n in sorted(budgets, key=lambda k: budgets[k] - minimum[k], reverse=True):
            cut = min(align_up(over, 4096), (budgets[n] - minimum[n]) // 4096 * 4096)
            budgets[n] -= cut
            over -= cut
    if sum(budgets.values()) > total:
        raise SystemExit(f"the minimum budgets add up to more than {format_bytes(total)}: use larger models")
    return budgets


def new_scheduler(stores, inputs, budgets, total, policy="edf", preemption=False):
    sched = Scheduler(total, policy=policy, preemption=preemption)
    for name, store in stores.items():
        sched.add_model(name, store, budgets[name], example_input=inputs[name])
    sched.start()
    return sched


def calibrate(stores, inputs, budgets, total, runs=5):
    sched = new_scheduler(stores, inputs, budgets, total)
    try:
        times = {}
        for name in stores:
            sched.submit(name, inputs[name]).result()  # warm-up
            samples = []
            for _ in range(runs):
                t = time.monotonic()
                sched.submit(name, inputs[name]).result()
                samples.append(time.monotonic() - t)
            times[name] = statistics.median(samples)
        return times
    finally:
        sched.shutdown()


def feed(stores, inputs, budgets, total, policy, preemption, periods, seconds):
    sched = new_scheduler(stores, inputs, budgets, total, policy, preemption)
    for name in stores:  # warm up every model under this scheduler
        sched.submit(name, inputs[name]).result()
    sched.records.clear()
    sched.occupancy.clear()
    sched.reads.clear()
    base = {n: dict(m) for n, m in sched.metrics()["models"].items()}
    proc = psutil.Process()
    rss = [proc.memory_info().rss]
    stop = threading.Event()

    def feeder(name):
        period, t0 = periods[name], time.monotonic()
        k = 0
        while not stop.is_set():
            due = t0 + k * period
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            sched.submit(name, inputs[name], deadline=due + period)
            k += 1

    def sampler():
        while not stop.wait(0.05):
            rss.append(proc.memory_info().rss)

    threads = [threading.Thread(target=feeder, args=(n,), daemon=True) for n in stores]
    threads.append(threading.Thread(target=sampler, daemon=True))
    start = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    time.sleep(0.01)
    metrics = sched.metrics()["models"]
    records = list(sched.records)
    timeline = {"start": start, "records": records, "reads": list(sched.reads), "occupancy": list(sched.occupancy)}
    peak_resident = max((b for _, b in sched.occupancy), default=0)
    sched.shutdown()
    per_model = {}
    for name in stores:
        done = [r for r in records if r.model == name and r.ok]
        lat = sorted(r.finished - r.submitted for r in done)
        misses = sum(r.finished > r.deadline for r in done)
        pct = (lambda p: lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] * 1000 if lat else None)
        per_model[name] = {"jobs_done": len(done), "miss_rate": misses / len(done) if done else None,
                           "drops": metrics[name]["drops"] - base[name]["drops"],
                           "p50_ms": pct(50), "p99_ms": pct(99),
                           "frames_offered": int(seconds / periods[name])}
    return {"per_model": per_model, "peak_resident_weight_bytes": peak_resident, "total_budget_bytes": total,
            "peak_rss_bytes": max(rss), "rss_start_bytes": rss[0], "rss_end_bytes": rss[-1], "_timeline": timeline}


def print_table(results) -> None:
    head = f"{'policy':14}{'load':>5}{'model':>14}{'done':>7}{'miss rate':>10}{'drops':>7}{'p50 ms':>9}{'p99 ms':>9}" \
           f"{'peak weights':>14}{'peak RSS':>11}"
    print(head)
    print("-" * len(head))
    for r in results:
        label = r["policy"] + ("+preempt" if r["preemption"] else "")
        for k, (name, m) in enumerate(r["per_model"].items()):
            miss = f"{m['miss_rate']:.1%}" if m["miss_rate"] is not None else "-"
            p50 = f"{m['p50_ms']:.0f}" if m["p50_ms"] is not None else "-"
            p99 = f"{m['p99_ms']:.0f}" if m["p99_ms"] is not None else "-"
            tail = (f"{format_bytes(r['peak_resident_weight_bytes']):>14}{format_bytes(r['peak_rss_bytes']):>11}"
                    if k == 0 else "")
            print(f"{label if k == 0 else '':14}{(str(r['load']) + 'x') if k == 0 else '':>5}{name:>14}"
                  f"{m['jobs_done']:>7}{miss:>10}{m['drops']:>7}{p50:>9}{p99:>9}{tail}")
    print("miss rate: share of served frames finished after their deadline (arrival + period); "
          "drops: frames replaced by a newer one before they ran")


def draw_timeline(timeline, path: Path, periods, total_budget: int, window: float = 6.0) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if timeline is None:
        return
    start = timeline["start"]
    records = timeline["records"]
    t0 = start + 2.0
    t1 = t0 + window
    names = list(periods)
    colors = dict(zip(names, ["tab:blue", "tab:orange", "tab:green", "tab:purple"]))
    fig, (ax, occ) = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for row, name in enumerate(names):
        y = len(names) - row
        for r in records:
            if r.model != name or r.finished < t0 or r.started > t1:
                continue
            missed = r.finished > r.deadline
            ax.barh(y, r.finished - r.started, left=r.started - start, height=0.5, color=colors[name],
                    edgecolor="red" if missed else "black", linewidth=1.5 if missed else 0.3)
            ax.plot([r.submitted - start, r.started - start], [y, y], color=colors[name], linewidth=0.8, alpha=0.6)
            ax.plot([r.deadline - start], [y + 0.3], marker="v", color="red" if missed else "gray", markersize=4)
        for model, _block, a, b in timeline["reads"]:
            if model == name and t0 <= a <= t1:
                ax.barh(y - 0.38, b - a, left=a - start, height=0.16, color="black")
    ax.set_yticks([len(names) - i for i in range(len(names))], names)
    ax.set_title("EDF: jobs (bars; line = waiting since arrival; triangle = deadline, red = missed), "
                 "block reads (black ticks)")
    occ_t = [(t - start, b / 2**20) for t, b in timeline["occupancy"] if t0 <= t <= t1]
    if occ_t:
        occ.step([t for t, _ in occ_t], [b for _, b in occ_t], where="post", color="black")
    occ.axhline(total_budget / 2**20, color="red", linestyle="--", linewidth=0.8, label="total budget")
    occ.legend(loc="upper right", fontsize=8)
    occ.set_ylim(0, total_budget / 2**20 * 1.15)
    occ.set_ylabel("resident\nweights MiB")
    occ.set_xlabel("seconds since start")
    ax.set_xlim(t0 - start, t1 - start)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
