"""Profiler: what the planner needs to predict a plan's latency.

Per unit: compute time (median over runs, on the target device and thread count) of its window (from
its pre-hook to the next unit's, the same windows the runtime swaps at), plus the time before the
first unit (the "prologue", which overlaps the first read). Per model and input: the activation peak.
Per io mode: read latency and bandwidth of the real read path (read + checksum) on the store file,
cold (page cache dropped first) and warm. Results are cached next to the store in profile.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .io import BlockReader
from .memory import ArenaMemory, HostBuffer, Stager
from .models import call_model, map_inputs
from .store import BlockStore

log = logging.getLogger("swapnet_core.profile")
PROFILE_NAME = "profile.json"
PROFILE_VERSION = 5  # bump when what is measured changes: older caches are measured again
READ_SIZES = (256 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20)  # block sizes plans use
# Reads are sampled up to this size even under a smaller budget (a transient buffer, freed before the
# model is built): the profile is cached for every later budget, and a fit over reads of one size
# (half of a sliced store's minimum, ~1 MiB) sees no per-read latency, so plans cut far too many blocks.
IO_SAMPLE_MIN_BYTES = 32 << 20
READ_PLACES = (0.2, 0.5, 0.8)  # where in the file runs are read: storage is not uniform


@dataclass
class ComputeProfile:
    key: str
    prologue_s: float
    unit_s: dict[int, float]  # unit index -> median seconds per call of its windows
    total_s: float  # median forward time of the resident model
    activation_peak_bytes: int | None
    runs: int
    scale: float = 1.0  # calibration: the running model computes this many times the profiler's time

    @property
    def forward_s(self) -> float:
        """The compute a forward adds up to in the cost model (what calibration compares with)."""
        return self.prologue_s + sum(self.unit_s.values())

    def scaled(self, scale: float) -> "ComputeProfile":
        """This compute profile with every window taking `scale` times as long."""
        if not scale > 0:
            raise ValueError(f"a compute scale must be positive, got {scale!r}")
        return replace(self, prologue_s=self.prologue_s * scale, unit_s={u: t * scale for u, t in self.unit_s.items()},
                       total_s=self.total_s * scale, scale=self.scale * scale)


@dataclass
class IOProfile:
    mode: str
    cold: bool
    latency_s: float
    bandwidth_bytes_per_s: float
    samples: list[tuple[int, float]] = field(default_factory=list)  # (bytes, median seconds)
    # calibration (swapnet_core.calibrate): the reads it was fitted to took this many times what the
    # profiler's measurement predicts for them
    scale: float = 1.0

    def read_seconds(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s

    def scaled(self, scale: float) -> "IOProfile":
        """This read model with every read taking `scale` times as long (`scale` keeps the product)."""
        if not scale > 0:
            raise ValueError(f"a read scale must be positive, got {scale!r}")
        return replace(self, latency_s=self.latency_s * scale, bandwidth_bytes_per_s=self.bandwidth_bytes_per_s / scale,
                       scale=self.scale * scale)


@dataclass
class Profile:
    compute: ComputeProfile
    io: IOProfile


def compute_key(device: torch.device | str, x: torch.Tensor | tuple[torch.Tensor, ...]) -> str:
    device = torch.device(device)
    where = device.type if device.type != "cuda" else f"{device}|{torch.cuda.get_device_name(device)}"
    shapes = "+".join(f"{t.dtype}|{'x'.join(map(str, t.shape))}" for t in (x if isinstance(x, tuple) else (x,)))
    return f"{where}|{shapes}|threads={torch.get_num_threads()}"


def io_key(io_mode: str, io: str, device: torch.device | str) -> str:
    """What a read costs depends on the io mode, cache state and where it lands (the host, a
    Jetson's mapped memory, or a discrete GPU behind a copy)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"{io_mode}|{'warm' if io == 'mmap' else 'cold'}"
    kind = "unified" if torch.cuda.get_device_properties(device).is_integrated else "discrete"
    return f"{io_mode}|cold|{kind}|{torch.cuda.get_device_name(device)}"


def profile_compute(store: BlockStore, x: torch.Tensor, device: str = "cpu", runs: int = 5,
                    budget_bytes: int | None = None) -> ComputeProfile:
    """Time every unit window (median of `runs` forwards after one warm-up). The model runs swapped
    within `budget_bytes` (default: the smallest budget), reading on demand with no prefetch, so
    profiling needs no more memory than running; the read time is taken out of each window."""
    from .plan import minimum_budget, plan_greedy
    from .runtime import SwapModel  # here: the planner imports this module's types, the runtime the planner's

    device = torch.device(device)
    budget = max(minimum_budget(store, 0), min(budget_bytes or 0, store.total_bytes))
    model = SwapModel(store, plan_greedy(store, budget, prefetch=0), device=device)
    modules = dict(model.module.named_modules())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    marks: list[tuple[int, float, float]] = []  # (unit, time, stall seconds so far)

    def enter(index):
        def hook(_m, _a):  # runs after the runtime's own hook has made the unit resident
            sync()
            marks.append((index, time.perf_counter(), model.stats.stall_seconds))
        return hook

    handles = [modules[u.name].register_forward_pre_hook(enter(u.index)) for u in store.units if not u.pinned]
    per_run: list[dict[int, float]] = []
    prologues, totals = [], []
    x = map_inputs(x, lambda t: t.to(device))
    try:
        call_model(model, store.call, x)  # warm-up: kernels, allocator, arena pages
        peak = _activation_peak(lambda: call_model(model, store.call, x), device)
        for _ in range(runs):
            marks.clear()
            stall0, start = model.stats.stall_seconds, time.perf_counter()
            call_model(model, store.call, x)
            sync()
            end, stall_end = time.perf_counter(), model.stats.stall_seconds
            times: dict[int, float] = {}
            for (unit, t0, s0), (_n, t1, s1) in zip(marks, marks[1:] + [(None, end, stall_end)]):
                times[unit] = times.get(unit, 0.0) + (t1 - t0) - (s1 - s0)
            per_run.append(times)
            first_t, first_s = (marks[0][1], marks[0][2]) if marks else (end, stall_end)
            prologues.append(first_t - start - (first_s - stall0))
            totals.append(end - start - (stall_end - stall0))
    finally:
        for h in handles:
            h.remove()
        model.close()
    units = {u for run in per_run for u in run}
    unit_s = {u: statistics.median(run.get(u, 0.0) for run in per_run) for u in units}
    return ComputeProfile(compute_key(device, x), statistics.median(prologues), unit_s,
                          statistics.median(totals), peak, runs)


def _activation_peak(run, device: torch.device) -> int | None:
    """Peak memory a forward adds on top of the loaded model: CUDA allocator stats, or VmHWM on Linux."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _status_bytes("VmRSS")
        run()
        return max(_status_bytes("VmHWM") - base, 0)
    except OSError:
        return None


def _status_bytes(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field_name} in /proc/self/status")


def profile_io(store: BlockStore, mode: str = "direct", cold: bool = True, repeats: int = 3,
               max_bytes: int | None = None, device: str | torch.device = "cpu") -> IOProfile:
    """Fit read time = latency + bytes / bandwidth over reads of runs of consecutive units, as the
    runtime reads blocks: issued on an I/O thread and awaited, with the reader's reads in flight,
    into arena memory of the device (on a discrete GPU the copy from staging counts too). Each size
    is read at several places in the file (each run at most max_bytes, so that profiling stays within
    the budget); a sample is the median time per byte-size."""
    reader = BlockReader(store.weights_path, mode, verify="never")  # the steady state: units checked once
    units = store.units
    samples = []
    size = min(max(READ_SIZES), units[-1].end - units[0].offset, max_bytes or max(READ_SIZES))
    device = torch.device(device)
    buf = HostBuffer(size) if device.type == "cpu" else ArenaMemory(size, device)
    stager = None if device.type == "cpu" else Stager(buf, max([size] + [u.nbytes for u in units]))
    io = ThreadPoolExecutor(1, thread_name_prefix="swapnet-profile-io")

    def read(run):
        if mode == "mmap":
            reader.map(run).close()
        elif stager is None:
            reader.read_into(run, buf.view)
        else:
            copied = stager.fill(reader, run, 0)
            if copied is not None:
                copied.synchronize()

    try:
        for size in READ_SIZES:
            runs = {(r[0].index, r[-1].index): r for r in (_units_spanning(units, size, at) for at in READ_PLACES)
                    if r[-1].end - r[0].offset <= buf.nbytes}
            if not runs:
                continue
            per_byte, spans = [], []
            for run in runs.values():
                span = run[-1].end - run[0].offset
                for _ in range(repeats):
                    if cold:
                        _drop_cache(store.weights_path)
                    t = time.perf_counter()
                    io.submit(read, run).result()
                    per_byte.append((time.perf_counter() - t) / span)
                    spans.append(span)
            span = int(statistics.median(spans))
            samples.append((span, statistics.median(per_byte) * span))
    finally:
        io.shutdown(wait=True)
        reader.close()
        if stager is not None:
            stager.close()
        buf.close()
    samples = sorted(set(samples))
    latency, bandwidth = _fit(samples)
    return IOProfile(mode, cold, latency, bandwidth, samples)


def _units_spanning(units, size: int, at: float = 1 / 3):
    """A run of consecutive units of about `size` bytes, starting near `at` of the file's units."""
    start = int(len(units) * at)
    for i in range(start, -1, -1):
        run = []
        for u in units[i:]:
            run.append(u)
            if run[-1].end - run[0].offset >= size:
                return run
    return units


def _drop_cache(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _fit(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """(latency, bandwidth) of read time = latency + bytes / bandwidth; all of it bandwidth (the largest
    reads' rate) where the samples cannot tell a per-read latency."""
    line = fit_line(samples)
    if line is not None:
        return line
    n, t = _medians_by_size(samples)
    return (0.0, _largest_rate(n, t)) if n else (0.0, 1e9)


def fit_line(samples: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(latency, bandwidth) fitted to (bytes, seconds) reads, medians per size, or None where they
    cannot tell latency from bandwidth: sizes within 4x of each other, or a slope that contradicts
    the largest reads' rate (noisy storage: 0.14 GB/s fitted from reads that each ran at 2 GB/s)."""
    n, t = _medians_by_size(samples)
    if not n or n[-1] < 4 * n[0]:
        return None
    mean_n, mean_t = statistics.fmean(n), statistics.fmean(t)
    slope = sum((a - mean_n) * (b - mean_t) for a, b in zip(n, t)) / sum((a - mean_n) ** 2 for a in n)
    if slope <= 0 or 1.0 / slope < _largest_rate(n, t) / 2:
        return None
    return max(mean_t - slope * mean_n, 0.0), 1.0 / slope


def _medians_by_size(samples: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    by_size: dict[int, list[float]] = {}
    for n, t in samples:
        by_size.setdefault(n, []).append(t)
    n = sorted(by_size)
    return n, [statistics.median(by_size[k]) for k in n]


def _largest_rate(n: list[int], t: list[float]) -> float:
    return statistics.median(k / max(v, 1e-9) for k, v in zip(n[len(n) // 2:], t[len(t) // 2:]))


# -- cache next to the store ---------------------------------------------------------------------

def load_profile(store: BlockStore, x: torch.Tensor, device: str = "cpu", io: str = "direct",
                 runs: int = 5, refresh: bool = False, budget_bytes: int | None = None) -> Profile:
    """The cached profile for (device, dtype, input shape, threads) and io mode, measured if missing
    (compute within budget_bytes of weight memory where given; reads sampled up to IO_SAMPLE_MIN_BYTES
    at least, in a buffer freed before any model is built)."""
    path = store.path / PROFILE_NAME
    cache = _read_cache(path, store.store_id)
    ckey = compute_key(device, x)
    ikey = _io_cache_key(store, io, device)
    changed = False
    if refresh or ckey not in cache["compute"]:
        log.info("profiling compute of %s for %s", store.ref, ckey)
        cache["compute"][ckey] = asdict(profile_compute(store, x, device, runs, budget_bytes))
        changed = True
    if refresh or ikey not in cache["io"]:
        cache["io"][ikey] = asdict(profile_io(store, io, cold=io != "mmap", device=device,
                                              max_bytes=max(budget_bytes // 2, IO_SAMPLE_MIN_BYTES)
                                              if budget_bytes else None))
        changed = True
    if changed:
        _write_cache(path, cache)
    c = cache["compute"][ckey]
    compute = ComputeProfile(c["key"], c["prologue_s"], {int(k): v for k, v in c["unit_s"].items()}, c["total_s"],
                             c["activation_peak_bytes"], c["runs"])
    i = cache["io"][ikey]
    measured = IOProfile(i["mode"], i["cold"], i["latency_s"], i["bandwidth_bytes_per_s"], [tuple(s) for s in i["samples"]])
    cscale = _positive(c.get("scale"))
    return Profile(compute.scaled(cscale) if cscale not in (None, 1.0) else compute,
                   _with_calibration(measured, i.get("calibrated")))


def _with_calibration(measured: IOProfile, kept) -> IOProfile:
    """The read model kept by calibration beside the measured one, where it is well formed (what a
    hand-edited or damaged file holds instead is ignored: the measurement stands)."""
    if not isinstance(kept, dict):
        return measured
    latency, bandwidth, scale = (kept.get(k) for k in ("latency_s", "bandwidth_bytes_per_s", "scale"))
    if _positive(bandwidth) is None or _positive(scale) is None or (latency != 0 and _positive(latency) is None):
        return measured
    return replace(measured, latency_s=float(latency), bandwidth_bytes_per_s=float(bandwidth), scale=float(scale))


def _positive(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def remember_calibration(store: BlockStore, profile: Profile, device: str | torch.device = "cpu", io: str = "direct") -> None:
    """Keep a calibrated profile in profile.json beside the profiler's measurements (the compute's
    scale, the read model's latency and bandwidth), so the next plan of this store, at any budget,
    reads and computes at the rates the running model found."""
    path = store.path / PROFILE_NAME
    cache = _read_cache(path, store.store_id)
    compute, reads = cache["compute"].get(profile.compute.key), cache["io"].get(_io_cache_key(store, io, device))
    if compute is not None:  # else never measured: nothing to calibrate
        compute["scale"] = profile.compute.scale
    if reads is not None:
        reads["calibrated"] = {"latency_s": profile.io.latency_s, "scale": profile.io.scale,
                               "bandwidth_bytes_per_s": profile.io.bandwidth_bytes_per_s}
    if compute is not None or reads is not None:
        _write_cache(path, cache)


def _io_cache_key(store: BlockStore, io: str, device: str | torch.device) -> str:
    probe = BlockReader(store.weights_path, io)
    io_mode = probe.effective_mode
    probe.close()
    return io_key(io_mode, io, device)


def _read_cache(path: Path, store_id: str) -> dict:
    try:
        data = json.loads(path.read_text())
        if (data.get("store_id") == store_id and data.get("version") == PROFILE_VERSION
                and isinstance(data.get("compute"), dict) and isinstance(data.get("io"), dict)):
            return data
    except (OSError, ValueError):
        pass
    return {"store_id": store_id, "version": PROFILE_VERSION, "compute": {}, "io": {}}


def _write_cache(path: Path, cache: dict) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".profile.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:  # a read-only store still plans; it just profiles again next time
        log.warning("cannot cache the profile next to the store (%s)", e)
