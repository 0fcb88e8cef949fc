"""Calibration: the cost model's read rate and compute scaled to the reads and calls a running model
made, kept for the next plans of the store when asked (`recalibrate`, `swapnet run --calibrate`),
never by serving."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from swapnet_core import BlockStore, minimum_budget, open_swapped, plan_for, profile_for
from swapnet_core.scheduler import Scheduler
from swapnet_core.calibrate import (MIN_CALLS, MIN_READS, calibrated, compute_scale, fitted_reads, read_scale,
                                    recalibrate)
from swapnet_core.models import make_input
from swapnet_core.plan import predict
from swapnet_core.profile import PROFILE_NAME, ComputeProfile, IOProfile, load_profile

from conftest import swapnet_cli

X = "random:1x3x64x64"


@pytest.fixture
def store(convert_once, tmp_path):
    # a store of its own: calibration writes into profile.json, which other tests' plans read
    source = convert_once("torchvision:resnet18", X)
    shutil.copytree(source.path, tmp_path / "resnet18", ignore=shutil.ignore_patterns(PROFILE_NAME))
    return BlockStore(tmp_path / "resnet18")


def test_a_scale_makes_the_model_take_as_long_as_the_reads_did():
    io = IOProfile("direct", True, 0.001, 1e9)
    reads = [(4 << 20, 0.012), (1 << 20, 0.004)] * MIN_READS
    scale = read_scale(io, reads)
    fitted = io.scaled(scale)
    assert sum(fitted.read_seconds(n) for n, _t in reads) == pytest.approx(sum(t for _n, t in reads))
    assert fitted.latency_s / fitted.bandwidth_bytes_per_s == pytest.approx(io.latency_s / io.bandwidth_bytes_per_s
                                                                            * scale ** 2)
    assert fitted.scaled(2.0).scale == pytest.approx(scale * 2.0)
    assert read_scale(io, reads[:MIN_READS - 1]) is None  # too few to say
    with pytest.raises(ValueError):
        io.scaled(0.0)


def test_reads_of_sizes_far_apart_fit_latency_and_bandwidth_afresh():
    # a profile that saw no per-read latency (a network of large units gives the profiler no small read)
    io = IOProfile("direct", True, 0.0, 2e9)
    sizes = [1 << 20, 2 << 20, 4 << 20, 16 << 20]
    reads = [(n, 0.002 + n / 1e9) for n in sizes] * 4
    fitted = fitted_reads(io, reads)
    assert fitted.latency_s == pytest.approx(0.002) and fitted.bandwidth_bytes_per_s == pytest.approx(1e9)
    assert fitted.scale == pytest.approx(read_scale(io, reads)) and fitted.mode == "direct"
    # sizes within 4x cannot tell latency from bandwidth: one factor on the profile, as it was
    narrow = [(n, t) for n, t in reads if n <= 2 << 20]
    assert fitted_reads(io, narrow) == io.scaled(read_scale(io, narrow))
    assert fitted_reads(io, reads[:MIN_READS - 1]) is None


def test_a_compute_scale_makes_the_model_compute_as_long_as_the_calls_did():
    compute = ComputeProfile("cpu|x", 0.002, {1: 0.010, 2: 0.030, 5: 0.008}, 0.05, None, 5)
    calls = [0.100, 0.120, 0.500]  # the median, not a stray slow call
    scale = compute_scale(compute, calls)
    fitted = compute.scaled(scale)
    assert fitted.forward_s == pytest.approx(0.120)
    assert fitted.unit_s[2] / fitted.unit_s[1] == pytest.approx(3.0)  # the windows keep their ratio
    assert fitted.total_s == pytest.approx(0.05 * scale) and fitted.scaled(0.5).scale == pytest.approx(scale / 2)
    assert compute_scale(compute, calls[:MIN_CALLS - 1]) is None
    with pytest.raises(ValueError):
        compute.scaled(-1.0)


def test_a_running_model_calibrates_its_profile_and_the_next_plan_uses_it(store):
    budget = max(store.total_bytes // 4, minimum_budget(store))
    x = make_input(X, seed=1)
    measured = profile_for(store, budget, example_input=x)
    # a profile that believes storage and compute ten times faster than they are: what calibration undoes
    optimistic = replace(measured, io=replace(measured.io, bandwidth_bytes_per_s=measured.io.bandwidth_bytes_per_s * 10,
                                              latency_s=measured.io.latency_s / 10),
                         compute=replace(measured.compute, prologue_s=measured.compute.prologue_s / 10,
                                         unit_s={u: t / 10 for u, t in measured.compute.unit_s.items()}))
    plan, _ = plan_for(store, budget, "greedy", example_input=x, profile=optimistic)
    with open_swapped(store, budget, plan=plan) as model:
        with torch.no_grad():
            for _ in range(3):
                model(x)
        reads, calls = list(model.reads), list(model.computes)
        assert len(reads) >= MIN_READS and all(n > 0 and t > 0 for n, t in reads)
        assert len(calls) == 3 and all(t > 0 for t in calls)
        cal = recalibrate(model, optimistic)
    assert cal.io.scale > 2 and cal.compute.scale > 2  # it found both far slower than the profile said
    assert sum(cal.io.read_seconds(n) for n, _t in reads) == pytest.approx(sum(t for _n, t in reads), rel=0.25)
    assert cal.compute.forward_s == pytest.approx(sorted(calls)[1])
    assert predict(store, plan, cal).latency_s > predict(store, plan, optimistic).latency_s
    # kept next to the store, against the profiler's own measurements; the next plan is made with them
    cache = json.loads((store.path / PROFILE_NAME).read_text())
    entry, centry = cache["io"]["direct|cold"], cache["compute"][measured.compute.key]
    assert entry["bandwidth_bytes_per_s"] == measured.io.bandwidth_bytes_per_s  # the measurement stays
    assert entry["calibrated"] == {"latency_s": cal.io.latency_s, "bandwidth_bytes_per_s": cal.io.bandwidth_bytes_per_s,
                                   "scale": cal.io.scale}
    assert centry["unit_s"] == {str(u): t for u, t in measured.compute.unit_s.items()}
    assert centry["scale"] == cal.compute.scale
    again = load_profile(store, x)
    assert again.io == replace(measured.io, latency_s=cal.io.latency_s, bandwidth_bytes_per_s=cal.io.bandwidth_bytes_per_s,
                               scale=cal.io.scale)
    assert again.compute.scale == cal.compute.scale
    assert again.compute.forward_s == pytest.approx(measured.compute.forward_s * cal.compute.scale)
    assert calibrated(again, reads[:2]) is again  # too few reads change nothing


@pytest.mark.parametrize("damage", [{"calibrated": {"latency_s": "fast", "bandwidth_bytes_per_s": -1, "scale": None},
                                     "scale": "x"},
                                    {"calibrated": [1, 2, 3], "scale": float("nan")},
                                    {"calibrated": {"latency_s": 0.001, "bandwidth_bytes_per_s": float("inf"),
                                                    "scale": 1.0}, "scale": -2.0}])
def test_a_damaged_calibration_in_profile_json_leaves_the_measurement_standing(store, damage):
    x = make_input(X, seed=1)
    measured = load_profile(store, x)
    path = store.path / PROFILE_NAME
    cache = json.loads(path.read_text())
    (centry,) = cache["compute"].values()
    cache["io"]["direct|cold"]["calibrated"], centry["scale"] = damage["calibrated"], damage["scale"]
    path.write_text(json.dumps(cache))
    again = load_profile(store, x)
    assert again.io == measured.io and again.compute == measured.compute


def test_serving_leaves_the_profile_alone_so_the_same_budgets_are_admitted_again(store):
    """A kept scale changes how plans cut, and so what a shared arena admits: the scheduler never
    keeps one behind the user's back (a reconfigure with the same parameters must come up again)."""
    x = make_input(X, seed=1)
    budget = max(store.total_bytes // 3, minimum_budget(store))
    profile_for(store, budget, example_input=x)
    before = (store.path / PROFILE_NAME).read_bytes()
    for _ in range(2):
        with Scheduler(store.total_bytes, policy="fifo") as sched:
            sched.add_model("a", store, budget, example_input=x)
            sched.start()
            for _ in range(3):
                sched.submit("a", x).result(timeout=60)
            sched.set_budgets(budgets={"a": max(store.total_bytes // 4, minimum_budget(store))}).result(timeout=60)
        assert (store.path / PROFILE_NAME).read_bytes() == before


def test_swapnet_run_keeps_the_scale_only_when_asked(store):
    args = ("run", store.path, "--budget", "1/4", "--plan", "greedy", "--repeat", "3", "--json")
    r = swapnet_cli(*args)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["reads_observed"] >= MIN_READS and result["read_scale"] > 0
    assert result["predicted_calibrated_ms"] > 0 and result["calibration_kept"] is False
    assert result["calls_observed"] == 3 and result["compute_scale"] > 0
    cache = json.loads((store.path / PROFILE_NAME).read_text())
    (centry,) = cache["compute"].values()
    assert "calibrated" not in cache["io"]["direct|cold"] and centry.get("scale", 1.0) == 1.0  # as measured
    r = swapnet_cli(*args, "--calibrate")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    cache = json.loads((store.path / PROFILE_NAME).read_text())
    (centry,) = cache["compute"].values()
    assert result["calibration_kept"] is True
    assert cache["io"]["direct|cold"]["calibrated"]["scale"] == pytest.approx(result["read_scale"])
    assert centry["scale"] == pytest.approx(result["compute_scale"])
