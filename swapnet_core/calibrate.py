"""Calibration: the cost model fitted to the reads and the compute a running model really did.

The profiler measures once, after conversion; then storage drifts (an eMMC that heats up, another
process reading, a virtual disk's cache of what was read last), reads that overlap compute run on a
busier machine than the profiler's, and compute itself changes with clocks, thermal state and
neighbours (this project's shared two-core CPU ran the same float16 forward in 178 ms one hour and
in 370-520 ms the next). A SwapModel times every block it reads (`SwapModel.reads`) and the compute of
every call (`SwapModel.computes`). Reads of blocks whose sizes span enough (4x) fit read latency and
bandwidth afresh: the profiler samples runs of whole units, and a network of 9 MiB units gives it no
small read, so it may see no per-read latency at all, and plans then cut needlessly many blocks.
Otherwise, and for compute, one factor scales the profile (latency and bandwidth keep their ratio,
unit windows keep theirs), so plans still weigh block sizes and places the model never tried. Either
way the model's read and compute times for what it did match what they took; what is left to check
is the pipeline model: how much of the reads the compute hides.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Iterable

from .profile import ComputeProfile, IOProfile, Profile, fit_line, remember_calibration

MIN_READS = 8  # fewer reads say too little about the rate
MIN_CALLS = 3  # fewer calls say too little about the compute
DRIFT = 0.25  # a scale further than this from 1 is worth a new plan


def read_scale(io: IOProfile, reads: Iterable[tuple[int, float]]) -> float | None:
    """What the observed (bytes, seconds) reads took over what `io` predicts for them (1.0: as the
    profile says; 1.5: reads are half as fast again), or None from too few reads."""
    reads = list(reads)
    predicted = sum(io.read_seconds(n) for n, _t in reads)
    observed = sum(t for _n, t in reads)
    if len(reads) < MIN_READS or predicted <= 0 or observed <= 0:
        return None
    return observed / predicted


def fitted_reads(io: IOProfile, reads: Iterable[tuple[int, float]]) -> IOProfile | None:
    """`io` fitted to the observed (bytes, seconds) reads: latency and bandwidth afresh where their sizes
    tell them apart, else `io` scaled by `read_scale`; None from too few reads."""
    reads = list(reads)
    scale = read_scale(io, reads)
    if scale is None:
        return None
    line = fit_line(reads)
    if line is None:
        return io.scaled(scale)
    latency, bandwidth = line
    return replace(io, latency_s=latency, bandwidth_bytes_per_s=bandwidth, scale=io.scale * scale)


def compute_scale(compute: ComputeProfile, computes: Iterable[float]) -> float | None:
    """The median compute of the observed calls (seconds not spent waiting for a read) over what
    `compute` adds up to, or None from too few calls."""
    computes = list(computes)
    if len(computes) < MIN_CALLS or compute.forward_s <= 0:
        return None
    observed = statistics.median(computes)
    return observed / compute.forward_s if observed > 0 else None


def calibrated(profile: Profile, reads: Iterable[tuple[int, float]], computes: Iterable[float] = ()) -> Profile:
    """`profile` with its read model fitted to the observed reads and its compute scaled to the
    observed calls (each half as it is, from too few)."""
    io, cscale = fitted_reads(profile.io, reads), compute_scale(profile.compute, computes)
    if io is None and cscale is None:
        return profile
    return Profile(profile.compute if cscale is None else profile.compute.scaled(cscale), io or profile.io)


def drifted(scale: float | None, tolerance: float = DRIFT) -> bool:
    """Whether a scale says the plan was made for other storage (or another machine's compute)."""
    return scale is not None and abs(scale - 1.0) > tolerance


def recalibrate(model, profile: Profile, remember: bool = True) -> Profile:
    """`profile` (the one `model`'s plan was made with) fitted to the reads and calls the SwapModel
    made (`calibrated`); with `remember`, the calibration is kept in the store's profile.json, so the
    next plan of that store (any budget: a retune, a reconfigure, the next run) uses the rates found here."""
    cal = calibrated(profile, model.reads, model.computes)
    if remember and cal is not profile:
        remember_calibration(model.store, cal, model.device, model.io)
    return cal
