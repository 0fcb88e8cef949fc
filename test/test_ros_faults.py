"""Reliability under faults, overload and bad input.

In-process scheduler tests (fast, no ROS): budgets retuned while jobs run, a store that goes bad and
comes back. Then the perception process over real DDS: budget parameters with bad values and rapid
toggling under load, a store truncated/corrupted and restored while serving, overload counted in the
status and /diagnostics, and SIGTERM / SIGINT during inference (exit time and code, no stale FastDDS
shared memory, no temp files).
"""

import ctypes
import gc
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from safetensors.torch import save_file

from swapnet_core import BudgetError, convert, load_resident, minimum_budget
from swapnet_core.errors import StoreCorruptError, StoreMismatchError, StoreTruncatedError
from swapnet_core.models import call_model, make_input
from swapnet_core.scheduler import Scheduler

X = "random:1x3x64x64"
MB = 1 << 20


# -- the scheduler alone -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(convert_once):
    # "a" unsliced: re-converted below with the network's own checkpoint keys and the same layout
    return {"a": convert_once("torchvision:resnet18", X, slice_bytes="off"),
            "b": convert_once("torchvision:mobilenet_v3_small", X)}


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
        for k in range(8):
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
        assert m[n]["drops"] == 0 and m[n]["errors"] == 0 and m[n]["jobs_done"] == 8
    records = list(sched.records)
    assert len(records) == 16 and all(r.ok for r in records)
    for r in records:
        assert r.budget in levels[r.model], r
        assert 0 < r.peak_resident_bytes <= r.budget, r
    assert len({r.plan_epoch for r in records}) >= 5, "the retunes never landed between jobs"
    assert len(accepted) >= 20 and len(refused) >= 3, (len(accepted), len(refused))
    assert any("minimum" in e for e in refused) and any("positive finite" in e for e in refused)
    assert sched.arena_bytes <= total  # the arena holds the shares, not the whole total
    print(f"\nretune under load: {len(accepted)} accepted, {len(refused)} refused, "
          f"{len({r.plan_epoch for r in records})} plans over 16 jobs")


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
        # corrupt again, then re-convert the folder (a new file, same layout): the reader follows it
        with open(path, "r+b") as f:
            f.seek(unit.offset + unit.nbytes // 2)
            f.write(bytes(64))
        assert isinstance(sched.submit("a", make_input(X, seed=1)).exception(timeout=60), StoreCorruptError)
        fresh = convert(a.ref, a.path, input_spec=X, force=True, progress=False, slice_bytes="off")
        got = sched.submit("a", make_input(X, seed=1)).result(timeout=60)
        with torch.no_grad():
            assert torch.equal(got, call_model(load_resident(fresh), fresh.call, make_input(X, seed=1)))
        assert not sched.metrics()["models"]["a"]["failing"]
        # re-converted with other weights (same layout), then re-planned: the rebuilt model must use the
        # new manifest's checksums, not those the scheduler read at add_model
        weights = disk_dir / "a-other.safetensors"
        save_file({k: v + 0.5 if v.is_floating_point() else v.clone()
                   for k, v in load_resident(fresh).state_dict().items()}, str(weights))
        other = convert(a.ref, a.path, input_spec=X, weights=weights, force=True, progress=False, slice_bytes="off")
        with torch.no_grad():
            want = call_model(load_resident(other), other.call, make_input(X, seed=1))
        assert not torch.equal(want, got)
        assert torch.equal(sched.submit("a", make_input(X, seed=1)).result(timeout=60), want)
        sched.set_budgets(budgets={"a": budgets["a"] + (MB // 2)}).result(timeout=60)
        assert torch.equal(sched.submit("a", make_input(X, seed=1)).result(timeout=60), want)
        assert not sched.metrics()["models"]["a"]["failing"]
        # re-converted as another network: refused, counted, the other model unaffected
        convert("torchvision:squeezenet1_1", a.path, input_spec=X, force=True, progress=False)
        e = sched.submit("a", make_input(X, seed=1)).exception(timeout=60)
        assert isinstance(e, StoreMismatchError) and "layout" in str(e), repr(e)
        assert sched.submit("b", make_input(X)).result(timeout=60) is not None
        m = sched.metrics()["models"]
        assert m["a"]["failing"] and "StoreMismatchError" in m["a"]["last_error"] and not m["b"]["failing"]
        assert sched._worker.is_alive()
    finally:
        sched.shutdown()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_model_that_cannot_be_built_leaks_nothing_per_job(stores, disk_dir):
    """A byte flipped in a unit the model reads when it is built (here every unit: the budget holds the
    whole model) makes every rebuild fail; the scheduler retries at each job. 200 such jobs leave the
    open descriptors, threads and RSS where they were (a leaked reader per job hit the fd limit in
    minutes at camera rates)."""
    a = private_copy(stores["a"], disk_dir, "leak")
    sched = Scheduler(a.total_bytes + (1 << 20))
    sched.add_model("a", a, a.total_bytes, example_input=make_input(X))
    sched.start()
    try:
        assert sched.submit("a", make_input(X)).result(timeout=60) is not None
        unit = a.units[len(a.units) // 2]
        with open(a.weights_path, "r+b") as f:
            f.seek(unit.offset + unit.nbytes // 2)
            f.write(bytes(64))
        sched.set_budgets(budgets={"a": a.total_bytes + 4096}).result(timeout=60)  # a rebuild: now it fails
        proc = psutil.Process()

        def fail(n):
            for _ in range(n):
                e = sched.submit("a", make_input(X)).exception(timeout=60)
                assert isinstance(e, StoreCorruptError), repr(e)

        def settled_rss():  # a failed job's exception and traceback form cycles: count what outlives a
            gc.collect()    # collection, with freed heap pages handed back
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            return proc.memory_info().rss

        fail(150)  # warm-up: the allocator's arenas grow for the first ~200 jobs (+16-32 MiB), then stay
        fds, threads, rss = open_fds(), threading.active_count(), settled_rss()
        fail(200)
        assert open_fds() - fds <= 2, f"{open_fds() - fds} descriptors more after 200 failing jobs"
        assert threading.active_count() - threads <= 1
        grown = settled_rss() - rss
        assert grown < 8 * MB, f"RSS grew {grown / MB:.1f} MiB over 200 failing jobs"  # a leaked model: ~16 MiB
        assert sched.metrics()["models"]["a"]["errors"] == 351  # the failed rebuild at the retune, then every job
    finally:
        sched.shutdown()


# -- the perception process over real DDS ------------------------------------------------------------
from conftest import call, rclpy_reports_publisher_gid, spin_for, start_perception, stop_process, wait_for  # noqa: E402

PARAMS = {  # two small networks: one can fail while the other serves
    "swap_coordinator": {"ros__parameters": {"total_budget_mb": 20.0, "policy": "edf", "autostart": True,
                                             "status_period_s": 0.25, "models": ["detection", "segmentation"]}},
    "detection": {"ros__parameters": {"task": "detection", "model": "torchvision:ssdlite320_mobilenet_v3_large",
                                      "budget_mb": 6.0, "score_threshold": 0.0, "input_size": [160, 160]}},
    "segmentation": {"ros__parameters": {"task": "segmentation", "model": "torchvision:lraspp_mobilenet_v3_large",
                                         "budget_mb": 6.0, "input_size": [120, 160], "publish_color": False}},
}
SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def store_dir(ros_store_dir):
    return ros_store_dir


def params_for(store_dir):
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["swap_coordinator"]["ros__parameters"]["store_dir"] = str(store_dir)
    return params


class Client:
    """A test node in this process: publishes frames, collects results, status and diagnostics."""

    def __init__(self, proc):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import GetParameters, SetParameters
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from swapnet_ros.msg import CoordinatorStatus, Detection2DArray

        self.proc = proc
        self.node = node = rclpy.create_node(f"fault_client_{proc.pid}")
        self.pub = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.results = {"detection": [], "segmentation": []}
        node.create_subscription(Detection2DArray, "/detection/detections",
                                 lambda m: self.results["detection"].append(time.monotonic()), 50)
        node.create_subscription(Image, "/segmentation/mask", lambda m: self.results["segmentation"].append(time.monotonic()), 50)
        self.status, self.diag = [], []
        node.create_subscription(CoordinatorStatus, "/swap_coordinator/status", self.status.append, 50)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 50)
        names = ("detection", "segmentation", "swap_coordinator")
        self.set_params = {n: node.create_client(SetParameters, f"/{n}/set_parameters") for n in names}
        self.get_params = {n: node.create_client(GetParameters, f"/{n}/get_parameters") for n in names}
        self.get_state = None
        self.k = 0

    def spin(self, seconds):
        spin_for(self.node, seconds)

    def frame(self, h=120, w=160):
        from swapnet_ros.image_codec import make_image

        self.k += 1
        rgb = np.random.default_rng(self.k).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        msg = make_image(None, rgb, "rgb8")
        msg.header.stamp = self.node.get_clock().now().to_msg()
        return msg

    def pump(self, rate_hz, seconds, until=None):
        """Publish frames at rate_hz while spinning; stops early when until() holds. Returns frames sent."""
        sent, period, end = 0, 1.0 / rate_hz, time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_at:
                self.pub.publish(self.frame())
                sent += 1
                next_at += period
            self.spin(min(0.01, period / 2))
            assert self.proc.poll() is None, f"perception exited ({self.proc.returncode})"
            if until is not None and until():
                break
        return sent

    def model(self, name):
        for s in reversed(self.status):
            for m in s.models:
                if m.name == name:
                    return m
        return None

    def diagnostic(self, name):
        for d in reversed(self.diag):
            for s in d.status:
                if s.name == f"swapnet/{name}":
                    return s
        return None

    def set(self, node, name, value):
        from rcl_interfaces.msg import Parameter
        from rclpy.parameter import Parameter as P
        from rcl_interfaces.srv import SetParameters

        if isinstance(value, ParameterValueOf):
            msg_value = value.msg
        else:
            msg_value = P(name, value=value).to_parameter_msg().value
        req = SetParameters.Request(parameters=[Parameter(name=name, value=msg_value)])
        return call(self, self.set_params[node], req).results[0]

    def get(self, node, name):
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        return parameter_value_to_python(call(self, self.get_params[node], GetParameters.Request(names=[name])).values[0])

    def close(self):
        self.node.destroy_node()


class ParameterValueOf:
    def __init__(self, msg):
        self.msg = msg


def wait_up(c, models=("detection", "segmentation")):
    wait_for(c, lambda: c.pub.get_subscription_count() >= len(models), 240, "the model nodes to subscribe")
    wait_for(c, lambda: c.status and c.status[-1].state == "active", 240, "the coordinator to activate (autostart)")


@pytest.fixture(scope="module")
def client(ros_env, store_dir):
    proc = start_perception(params_for(store_dir), ros_env, env_extra={"TMPDIR": str(tmp_dir(ros_env, "main"))})
    c = Client(proc)
    try:
        wait_up(c)
        yield c
    finally:
        c.close()
        stop_process(proc)


def tmp_dir(root, name):
    d = root / f"tmp-{name}"
    d.mkdir(exist_ok=True)
    return d


def served(c, seconds=30, models=("detection", "segmentation")):
    """Frames at 5 Hz until every model in `models` has published a new result."""
    marks = {m: len(c.results[m]) for m in models}
    c.pump(5, seconds, until=lambda: all(len(c.results[m]) > marks[m] for m in models))
    missing = [m for m in models if len(c.results[m]) == marks[m]]
    assert not missing, f"no new result from {missing} in {seconds} s"


def test_budget_parameters_bad_values_are_refused_and_change_nothing(client):
    from rcl_interfaces.msg import ParameterType, ParameterValue

    c = client
    served(c)
    import torch

    assert c.status[-1].device == ("cpu" if not torch.cuda.is_available() else c.status[-1].device)  # device: auto
    cases = [  # (value, why it must be refused)
        (float("nan"), "NaN"), (float("inf"), "inf"), (float("-inf"), "-inf"), (-1.0, "negative"), (0.0, "zero"),
        (1e12, "huge, beyond the descriptor's range"), ("12", "a string"), (True, "a bool"),
        (ParameterValueOf(ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[6.0])), "an array"),
    ]
    for node, name in (("detection", "budget_mb"), ("swap_coordinator", "total_budget_mb")):
        before = c.get(node, name)
        for value, why in cases:
            r = c.set(node, name, value)
            assert not r.successful, f"{node}.{name} accepted {why} ({value!r})"
            assert r.reason, f"{node}.{name}: refused {why} without a reason"
            assert c.get(node, name) == before, f"{node}.{name} changed after refusing {why}"
    # within the range but impossible: below the model's minimum, over the total
    r = c.set("detection", "budget_mb", 0.5)
    assert not r.successful and "minimum" in r.reason, r.reason
    r = c.set("detection", "budget_mb", 21.0)  # budgets may add up to more than the total, none exceed it
    assert not r.successful and "over the total" in r.reason, r.reason
    r = c.set("swap_coordinator", "total_budget_mb", 4.0)
    assert not r.successful and "over the total" in r.reason, r.reason
    # an integer is taken as the double it means (`ros2 param set /detection budget_mb 7`)
    r = c.set("detection", "budget_mb", 7)
    assert r.successful, r.reason
    assert c.get("detection", "budget_mb") == 7.0
    # a generous total is accepted and costs no memory: the arena holds the models' shares
    r = c.set("swap_coordinator", "total_budget_mb", 100000.0)
    assert r.successful, r.reason
    c.status.clear()
    wait_for(c, lambda: c.model("detection") is not None and c.model("detection").budget_bytes == 7 * MB
             and c.status[-1].total_budget_bytes == 100000 * MB, 30, "the applied values in the status")
    assert c.status[-1].arena_bytes <= 14 * MB
    assert c.set("swap_coordinator", "total_budget_mb", 20).successful
    served(c)  # still serving
    for name in ("detection", "segmentation"):
        assert c.model(name).errors == 0, c.model(name).last_error


def test_budget_toggled_fast_while_frames_are_served(client):
    c = client
    served(c)
    done_before = {n: c.model(n).jobs_done for n in ("detection", "segmentation")}
    marks = {n: len(c.results[n]) for n in c.results}
    values = [6.0, 5.0] * 20 + [6.5]
    toggled = 0
    for k, v in enumerate(values):  # about 40 retunes in a few seconds, frames at 10 Hz between them
        assert c.set("detection", "budget_mb", v).successful
        if k % 4 == 0:
            assert c.set("swap_coordinator", "total_budget_mb", 20.0 + (k % 8) / 2).successful
        toggled += 1
        c.pump(10, 0.1)
    served(c)
    c.status.clear()
    wait_for(c, lambda: c.model("detection") is not None and c.model("detection").budget_bytes == int(6.5 * MB),
             30, "the last budget in the status")
    for n in ("detection", "segmentation"):
        m = c.model(n)
        assert m.errors == 0 and m.state == "serving", (n, m.state, m.last_error)
        assert m.jobs_done > done_before[n] and len(c.results[n]) > marks[n]
        assert m.peak_resident_bytes <= m.budget_bytes
    print(f"\nbudget toggled {toggled} times under 10 Hz frames: detection +{c.model('detection').jobs_done - done_before['detection']} jobs")


def test_overload_drops_are_counted_in_status_and_diagnostics(client):
    """Every frame sent is served or counted as a drop, including those overwritten in the node's
    subscription queue before its callback took them (found from the publisher's sequence numbers)."""
    from diagnostic_msgs.msg import DiagnosticStatus

    c = client
    served(c)
    names = ("detection", "segmentation")
    counters = ("jobs_done", "drops", "frames_received", "lost_before_intake", "drops_replaced", "drops_late")

    def settled(n):  # no frame of this node in the scheduler or running
        m = c.model(n)
        return m is not None and m.jobs_done + m.drops + m.errors == m.frames_received + m.lost_before_intake

    c.status.clear()
    wait_for(c, lambda: all(settled(n) for n in names), 20, "the frames sent so far to be served")
    base = {n: {k: getattr(c.model(n), k) for k in counters} for n in names}
    t0, first_diag = time.monotonic(), len(c.diag)
    sent = c.pump(300, 2.0)  # as fast as this loop can publish: far beyond two networks in turn
    offered = sent / (time.monotonic() - t0)

    def delta(n):
        m = c.model(n)
        return {k: getattr(m, k) - base[n][k] for k in counters}

    exact = rclpy_reports_publisher_gid()

    def accounted(n):
        d = delta(n)
        if not exact:  # Jazzy: what was lost before intake is not seen; what arrived is all accounted
            return d["jobs_done"] + d["drops"] == d["frames_received"] >= sent // 2 and d["lost_before_intake"] == 0
        return d["jobs_done"] + d["drops"] == sent and d["frames_received"] + d["lost_before_intake"] == sent

    c.status.clear()
    try:
        wait_for(c, lambda: c.model("detection") is not None and all(accounted(n) for n in names), 20,
                 "every frame sent to be served or counted as dropped")
    except AssertionError as e:
        raise AssertionError(f"{e}: {sent} sent, {({n: delta(n) for n in names} if c.model('detection') else {})}") from None
    figures = {n: delta(n) for n in names}
    for n, d in figures.items():
        assert d["drops"] > 0, f"{n}: no drops counted under {offered:.0f} frames/s"
        assert d["lost_before_intake"] <= d["drops"], (n, d)
        assert 0 < d["drops_replaced"] + d["drops_late"] <= d["drops"] - d["lost_before_intake"], (n, d)
        assert offered >= 3 * d["jobs_done"] / 2.0, f"{n}: not an overload ({offered:.0f}/s offered, {d['jobs_done'] / 2:.1f}/s served)"
    warned = [s for d in c.diag[first_diag:] for s in d.status
              if s.level == DiagnosticStatus.WARN and "dropped" in s.message]
    assert warned, "no WARN with the drops on /diagnostics"
    s = c.diagnostic("detection")
    assert {kv.key for kv in s.values} >= {"drops", "drops_replaced", "drops_late", "deadline_misses", "errors", "state",
                                            "lost_before_intake"}
    print(f"\noverload: {sent} frames at {offered:.0f}/s over 2 s; {figures}")
    c.diag.clear()
    c.spin(1.5)  # no frames: no new drops, back to OK
    assert c.diagnostic("detection").level == DiagnosticStatus.OK, c.diagnostic("detection").message


def test_lost_frames_are_counted_from_sequence_gaps_and_late_ones_taken_back(ros_env):
    """Per publisher: the first frame sets the baseline, a gap counts as lost, a frame arriving late
    (out of order, best effort) un-counts itself, and an rmw without sequence numbers counts nothing."""
    from rclpy.parameter import Parameter

    from swapnet_ros.coordinator import SwapCoordinator
    from swapnet_ros.model_node import SwapModelNode

    coordinator = SwapCoordinator("seq_coordinator", parameter_overrides=[Parameter("models", value=["seq"])])
    node = SwapModelNode("seq", coordinator, task="detection")
    try:
        def see(seq, publisher=b"a"):
            node._count_lost_before_intake({"publication_sequence_number": seq,
                                            "publisher_gid": {"data": publisher * 16}})
            return node.lost_before_intake

        assert [see(q) for q in (5, 6, 9, 7, 10, 8, 3)] == [0, 0, 2, 1, 1, 0, 0]
        assert [see(q, b"b") for q in (100, 104)] == [0, 3]  # another publisher, its own baseline
        assert see(2**64 - 1, b"c") == 3 and see(0, b"c") == 3 and see(None) == 3  # not reported: nothing counted
        for k in range(100):  # publishers come and go: the table stays bounded
            see(1, bytes([k % 256]) * 2)
        assert len(node._sequences) <= 64
    finally:
        node.destroy_node()
        coordinator.destroy_node()


def test_an_error_escaping_an_intake_callback_stops_the_process(ros_env):
    """Frame intake runs in a thread of its own: if a callback raises, the process must not stay up
    with nobody taking frames. spin_intake records the failure and shuts the context down, which ends
    the coordinator's spin on the main thread (perception then exits with 1)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Empty

    from swapnet_ros.perception import spin_intake

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("failing_intake", context=context)

    def callback(msg):
        raise RuntimeError("a bug in a callback")

    node.create_subscription(Empty, "/failing_intake/in", callback, 10)
    pub = node.create_publisher(Empty, "/failing_intake/in", 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    failure = []
    thread = threading.Thread(target=spin_intake, args=(executor, failure, node.get_logger()), daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 10
        while not failure and time.monotonic() < end:
            pub.publish(Empty())
            time.sleep(0.1)
        thread.join(10)
        assert not thread.is_alive()
        assert len(failure) == 1 and "a bug in a callback" in str(failure[0])
        assert not context.ok()  # the main thread's spin on this context ends
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_frames_overwritten_before_intake_are_counted_as_drops(ros_env):
    """A burst published while the node's executor is busy overflows its subscription queue
    (sensor-data QoS keeps 5); the overwritten frames never reach the callback, and are counted from
    the publisher's sequence numbers, in the node and in the status."""
    if not rclpy_reports_publisher_gid():
        pytest.skip("this rclpy gives no publisher gid with a message (Jazzy): frames lost before intake are not counted")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from swapnet_ros.coordinator import SwapCoordinator
    from swapnet_ros.image_codec import make_image
    from swapnet_ros.model_node import SwapModelNode
    from swapnet_ros.msg import CoordinatorStatus

    if rclpy.get_rmw_implementation_identifier() not in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp", "rmw_zenoh_cpp"):
        pytest.skip("this rmw does not report publication sequence numbers")
    topic = "/burst/image_raw"
    coordinator = SwapCoordinator("burst_coordinator", parameter_overrides=[Parameter("models", value=["burst"])])
    node = SwapModelNode("burst", coordinator, task="detection", parameter_overrides=[Parameter("input_topic", value=topic)])
    client = rclpy.create_node("burst_client")
    statuses = []
    client.create_subscription(CoordinatorStatus, "/burst_coordinator/status", statuses.append, 10)
    pub = client.create_publisher(Image, topic, qos_profile_sensor_data)
    intake = SingleThreadedExecutor()
    intake.add_node(node)

    def spin_until(condition, what, timeout=10.0):
        end = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            intake.spin_once(timeout_sec=0.02)
            rclpy.spin_once(client, timeout_sec=0.02)

    try:
        spin_until(lambda: pub.get_subscription_count() >= 1, "the node to subscribe")
        frame = make_image(None, np.zeros((8, 8, 3), np.uint8), "rgb8")
        pub.publish(frame)  # the publisher's first frame: the baseline of its sequence numbers
        spin_until(lambda: node.frames_received == 1, "the first frame")
        burst = 20
        for _ in range(burst):  # nothing takes them meanwhile
            pub.publish(frame)
        time.sleep(0.5)
        spin_until(lambda: node.frames_received + node.lost_before_intake == 1 + burst, "the burst to be accounted")
        assert node.lost_before_intake >= burst - 10, (node.frames_received, node.lost_before_intake)
        coordinator.publish_status()  # not serving: every frame that arrived is dropped too
        spin_until(lambda: statuses, "a status")
        st = statuses[-1].models[0]
        assert (st.frames_received, st.lost_before_intake) == (node.frames_received, node.lost_before_intake)
        assert st.drops == 1 + burst and st.jobs_done == 0
    finally:
        intake.shutdown()
        for n in (node, coordinator, client):
            n.destroy_node()


def store_of(store_dir, ref):
    from swapnet_core import BlockStore
    from swapnet_ros.coordinator import store_folder

    return BlockStore(store_folder(store_dir, ref))


def test_a_bad_store_is_reported_and_recovers_when_restored(client, store_dir):
    from diagnostic_msgs.msg import DiagnosticStatus

    c = client
    served(c)
    store = store_of(store_dir, PARAMS["segmentation"]["ros__parameters"]["model"])
    path = Path(store.weights_path)
    original = path.read_bytes()
    unit = [u for u in store.units if u.traced and not u.pinned][-1]  # in the last block: read by every job
    figures = {}
    try:
        for damage, error in (("corrupt", "StoreCorruptError"), ("truncate", "StoreTruncatedError")):
            with open(path, "r+b") as f:
                if damage == "corrupt":
                    f.seek(unit.offset + unit.nbytes // 2)
                    f.write(bytes(range(256)) * 4)
                else:
                    f.truncate(unit.offset)
            t0 = time.monotonic()
            c.pump(5, 30, until=lambda: c.model("segmentation").state == "error"
                   and c.diagnostic("segmentation").level == DiagnosticStatus.ERROR)
            m, d = c.model("segmentation"), c.diagnostic("segmentation")
            assert m.state == "error" and m.errors > 0, (m.state, m.errors)
            assert error in m.last_error and str(path) in m.last_error, m.last_error
            if damage == "corrupt":
                assert unit.name in m.last_error, m.last_error
            assert d.level == DiagnosticStatus.ERROR and error in d.message, (d.level, d.message)
            assert {kv.key: kv.value for kv in d.values}["state"] == "error"
            served(c, models=("detection",))  # the other model keeps publishing
            assert c.model("detection").state == "serving" and c.diagnostic("detection").level != DiagnosticStatus.ERROR
            path.write_bytes(original)  # restored in place
            restored = time.monotonic()
            mark = len(c.results["segmentation"])
            c.pump(5, 30, until=lambda: len(c.results["segmentation"]) > mark and c.model("segmentation").state == "serving"
                   and c.diagnostic("segmentation").level != DiagnosticStatus.ERROR)
            assert len(c.results["segmentation"]) > mark, "no mask after the store was restored"
            figures[damage] = (restored - t0, c.results["segmentation"][mark] - restored)
            assert c.model("segmentation").state == "serving"
            assert c.diagnostic("segmentation").level != DiagnosticStatus.ERROR
        # corrupted again, then re-converted (the folder swapped for a new one, same layout)
        with open(path, "r+b") as f:
            f.seek(unit.offset + unit.nbytes // 2)
            f.write(bytes(range(256)) * 4)
        c.pump(5, 30, until=lambda: c.model("segmentation").state == "error")
        assert "StoreCorruptError" in c.model("segmentation").last_error
        t0 = time.monotonic()
        h, w = PARAMS["segmentation"]["ros__parameters"]["input_size"]
        convert(store.ref, store.path, input_spec=f"random:1x3x{h}x{w}", force=True, progress=False)
        converted = time.monotonic()
        mark = len(c.results["segmentation"])
        c.pump(5, 30, until=lambda: len(c.results["segmentation"]) > mark and c.model("segmentation").state == "serving"
               and c.diagnostic("segmentation").level != DiagnosticStatus.ERROR)
        assert len(c.results["segmentation"]) > mark, "no mask after the store was re-converted"
        assert c.diagnostic("segmentation").level != DiagnosticStatus.ERROR
        figures["re-convert"] = (converted - t0, c.results["segmentation"][mark] - converted)
    finally:
        if path.exists() and path.stat().st_size == len(original) and path.read_bytes() != original:
            path.write_bytes(original)
    assert c.proc.poll() is None
    print("\nbad store (seconds to report or re-convert, seconds from restore/re-convert to the first mask): "
          + ", ".join(f"{k}: {v[0]:.1f}, {v[1]:.2f}" for k, v in figures.items()))


# -- stopping: SIGTERM / SIGINT during inference --------------------------------------------------
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import shm_paths  # noqa: E402  (one place for how a process's /dev/shm files are found)


def holders(path):
    """Live processes that map or hold `path` open."""
    return [p.pid for p in psutil.process_iter() if path in shm_paths(p.pid)]


def fastdds_entries():
    return {p.name for p in SHM.iterdir() if p.name.startswith(("fastrtps_", "fastdds_", "fast_datasharing",
                                                                 "sem.fastrtps_", "sem.fastdds_"))
            or p.name.endswith("_el")}


def stop_during_inference(c, sig, tmp):
    """Frames at 10 Hz keep the worker busy; once results flow, send `sig`. Returns the figures."""
    served(c)
    c.pump(10, 0.5)
    own = shm_paths(c.proc.pid)
    assert own, "the process maps no /dev/shm segment: is FastDDS's shared-memory transport off?"
    before = fastdds_entries()
    done_before = c.model("detection").jobs_done
    t0 = time.monotonic()
    c.proc.send_signal(sig)
    while c.proc.poll() is None and time.monotonic() - t0 < 20:
        c.pub.publish(c.frame())  # frames keep coming while it stops
        c.spin(0.02)
    exit_s = time.monotonic() - t0
    assert c.proc.poll() is not None, f"perception did not exit within 20 s of {sig.name}"
    assert c.proc.returncode == 0, f"exit code {c.proc.returncode} after {sig.name}"
    assert exit_s < 5.0, f"{sig.name}: {exit_s:.1f} s to exit"
    time.sleep(0.2)
    # a port's file (fastdds_port<N>) is named by the port, not the process: the next participant on
    # that port opens the same file again, so one left behind cannot pile up (seen once in ~10 runs);
    # segments named per participant would, and none may be left
    stale = sorted(p for p in own if Path(p).exists() and not holders(p) and not Path(p).name.startswith("fastdds_port"))
    assert not stale, f"left in /dev/shm after {sig.name}, held by no process: {stale}"
    # torch keeps its compile cache in $TMPDIR/torchinductor_$USER on purpose (shared, reused): not ours
    left = [p for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]
    assert not left, f"temp files left: {left}"
    log = c.proc.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    after = fastdds_entries()
    return {"exit_s": exit_s, "own_shm": len(own), "jobs_done_before": done_before,
            "fastdds_before": len(before), "fastdds_after": len(after), "gone": len(before - after)}


def test_sigint_during_inference_exits_cleanly(client, ros_env):
    figures = stop_during_inference(client, signal.SIGINT, tmp_dir(ros_env, "main"))
    print(f"\nSIGINT: {figures}")


def test_sigterm_during_inference_exits_cleanly(ros_env, store_dir):
    tmp = tmp_dir(ros_env, "sigterm")
    proc = start_perception(params_for(store_dir), ros_env, name="perception_sigterm", env_extra={"TMPDIR": str(tmp)})
    c = Client(proc)
    try:
        wait_up(c)
        figures = stop_during_inference(c, signal.SIGTERM, tmp)
    finally:
        c.close()
        stop_process(proc)
    print(f"\nSIGTERM: {figures}")


def test_services_answer_while_configure_converts_a_store(ros_env, tmp_path):
    """Converting a store inside configure takes as long as the network takes to build; meanwhile the
    coordinator answers get_state (the transition state), its parameters and its status, which shows
    the model converting; configure then succeeds."""
    import rclpy
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rcl_interfaces.srv import GetParameters

    from swapnet_ros.msg import CoordinatorStatus

    params = {
        "swap_coordinator": {"ros__parameters": {"autostart": False, "store_dir": str(tmp_path / "stores"),
                                                 "status_period_s": 0.2, "models": ["slow"], "total_budget_mb": 20.0}},
        "slow": {"ros__parameters": {"task": "segmentation", "model": "toy_models:slow?seconds=8.0",
                                     "input_size": [32, 32], "budget_mb": 1.0, "input_topic": "/slow/image"}},
    }
    test_dir = str(Path(__file__).resolve().parent)
    proc = start_perception(params, ros_env, name="slow", env_extra={
        "PYTHONPATH": os.pathsep.join(filter(None, [test_dir, os.environ.get("PYTHONPATH")]))})
    node = rclpy.create_node("slow_client")
    statuses = []
    node.create_subscription(CoordinatorStatus, "/swap_coordinator/status", statuses.append, 10)
    change = node.create_client(ChangeState, "/swap_coordinator/change_state")
    get_state = node.create_client(GetState, "/swap_coordinator/get_state")
    get_params = node.create_client(GetParameters, "/swap_coordinator/get_parameters")

    def answered(client, request, within):
        start = time.monotonic()
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=within)
        assert future.done(), f"{client.srv_name} unanswered for {within} s"
        return future.result(), time.monotonic() - start

    try:
        for client in (change, get_state, get_params):
            assert client.wait_for_service(timeout_sec=120), f"no {client.srv_name}"
        configure = change.call_async(ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
        end = time.monotonic() + 60
        while not (statuses and statuses[-1].models and statuses[-1].models[0].state == "converting"):
            assert time.monotonic() < end and proc.poll() is None, "the status never showed the conversion"
            rclpy.spin_once(node, timeout_sec=0.1)
        state, seconds = answered(get_state, GetState.Request(), within=3.0)
        assert state.current_state.id == State.TRANSITION_STATE_CONFIGURING, state.current_state
        values, _ = answered(get_params, GetParameters.Request(names=["total_budget_mb"]), within=3.0)
        assert values.values[0].double_value == 20.0
        assert not configure.done(), "configure ended before the services were tried: the test proves nothing"
        rclpy.spin_until_future_complete(node, configure, timeout_sec=120)
        assert configure.done() and configure.result().success
        state, _ = answered(get_state, GetState.Request(), within=3.0)
        assert state.current_state.id == State.PRIMARY_STATE_INACTIVE
        print(f"\nget_state answered in {seconds * 1000:.0f} ms during the conversion")
    finally:
        node.destroy_node()
        stop_process(proc)


def test_a_parameter_out_of_its_range_stops_perception_with_one_line(ros_env):
    """status_period_s 0 would make a busy timer: refused at start-up with the reason, exit code 2, no traceback."""
    params = params_for(ros_env / "unused")
    params["swap_coordinator"]["ros__parameters"]["status_period_s"] = 0.0
    proc = start_perception(params, ros_env, name="bad_period")
    try:
        assert proc.wait(60) == 2
    finally:
        stop_process(proc)
    log = proc.log_path.read_text()
    assert "status_period_s" in log and "Traceback" not in log, log
    assert sum(line.startswith("perception: error:") for line in log.splitlines()) == 1, log


def test_a_cuda_device_where_there_is_none_is_refused_at_configure_and_the_node_stays_up(ros_env, store_dir):
    """device: cuda on a machine without one: configure fails with the reason (in the log and in
    ~/status's last_error), the coordinator stays up and unconfigured, and answers its services."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    params = params_for(store_dir)
    params["swap_coordinator"]["ros__parameters"]["device"] = "cuda"
    proc = start_perception(params, ros_env, name="cuda_refused")
    c = Client(proc)
    try:
        wait_for(c, lambda: c.status and "no CUDA device is visible" in c.status[-1].last_error, 120,
                 "the refusal in the status")
        st = c.status[-1]
        assert st.state == "unconfigured" and st.device == "" and "device 'cuda' asked for" in st.last_error
        assert all(m.state == "unconfigured" for m in st.models)
        assert c.get("swap_coordinator", "device") == "cuda"  # still answering
        c.spin(1.0)
        assert proc.poll() is None
    finally:
        c.close()
        stop_process(proc)
    log = proc.log_path.read_text()
    assert "Traceback" not in log and "configure failed: device 'cuda' asked for" in log, log[-2000:]
