"""Calibration: the cost model's read time fitted to the reads a running model really made.

The profiler measures the read path once, after conversion; storage then drifts (an eMMC that heats
up, another process reading, a virtual disk's cache of what was read last), and reads that overlap
compute run on a busier machine than the profiler's. A SwapModel times every block it reads
(`SwapModel.reads`); here those times scale the profile's read model by one factor: latency and
bandwidth keep their ratio, so plans still weigh the per-read cost at block sizes the model never
read, and the model's read time for the reads observed equals what they took.
"""

from __future__ import annotations

from typing import Iterable

from .profile import IOProfile, Profile, remember_read_scale

MIN_READS = 8  # fewer reads say too little about the rate
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


def calibrated(profile: Profile, reads: Iterable[tuple[int, float]]) -> Profile:
    """`profile` with its read model scaled to the observed reads (as it is, from too few)."""
    scale = read_scale(profile.io, reads)
    return profile if scale is None else Profile(profile.compute, profile.io.scaled(scale))


def drifted(scale: float | None, tolerance: float = DRIFT) -> bool:
    """Whether reads run far enough from the profile's rate that the plan was made for other storage."""
    return scale is not None and abs(scale - 1.0) > tolerance


def recalibrate(model, profile: Profile, remember: bool = True) -> Profile:
    """`profile` (the one `model`'s plan was made with) with its read model scaled to the reads the
    SwapModel made; with `remember`, the scale is kept in the store's profile.json, so the next plan of
    that store (any budget: a retune, a reconfigure, the next run) reads at the rate found here."""
    cal = calibrated(profile, model.reads)
    if remember and cal is not profile:
        remember_read_scale(model.store, cal.io, model.device, model.io)
    return cal
