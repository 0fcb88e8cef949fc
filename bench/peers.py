#!/usr/bin/env python3
"""Ours against the peers at the same memory budget, side by side, in one run.

Contenders, all on the same store bytes and the same input:
  resident     the whole model in memory (sufficient memory);
  naive        SwapNet's "naive" swapping: each block read with a plain copy (safetensors load_file, which
               maps the block's file, then load_state_dict copies into the module), no prefetch, dropped
               after use; blocks of at most half the budget, since the load briefly holds two copies;
  accelerate   Hugging Face accelerate at the same budget: infer_auto_device_map(max_memory={"cpu":
               budget, "disk": ...}) + dispatch_model with an offload folder (disk_offload when nothing
               fits), the way a user offloads a model that does not fit today;
  ours_direct, ours_mmap   SwapModel with the optimal plan, O_DIRECT or mmap io.

Each contender at each budget lives in its own worker process, so its peak memory is measured
(VmHWM, reset after set-up) rather than estimated; the parent asks the workers for one forward each in
turn, so drift hits all alike. Warm storage: every round after a warm-up forward. Cold storage: the
worker drops its files from the page cache (posix_fadvise DONTNEED, no root needed) before each
forward; drop_caches needs root, which this machine does not give, so the device's own cache remains.

  .venv/bin/python bench/peers.py [--quick] [--repeat N] [--cold-repeat N] [--models a,b] [--stores DIR]

Prints a table and writes bench/results/peers.json (peers_quick.json with --quick) and
bench/results/latest.json; bench/report.py turns the results into BENCHMARKS.md and plots.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import open_or_convert, p95, process_memory  # noqa: E402

MODELS = {
    "fasterrcnn_resnet50_fpn": ("torchvision:fasterrcnn_resnet50_fpn?min_size=480&max_size=640", "random:1x3x480x640"),
    "deeplabv3_resnet101": ("torchvision:deeplabv3_resnet101", "random:1x3x480x640"),
    "convnext_large": ("torchvision:convnext_large", "random:1x3x224x224"),
    "depth_anything_base": ("transformers:depth-anything-base", "random:1x3x364x490"),
}
QUICK = {"resnet50": ("torchvision:resnet50", "random:1x3x224x224")}
SHARES, QUICK_SHARES = ("1/1", "1/2", "1/4", "1/6", "1/10"), ("1/2", "1/4")  # "1" alone would mean one byte
CONTENDERS = ("resident", "naive", "accelerate", "ours_direct", "ours_mmap")
PARALLEL_SETUP = 3  # workers set up at once (each briefly holds a copy of the model)


# ---------------------------------------------------------------------------------------------
# the contenders (built inside a worker process)

def _entries(store):
    for u in store.units:
        for t in u.tensors:
            yield u, t


def _assign(modules, t, tensor) -> None:
    import torch.nn as nn
    for path, attr, kind in t.bindings:
        table = modules[path]._parameters if kind == "param" else modules[path]._buffers
        table[attr] = nn.Parameter(tensor, requires_grad=False) if kind == "param" else tensor


def plain_model(store):
    """The model as a user holds it: ordinary tensors read from the checkpoint (the store is a valid
    safetensors file). Copied: load_file's tensors map the file, and a mapping kept alive would pin
    the store's pages in the page cache for every other contender's cold runs."""
    from safetensors.torch import load_file
    weights = load_file(str(store.weights_path))
    module = store.build_skeleton()
    modules = dict(module.named_modules())
    for _u, t in _entries(store):
        _assign(modules, t, weights.pop(t.name).clone())
    return module


class NaiveSwap:
    """SwapNet's naive swapping: load_file + load_state_dict per block, no prefetch, dropped after use."""

    def __init__(self, store, budget: int, folder: Path):
        import torch
        from safetensors.torch import load_file, save_file
        from swapnet_core.plan import segments
        self.module = store.build_skeleton()
        self._modules = dict(self.module.named_modules())
        self._load_file = load_file
        ordered, detached = segments(store)
        pinned = [u for u in store.units if u.pinned]
        cap = max(1, (budget - sum(u.nbytes for u in pinned)) // 2)
        blocks: list[list[int]] = []
        size = 0
        for seg in ordered:
            n = sum(store.units[i].nbytes for i in seg)
            if blocks and size + n <= cap:
                blocks[-1] += seg
                size += n
            else:
                blocks.append(list(seg))
                size = n
        blocks += detached
        self.blocks = [[store.units[i] for i in b] for b in blocks]
        self.block_of = {u.index: k for k, b in enumerate(self.blocks) for u in b}
        weights = load_file(str(store.weights_path))  # set-up only: write one plain file per block
        self.files = []
        for k, b in enumerate(self.blocks):
            path = folder / f"block{k:04d}.safetensors"
            save_file({t.name: weights[t.name].contiguous() for u in b for t in u.tensors}, str(path))
            self.files.append(path)
        for u in pinned:
            for t in u.tensors:
                _assign(self._modules, t, weights[t.name].clone())
        del weights
        self._meta = {t.name: torch.empty(t.shape, dtype=t.dtype, device="meta") for _u, t in _entries(store)}
        self.current: int | None = None
        self.bytes_loaded = 0
        for u in store.units:
            if not u.pinned:
                self._modules[u.name].register_forward_pre_hook(self._hook(u.index))

    def _hook(self, unit: int):
        def pre_hook(_module, _args):
            b = self.block_of[unit]
            if b != self.current:
                self._drop()
                self._load(b)
        return pre_hook

    def _load(self, b: int) -> None:
        import torch
        loaded = self._load_file(str(self.files[b]))  # safetensors maps the file: page cache, no copy yet
        self.bytes_loaded += self.files[b].stat().st_size
        state = {}
        for u in self.blocks[b]:
            for t in u.tensors:
                _assign(self._modules, t, torch.empty(t.shape, dtype=t.dtype))
                for path, attr, _kind in t.bindings:
                    state[f"{path}.{attr}" if path else attr] = loaded[t.name]
        self.module.load_state_dict(state, strict=False)  # the copy into the module's parameters
        self.current = b

    def _drop(self) -> None:
        if self.current is not None:
            for u in self.blocks[self.current]:
                for t in u.tensors:
                    _assign(self._modules, t, self._meta[t.name])
            self.current = None

    def __call__(self, *args, **kwargs):
        try:
            return self.module(*args, **kwargs)
        finally:
            self._drop()


def accelerate_model(store, budget: int, folder: Path):
    """accelerate's offload at the same budget: modules that fit in `budget` stay in memory, the rest
    are offloaded to `folder` and loaded for each forward."""
    from accelerate import disk_offload, dispatch_model, infer_auto_device_map
    module = plain_model(store)
    device_map = infer_auto_device_map(module, max_memory={"cpu": budget, "disk": 1 << 50})
    placed = set(device_map.values())
    if placed == {"cpu"}:
        return module, device_map
    if placed == {"disk"}:  # nothing fits next to the largest layer: dispatch_model cannot take this map
        return disk_offload(module, str(folder), execution_device="cpu"), device_map
    return dispatch_model(module, device_map, main_device="cpu", offload_dir=str(folder)), device_map


def build(contender: str, store, budget: int, x, folder: Path):
    """(callable, files it reads at run time, facts about it)"""
    from swapnet_core import open_swapped, load_resident
    if contender == "resident":
        return load_resident(store), [], {}
    if contender == "naive":
        naive = NaiveSwap(store, budget, folder)
        return naive, naive.files, {"blocks": len(naive.blocks)}
    if contender == "accelerate":
        model, device_map = accelerate_model(store, budget, folder)
        files = sorted(folder.rglob("*.dat"))
        return model, files, {"offloaded_modules": sum(v == "disk" for v in device_map.values()),
                              "in_memory_modules": sum(v == "cpu" for v in device_map.values()),
                              "offloaded_bytes": sum(f.stat().st_size for f in files)}
    io = contender.removeprefix("ours_")
    model = open_swapped(store, budget, io=io, plan="optimal", example_input=x)
    p = model.plan
    return model, [store.weights_path], {"blocks": len(p.blocks), "predicted_ms": p.prediction.latency_s * 1000,
                                        "planned_read_bytes": p.prediction.read_bytes,
                                        "kept_resident_bytes": p.pinned_bytes + p.resident_bytes,
                                        "swap_region_bytes": p.swap_bytes}


def _bytes_loaded(contender: str, model) -> int:
    if contender == "naive":
        return model.bytes_loaded
    if contender.startswith("ours_"):
        return model.stats.bytes_read
    return 0


def calibrated_prediction(contender: str, model, store, x) -> dict:
    """Ours: the cost model again, its read rate scaled to the reads this worker's forwards made
    (swapnet_core.calibrate, as `swapnet run` and the scheduler do), beside the profile's prediction."""
    if not contender.startswith("ours_"):
        return {}
    from swapnet_core.calibrate import recalibrate
    from swapnet_core.compose import profile_for
    from swapnet_core.plan import predict
    profile = profile_for(store, model.budget_bytes, example_input=x, io=model.io)
    cal = recalibrate(model, profile, remember=False)
    reads = list(model.reads)
    return {"predicted_calibrated_ms": predict(store, model.plan, cal).latency_s * 1000,
            "read_scale": cal.io.scale / profile.io.scale, "reads_observed": len(reads),
            "compute_scale": cal.compute.scale / profile.compute.scale,
            "read_ms_per_block": 1000 * sum(t for _n, t in reads) / max(len(reads), 1)}


def worker(spec: dict) -> int:
    """One contender at one budget: set up, answer `run warm|cold` and `done` on stdin."""
    reply_to = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # libraries that print must not garble the replies

    def reply(**kw):
        reply_to.write(json.dumps(kw) + "\n")

    import torch
    from safetensors.torch import save_file
    from swapnet_core import BlockStore
    from swapnet_core.models import call_model, flatten_outputs
    from swapnet_core.profile import _drop_cache

    torch.manual_seed(0)
    store = BlockStore(spec["store"])
    x = store.make_input(spec["input"], seed=1)
    base_rss = process_memory()["rss"]
    folder = Path(spec["scratch"])
    folder.mkdir(parents=True, exist_ok=True)
    contender = spec["contender"]
    model, files, facts = build(contender, store, spec["budget"], x, folder)
    with torch.no_grad():
        out = call_model(model, store.call, x)
    save_file({str(i): t.contiguous() for i, t in enumerate(flatten_outputs(out))}, spec["output"])
    del out
    if contender.startswith("ours_"):
        model.forget_timings()  # the set-up forward also checked every unit's CRC32: not the steady state
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # set-up garbage is not the contender's run-time memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM: the peak from here on is the run's
    ready_rss = process_memory()["rss"]
    reply(ready=True, base_rss=base_rss, ready_rss=ready_rss, **facts)
    calls = 0
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            if cmd[1] == "cold":
                for f in files:
                    _drop_cache(f)
            io0, loaded0 = process_memory()["read_bytes"], _bytes_loaded(contender, model)
            t = time.perf_counter()
            with torch.no_grad():
                call_model(model, store.call, x)
            ms = (time.perf_counter() - t) * 1000
            calls += 1
            reply(ms=ms, storage_read_bytes=process_memory()["read_bytes"] - io0,
                  bytes_loaded=_bytes_loaded(contender, model) - loaded0)
        elif cmd[0] == "done":
            reply(peak_rss=process_memory()["hwm"], calls=calls, **calibrated_prediction(contender, model, store, x))
            break
    return 0


# ---------------------------------------------------------------------------------------------
# the parent

class Worker:
    def __init__(self, spec: dict, log_dir: Path):
        self.spec = spec
        self.log_path = log_dir / f"{spec['contender']}-{spec['budget']}.log"
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log_path, "w"),
                                     text=True, bufsize=1, env=os.environ | {"TQDM_DISABLE": "1"})
        self.ready: dict | None = None
        self.times = {"warm": [], "cold": []}
        self.reads = {"warm": [], "cold": []}
        self.loaded = {"warm": [], "cold": []}

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"worker {self.spec['contender']} at {self.spec['budget']} bytes died "
                               f"(exit {self.proc.returncode}):\n{tail}")
        return json.loads(line)


def _outputs(path: str) -> list:
    from safetensors.torch import load_file
    tensors = load_file(path)
    return [tensors[str(i)] for i in range(len(tensors))]


def bench_model(name, ref, spec, shares, args, scratch: Path, contenders=CONTENDERS, dtype="float32",
                between_rounds=None, failures: list | None = None) -> list[dict]:
    """Rows for every contender at every budget, from one interleaved session; between_rounds(store)
    is called after each round of forwards (a measurement that must share the run). A contender that
    cannot run a model (accelerate on a module whose forward reads a child's weights) is left out and
    said in `failures` when given, else raised."""
    from tqdm import tqdm
    from swapnet_core import load_profile, minimum_budget
    from swapnet_core.models import max_abs_diff
    from swapnet_core.sizes import parse_size

    store = open_or_convert(name, ref, spec, args.stores, dtype)
    x = store.make_input(spec, seed=1)
    floor = minimum_budget(store)
    for io in ("direct", "mmap"):  # profiled once here, not by several workers at once
        load_profile(store, x, "cpu", io, budget_bytes=floor)
    bandwidth = load_profile(store, x, "cpu", "direct").io.bandwidth_bytes_per_s
    budgets = {}
    for share in shares:
        b = max(parse_size(share, of=store.total_bytes), floor)
        budgets.setdefault(b, share)  # shares below the minimum collapse onto it
    log_dir = scratch / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(contender, budget):
        tag = f"{name}-{contender}-{budget}"
        return Worker({"contender": contender, "store": str(store.path), "budget": budget, "input": spec,
                       "output": str(scratch / f"{tag}.safetensors"), "scratch": str(scratch / tag)}, log_dir)

    pending = [("resident", store.total_bytes)] + [(c, b) for b in budgets for c in contenders if c != "resident"]
    workers = []
    bar = tqdm(total=len(pending), desc=f"{name}: set up", file=sys.stderr, leave=False)
    while pending:
        batch = [spawn(c, b) for c, b in pending[:PARALLEL_SETUP]]
        pending = pending[PARALLEL_SETUP:]
        for w in batch:
            try:
                w.ready = w.answer()
                workers.append(w)
            except RuntimeError as e:
                if failures is None or w.spec["contender"] == "resident":
                    raise
                last = [line for line in str(e).splitlines() if line.strip()][-1]
                failures.append({"model": name, "contender": w.spec["contender"], "budget_bytes": w.spec["budget"],
                                 "budget_fraction": budgets[w.spec["budget"]], "error": last})
                print(f"{name}: {w.spec['contender']} at {budgets[w.spec['budget']]} cannot run: {last}", file=sys.stderr)
            bar.update()
    bar.close()
    want = _outputs(workers[0].spec["output"])
    for w in workers:
        w.ready["max_abs_diff"] = max_abs_diff(want, _outputs(w.spec["output"]))
    rng = random.Random(0)
    for storage, repeat in (("warm", args.repeat), ("cold", args.cold_repeat)):
        for _ in tqdm(range(repeat), desc=f"{name}: {storage}", file=sys.stderr, leave=False):
            # a new order every round: storage that throttles after a burst of reads (this machine's does)
            # must not always slow whichever contender comes last
            for w in rng.sample(workers, len(workers)):
                r = w.ask(f"run {storage}")
                w.times[storage].append(r["ms"])
                w.reads[storage].append(r["storage_read_bytes"])
                w.loaded[storage].append(r["bytes_loaded"])
            if between_rounds is not None:
                between_rounds(store)
    rows = []
    resident = workers[0]
    finished = {id(w): w.ask("done") for w in workers}
    # the run-time floor: the resident process's peak less its weights (torch, activations, caches)
    floor_rss = finished[id(resident)]["peak_rss"] - store.total_bytes
    for w in workers:
        done = finished[id(w)]
        w.proc.wait(timeout=60)
        c, budget = w.spec["contender"], w.spec["budget"]
        share = "1/1" if c == "resident" else budgets[budget]
        for storage in ("warm", "cold"):
            med = statistics.median(w.times[storage])
            row = {"model": name, "ref": ref, "input": spec, "dtype": store.dtype, "weight_bytes": store.total_bytes,
                   "budget_fraction": share, "budget_bytes": budget,
                   "min_feasible": c != "resident" and budget > parse_size(share, of=store.total_bytes),
                   "contender": c, "storage": storage, "median_ms": med, "p95_ms": p95(w.times[storage]),
                   "runs": len(w.times[storage]), "ratio_to_resident": med / statistics.median(resident.times[storage]),
                   "peak_rss_bytes": done["peak_rss"], "base_rss_bytes": w.ready["base_rss"],
                   "peak_rss_over_floor_bytes": done["peak_rss"] - floor_rss,
                   "storage_read_bytes_per_call": statistics.median(w.reads[storage]),
                   "bytes_loaded_per_call": statistics.median(w.loaded[storage]),
                   "max_abs_diff": w.ready["max_abs_diff"], "read_bandwidth_bytes_per_s": bandwidth}
            row.update({k: v for k, v in w.ready.items() if k not in ("ready", "max_abs_diff", "base_rss", "ready_rss")})
            row.update({k: v for k, v in done.items() if k in ("predicted_calibrated_ms", "read_scale", "reads_observed",
                                                                   "compute_scale", "read_ms_per_block")})
            if c.startswith("ours_"):
                compute_ms = statistics.median(resident.times["warm"])
                row["compute_ms"], row["io_ms"] = compute_ms, row["bytes_loaded_per_call"] / bandwidth * 1000
                row["physical_bound_ms"] = max(row["compute_ms"], row["io_ms"])
                row["ratio_to_bound"] = med / row["physical_bound_ms"]
            rows.append(row)
    for path in scratch.glob(f"{name}-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return rows


def print_tables(rows: list[dict]) -> None:
    from swapnet_core.sizes import format_bytes
    head = (f"{'model':24}{'budget':>8}{'contender':>12}{'warm ms':>9}{'p95':>8}{'cold ms':>9}{'p95':>8}"
            f"{'/resident':>10}{'peak RSS':>11}{'over floor':>11}{'read/call':>11}{'|diff|':>8}")
    print(head)
    print("-" * len(head))
    by = {(r["model"], r["budget_bytes"], r["contender"], r["storage"]): r for r in rows}
    for (model, budget, c, storage), w in by.items():
        if storage != "warm":
            continue
        k = by[(model, budget, c, "cold")]
        share = w["budget_fraction"] + ("*" if w["min_feasible"] else "")
        print(f"{model:24}{share:>8}{c:>12}{w['median_ms']:9.0f}{w['p95_ms']:8.0f}{k['median_ms']:9.0f}{k['p95_ms']:8.0f}"
              f"{w['ratio_to_resident']:10.2f}{format_bytes(w['peak_rss_bytes']):>11}"
              f"{format_bytes(w['peak_rss_over_floor_bytes']):>11}{format_bytes(k['storage_read_bytes_per_call']):>11}"
              f"{w['max_abs_diff']:8.0g}")
    print("medians (and p95) over the runs of one interleaved session; /resident with warm storage; peak RSS =")
    print("VmHWM during the runs; over floor = peak less the resident process's peak without its weights (what the")
    print("contender's weights cost; resident = its weight bytes); read/call = bytes")
    print("the process read from storage per cold forward (/proc/self/io); * = raised to the model's minimum budget")
    print()
    print(must_show(rows))


def must_show(rows: list[dict]) -> str:
    """The issue's headline ratios at 1/4 of the weights (or the model's minimum, if higher)."""
    from swapnet_core.sizes import format_bytes
    lines = [f"{'model':24}{'budget':>8}{'storage':>8}{'ours/resident':>15}{'accelerate/ours':>17}{'naive/ours':>12}"
             f"{'ours/bound':>12}{'bound by':>9}{'ours peak over floor':>21}{'budget':>11}"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for storage in ("warm", "cold"):
            at = {r["contender"]: r for r in rows if r["model"] == model and r["storage"] == storage
                  and r["budget_fraction"] == "1/4"}
            if not at:
                continue
            ours = at["ours_direct"]
            share = "1/4" + ("*" if ours["min_feasible"] else "")
            lines.append(f"{model:24}{share:>8}{storage:>8}{ours['ratio_to_resident']:15.2f}"
                         f"{at['accelerate']['median_ms'] / ours['median_ms']:17.2f}"
                         f"{at['naive']['median_ms'] / ours['median_ms']:12.2f}{ours['ratio_to_bound']:12.2f}"
                         f"{'compute' if ours['compute_ms'] >= ours['io_ms'] else 'I/O':>9}"
                         f"{format_bytes(ours['peak_rss_over_floor_bytes']):>21}{format_bytes(ours['budget_bytes']):>11}")
    lines.append("targets: ours/resident <= 1.10 where compute-bound; accelerate/ours >= 3; naive/ours >= 2 (ours = direct io)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small model, two budgets, all contenders")
    ap.add_argument("--repeat", type=int, help="warm forwards per contender (default 5, quick 3)")
    ap.add_argument("--cold-repeat", type=int, help="cold forwards per contender (default 3, quick 2)")
    ap.add_argument("--models", help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--shares", help="comma-separated budgets as shares of the weights (default " + ",".join(SHARES) + ")")
    ap.add_argument("--stores", default="stores/bench", help="where converted stores are kept between runs")
    ap.add_argument("--out", help="default bench/results/peers.json (peers_quick.json with --quick)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    import torch
    models = QUICK if args.quick else MODELS
    if args.models:
        models = {k: v for k, v in {**MODELS, **QUICK}.items() if k in args.models.split(",")}
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.cold_repeat = args.cold_repeat or (2 if args.quick else 3)
    out = Path(args.out or f"bench/results/peers{'_quick' if args.quick else ''}.json")
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="peers-", dir=args.stores if Path(args.stores).exists() else None) as tmp:
        for name, (ref, spec) in models.items():
            shares = args.shares.split(",") if args.shares else QUICK_SHARES if args.quick else SHARES
            rows += bench_model(name, ref, spec, shares, args, Path(tmp))
    print_tables(rows)
    import accelerate
    result = {"machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                          "cpus": os.cpu_count(), "torch": torch.__version__, "accelerate": accelerate.__version__,
                          "python": platform.python_version()},
              "quick": args.quick, "repeat": {"warm": args.repeat, "cold": args.cold_repeat},
              "cold_storage": "each worker drops its files with posix_fadvise(DONTNEED) before a cold forward; "
                              "/proc/sys/vm/drop_caches is not writable here",
              "seconds": time.time() - started, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    (out.parent / "latest.json").write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {out} and {out.parent / 'latest.json'} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
