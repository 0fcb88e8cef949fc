#!/usr/bin/env python3
"""Three networks (detector, segmenter, depth) whose weights are >= 3x the total budget, fed at fixed
rates with relative deadlines equal to their periods, under each scheduling policy; then EDF with
preemption, and EDF and FIFO at 3x overload. Each run twice: the models sharing one streaming window
(arena="shared") and each in its fixed part with its own swap region (arena="partitioned", the
earlier layout); and in two settings: "compute" (the inputs below) and "io" (small inputs: compute
shrinks, reads dominate; the detector resizes every input to its own size, so it stays compute-bound).
Real models, real swapping. Prints a table, writes bench/results/multi_dnn.json (--quick:
multi_dnn_quick.json) and a timeline picture.

How the load is chosen: each model's swapped latency L at its partitioned budget share is measured
alone; the periods are T = n * L / U for n models at a total utilisation U (default 0.6), which one
worker can serve; the same periods feed both layouts. Overload is one camera feeding all three models
(one frame, one deadline for all) at 3x that work: period sum(L) / (3 U), each frame due sum(L) / U
after it was taken (what the nominal rate gives it). Budgets: partitioned, shares of the total
proportional to the weights; shared, those shares scaled up by the largest common factor the shared
admission takes under the same total (kept parts + one window <= total).

  .venv/bin/python bench/multi_dnn.py [--quick] [--seconds S] [--utilisation U]
  .venv/bin/python bench/multi_dnn.py --summarise RUN.json [RUN.json ...]   # runs' targets side by side
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

from swapnet_core import BudgetError, minimum_budget
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
SMALL_INPUTS = {  # the "io" setting: inputs that shrink compute (the stores are the same)
    "detection": "random:1x3x320x320",
    "segmentation": "random:1x3x64x80",
    "depth": "random:1x3x56x70",
}
SETTINGS = ("compute", "io")
ARENAS = ("shared", "partitioned")
RUNS = [("edf", False, 1.0), ("fifo", False, 1.0), ("rr", False, 1.0), ("edf", True, 1.0),
        ("edf", False, 3.0), ("fifo", False, 3.0)]  # (policy, preemption, load); load > 1: one camera
OVERSUBSCRIPTION = 3.2  # total weights / total budget


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller models and inputs, short runs, same table")
    ap.add_argument("--seconds", type=float, help="length of each run (default 150, quick 8)")
    ap.add_argument("--utilisation", type=float, default=0.6)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {','.join(SETTINGS)}")
    ap.add_argument("--stores", default="stores/bench")
    ap.add_argument("--out", help="default bench/results/multi_dnn.json (multi_dnn_quick.json with --quick: the quick\n"
                         "run never overwrites the full results)")
    ap.add_argument("--summarise", nargs="+", metavar="RUN_JSON", help="run nothing: write the targets of these "
                    "runs side by side to --out (default bench/results/multi_dnn_sharing.json)")
    args = ap.parse_args()
    if args.summarise:
        summarise(args.summarise, Path(args.out or "bench/results/multi_dnn_sharing.json"))
        return 0
    args.out = args.out or f"bench/results/multi_dnn{'_quick' if args.quick else ''}.json"
    models = QUICK if args.quick else FULL
    seconds = args.seconds or (8 if args.quick else 150)

    stores = {}
    for name, (ref, spec) in models.items():
        stores[name] = open_or_convert(ref.replace(":", "_").replace("?", "_").replace("&", "_"), ref, spec, args.stores)
    inputs = {"compute": {n: make_input(spec, seed=1) for n, (_ref, spec) in models.items()},
              "io": {n: make_input(SMALL_INPUTS[n], seed=1) for n in models}}
    total_weights = sum(s.total_bytes for s in stores.values())
    total = int(total_weights / OVERSUBSCRIPTION)
    parted = share_budget(stores, total)
    print(f"weights {format_bytes(total_weights)} over a total budget of {format_bytes(total)} "
          f"({total_weights / total:.2f}x): partitioned " + ", ".join(f"{n} {format_bytes(b)}" for n, b in parted.items()))

    results, setup, timeline = [], {}, None
    n = len(stores)
    settings = [x for x in args.settings.split(",") if x]
    if not set(settings) <= set(SETTINGS):
        ap.error(f"--settings: choose from {', '.join(SETTINGS)}")
    for setting in settings:
        budgets = {"partitioned": parted, "shared": fit_shared(stores, inputs[setting], parted, total)}
        latency = calibrate(stores, inputs[setting], parted, total)
        periods = {name: n * latency[name] / args.utilisation for name in stores}
        camera = sum(latency.values()) / args.utilisation  # one camera: the period at the nominal load
        setup[setting] = {"alone_ms": {k: v * 1000 for k, v in latency.items()},
                          "period_ms": {k: v * 1000 for k, v in periods.items()},
                          "budget_bytes": budgets}
        print(f"{setting}: shared budgets " + ", ".join(f"{k} {format_bytes(v)}" for k, v in budgets["shared"].items())
              + "; alone, partitioned: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in latency.items())
              + f"; periods at utilisation {args.utilisation}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in periods.items()))
        # the arenas take turns per configuration, first one then the other first: this disk and CPU
        # drift by 2x within the hour, and a block of runs per arena once put the drift on the arena
        turns = [(arena, run) for k, run in enumerate(RUNS) for arena in (ARENAS if k % 2 == 0 else ARENAS[::-1])]
        for arena, (policy, preemption, load) in tqdm(turns, desc=setting, file=sys.stderr):
            if load == 1.0:
                feed_periods, deadlines = periods, periods
            else:  # one camera feeding every model, `load` times the nominal work
                feed_periods = dict.fromkeys(stores, camera / load)
                deadlines = dict.fromkeys(stores, camera)
            run = feed(stores, inputs[setting], budgets[arena], total, policy, preemption, feed_periods, deadlines,
                       seconds, arena, camera=load != 1.0)
            run.update({"policy": policy, "preemption": preemption, "load": load, "arena": arena,
                        "setting": setting, "feed": "camera" if load != 1.0 else "streams"})
            results.append(run)
            if (setting, arena, policy, preemption, load) == ("compute", "shared", "edf", False, 1.0):
                timeline = run.pop("_timeline")
            run.pop("_timeline", None)

    print_table(results)
    print_comparison(results)
    out = {"models": {k: {"ref": models[k][0], "input": models[k][1], "small_input": SMALL_INPUTS[k],
                          "weight_bytes": stores[k].total_bytes} for k in stores},
           "settings": setup, "total_budget_bytes": total, "total_weight_bytes": total_weights,
           "utilisation": args.utilisation, "seconds_per_run": seconds, "threads": torch.get_num_threads(),
           "arenas_interleaved": True, "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    png = Path(args.out).with_name(Path(args.out).stem + "_timeline.png")
    draw_timeline(timeline, png, setup.get("compute", {}).get("period_ms"), total)
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


def fit_shared(stores, inputs, budgets, total, steps=8):
    """The partitioned budgets scaled by the largest common factor a shared arena admits under the same
    total (each at most its model's weights and the total), found on the real plans."""
    sched = new_scheduler(stores, inputs, budgets, total, arena="shared")  # the shares always fit

    def scaled(f):
        return {n: min(int(b * f) // 4096 * 4096, align_up(stores[n].total_bytes, 4096), total)
                for n, b in budgets.items()}

    try:
        lo, hi = 1.0, max(stores[n].total_bytes / b for n, b in budgets.items())
        for _ in range(steps):
            mid = (lo + hi) / 2
            try:
                sched.check_budgets(budgets=scaled(mid))
                lo = mid
            except BudgetError:
                hi = mid
        return scaled(lo)
    finally:
        sched.shutdown()


def new_scheduler(stores, inputs, budgets, total, policy="edf", preemption=False, arena="partitioned"):
    sched = Scheduler(total, policy=policy, preemption=preemption, arena=arena)
    for name, store in stores.items():
        sched.add_model(name, store, budgets[name], example_input=inputs[name])
    sched.start()
    return sched


def calibrate(stores, inputs, budgets, total, runs=5):
    """Each model's latency alone (median of `runs`, after a warm-up), partitioned at `budgets`."""
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


def feed(stores, inputs, budgets, total, policy, preemption, periods, deadlines, seconds, arena, camera=False):
    """Feed every model at its period (camera: one feeder, each frame to every model with one deadline)."""
    sched = new_scheduler(stores, inputs, budgets, total, policy, preemption, arena)
    for _ in range(2):  # warm up every model under this scheduler (and its expected job time)
        for name in stores:
            sched.submit(name, inputs[name]).result()
    sched.records.clear()
    sched.occupancy.clear()
    sched.reads.clear()
    base = {n: dict(m) for n, m in sched.metrics()["models"].items()}
    proc = psutil.Process()
    rss = [proc.memory_info().rss]
    stop = threading.Event()

    def feeder(names):
        period, t0 = periods[names[0]], time.monotonic()
        k = 0
        while not stop.is_set():
            due = t0 + k * period
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            for name in names:
                sched.submit(name, inputs[name], deadline=due + deadlines[name])
            k += 1

    def sampler():
        while not stop.wait(0.05):
            rss.append(proc.memory_info().rss)

    groups = [list(stores)] if camera else [[n] for n in stores]
    threads = [threading.Thread(target=feeder, args=(g,), daemon=True) for g in groups]
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
    arena_bytes = sched.arena_bytes
    sched.shutdown()
    per_model = {}
    for name in stores:
        done = [r for r in records if r.model == name and r.ok]
        lat = sorted(r.finished - r.submitted for r in done)
        misses = sum(r.finished > r.deadline for r in done)
        pct = (lambda p: lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] * 1000 if lat else None)
        reasons = {k: v - base[name]["drops_by_reason"][k] for k, v in metrics[name]["drops_by_reason"].items()}
        per_model[name] = {"jobs_done": len(done), "miss_rate": misses / len(done) if done else None,
                           "drops": metrics[name]["drops"] - base[name]["drops"], "drops_by_reason": reasons,
                           "p50_ms": pct(50), "p99_ms": pct(99),
                           "frames_offered": int(seconds / periods[name])}
    jobs = [m["jobs_done"] for m in per_model.values()]
    return {"per_model": per_model, "peak_resident_weight_bytes": peak_resident, "total_budget_bytes": total,
            "arena_bytes": arena_bytes, "budget_bytes": budgets,
            "jobs_spread": max(jobs) / min(jobs) if min(jobs) else None,
            "peak_rss_bytes": max(rss), "rss_start_bytes": rss[0], "rss_end_bytes": rss[-1], "_timeline": timeline}


def print_table(results) -> None:
    head = f"{'setting':8}{'arena':12}{'policy':14}{'load':>5}{'model':>14}{'done':>7}{'miss rate':>10}{'drops':>7}" \
           f"{'late':>6}{'p50 ms':>9}{'p99 ms':>9}{'peak weights':>14}{'arena':>11}{'peak RSS':>11}"
    print(head)
    print("-" * len(head))
    for r in results:
        label = r["policy"] + ("+preempt" if r["preemption"] else "")
        for k, (name, m) in enumerate(r["per_model"].items()):
            miss = f"{m['miss_rate']:.1%}" if m["miss_rate"] is not None else "-"
            p50 = f"{m['p50_ms']:.0f}" if m["p50_ms"] is not None else "-"
            p99 = f"{m['p99_ms']:.0f}" if m["p99_ms"] is not None else "-"
            first = k == 0
            tail = (f"{format_bytes(r['peak_resident_weight_bytes']):>14}{format_bytes(r['arena_bytes']):>11}"
                    f"{format_bytes(r['peak_rss_bytes']):>11}" if first else "")
            print(f"{r['setting'] if first else '':8}{r['arena'] if first else '':12}{label if first else '':14}"
                  f"{(str(r['load']) + 'x') if first else '':>5}{name:>14}{m['jobs_done']:>7}{miss:>10}{m['drops']:>7}"
                  f"{m['drops_by_reason']['late']:>6}{p50:>9}{p99:>9}{tail}")
    print("miss rate: share of served frames finished after their deadline; drops: frames not served (a newer "
          "frame replaced them, or, 'late', they could no longer meet their deadline); load 3x: one camera")


def comparison(results) -> dict:
    """The targets per setting: shared vs partitioned p50 (EDF, nominal load), EDF's and FIFO's worst
    miss at nominal load, and under one camera at 3x the jobs spread and the frames served within
    their deadline, per layout."""
    def find(setting, arena, policy="edf", load=1.0, preemption=False):
        return next(r for r in results if (r["setting"], r["arena"], r["policy"], r["load"], r["preemption"])
                    == (setting, arena, policy, load, preemption))

    def worst_miss(run):
        return max((m["miss_rate"] or 0) for m in run["per_model"].values())

    def in_time(run):
        return sum(round(m["jobs_done"] * (1 - (m["miss_rate"] or 0))) for m in run["per_model"].values())

    out = {}
    for setting in dict.fromkeys(r["setting"] for r in results):
        shared, parted = find(setting, "shared"), find(setting, "partitioned")
        out[setting] = {
            "p50_change": {n: shared["per_model"][n]["p50_ms"] / parted["per_model"][n]["p50_ms"] - 1
                           for n in shared["per_model"]
                           if shared["per_model"][n]["p50_ms"] and parted["per_model"][n]["p50_ms"]},
            "edf_worst_miss": {a: worst_miss(find(setting, a)) for a in ARENAS},
            "fifo_worst_miss": {a: worst_miss(find(setting, a, "fifo")) for a in ARENAS},
            "edf_spread": {a: find(setting, a, "edf", 3.0)["jobs_spread"] for a in ARENAS},
            "fifo_spread": {a: find(setting, a, "fifo", 3.0)["jobs_spread"] for a in ARENAS},
            "in_time_3x": {p: {a: in_time(find(setting, a, p, 3.0)) for a in ARENAS} for p in ("edf", "fifo")}}
    return out


def print_comparison(results) -> None:
    print()
    for setting, v in comparison(results).items():
        print(f"{setting}: shared vs partitioned p50 (edf, 1x): "
              + ", ".join(f"{n} {c:+.0%}" for n, c in v["p50_change"].items()))
        for arena in ARENAS:
            spread = {"edf": v["edf_spread"][arena], "fifo": v["fifo_spread"][arena]}
            print(f"  {arena}: edf worst miss at 1x {v['edf_worst_miss'][arena]:.1%}; jobs spread at 3x (one camera): "
                  + ", ".join(f"{p} {x:.2f}x" if x else f"{p} -" for p, x in spread.items()))


def summarise(paths: list[str], out: Path) -> None:
    """Several runs' targets side by side (their run-to-run spread), for BENCHMARKS.md."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    out.write_text(json.dumps({"models": list(runs[0]["models"]), "seconds_per_run": runs[0]["seconds_per_run"],
                               "sources": [Path(p).name for p in paths],
                               "arenas_interleaved": all(r.get("arenas_interleaved", False) for r in runs),
                               "repeats": [comparison(r["runs"]) for r in runs]}, indent=1))
    print(f"wrote {out}")


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
