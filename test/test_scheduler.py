"""The multi-DNN scheduler: policies, latest-frame dropping, retuning, failures, preemption, shutdown."""

import threading
import time

import pytest
import torch

from swapnet_core import BudgetError, BudgetTooSmallError, load_resident, minimum_budget
from swapnet_core.models import call_model, make_input
from swapnet_core.scheduler import PLANS_KEPT, Scheduler, SchedulerClosed

X = "random:1x3x64x64"
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def stores(convert_once):
    return {"a": convert_once("torchvision:resnet18", X),
            "b": convert_once("torchvision:mobilenet_v3_small", X),
            "c": convert_once("torchvision:squeezenet1_1", X)}


def make_scheduler(stores, policy="edf", preemption=False, share=3, extra=0, arena="shared"):
    budgets = {n: max(s.total_bytes // share, minimum_budget(s)) for n, s in stores.items()}
    sched = Scheduler(sum(budgets.values()) + extra, policy=policy, preemption=preemption, arena=arena)
    for n, s in stores.items():
        sched.add_model(n, s, budgets[n], example_input=make_input(X))
    return sched, budgets


def swapnet_threads():
    return [t for t in threading.enumerate() if t.name.startswith("swapnet")]


@pytest.mark.parametrize("policy,expected", [("edf", ["c", "a", "b"]), ("fifo", ["b", "c", "a"]),
                                             ("rr", ["a", "b", "c"])])
def test_policies_order_pending_jobs(stores, policy, expected):
    sched, _ = make_scheduler(stores, policy)
    now = time.monotonic()
    futures = {"b": sched.submit("b", make_input(X), deadline=now + 3),
               "c": sched.submit("c", make_input(X), deadline=now + 1),
               "a": sched.submit("a", make_input(X), deadline=now + 2)}
    sched.start()  # every job was pending before the worker chose
    for f in futures.values():
        f.result(timeout=60)
    sched.shutdown()
    assert [r.model for r in sched.records] == expected


def resident_output(store, seed):
    with torch.no_grad():
        return call_model(load_resident(store), store.call, make_input(X, seed=seed))


def shared_need(sched):
    """What a shared arena admits the current plans at: the kept parts and the largest stream."""
    m = sched.metrics()["models"].values()
    return sum(v["kept_bytes"] for v in m) + max(v["arena_bytes"] - v["kept_bytes"] for v in m)


def read_ahead(sched) -> int:
    """How many jobs found their first block read (or being read) before the job before them ended."""
    records, count = list(sched.records), 0
    for before, job in zip(records, records[1:]):
        first = sched._models[job.model].swap.plan.swapped_sequence[0]
        count += any(m == job.model and b == first and before.started < start < before.finished
                     for m, b, start, _end in sched.reads)
    return count


@pytest.mark.parametrize("arena", ["shared", "partitioned"])
def test_outputs_are_exact_and_memory_stays_within_the_total(stores, arena):
    sched, budgets = make_scheduler(stores, arena=arena)
    sched.start()
    try:
        for _ in range(3):
            for n, s in stores.items():
                got = sched.submit(n, make_input(X, seed=5)).result(timeout=60)
                assert torch.equal(got, resident_output(s, 5))
        # read-ahead depends on when the worker reaches a job's last block (a toy job can end before the
        # read is timed inside it): up to three rounds of three queued jobs, at least one read ahead
        for _round in range(3):
            with sched._cond:  # all three queued before the worker picks one, so a next job exists
                futures = {n: sched.submit(n, make_input(X, seed=6)) for n in NAMES}
            for n, f in futures.items():
                assert torch.equal(f.result(timeout=60), resident_output(stores[n], 6))
            rounds = _round + 1
            if read_ahead(sched):
                break
        assert read_ahead(sched), "no job's first block was read while the job before it ran"
        assert max(b for _, b in sched.occupancy) <= sched.arena_bytes <= sched.total_budget
        assert sum(s.total_bytes for s in stores.values()) > 2.5 * sched.total_budget
        m = sched.metrics()
        assert all(m["models"][n]["jobs_done"] == 3 + rounds and m["models"][n]["p99_ms"] > 0 for n in NAMES)
        if arena == "shared":  # one window instead of one swap region per model
            kept = sum(v["kept_bytes"] for v in m["models"].values())
            assert m["window_bytes"] >= max(v["arena_bytes"] - v["kept_bytes"] for v in m["models"].values())
            assert sched.arena_bytes == kept + m["window_bytes"] < sum(budgets.values())
    finally:
        sched.shutdown()


def test_a_shared_window_admits_budgets_that_add_up_to_more_than_the_total(stores):
    """Each model may hold its whole budget while it runs, but only its kept part between jobs: budgets
    adding up to more than the total fit, where the partitioned layout refuses them."""
    budgets = {n: max(s.total_bytes // 2, minimum_budget(s)) for n, s in stores.items()}
    probe = Scheduler(sum(budgets.values()))
    for n, s in stores.items():
        probe.add_model(n, s, budgets[n], example_input=make_input(X))
    probe.start()
    need = max(shared_need(probe), *budgets.values())  # no budget may exceed the total either
    probe.shutdown()
    assert need < sum(budgets.values())
    with pytest.raises(BudgetError, match="over the total"):
        tight = Scheduler(need - 4096)
        for n, s in stores.items():
            tight.add_model(n, s, budgets[n], example_input=make_input(X))
        tight.start()
    with pytest.raises(BudgetError, match="over the total"):
        parted = Scheduler(need, arena="partitioned")
        for n, s in stores.items():
            parted.add_model(n, s, budgets[n], example_input=make_input(X))
    sched = Scheduler(need)
    for n, s in stores.items():
        sched.add_model(n, s, budgets[n], example_input=make_input(X))
    sched.start()
    try:
        for k in range(2):
            futures = {n: sched.submit(n, make_input(X, seed=k)) for n in NAMES}  # prefetch across jobs
            for n, f in futures.items():
                assert torch.equal(f.result(timeout=60), resident_output(stores[n], k))
        assert max(b for _, b in sched.occupancy) <= sched.arena_bytes <= need
    finally:
        sched.shutdown()


def test_a_stream_keeps_only_its_latest_frame(stores):
    sched, _ = make_scheduler(stores)
    old = [sched.submit("a", make_input(X)) for _ in range(3)]
    latest = sched.submit("a", make_input(X, seed=9))
    sched.start()
    latest.result(timeout=60)
    sched.shutdown()
    assert all(f.cancelled() for f in old)
    m = sched.metrics()["models"]["a"]
    assert m["drops"] == 3 and m["jobs_done"] == 1
    assert m["drops_by_reason"]["replaced"] == 3
    assert m["deadline_misses"] == 0 and sched.records[-1].deadline == float("inf")  # no deadline: none to miss


@pytest.mark.parametrize("policy", ["edf", "fifo"])
def test_no_stream_starves_when_one_camera_feeds_several_models_faster_than_they_run(stores, policy):
    # every frame goes to both models with the same deadline, "a" always first (callback order):
    # without aging "b"'s frame is replaced before it ever gets its turn
    two = {n: stores[n] for n in ("a", "b")}
    sched, _ = make_scheduler(two, policy)
    sched.start()
    x = make_input(X)
    try:
        sched.submit("a", x).result(timeout=60)
        sched.submit("b", x).result(timeout=60)
        period = max(m["p50_ms"] for m in sched.metrics()["models"].values()) / 1000 / 3  # 3x overload
        end = time.monotonic() + max(3.0, 40 * period)
        while time.monotonic() < end:
            deadline = time.monotonic() + period
            sched.submit("a", x, deadline)
            sched.submit("b", x, deadline)
            time.sleep(period)
        assert sched.drain(timeout=60)
    finally:
        sched.shutdown()
    done = {n: m["jobs_done"] for n, m in sched.metrics()["models"].items()}
    assert min(done.values()) >= 0.3 * max(done.values()), done


def hold_at_first_boundary(sched, name):
    """Make `name`'s next job wait at its first block boundary until the returned gate is set."""
    gate, entered = threading.Event(), threading.Event()
    swap = sched._models[name].swap
    original = swap.on_block_boundary

    def boundary(block):
        if not entered.is_set():
            entered.set()
            gate.wait(30)
        original(block)

    swap.on_block_boundary = boundary
    return gate, entered


def test_equal_deadlines_go_to_the_model_served_least_recently(stores):
    """One camera feeding several models gives their frames one deadline: the tie goes to the model
    served least recently, not to the one whose frame was queued first (which under overload is
    always the same model, the first subscriber)."""
    sched, _ = make_scheduler(stores)
    sched.start()
    try:
        for n in ("a", "b"):  # served: "a", then "b"
            sched.submit(n, make_input(X)).result(timeout=60)
        gate, entered = hold_at_first_boundary(sched, "c")
        running = sched.submit("c", make_input(X))
        assert entered.wait(60)
        deadline = time.monotonic() + 100
        queued = [sched.submit(n, make_input(X), deadline=deadline) for n in ("b", "a")]  # "b" first in line
        gate.set()
        for f in [running, *queued]:
            f.result(timeout=60)
    finally:
        sched.shutdown()
    assert [r.model for r in sched.records][-2:] == ["a", "b"]


def test_a_frame_that_can_no_longer_meet_its_deadline_is_dropped_before_it_runs(stores):
    """A frame that could meet its deadline when it came but waited until now + its model's expected job
    time is past it is dropped, counted as late; a frame of a model slower than its deadline still runs
    (counted as missed), or that model would never be served."""
    sched, _ = make_scheduler(stores)
    sched.start()
    try:
        for n in ("b", "c"):  # their expected job times are now measured
            sched.submit(n, make_input(X)).result(timeout=60)
        expected = {n: sched._models[n].metrics.job_seconds for n in ("b", "c")}
        gate, entered = hold_at_first_boundary(sched, "a")
        running = sched.submit("a", make_input(X))
        assert entered.wait(60)
        now = time.monotonic()
        sched.submit("b", make_input(X), deadline=now + 10)  # replaced next: b's frames outrun its service
        late = sched.submit("b", make_input(X), deadline=now + 2 * expected["b"])  # feasible when it came
        slow = sched.submit("c", make_input(X), deadline=now + expected["c"] / 2)  # never feasible
        while time.monotonic() <= now + expected["b"]:  # until b's frame can no longer make it
            time.sleep(0.005)
        gate.set()
        running.result(timeout=60)
        assert slow.result(timeout=60) is not None
        assert late.cancelled()
        m = sched.metrics()["models"]
        assert m["b"]["drops_by_reason"] == {"replaced": 1, "late": 1, "drained": 0} and m["b"]["jobs_done"] == 1
        assert m["c"]["drops"] == 0 and m["c"]["deadline_misses"] == 1
    finally:
        sched.shutdown()


def test_a_late_frame_runs_unless_its_stream_outruns_its_service(stores):
    """Dropping a late frame pays only under overload, when a newer frame of its stream is on its way. A
    closed loop (one frame at a time for several models, each result awaited) replaces nothing: a frame
    late behind another model's job runs and counts as a miss instead of leaving its caller waiting."""
    sched, _ = make_scheduler(stores)
    sched.start()
    try:
        for n in ("b", "c"):  # their expected job times are now measured
            sched.submit(n, make_input(X)).result(timeout=60)
        expected = sched._models["b"].metrics.job_seconds
        gate, entered = hold_at_first_boundary(sched, "a")
        running = sched.submit("a", make_input(X))
        assert entered.wait(60)
        now = time.monotonic()
        late = sched.submit("b", make_input(X), deadline=now + 2 * expected)  # feasible when it came
        waiting = sched.submit("c", make_input(X), deadline=now + 60)  # another frame in line
        while time.monotonic() <= now + expected:  # until b's frame can no longer make it
            time.sleep(0.005)
        gate.set()
        running.result(timeout=60)
        assert late.result(timeout=60) is not None and waiting.result(timeout=60) is not None
        m = sched.metrics()["models"]["b"]
        assert m["drops"] == 0 and m["jobs_done"] == 2 and m["deadline_misses"] == 1
    finally:
        sched.shutdown()


def test_budget_retune_is_applied_at_a_job_boundary_or_refused_with_a_reason(stores):
    sched, budgets = make_scheduler(stores, extra=8 << 20)
    sched.start()
    try:
        before = sched.metrics()["models"]["a"]
        with pytest.raises(BudgetTooSmallError, match="'a'"):
            sched.set_budgets(budgets={"a": minimum_budget(stores["a"]) - 4096})
        with pytest.raises(BudgetError, match="over the total"):
            sched.set_budgets(budgets={"a": budgets["a"] + (64 << 20)})
        need = shared_need(sched)
        with pytest.raises(BudgetError, match="over the total"):
            sched.set_budgets(total=need - 4096)
        assert sched.metrics()["models"]["a"] == before  # refused: nothing changed
        for k in range(PLANS_KEPT + 6):  # many proposals: old plans are forgotten, never those in use
            sched.check_budgets(budgets={"c": budgets["c"] + 4096 * k})
        assert len(sched._plans) <= PLANS_KEPT
        with pytest.raises(BudgetError, match="over the total"):
            sched.set_budgets(total=need - 4096)
        bigger = budgets["a"] + (8 << 20)
        sched.set_budgets(budgets={"a": bigger}).result(timeout=60)
        after = sched.metrics()["models"]["a"]
        assert after["budget_bytes"] == bigger and after["arena_bytes"] <= bigger
        assert sched.submit("a", make_input(X)).result(timeout=60) is not None  # still serving
    finally:
        sched.shutdown()


def test_a_retune_replans_only_the_model_that_changed(stores):
    """Three models streaming; one budget changes: that model is re-planned at a job boundary, the others
    keep their runtime (no re-plan, no re-read of what they keep) and stay exact, and the retune waits for
    at most the job in flight."""
    sched, budgets = make_scheduler(stores, extra=8 << 20)
    sched.start()
    try:
        for n in NAMES:
            assert sched._models[n].swap.plan.swapped_sequence, f"{n} does not stream"
        kept = {n: sched._models[n].swap for n in ("b", "c")}
        futures = [sched.submit(n, make_input(X, seed=3)) for n in NAMES]
        done = sched.set_budgets(budgets={"a": budgets["a"] + (4 << 20)})
        applied = len(sched.records)
        done.result(timeout=60)
        for f in futures:
            f.result(timeout=60)
        ran_old = [r for r in sched.records if r.model == "a" and r.budget == budgets["a"]]
        assert len(ran_old) <= 1 and len(sched.records) - applied <= 3
        assert sched.metrics()["models"]["a"]["budget_bytes"] == budgets["a"] + (4 << 20)
        for k in range(2):
            for n in NAMES:
                assert torch.equal(sched.submit(n, make_input(X, seed=k)).result(timeout=60), resident_output(stores[n], k))
        for n, swap in kept.items():
            assert sched._models[n].swap is swap, f"{n} was rebuilt"
            assert swap.stats.bytes_read == sum(b.nbytes for b in swap.plan.blocks if not b.resident) \
                * swap.stats.calls + swap.plan.pinned_bytes + swap.plan.resident_bytes, f"{n} re-read its kept part"
        assert max(b for _, b in sched.occupancy) <= sched.arena_bytes <= sched.total_budget
    finally:
        sched.shutdown()


def test_a_failing_job_does_not_take_the_scheduler_down(stores):
    sched, _ = make_scheduler(stores)
    sched.start()
    try:
        bad = sched.submit("a", torch.zeros(1, 5, 64, 64))  # wrong channel count
        assert isinstance(bad.exception(timeout=60), RuntimeError)
        assert sched.submit("a", make_input(X)).result(timeout=60).shape == (1, 1000)
        m = sched.metrics()["models"]["a"]
        assert m["errors"] == 1 and "RuntimeError" in m["last_error"]
    finally:
        sched.shutdown()


def test_preemption_runs_an_urgent_job_between_blocks(stores):
    sched, _ = make_scheduler(stores, preemption=True, share=6)
    sched.start()
    try:
        gate = threading.Event()
        long_model = sched._models["a"].swap
        original = long_model.on_block_boundary
        entered = []

        def slow_boundary(block):  # hold the long job at its second block until the urgent job is queued
            entered.append(block)
            if len(entered) == 2:
                gate.wait(30)
            original(block)

        long_model.on_block_boundary = slow_boundary
        now = time.monotonic()
        long_job = sched.submit("a", make_input(X), deadline=now + 100)
        while len(entered) < 2:
            time.sleep(0.005)
        urgent = sched.submit("b", make_input(X), deadline=now + 1)
        gate.set()
        urgent.result(timeout=60)
        # the paused job gave the shared window up and read its next block again
        assert torch.equal(long_job.result(timeout=60), resident_output(stores["a"], 0))
    finally:
        sched.shutdown()
    b, a = [r for r in sched.records if r.model == "b"][0], [r for r in sched.records if r.model == "a"][0]
    assert b.preempted_by == "a" and a.started < b.started and b.finished < a.finished
    # the urgent job's time is not the long job's: its expected job time leaves it out
    assert sched._models["a"].metrics.job_seconds <= (a.finished - a.started) - (b.finished - b.started)


def test_shutdown_with_jobs_in_flight_leaves_nothing_behind(stores):
    before = len(swapnet_threads())
    sched, _ = make_scheduler(stores)
    sched.start()
    futures = [sched.submit(n, make_input(X)) for n in NAMES]
    sched.shutdown()
    assert all(f.done() for f in futures)  # finished or cancelled, none left hanging
    assert len(swapnet_threads()) == before
    assert sched._arena is None and all(m.swap is None for m in sched._models.values())
    with pytest.raises(SchedulerClosed):
        sched.submit("a", make_input(X))


def test_drain_closes_intake_until_resume(stores):
    """Deactivate drains the scheduler; a frame that passed the node's `serving` check just before must
    not be queued and run while inactive: submit after drain() is refused until resume()."""
    sched, _ = make_scheduler(stores)
    sched.start()
    try:
        assert sched.submit("a", make_input(X)).result(timeout=60) is not None
        assert sched.drain(timeout=60)
        with pytest.raises(SchedulerClosed, match="drained"):
            sched.submit("a", make_input(X))
        time.sleep(0.2)
        assert sched.metrics()["models"]["a"]["jobs_done"] == 1  # nothing ran while drained
        sched.resume()
        assert sched.submit("a", make_input(X)).result(timeout=60) is not None
    finally:
        sched.shutdown()


def test_drain_waits_for_a_job_the_worker_has_taken(stores):
    """A job taken from the queue but not yet started counts as in flight: drain() returns only once it ended."""
    sched, _ = make_scheduler(stores)
    sched.start()
    try:
        futures = [sched.submit(n, make_input(X)) for n in NAMES]
        assert sched.drain(timeout=60)
        for f in futures:
            assert f.cancelled() or f.done()  # none is left running after drain returned
    finally:
        sched.shutdown()


class _FaultyPick(Scheduler):
    """A scheduler whose job choice fails once, as a bug in its bookkeeping would."""

    faults = 1

    def _pick(self, exclude=frozenset()):
        if self.faults and not exclude:
            self.faults -= 1
            raise RuntimeError("injected fault in the worker's job choice")
        return super()._pick(exclude)


def test_a_fault_in_the_worker_loop_is_counted_and_serving_goes_on(stores):
    budgets = {n: max(s.total_bytes // 3, minimum_budget(s)) for n, s in stores.items()}
    sched = _FaultyPick(sum(budgets.values()))
    for n, s in stores.items():
        sched.add_model(n, s, budgets[n], example_input=make_input(X))
    sched.start()
    try:
        first = sched.submit("a", make_input(X))
        time.sleep(0.5)
        assert sched._worker.is_alive(), "the worker thread died"
        assert sched.submit("a", make_input(X)).result(timeout=60) is not None  # still serving
        assert first.done()  # the frame pending during the fault was served or replaced, never left hanging
        m = sched.metrics()
        assert m["worker_alive"] and m["worker_errors"] == 1 and "injected fault" in m["last_worker_error"]
    finally:
        sched.shutdown()


def test_start_serves_the_models_that_can_be_built(stores, disk_dir):
    """One model whose store fails when it is built does not stop the others; start() raises only when
    no model can be built."""
    import shutil

    from swapnet_core import BlockStore
    from swapnet_core.errors import StoreCorruptError

    bad_path = disk_dir / "sched-bad-start"
    shutil.rmtree(bad_path, ignore_errors=True)
    shutil.copytree(stores["b"].path, bad_path)
    bad = BlockStore(bad_path)
    with open(bad.weights_path, "r+b") as f:  # the budget keeps it whole: every unit is read at start
        f.seek(bad.units[1].offset)
        f.write(bytes(64))
    sched = Scheduler(stores["a"].total_bytes + bad.total_bytes)
    sched.add_model("a", stores["a"], stores["a"].total_bytes // 2, example_input=make_input(X))
    sched.add_model("bad", bad, bad.total_bytes, example_input=make_input(X))
    sched.start()
    try:
        assert sched.submit("a", make_input(X)).result(timeout=60) is not None
        m = sched.metrics()["models"]["bad"]
        assert m["failing"] and "StoreCorruptError" in m["last_error"]
        assert isinstance(sched.submit("bad", make_input(X)).exception(timeout=60), StoreCorruptError)
    finally:
        sched.shutdown()
    alone = Scheduler(bad.total_bytes)
    alone.add_model("bad", bad, bad.total_bytes, example_input=make_input(X))
    with pytest.raises(StoreCorruptError):
        alone.start()
    assert alone._arena is None  # nothing kept after a failed start


def test_every_model_fills_through_its_own_stager_one_fill_at_a_time(stores):
    """With prefetch (the next job's first block read while another model computes) and preemption
    (an urgent job's blocks read between two blocks of a long one), no staging buffer is ever filled
    by two reads at once: each model has its own Stager, and a model's fills never overlap."""
    sched, _ = make_scheduler(stores, preemption=True, share=6)
    sched.start()
    try:
        for k in range(6):
            now = time.monotonic()
            futures = [sched.submit(n, make_input(X, seed=k), deadline=now + d) for n, d in zip(NAMES, (5.0, 0.01, 1.0))]
            for f in futures:
                f.result(timeout=60)
        stagers = {n: m.swap._stager for n, m in sched._models.items()}
        assert len({id(s) for s in stagers.values()}) == len(stagers), "two models share a stager"
        for n, s in stagers.items():
            assert s.most_in_flight == 1, f"{n}: {s.most_in_flight} fills at once through one staging buffer"
    finally:
        sched.shutdown()
