"""Reliability under faults, overload and bad input.

In-process scheduler tests (fast, no ROS): budgets retuned while jobs run, a store that goes bad and
comes back. Then the perception process over real DDS: budget parameters with bad values and rapid
toggling under load, a store truncated/corrupted and restored while serving, overload counted in the
status and /diagnostics, and SIGTERM / SIGINT during inference (exit time and code, no stale FastDDS
shared memory, no temp files).
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from swapnet_core import BudgetError, BudgetTooSmallError, load_resident, minimum_budget
from swapnet_core.errors import StoreCorruptError, StoreTruncatedError
from swapnet_core.models import call_model, make_input
from swapnet_core.scheduler import Scheduler

X = "random:1x3x64x64"
MB = 1 << 20


# -- the scheduler alone -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(convert_once):
    return {"a": convert_once("torchvision:resnet18", X), "b": convert_once("torchvision:mobilenet_v3_small", X)}


def test_budgets_retuned_while_jobs_run_apply_whole_jobs(stores):
    """A thread retunes (valid and invalid values) as fast as it can while jobs run: every job runs
    under one plan (its resident peak within the budget it started with), outputs stay bit-identical,
    no job or accepted value is lost, refused values change nothing."""
    levels = {n: (minimum_budget(s) + (1 << 20), max(s.total_bytes // 2, minimum_budget(s) + (4 << 20)))
              for n, s in stores.items()}
    total = sum(hi for _, hi in levels.values()) + (8 << 20)
    sched = Scheduler(total, policy="edf")
    for n, s in stores.items():
        sched.add_model(n, s, levels[n][1], example_input=make_input(X))
    expected = {}
    with torch.no_grad():
        for n, s in stores.items():
            resident = load_resident(s)
            expected[n] = [call_model(resident, s.call, make_input(X, seed=k)) for k in range(3)]
    sched.start()
    try:
        check_retunes(sched, stores, levels, total, expected)
    finally:
        sched.shutdown()


def check_retunes(sched, stores, levels, total, expected):
    stop = threading.Event()
    accepted, refused, last = [], [], {}

    def toggler():
        rng = random.Random(1)
        while not stop.is_set():
            n = rng.choice(list(stores))
            value = levels[n][rng.randrange(2)]
            try:
                if rng.random() < 0.2:  # refused: below the minimum, over the total, not a size
                    bad = rng.choice([minimum_budget(stores[n]) - 4096, total + (1 << 20), float("nan"), -5, 0])
                    sched.set_budgets(budgets={n: bad})
                    raise AssertionError(f"accepted {bad!r}")
                accepted.append(sched.set_budgets(budgets={n: value}))
                last[n] = value
            except (BudgetError, ValueError) as e:
                refused.append(str(e))
            time.sleep(0.01)

    thread = threading.Thread(target=toggler)
    thread.start()
    try:
        futures = []
        for k in range(12):
            batch = {n: sched.submit(n, make_input(X, seed=k % 3)) for n in stores}
            for n, f in batch.items():
                futures.append((n, k % 3, f))
                out = f.result(timeout=60)  # waits: none is replaced, so none may be dropped
                assert torch.equal(out, expected[n][k % 3]), f"{n} job {k}: output differs from the resident model"
    finally:
        stop.set()
        thread.join()
    for f in accepted:
        assert f.result(timeout=60) is True  # every accepted value was applied, none superseded away
    m = sched.metrics()["models"]
    for n in stores:
        assert m[n]["budget_bytes"] == last.get(n, levels[n][1])  # the last accepted value, not a refused one
        assert m[n]["drops"] == 0 and m[n]["errors"] == 0 and m[n]["jobs_done"] == 12
    records = list(sched.records)
    assert len(records) == 24 and all(r.ok for r in records)
    for r in records:
        assert r.budget in levels[r.model], r
        assert 0 < r.peak_resident_bytes <= r.budget, r
    assert len({r.plan_epoch for r in records}) >= 5, "the retunes never landed between jobs"
    assert len(accepted) >= 20 and len(refused) >= 3, (len(accepted), len(refused))
    assert any("minimum" in e for e in refused) and any("positive finite" in e for e in refused)
    assert sched.arena_bytes <= total  # the arena holds the shares, not the whole total
    print(f"\nretune under load: {len(accepted)} accepted, {len(refused)} refused, "
          f"{len({r.plan_epoch for r in records})} plans over 24 jobs")


def private_copy(store, disk_dir, name):
    from swapnet_core import BlockStore

    dst = disk_dir / f"fault-{name}-{os.getpid()}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(store.path, dst)
    return BlockStore(dst)


def swapped_unit(sched, name):
    """A unit of the model's last swapped block: read on every job, unlike the resident prefix."""
    swap = sched._models[name].swap
    block = [b for b in swap.plan.blocks if b.in_sequence and not b.resident][-1]
    return swap.store.units[block.units[0]]


def test_a_bad_store_fails_its_model_only_and_recovers_when_restored(stores, disk_dir):
    a = private_copy(stores["a"], disk_dir, "a")
    budgets = {"a": minimum_budget(a) + (1 << 20), "b": minimum_budget(stores["b"]) + (1 << 20)}
    sched = Scheduler(sum(budgets.values()) + (1 << 20))
    sched.add_model("a", a, budgets["a"], example_input=make_input(X))
    sched.add_model("b", stores["b"], budgets["b"], example_input=make_input(X))
    sched.start()
    path = Path(a.weights_path)
    original = path.read_bytes()
    unit = swapped_unit(sched, "a")
    try:
        good = sched.submit("a", make_input(X, seed=1)).result(timeout=60)
        for damage, error in (("corrupt", StoreCorruptError), ("truncate", StoreTruncatedError)):
            with open(path, "r+b") as f:  # same inode, new mtime: the reader re-verifies
                if damage == "corrupt":
                    f.seek(unit.offset + unit.nbytes // 2)
                    f.write(bytes(64))
                else:
                    f.truncate(unit.offset)
            for _ in range(2):
                e = sched.submit("a", make_input(X, seed=1)).exception(timeout=60)
                assert isinstance(e, error), repr(e)
                assert sched.submit("b", make_input(X)).result(timeout=60) is not None  # the other model serves
            m = sched.metrics()["models"]
            assert m["a"]["failing"] and error.__name__ in m["a"]["last_error"] and str(path) in m["a"]["last_error"]
            if damage == "corrupt":
                assert unit.name in m["a"]["last_error"]
            assert not m["b"]["failing"] and m["b"]["errors"] == 0
            path.write_bytes(original)  # restored in place: the same SwapModel recovers
            assert torch.equal(sched.submit("a", make_input(X, seed=1)).result(timeout=60), good)
            assert not sched.metrics()["models"]["a"]["failing"]
        assert sched.metrics()["models"]["a"]["errors"] == 4
        assert sched._worker.is_alive()
    finally:
        sched.shutdown()
