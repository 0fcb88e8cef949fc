"""Several SwapModels sharing one arena (the total budget), driven by deadlines.

One worker thread runs one job at a time (one compute stream). Each model keeps only its latest
pending frame: a newer one replaces it, and the older future is cancelled and counted as a drop, so
no queue grows. A frame that can no longer meet its deadline (now + its model's expected job time,
measured, is past it) is dropped before it runs under overload (its stream's frames are being
replaced and another frame waits; otherwise it runs late and counts as missed); drops are counted
by reason. Policies: "edf"
(earliest deadline first; equal deadlines, as one camera feeding several models gives, go to the
model served least recently), "fifo" (earliest submitted) and "rr" (round robin over models), the
last two as baselines. The arena (swapnet_core.sharing) is "shared" by default: each model keeps
only what it holds between jobs, and one streaming window serves whichever job runs; "partitioned"
gives each model its budget with its own swap region. Once a job's last block is resident, the first
block of the job the policy would run next is read (shared: into the free end of the window). With
preemption on, a job whose deadline comes first may run between two blocks of a running job (the
paused job keeps its activations; shared, it gives the window up and reads its next block again). Budgets can be retuned at run time: validated at once, refused
with the reason, applied at the next job boundary (retunes made meanwhile are applied together, and
a pending job runs between two retunes, so fast toggling neither loses a value nor starves a stream).
A job that fails (a store truncated or corrupted under it) is counted against its model only, which
is marked failing until one of its jobs succeeds again; the worker and the other models go on. A model
that cannot be built at start() is failing from the start (retried at its next job); start() raises
only when no model can be built. drain() closes intake until resume(), so no frame submitted after it
returns can run. An error in the worker's own bookkeeping is counted (`worker_errors`) and the worker
goes on.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .errors import BudgetError, BudgetTooSmallError, SwapNetError
from .models import call_model, map_inputs
from .compose import plan_for
from .device import resolve_device
from .plan import Plan, minimum_budget
from .runtime import SwapModel
from .sharing import ARENAS, Need, PartitionedArena, SharedArena, window_bytes
from .sizes import align_up, format_bytes, parse_size
from .store import UNIT_ALIGN, BlockStore

POLICIES = ("edf", "fifo", "rr")
log = logging.getLogger("swapnet_core.scheduler")


class SchedulerClosed(SwapNetError, RuntimeError):
    """submit() after shutdown(), or after drain() until resume()."""


DROP_REASONS = ("replaced", "late", "drained")  # a newer frame came; it could no longer meet its deadline; intake closed
EWMA = 0.2  # weight of the latest job in a model's expected job time
PLANS_KEPT = 64  # plans remembered, by (model, budget, store); a forgotten one is made again


@dataclass
class _Job:
    model: str
    x: torch.Tensor
    deadline: float  # time.monotonic() seconds
    submitted: float
    seq: int
    future: Future = field(default_factory=Future)
    has_deadline: bool = True  # False: ordered as due now, never missed nor dropped as late
    paused: float = 0.0  # seconds preempting jobs ran inside this one (not its own work)


@dataclass
class JobRecord:
    model: str
    submitted: float
    started: float
    finished: float
    deadline: float
    ok: bool
    preempted_by: str | None = None
    budget: int = 0  # the model's budget when the job ran (one plan per job: retunes wait for a boundary)
    peak_resident_bytes: int = 0  # the model's resident weight peak during the job
    plan_epoch: int = 0  # which build of the models the job ran on


class ModelMetrics:
    """Counters and a bounded window of latencies: cheap enough to leave on."""

    def __init__(self, window: int):
        self.latencies: deque[float] = deque(maxlen=window)
        self.jobs_done = self.deadline_misses = self.errors = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.bytes_swapped = 0
        self.job_seconds: float | None = None  # expected job time (start to end), from the jobs that ran
        self.served = 0  # when it was last served, in jobs taken by the scheduler
        self.dropped_late_last = False  # its latest frame was dropped as late (the next one runs)
        self.overrun = False  # a frame of it was replaced since it was last served: frames outrun its service
        self.last_error = ""
        self.failing = False  # the latest job failed: the model needs attention until one succeeds

    @property
    def drops(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def pct(p):
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] * 1000 if lat else None

        return {"jobs_done": self.jobs_done, "deadline_misses": self.deadline_misses, "drops": self.drops,
                "drops_by_reason": dict(self.dropped),
                "errors": self.errors, "bytes_swapped": self.bytes_swapped, "last_error": self.last_error,
                "failing": self.failing,
                "miss_rate": self.deadline_misses / self.jobs_done if self.jobs_done else 0.0,
                "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


@dataclass
class _Model:
    name: str
    store: BlockStore
    budget: int
    example: torch.Tensor
    plan_kind: str
    prefetch: int
    swap: SwapModel | None = None
    metrics: ModelMetrics | None = None


class Scheduler:
    """Run several block stores under one total weight budget.

    scheduler = Scheduler("600MB", policy="edf")
    scheduler.add_model("detection", "stores/frcnn", "250MB")
    scheduler.start()
    future = scheduler.submit("detection", image_batch, deadline=time.monotonic() + 0.1)
    """

    def __init__(self, total_budget_bytes: int | str, policy: str = "edf", preemption: bool = False,
                 device: str = "cpu", io: str = "direct", history: int = 4096, arena: str = "shared"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if arena not in ARENAS:
            raise ValueError(f"arena must be one of {ARENAS}, got {arena!r}")
        self.arena = arena  # how the models lay out the total (swapnet_core.sharing)
        self._plans: dict[tuple, Plan] = {}  # (model, budget, store id) -> its plan, made once
        self.total_budget = parse_size(total_budget_bytes)
        self.policy, self.preemption = policy, preemption
        self.device, self.io = resolve_device(device), io
        self._models: dict[str, _Model] = {}
        self._pending: dict[str, _Job] = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._rr = 0
        self._served = 0  # jobs taken so far: when each model was last served
        self._running: list[_Job] = []  # the running job, and any job preempting it
        self._retune: tuple[int, dict[str, int], list[Future]] | None = None
        self._target: tuple[int, dict[str, int]] | None = None  # the budgets last accepted
        self._arena: SharedArena | PartitionedArena | None = None
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._accepting = True  # drain() closes intake, resume() reopens it
        self._in_flight = 0  # jobs taken by the worker and not finished (guarded by _cond)
        self.worker_errors = 0
        self.last_worker_error = ""
        self._epoch = 0  # counts builds: a job records the one it ran on
        self._window = history
        self.records: deque[JobRecord] = deque(maxlen=history)
        self.occupancy: deque[tuple[float, int]] = deque(maxlen=history)  # (time, resident weight bytes)
        self.reads: deque[tuple[str, int, float, float]] = deque(maxlen=history)  # (model, block, start, end)

    # -- setup -----------------------------------------------------------------------------------
    def add_model(self, name: str, store: BlockStore | str, budget_bytes: int | str, *,
                  example_input: torch.Tensor | None = None, plan: str = "optimal", prefetch: int = 1) -> None:
        """Register a model before start(). Its budget is the most it may hold while its job runs (its
        plan: what it keeps between jobs + the streaming it needs). Shared arena: only the kept parts
        add up, beside one window (checked exactly at start(), once plans exist); partitioned: the
        budgets add up."""
        if self._worker is not None:
            raise RuntimeError("add models before start()")
        if name in self._models:
            raise ValueError(f"model {name!r} is already registered")
        store = store if isinstance(store, BlockStore) else BlockStore(store)
        budget = parse_size(budget_bytes, of=store.total_bytes)
        x = _for_model(example_input if example_input is not None else store.make_input(), store, self.device)
        self._models[name] = _Model(name, store, budget, x, plan, prefetch, metrics=ModelMetrics(self._window))
        try:
            self._validate(self.total_budget, {n: m.budget for n, m in self._models.items()})
        except BudgetError:  # refused: as if never added
            del self._models[name]
            raise

    def start(self) -> None:
        if not self._models:
            raise RuntimeError("no models registered")
        try:
            errors = self._build(self.total_budget, {n: m.budget for n, m in self._models.items()})
        except BudgetError:  # the plans do not fit the total together
            self._teardown()
            raise
        if len(errors) == len(self._models):  # nothing to serve: say why instead of failing every job
            self._teardown()
            raise next(iter(errors.values()))
        self._worker = threading.Thread(target=self._run, name="swapnet-scheduler", daemon=True)
        self._worker.start()

    def minimum_budget(self, name: str) -> int:
        m = self._models[name]
        return align_up(minimum_budget(m.store, m.prefetch), UNIT_ALIGN)

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, name: str, x: torch.Tensor, deadline: float | None = None) -> Future:
        """Queue a frame for `name`; replaces (and cancels) its pending frame, keeping that frame's place in
        line. deadline: monotonic seconds; None (a stream's first frame, before its period is known):
        due now, never counted as missed."""
        if name not in self._models:
            raise KeyError(f"unknown model {name!r}")
        now = time.monotonic()
        job = _Job(name, x, deadline if deadline is not None else now, now, next(self._seq),
                   has_deadline=deadline is not None)
        with self._cond:
            if self._stopping:
                raise SchedulerClosed("the scheduler is shut down")
            if not self._accepting:
                raise SchedulerClosed("the scheduler is drained: not taking jobs until resume()")
            old = self._pending.pop(name, None)
            if old is not None and old.future.cancel():
                self._models[name].metrics.dropped["replaced"] += 1
                self._models[name].metrics.overrun = True
                # the stream keeps its place in line (fifo), or under overload a stream whose frames arrive
                # second would be replaced for ever and never run; the deadline stays the frame's own: an
                # inherited, already passed one put a late stream ahead of streams still on time (edf)
                job.seq = old.seq
            self._pending[name] = job
            self._cond.notify()
        return job.future

    def set_budgets(self, total: int | str | None = None, budgets: dict[str, int | str] | None = None) -> Future:
        """Retune the total and/or per-model budgets. Refused at once (BudgetError or ValueError, with the
        reason; nothing changes) if a model would get less than its minimum or the models would not fit
        the total; else applied at the next job boundary, when the returned future completes (shared
        arena: only the models whose budget changed are re-planned). Calls made before that boundary
        add up (each is checked against the ones accepted before it) and are applied together, so an
        accepted value is never lost."""
        self._plan_ahead(budgets)
        with self._cond:  # two parameter services may call at once: check and queue as one step
            total_b, new = self._proposed(total, budgets)
            waiting = self._retune[2] if self._retune is not None else []
            done: Future = Future()
            self._target = (total_b, new)
            self._retune = (total_b, new, [*waiting, done])
            self._cond.notify()
        return done

    def check_budgets(self, total: int | str | None = None, budgets: dict[str, int | str] | None = None) -> None:
        """Raise as set_budgets would for these values; change nothing."""
        self._plan_ahead(budgets)
        with self._cond:
            self._proposed(total, budgets)

    def _proposed(self, total, budgets) -> tuple[int, dict[str, int]]:
        """The total and budgets that would result, validated (called under _cond)."""
        # start from the last accepted values (the worker may be applying them right now)
        base_total, new = self._target if self._target is not None else (
            self.total_budget, {n: m.budget for n, m in self._models.items()})
        new = dict(new)
        total_b = base_total if total is None else parse_size(total)
        for name, value in (budgets or {}).items():
            if name not in self._models:
                raise KeyError(f"unknown model {name!r}")
            new[name] = parse_size(value, of=self._models[name].store.total_bytes)
        self._validate(total_b, new)
        return total_b, new

    @property
    def models(self) -> list[str]:
        """The registered models' names."""
        return list(self._models)

    def metrics(self) -> dict:
        def one(m: _Model) -> dict:
            swap = m.swap  # read once: the worker may be rebuilding it right now
            return m.metrics.summary() | {
                "budget_bytes": m.budget,
                "kept_bytes": Need.of(swap.plan, self.io).kept if swap else 0,
                "bytes_swapped": m.metrics.bytes_swapped + (swap.stats.bytes_read if swap else 0),
                "arena_bytes": swap.plan.arena_bytes if swap else 0,
                "peak_resident_bytes": swap.stats.peak_resident_weight_bytes if swap else 0,
                "blocks": len(swap.plan.blocks) if swap else 0}

        with self._cond:
            worker = self._worker
            window = getattr(self._arena, "window", None)
            return {"policy": self.policy, "preemption": self.preemption, "total_budget_bytes": self.total_budget,
                    "arena": self.arena, "arena_bytes": self.arena_bytes,
                    "window_bytes": window.nbytes if window is not None else 0,
                    "worker_alive": worker is not None and worker.is_alive(),
                    "worker_errors": self.worker_errors, "last_worker_error": self.last_worker_error,
                    "models": {n: one(m) for n, m in self._models.items()}}

    def drain(self, timeout: float = 30.0) -> bool:
        """Stop taking jobs (submit raises SchedulerClosed until resume()), cancel the pending ones
        (counted as drops) and wait until no job runs. Returns True if idle."""
        with self._cond:
            self._accepting = False
            for name, job in list(self._pending.items()):
                if job.future.cancel():
                    self._models[name].metrics.dropped["drained"] += 1
            self._pending.clear()
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)

    def resume(self) -> None:
        """Take jobs again after drain()."""
        with self._cond:
            self._accepting = True

    def resident_bytes(self) -> int:
        return sum(m.swap._resident_bytes() for m in self._models.values() if m.swap is not None)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs, cancel the pending ones, finish the one in flight, free the arena."""
        with self._cond:
            self._stopping = True
            for job in self._pending.values():
                job.future.cancel()
            self._pending.clear()
            if self._retune is not None:
                for f in self._retune[2]:
                    f.cancel()
                self._retune = None
            self._cond.notify_all()
        if self._worker is not None and wait:
            self._worker.join()
        if self._worker is None or not self._worker.is_alive():
            self._teardown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    # -- internals -------------------------------------------------------------------------------
    def _validate(self, total: int, budgets: dict[str, int]) -> None:
        for name, budget in budgets.items():
            minimum = self.minimum_budget(name)
            if budget < minimum:
                raise BudgetTooSmallError(budget, minimum, f"model {name!r}")
        if self.arena == "shared":  # only kept parts add up; no model can hold more than the total
            for name, budget in budgets.items():
                if budget > total:
                    raise BudgetError(f"model {name!r}: budget {format_bytes(budget)}, over the total {format_bytes(total)}")
            window_bytes(total, {n: self._need(n, b) for n, b in budgets.items()})
            return
        need = sum(budgets.values())
        if need > total:
            raise BudgetError(f"the models' budgets add up to {format_bytes(need)}, over the total "
                              f"{format_bytes(total)}")

    def _need(self, name: str, budget: int) -> Need:
        """What `name` takes of a shared arena at `budget`: from its plan where one was made, else the
        least any plan takes (its pinned tensors; its minimum's streaming)."""
        m = self._models[name]
        plan = self._plans.get((name, budget, m.store.store_id))
        if plan is not None:
            return Need.of(plan, self.io)
        return Need(m.store.pinned_bytes, 0 if self.io == "mmap" else self.minimum_budget(name) - m.store.pinned_bytes)

    def _plan(self, m: _Model, budget: int) -> Plan:
        key = (m.name, budget, m.store.store_id)
        if key not in self._plans:
            if len(self._plans) >= PLANS_KEPT:  # budgets retuned for days: forget the oldest proposals
                in_use = {(n, x.budget, x.store.store_id) for n, x in self._models.items()}
                for old in [k for k in self._plans if k not in in_use][:len(self._plans) - PLANS_KEPT + 1]:
                    del self._plans[old]
            self._plans[key], _profile = plan_for(m.store, budget, m.plan_kind, example_input=m.example,
                                                  device=self.device, io=self.io, prefetch=m.prefetch)
        return self._plans[key]

    def _plan_ahead(self, budgets) -> None:
        """Plan proposed budgets before they are checked (outside the lock: planning takes a while), so
        a shared arena admits them on their real plans."""
        if self.arena != "shared" or self._worker is None:
            return
        for name, value in (budgets or {}).items():
            m = self._models.get(name)
            try:
                budget = parse_size(value, of=m.store.total_bytes)
                if budget >= self.minimum_budget(name):
                    self._plan(m, budget)
            except Exception:  # noqa: BLE001 - the check that follows refuses it, or counts its least need
                pass

    def _build(self, total: int, budgets: dict[str, int]) -> dict[str, Exception]:
        """(Re)allocate the arena and plan every model into it (all models idle). The arena holds what
        the plans need, not the whole total: a generous total costs no memory. A model that cannot be
        built (its store went bad) is counted as failing and retried at its next job; returns those
        models' errors."""
        self._teardown()
        self._epoch += 1
        for name, m in self._models.items():
            m.budget = budgets[name]
        self.total_budget = total
        self._arena = (PartitionedArena(self.device, budgets) if self.arena == "partitioned"
                       else SharedArena(self.device, self.io))
        return self._build_models(self._models.values())

    def _build_models(self, models) -> dict[str, Exception]:
        errors = {}
        for m in models:
            try:
                self._plan(m, m.budget)
            except Exception as e:  # noqa: BLE001 - one bad store must not stop the others
                self._note_error(m, e)
                errors[m.name] = e
        if self.arena == "shared":
            self._fit_window()  # BudgetError: the plans do not fit the total together
        for m in models:
            if m.name not in errors:
                try:
                    self._build_model(m)
                except Exception as e:  # noqa: BLE001
                    self._note_error(m, e)
                    errors[m.name] = e
        return errors

    def _fit_window(self) -> None:
        """Size the shared window for the models' current plans (between jobs: they hold nothing in it,
        or give it up first); the others are moved to a new window, never rebuilt."""
        needs = {n: self._need(n, m.budget) for n, m in self._models.items()}
        nbytes = window_bytes(self.total_budget, needs)
        if self._arena.window is not None and self._arena.window.nbytes == nbytes:
            return
        for m in self._models.values():
            if m.swap is not None:
                m.swap.drop_window_views()  # they keep the old window's memory alive: let it go first
        self._arena.resize_window(nbytes)
        for m in self._models.values():
            if m.swap is not None:
                m.swap.use_window(self._arena.window)

    def _build_model(self, m: _Model) -> None:
        plan = self._plan(m, m.budget)
        if self.arena == "shared" and Need.of(plan, self.io).stream > self._arena.window.nbytes:
            if self._running[:-1]:  # a paused job holds blocks in the window: it cannot move now
                raise BudgetError(f"model {m.name!r} needs a larger window than a paused job leaves")
            self._fit_window()  # a model planned late (its store was bad at start) may stream more
        region, window = self._arena.place(m.name, plan)
        m.swap = SwapModel(m.store, plan, device=self.device, io=self.io, arena=region, window=window)
        m.swap.read_log = _ReadLog(self.reads, m.name)
        m.swap.on_block_boundary = self._boundary_hook(m)
        m.swap.on_block_entered = self._entered_hook(m)

    @staticmethod
    def _note_error(m: _Model, e: BaseException) -> None:
        m.metrics.errors += 1
        m.metrics.last_error = f"{type(e).__name__}: {e}"
        m.metrics.failing = True

    @property
    def arena_bytes(self) -> int:
        """Bytes the arena holds now (shared: the kept parts and the window; partitioned: the shares)."""
        return self._arena.nbytes if self._arena is not None else 0

    def _teardown_models(self, models=None) -> None:
        for m in self._models.values() if models is None else models:
            if m.swap is not None:
                m.metrics.bytes_swapped += m.swap.stats.bytes_read
                m.store = m.swap.store  # it follows a store re-converted in place (new checksums)
                m.swap.close()
                m.swap = None
            if self._arena is not None:
                self._arena.drop(m.name)

    def _teardown(self) -> None:
        self._teardown_models()
        if self._arena is not None:
            self._arena.close()
            self._arena = None

    def _drop_late(self) -> None:
        """Drop the pending frames that can no longer meet their deadline (called under _cond)."""
        now = time.monotonic()
        for name, job in list(self._pending.items()):
            metrics = self._models[name].metrics
            expected = metrics.job_seconds
            # only a frame that could meet its deadline when it came and waited too long (a model slower
            # than its deadline still runs, counted as missed); only under overload: its stream outruns
            # its service (a frame was replaced since it was last served: a newer frame is on its way)
            # and another frame waits (one the drop lets run sooner) -- a closed loop or a sporadic
            # trigger waits for this very result, so it runs, late; and never two in a row of one
            # stream, or a stream whose frames always wait behind longer jobs would never be served
            if (job.has_deadline and expected is not None and not metrics.dropped_late_last
                    and metrics.overrun and len(self._pending) > 1
                    and job.submitted + expected <= job.deadline < now + expected and job.future.cancel()):
                del self._pending[name]
                metrics.dropped["late"] += 1
                metrics.dropped_late_last = True

    def _pick(self, exclude: set[str] = frozenset()) -> _Job | None:
        self._drop_late()
        jobs = [j for n, j in self._pending.items() if n not in exclude]
        if not jobs:
            return None
        if self.policy == "edf":  # equal deadlines: the model served least recently first
            return min(jobs, key=lambda j: (j.deadline, self._models[j.model].metrics.served, j.seq))
        if self.policy == "fifo":
            return min(jobs, key=lambda j: j.seq)
        names = list(self._models)
        for k in range(len(names)):  # round robin: the next model after the last one served
            name = names[(self._rr + k) % len(names)]
            if name in self._pending and name not in exclude:
                return self._pending[name]
        return None

    def _run(self) -> None:
        retuned = False
        while True:
            job = None
            try:
                with self._cond:
                    while not self._stopping and not self._pending and self._retune is None:
                        self._cond.wait()
                    if self._stopping:
                        return
                    # a retune waits for no job, but after one a pending job runs before the next:
                    # budgets toggled faster than a re-plan takes must not starve the streams
                    retune = None if retuned and self._pending else self._retune
                    if retune is not None:
                        self._retune = None
                    job = None if retune else self._take(self._pick())
                    self._in_flight += job is not None
                retuned = retune is not None
                if retune is not None:
                    self._apply(retune)
                elif job is not None:
                    self._execute(job)
            except Exception as e:  # noqa: BLE001 - the worker must outlive a fault in its own bookkeeping
                self._note_worker_error(e, job)
            finally:
                if job is not None:
                    with self._cond:
                        self._in_flight -= 1
                        self._cond.notify_all()

    def _note_worker_error(self, e: Exception, job: _Job | None) -> None:
        with self._cond:
            self.worker_errors += 1
            self.last_worker_error = f"{type(e).__name__}: {e}"
        log.error("scheduler worker: %s (serving goes on)", self.last_worker_error, exc_info=e)
        if job is not None and not job.future.done():  # its caller waits for an answer
            if job.future.running() or job.future.set_running_or_notify_cancel():
                job.future.set_exception(e)

    def _take(self, job: _Job | None) -> _Job | None:
        if job is not None:
            del self._pending[job.model]
            self._served += 1
            self._models[job.model].metrics.served = self._served
            self._models[job.model].metrics.dropped_late_last = False
            self._models[job.model].metrics.overrun = False
            if self.policy == "rr":
                self._rr = (list(self._models).index(job.model) + 1) % len(self._models)
        return job

    def _apply(self, retune) -> None:
        total, budgets, waiting = retune
        previous = (self.total_budget, {n: m.budget for n, m in self._models.items()})
        rebuild = self._rebuild if self.arena == "shared" else self._build
        error = None
        try:
            rebuild(total, budgets)  # a model that cannot be built is retried at its next job
        except Exception as e:  # noqa: BLE001 - the arena could not be allocated: keep the old one
            error = e
            try:
                rebuild(*previous)
            except Exception:  # noqa: BLE001 - every job will now report why
                pass
            with self._cond:
                if self._retune is None:  # nothing newer accepted: the applied budgets are the target
                    self._target = None
        for done in waiting:
            if done.set_running_or_notify_cancel():
                done.set_exception(error) if error else done.set_result(True)

    def _rebuild(self, total: int, budgets: dict[str, int]) -> dict[str, Exception]:
        """Shared arena: re-plan only the models whose budget changed (and any not built); the others
        keep their kept parts, bindings and plans."""
        self._epoch += 1
        changed = [m for n, m in self._models.items() if budgets[n] != m.budget or m.swap is None]
        self._teardown_models(changed)  # their kept parts go first: the memory held stays within the total
        for m in changed:
            m.budget = budgets[m.name]
        self.total_budget = total
        return self._build_models(changed)

    def _execute(self, job: _Job, preempting: str | None = None) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        m = self._models[job.model]
        started = time.monotonic()
        self.occupancy.append((started, self.resident_bytes()))
        self._running.append(job)
        ok, peak_before, job_peak = False, None, 0
        try:
            if m.swap is None:  # its build failed (a bad store): try again, the store may be back
                self._build_model(m)
            if self.arena == "shared":  # the window is this job's: a block another model read ahead goes
                running = {j.model for j in self._running}
                for other in self._models.values():
                    if other.name not in running and other.swap is not None:
                        other.swap.release()
            stats = m.swap.stats
            # the job's own peak: start from what is resident now (a prefetched first block counts)
            peak_before, stats.peak_resident_weight_bytes = stats.peak_resident_weight_bytes, m.swap._resident_bytes()
            out = call_model(m.swap, m.store.call, _for_model(job.x, m.store, self.device))
            if self.device.type == "cuda":  # the job ends when its kernels do: latency and deadlines count to it
                torch.cuda.current_stream(self.device).synchronize()
            ok = True
        except BaseException as e:  # noqa: BLE001 - a failing job must not take the scheduler down
            self._note_error(m, e)
            job.future.set_exception(e)
        finally:
            self._running.pop()
            if peak_before is not None and m.swap is not None:
                job_peak = m.swap.stats.peak_resident_weight_bytes
                m.swap.stats.peak_resident_weight_bytes = max(peak_before, job_peak)
            finished = time.monotonic()
            self.occupancy.append((finished, self.resident_bytes()))
            self.records.append(JobRecord(job.model, job.submitted, started, finished,
                                          job.deadline if job.has_deadline else float("inf"), ok, preempting,
                                          m.budget, job_peak, self._epoch))
        if ok:
            m.metrics.failing = False
            m.metrics.jobs_done += 1
            m.metrics.latencies.append(finished - job.submitted)
            took, known = finished - started - job.paused, m.metrics.job_seconds
            m.metrics.job_seconds = took if known is None else (1 - EWMA) * known + EWMA * took
            if job.has_deadline and finished > job.deadline:
                m.metrics.deadline_misses += 1
            job.future.set_result(out)

    def _boundary_hook(self, m: _Model):
        swap = m.swap

        def on_boundary(block: int) -> None:
            self.occupancy.append((time.monotonic(), self.resident_bytes()))
            if not self.preemption or len(self._running) != 1:
                return
            shared = self.arena == "shared"
            if shared and not swap.at_sequence_boundary(block):  # inside a detour: its block is mid-forward
                return
            running = self._running[0]
            with self._cond:
                urgent = self._pick(exclude={running.model})
                if urgent is None or urgent.deadline >= running.deadline:
                    return
                self._take(urgent)
            if shared:
                swap.give_way()  # the urgent job streams through the window; our next block is read again
            paused = time.monotonic()
            self._execute(urgent, preempting=running.model)
            running.paused += time.monotonic() - paused

        return on_boundary

    def _entered_hook(self, m: _Model):
        swap = m.swap
        swapped = swap.plan.swapped_sequence
        last = swapped[-1] if swapped else None

        def on_entered(block: int) -> None:
            # the job's last block is resident (its predecessor gone): read the next job's first block
            if block != last or self.policy == "rr":
                return
            if self.arena == "shared" and len(self._running) != 1:  # a paused job still needs the window
                return
            with self._cond:
                nxt = self._pick(exclude={j.model for j in self._running})
            other = self._models[nxt.model].swap if nxt is not None else None
            if other is None:
                return
            side = None if self.arena == "partitioned" else _free_side(swap, other)
            if self.arena == "shared" and side is None:
                return
            try:
                other.prefetch(side)
            except Exception:  # noqa: BLE001 - that model's own job will meet (and count) it
                pass

        return on_entered


def _free_side(running: SwapModel, other: SwapModel) -> int | None:
    """The end of the shared window where `other`'s first block fits beside the blocks `running` holds."""
    if other.window is not running.window or not other.first_block_bytes:
        return None
    held = running.window_spans()
    for side in (1, 0):
        lo, hi = other.side_span(side)
        if all(hi <= a or lo >= b for a, b in held):
            return side
    return None


def _for_model(x, store: BlockStore, device: torch.device):
    """A frame (or a model's several inputs) as the model takes it: on its device, and in the store's
    dtype (frames arrive as float32 on the CPU; a float16/bfloat16 store computes in its own dtype)."""
    def move(t: torch.Tensor) -> torch.Tensor:
        dtype = store.torch_dtype if t.is_floating_point() else t.dtype
        return t.to(device=device, dtype=dtype, non_blocking=t.device.type == "cpu" and t.is_pinned())

    return map_inputs(x, move)


class _ReadLog:
    """Adapts a SwapModel's (block, start, end) read log to the scheduler's (model, block, start, end)."""

    def __init__(self, sink: deque, name: str):
        self.sink, self.name = sink, name

    def append(self, item) -> None:
        self.sink.append((self.name, *item))
