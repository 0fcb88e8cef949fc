"""Calibration: the cost model's read rate scaled to the reads a running model made, kept for the
next plans of the store when asked (`recalibrate`, `swapnet run --calibrate`), never by serving."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from swapnet_core import BlockStore, minimum_budget, open_swapped, plan_for, profile_for
from swapnet_core.scheduler import Scheduler
from swapnet_core.calibrate import MIN_READS, calibrated, read_scale, recalibrate
from swapnet_core.models import make_input
from swapnet_core.plan import predict
from swapnet_core.profile import PROFILE_NAME, IOProfile, load_profile

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


def test_a_running_model_calibrates_its_profile_and_the_next_plan_uses_it(store):
    budget = max(store.total_bytes // 4, minimum_budget(store))
    x = make_input(X, seed=1)
    measured = profile_for(store, budget, example_input=x)
    # a profile that believes storage ten times faster than it is: what a calibration must undo
    optimistic = replace(measured, io=replace(measured.io, bandwidth_bytes_per_s=measured.io.bandwidth_bytes_per_s * 10,
                                              latency_s=measured.io.latency_s / 10))
    plan, _ = plan_for(store, budget, "greedy", example_input=x, profile=optimistic)
    with open_swapped(store, budget, plan=plan) as model:
        with torch.no_grad():
            for _ in range(3):
                model(x)
        reads = list(model.reads)
        assert len(reads) >= MIN_READS and all(n > 0 and t > 0 for n, t in reads)
        cal = recalibrate(model, optimistic)
    assert cal.io.scale > 2  # it found the reads far slower than the profile said
    assert sum(cal.io.read_seconds(n) for n, _t in reads) == pytest.approx(sum(t for _n, t in reads))
    assert predict(store, plan, cal).latency_s > predict(store, plan, optimistic).latency_s
    # kept next to the store, against the profiler's own measurement; the next plan is made with it
    entry = json.loads((store.path / PROFILE_NAME).read_text())["io"]["direct|cold"]
    assert entry["bandwidth_bytes_per_s"] == measured.io.bandwidth_bytes_per_s and entry["scale"] == cal.io.scale
    again = load_profile(store, x)
    assert again.io.scale == cal.io.scale
    assert again.io.read_seconds(8 << 20) == pytest.approx(measured.io.read_seconds(8 << 20) * cal.io.scale)
    assert calibrated(again, reads[:2]) is again  # too few reads change nothing


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
    entry = json.loads((store.path / PROFILE_NAME).read_text())["io"]["direct|cold"]
    assert entry.get("scale", 1.0) == 1.0  # as the profiler measured it
    r = swapnet_cli(*args, "--calibrate")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    entry = json.loads((store.path / PROFILE_NAME).read_text())["io"]["direct|cold"]
    assert result["calibration_kept"] is True and entry["scale"] == pytest.approx(result["read_scale"])
