"""SwapModel: a network that runs under a weight budget by swapping blocks in just before they run.

The skeleton lives on torch.device("meta"). Entering a unit's module (a forward pre-hook) makes its
block resident: the block's bytes are read straight into an arena slot and the unit's parameters and
buffers become views of that slot (no copy). While a block computes, the next one is read on an I/O
thread into the other end of the arena. Leaving a block points its tensors back at meta.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .io import BlockReader
from .memory import ArenaMemory, ArenaRegion, Stager, SwapWindow
from .plan import Plan
from .errors import (StoreError, StoreMismatchError, StoreNotFoundError, SwapNetError,
                     WeightNotResidentError)
from .store import BlockStore, Unit
from .trace import reads_metadata_only, torch_function_name

log = logging.getLogger("swapnet_core.runtime")
_PLACEHOLDER_READS = {"device", "is_cuda", "is_cpu", "is_meta", "__repr__", "__format__"}
READS_KEPT = 512  # (bytes, seconds) of the latest block reads: what calibration fits the cost model to
CALLS_KEPT = 64  # compute seconds of the latest calls, for the same


@dataclass
class SwapStats:
    calls: int = 0
    peak_resident_weight_bytes: int = 0
    bytes_read: int = 0
    blocks_loaded: int = 0
    read_seconds: float = 0.0  # I/O time (read + checksum), mostly hidden behind compute
    stall_seconds: float = 0.0  # time the forward waited for a block
    compute_seconds: float = 0.0  # forward time not spent waiting
    misses: int = 0  # blocks needed out of the recorded order, loaded on demand

    def as_dict(self) -> dict:
        return asdict(self)


class _NotResident(torch.Tensor):
    """What a swapped-out weight points at: a meta tensor whose metadata (shape, dtype, device) reads
    as usual but whose use in any computation raises, instead of computing on garbage."""

    @staticmethod
    def of(meta: torch.Tensor, name: str) -> "_NotResident":
        t = torch.Tensor._make_subclass(_NotResident, meta.detach(), False)
        t._swapnet_name = name
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if reads_metadata_only(func) or torch_function_name(func) in _PLACEHOLDER_READS:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        names = [a._swapnet_name for a in args if isinstance(a, _NotResident)]
        raise WeightNotResidentError(
            f"{', '.join(names) or 'a weight'} was used while its block is not resident: this forward took a "
            f"path the conversion's trace did not see (re-convert with an input that takes it)")


class _Binder:
    """Points a unit's module attributes at views of a byte buffer, or back at a not-resident placeholder."""

    def __init__(self, module: nn.Module, units: list[Unit]):
        modules = dict(module.named_modules())
        self.slots: dict[int, list[tuple]] = {}
        for u in units:
            entries = []
            for t in u.tensors:
                for path, attr, kind in t.bindings:
                    m = modules.get(path)
                    if m is None:
                        raise StoreMismatchError(f"the store binds '{t.name}' to module '{path}', which the model lacks")
                    table = m._parameters if kind == "param" else m._buffers
                    placeholder = _NotResident.of(table[attr], f"{path}.{attr}" if path else attr)
                    table[attr] = placeholder
                    entries.append((table, attr, kind == "param", t.dtype, t.shape, t.offset, t.nbytes, placeholder))
            self.slots[u.index] = entries

    def views(self, unit: Unit, base: torch.Tensor, offset: int) -> list[tuple[dict, str, torch.Tensor]]:
        """(table, attribute, tensor) for each of the unit's bindings, the tensors cut from `base`."""
        out = []
        for table, attr, is_param, dtype, shape, off, n, _placeholder in self.slots[unit.index]:
            view = base[offset + off:offset + off + n].view(dtype).view(shape)
            out.append((table, attr, nn.Parameter(view, requires_grad=False) if is_param else view))
        return out

    def bind(self, unit: Unit, base: torch.Tensor, offset: int) -> None:
        for table, attr, tensor in self.views(unit, base, offset):
            table[attr] = tensor

    def unbind(self, unit: Unit) -> None:
        for table, attr, _p, _d, _s, _o, _n, placeholder in self.slots[unit.index]:
            table[attr] = placeholder


@dataclass
class _Resident:
    side: int
    base: torch.Tensor  # the bytes the block's views are cut from (the arena, or its file mapping)
    offset: int  # where the block starts in base
    ready: object = None  # discrete GPU: the event its copy into the arena records


class SwapModel:
    """Callable like the original module; peak weight memory bounded by the plan's arena.
    (swapnet_core.open_swapped makes one from a budget and a plan kind.)

    store:  a BlockStore or its path.      plan: a Plan for this store (swapnet_core.plan).
    device: 'cpu' or 'cuda[:N]'.            io: 'direct' (O_DIRECT into the arena) or 'mmap'.
    verify: "first" checks each unit's CRC32 on its first read and whenever the file changes;
            "always" on every read; "never".
    arena:  a region of a shared ArenaMemory (a scheduler's); default: its own.
    window: where blocks stream in (a scheduler's window, shared by models that run one at a time);
            default: the end of `arena`, plan.swap_bytes long.
    """

    def __init__(self, store: BlockStore | str, plan: Plan, *, device: str | torch.device = "cpu",
                 io: str = "direct", verify: str = "first", arena: ArenaRegion | None = None,
                 window: SwapWindow | None = None):
        self.store = store if isinstance(store, BlockStore) else BlockStore(store)
        self.device = torch.device(device)
        if io == "mmap" and self.device.type != "cpu":
            raise ValueError("io='mmap' computes on mapped file pages, which only the CPU can; use io='direct'")
        if not isinstance(plan, Plan):
            raise TypeError(f"SwapModel takes a Plan, not {type(plan).__name__} (swapnet_core.open_swapped "
                            f"makes one from a budget and a plan kind)")
        self.budget_bytes = plan.budget_bytes
        self.plan = plan
        self.io, self.verify = io, verify
        self.stats = SwapStats()
        self.on_block_boundary = None  # called with the block about to run, at each block transition
        self.on_block_entered = None  # called with that block once it is resident (its predecessor gone)
        self.read_log: deque | None = None  # (block, start, end) of each read, when a deque is set
        self.reads: deque[tuple[int, float]] = deque(maxlen=READS_KEPT)  # (bytes, seconds) per block read
        self.computes: deque[float] = deque(maxlen=CALLS_KEPT)  # seconds per call not spent waiting for a read
        self._block_of = self.plan.block_of_unit()
        self._lock = threading.Lock()
        self._resident: dict[int, _Resident] = {}  # swapped blocks now in the swap region
        self._fixed = {b.index for b in self.plan.blocks if b.resident}  # loaded once, next to the pinned tensors
        swapped = self.plan.swapped_sequence
        self._first_swapped = swapped[0] if swapped else None
        self._next_swapped = dict(zip(swapped, swapped[1:]))  # resident blocks between them run from the arena
        self._pending: tuple[int, int, Future] | None = None  # (block, side, read): the read awaited next
        self._queued: tuple[int, int, Future] | None = None  # the read behind it (only while one is pending)
        self._current: int | None = None
        self._always_stale = False  # a failed re-read left the arena's fixed part unusable
        self._hooks: list = []
        self._always: list[int] = []  # unit indices of the pinned tensors and resident blocks
        self._fixed_runs: list[tuple[list[Unit], int]] = []  # (consecutive units, arena offset): one read each
        self._io = self._reader = self._arena = self._memory = self._binder = self._stager = None
        # (block, side) -> its bindings cut from the window once: a block lands at one of two places, and
        # cutting views and Parameters per call cost 4-22 ms a forward (30-68 blocks, beside the I/O thread)
        self._window_views: dict[tuple[int, int], list[tuple[dict, str, torch.Tensor]]] = {}
        self._window_views_base: torch.Tensor | None = None
        self._closed = False
        try:
            self._open(arena, window)
        except BaseException:
            # a store that fails its first read (a corrupt unit) must not leak the descriptor, the
            # I/O thread or the arena: a scheduler retries a failing model at every job
            self.close()
            raise

    def _open(self, arena: ArenaRegion | None, window: SwapWindow | None) -> None:
        units = self.store.units
        self.module = self.store.build_skeleton()
        self._binder = _Binder(self.module, units)
        fixed = self.plan.pinned_bytes + self.plan.resident_bytes
        streams = self.io == "direct" and window is None  # its blocks stream into its own region
        arena_bytes = fixed + (self.plan.swap_bytes if streams else 0)
        if window is not None:
            self._check_window(window)
        if arena is None:
            arena = ArenaRegion(ArenaMemory(arena_bytes, self.device), 0, arena_bytes, owned=True)
        elif arena.nbytes < arena_bytes:
            raise ValueError(f"the arena region ({arena.nbytes} bytes) is smaller than the plan needs ({arena_bytes})")
        self._arena, self._memory = arena, arena.memory
        largest = max([b.nbytes for b in self.plan.blocks if not b.resident] + [u.nbytes for u in units])
        self._stager = Stager(self._memory, largest)  # this model's own: no other model's fill can touch it
        self._window = window or SwapWindow(self._memory, arena.offset + fixed, self.plan.swap_bytes)
        self._reader = BlockReader(self.store.weights_path, self.io, self.verify)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="swapnet-io")
        # pinned tensors and resident blocks, wherever they lie in the file, packed in file order at the
        # arena's start: one read per run of consecutive units
        always = [u for u in units if u.pinned] + [units[i] for b in self.plan.blocks if b.resident for i in b.units]
        always.sort(key=lambda u: u.offset)
        self._always = [u.index for u in always]
        if sum(u.nbytes for u in always) != fixed:
            raise StoreMismatchError("the plan's pinned and resident bytes do not match the store's units")
        at = arena.offset
        for u in always:
            if self._fixed_runs and self._fixed_runs[-1][0][-1].end == u.offset:
                self._fixed_runs[-1][0].append(u)
            else:
                self._fixed_runs.append(([u], at))
            self._binder.bind(u, self._memory.compute, at)
            at += u.nbytes
        self._fill_fixed()
        modules = dict(self.module.named_modules())
        self._hooks = [self._hook_unit(u, modules[u.name]) for u in units
                       if not u.pinned and self._block_of.get(u.index) not in self._fixed]
        self._note_resident()

    # -- public --------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        with self._lock, torch.no_grad():
            if self._closed:
                raise RuntimeError("SwapModel is closed")
            start, stalled = time.perf_counter(), self.stats.stall_seconds
            try:
                self._follow_store()
                self._begin()
                return self.module(*args, **kwargs)
            finally:
                self._finish()
                self.stats.calls += 1
                computed = time.perf_counter() - start - (self.stats.stall_seconds - stalled)
                self.stats.compute_seconds += computed
                self.computes.append(computed)

    def prefetch(self, side: int | None = None) -> None:
        """Start reading the first swapped block now, so the next call finds it resident (a scheduler
        calls this for the next job while another model computes). side: the end of the window it
        goes to (0: the start, 1: the end), where another model's block holds the other."""
        with self._lock:
            if self._closed:
                return
            try:
                self._follow_store()
                self._begin(side)
            except (SwapNetError, OSError) as e:  # the call that follows meets it again, typed
                log.debug("prefetch failed: %s", e)

    @property
    def first_block_bytes(self) -> int:
        """Bytes of the block a call reads first (0 if none is swapped)."""
        return self.plan.blocks[self._first_swapped].nbytes if self._first_swapped is not None else 0

    def window_spans(self) -> list[tuple[int, int]]:
        """[start, end) within the window of every block held or being read (called between blocks)."""
        held = [(b, r.side) for b, r in self._resident.items()]
        held += [read[:2] for read in (self._pending, self._queued) if read is not None]
        spans = []
        for b, side in held:
            start = self._side_offset(b, side) - self._window.offset
            spans.append((start, start + self.plan.blocks[b].nbytes))
        return spans

    def side_span(self, side: int) -> tuple[int, int]:
        """[start, end) within the window that this model's first block takes at `side`."""
        n = self.first_block_bytes
        return (0, n) if side == 0 else (self._window.nbytes - n, self._window.nbytes)

    @property
    def window(self) -> SwapWindow:
        return self._window

    def release(self) -> None:
        """Drop every block held in the window (a prefetched first block), so another model may use it."""
        with self._lock:
            if not self._closed:
                self._finish()

    def _check_window(self, window: SwapWindow) -> None:
        if self.io == "direct" and window.nbytes < self.plan.swap_bytes:
            raise ValueError(f"the swap window ({window.nbytes} bytes) is smaller than the plan needs ({self.plan.swap_bytes})")

    def at_sequence_boundary(self, block: int) -> bool:
        """Whether `block` (from on_block_boundary) continues the recorded order: nothing held runs again."""
        return self.plan.blocks[block].in_sequence and (self._current is None or block > self._current)

    def give_way(self) -> None:
        """Drop every block held in the window, from on_block_boundary at a sequence boundary (on the
        thread running this forward), so a preempting job may stream through it; the next block is
        read again when this forward goes on."""
        self._finish()

    def use_window(self, window: SwapWindow) -> None:
        """Stream into `window` from the next call on (a scheduler moves its models to a resized
        window between jobs; whatever this model holds in the old one is dropped first)."""
        self._check_window(window)
        with self._lock:
            if window is not self._window:
                if not self._closed:
                    self._finish()
                self._window = window
                self._window_views, self._window_views_base = {}, None

    def reset_stats(self) -> None:
        """Count from now on (the reads too: a first forward's reads also check every unit's CRC32)."""
        self.stats = SwapStats(peak_resident_weight_bytes=self._resident_bytes())
        self.forget_timings()

    def forget_timings(self) -> None:
        """Calibrate from later calls only (a warm-up's reads check CRCs, its kernels are cold)."""
        self.reads.clear()
        self.computes.clear()

    def close(self) -> None:
        """Free the arena and the I/O thread; the module goes back to meta. Safe on a half-built model."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._io is not None:
                self._finish()
                self._io.shutdown(wait=True)
            self._window_views, self._window_views_base = {}, None
            if self._binder is not None:
                for i in self._always:
                    self._binder.unbind(self.store.units[i])
            for h in self._hooks:
                h.remove()
            if self._reader is not None:
                self._reader.close()
            if self._stager is not None:
                self._stager.close()
            if self._arena is not None and self._arena.owned:
                self._memory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- the store under us ------------------------------------------------------------------------
    def _follow_store(self) -> None:
        """Notice a store re-converted under this model (convert(force=True) swaps the folder, so our
        descriptor still reads the old, deleted file) and reopen it: with the same layout the model
        goes on (every unit checked against the new checksums); with another layout it must be rebuilt.
        Also re-reads the fixed part of the arena when an earlier re-read of it failed."""
        path = self.store.weights_path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise StoreNotFoundError(f"{path} is gone: the store was removed or is being replaced") from None
        if (st.st_dev, st.st_ino) != self._reader.identity:
            new = BlockStore(self.store.path)
            if _layout(new) != _layout(self.store):
                raise StoreMismatchError(
                    f"{self.store.path} was re-converted with another layout ({new.ref}, {len(new.units)} units) "
                    f"than this model was planned for ({self.store.ref}, {len(self.store.units)} units): "
                    f"the model must be reconfigured (close it and open a new SwapModel)")
            reader = BlockReader(new.weights_path, self.io, self._reader.verify)
            self._finish()  # nothing in flight reads through the old descriptor
            self._reader.close()
            old, self._reader, self.store = self.store, reader, new
            log.info("%s was re-converted (store %s -> %s, same layout): reading the new file",
                     self.store.path, old.store_id, new.store_id)
            if any(old.units[i].checksum != new.units[i].checksum for i in self._always):
                self._always_stale = True
        if self._always_stale:
            self._fixed_runs = [([self.store.units[u.index] for u in run], at) for run, at in self._fixed_runs]
            self._fill_fixed()
            self._always_stale = False

    def _fill_fixed(self) -> None:
        for run, at in self._fixed_runs:
            ready = self._stager.fill(self._reader, run, at)
            if ready is not None:
                torch.cuda.current_stream(self.device).wait_event(ready)
            self.stats.bytes_read += run[-1].end - run[0].offset

    # -- swapping --------------------------------------------------------------------------------
    def _hook_unit(self, unit: Unit, module: nn.Module):
        index = unit.index

        def pre_hook(_module, _args):
            b = self._block_of[index]
            if b != self._current:
                if self.on_block_boundary is not None:
                    self.on_block_boundary(b)
                self._enter(b)
                if self.on_block_entered is not None:
                    self.on_block_entered(b)

        return module.register_forward_pre_hook(pre_hook)

    def _begin(self, side: int | None = None) -> None:
        first = self._first_swapped
        if first is not None and first not in self._resident and self._pending is None:
            self._prefetch(first, side)  # read while the prologue and any resident blocks compute

    def _enter(self, b: int) -> None:
        t0 = time.perf_counter()
        blocks = self.plan.blocks
        if b not in self._resident:
            if self._pending is not None and self._pending[0] == b:
                self._queue_next(b)
                try:
                    self._await_pending()
                except (StoreError, OSError):
                    # the prefetch failed (say the file was cut, then restored, since it was issued):
                    # read once more now; a store still broken raises from here
                    self._load_now(b)
            else:
                cur = self._current
                sequential = (blocks[b].in_sequence and self.plan.prefetch == 0
                              and cur is not None and b == self._next_swapped.get(cur))
                if not sequential:
                    self.stats.misses += 1
                self._load_now(b)
        previous, self._current = self._current, b
        if (previous is not None and previous < b and previous in self._resident
                and blocks[previous].in_sequence and blocks[b].in_sequence):
            self._evict(previous)  # recorded order: nothing of an earlier block runs again
        nxt = self._next_swapped.get(b)
        if self.plan.prefetch and nxt is not None and nxt not in self._resident and self._pending is None:
            self._prefetch(nxt)
        self.stats.stall_seconds += time.perf_counter() - t0

    def _queue_next(self, b: int) -> None:
        """Entering b, whose read is in flight, in the recorded order: the block before it has finished
        computing, so free its side now and queue the read after b behind b's. The I/O thread then goes
        from one read straight to the next instead of idling until this thread wakes, binds b and asks
        for the next (about 0.1 ms a block here: a fifth of an I/O-bound forward of 65 blocks)."""
        prev, nxt, blocks = self._current, self._next_swapped.get(b), self.plan.blocks
        if (not self.plan.prefetch or self._queued is not None or nxt is None or nxt in self._resident
                or prev is None or prev >= b or list(self._resident) != [prev]
                or not (blocks[prev].in_sequence and blocks[b].in_sequence)
                or blocks[b].nbytes + blocks[nxt].nbytes > self._window.nbytes):
            return
        side = self._resident[prev].side
        if side == self._pending[1]:
            return
        self._evict(prev)
        self._queued = (nxt, side, self._io.submit(self._fill, nxt, side))
        self._note_resident(extra=blocks[b].nbytes + blocks[nxt].nbytes)

    def _side_offset(self, b: int, side: int) -> int:
        w = self._window
        return w.offset if side == 0 else w.offset + w.nbytes - self.plan.blocks[b].nbytes

    def _make_room(self, b: int, keep_first: list) -> int:
        """Evict what must go for block b to load; return the side it goes to. Runs at a unit boundary,
        where no swapped unit is mid-forward, so any resident block may go. Keeps the first block of
        `keep_first` that is resident and fits beside b."""
        while self._pending is not None:
            try:
                self._await_pending()
            except (StoreError, OSError):
                pass  # a read ahead that failed: the call that needs its block reads it again, and says why
        keep = next((k for k in keep_first if k in self._resident and
                     self.plan.blocks[k].nbytes + self.plan.blocks[b].nbytes <= self.plan.swap_bytes), None)
        side = 0 if keep is None else 1 - self._resident[keep].side
        for other in [k for k in self._resident if k != keep]:
            self._evict(other)
        return side

    def _prefetch(self, b: int, side: int | None = None) -> None:
        room = self._make_room(b, [self._current])
        side = room if side is None else side
        future = self._io.submit(self._fill, b, side)
        self._pending = (b, side, future)
        self._note_resident(extra=self.plan.blocks[b].nbytes)

    def _load_now(self, b: int) -> None:
        # a detour (data-dependent branch) may run inside the current block's forward, and usually
        # returns to the recorded order: keep the current block, else the next one
        cur = self._current
        upcoming = self._next_swapped.get(cur)
        side = self._make_room(b, [cur, upcoming])
        self._note_resident(extra=self.plan.blocks[b].nbytes)
        self._resident[b] = self._collect(self._fill(b, side))

    def _await_pending(self) -> None:
        b, _side, future = self._pending
        self._pending, self._queued = self._queued, None  # the queued read is the next one awaited
        self._resident[b] = self._collect(future.result())

    def _collect(self, result) -> _Resident:
        b, resident, nbytes, seconds = result
        block = self.plan.blocks[b]
        if resident.ready is not None:  # the compute stream waits for the copy, the host does not
            torch.cuda.current_stream(self.device).wait_event(resident.ready)
        for table, attr, tensor in self._block_views(b, resident):
            table[attr] = tensor
        self.stats.bytes_read += nbytes
        self.stats.read_seconds += seconds
        self.stats.blocks_loaded += 1
        self.reads.append((nbytes, seconds))
        return resident

    def _block_views(self, b: int, resident: _Resident) -> list[tuple[dict, str, torch.Tensor]]:
        """Block b's bindings where it now lies: cut once per place in the window (mmap maps anew each
        read, so its views are cut every time)."""
        block = self.plan.blocks[b]

        def cut():
            return [v for i in block.units for v in self._binder.views(
                self.store.units[i], resident.base, resident.offset + self.store.units[i].offset - block.offset)]

        if self.io == "mmap":
            return cut()
        if resident.base is not self._window_views_base:  # another window (or its memory): start again
            self._window_views, self._window_views_base = {}, resident.base
        key = (b, resident.side)
        if key not in self._window_views:
            self._window_views[key] = cut()
        return self._window_views[key]

    def drop_window_views(self) -> None:
        """Forget the tensors cut from the window (they keep its memory alive): before it is freed."""
        with self._lock:
            self._window_views, self._window_views_base = {}, None

    def _fill(self, b: int, side: int):
        """Read block b into its side of the swap region (on the I/O thread for prefetches). Binding
        happens on the compute thread, so what a forward sees never depends on the I/O thread's timing."""
        t0 = time.perf_counter()
        block = self.plan.blocks[b]
        units = [self.store.units[i] for i in block.units]
        freed = self._window.freed.pop(side, None)  # kernels queued before it may still read this side
        ready = None
        if self.io == "mmap":
            # the tensor keeps the mapping alive; it is unmapped when the last view of it dies
            base, offset = torch.frombuffer(self._reader.map(units), dtype=torch.uint8), 0
        else:
            offset = self._side_offset(b, side)
            ready = self._stager.fill(self._reader, units, offset, slot_free=freed, memory=self._window.memory)
            base = self._window.memory.compute
        t1 = time.perf_counter()
        if self.read_log is not None:  # on the monotonic clock, like a scheduler's deadlines
            now = time.monotonic()
            self.read_log.append((b, now - (t1 - t0), now))
        return b, _Resident(side, base, offset, ready), block.nbytes, t1 - t0

    def _evict(self, b: int) -> None:
        resident = self._resident.pop(b)
        for i in self.plan.blocks[b].units:
            self._binder.unbind(self.store.units[i])
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))  # the model's device and compute stream
            self._window.freed[resident.side] = event  # the next fill of this side (any model's) waits for it
        if self._current == b:
            self._current = None

    def _finish(self) -> None:
        while self._pending is not None:
            try:
                self._await_pending()
            except Exception:
                pass  # the forward already failed or finished; nothing waits for this block
        for b in list(self._resident):
            self._evict(b)
        self._current = None

    def _resident_bytes(self) -> int:
        return (self.plan.pinned_bytes + self.plan.resident_bytes
                + sum(self.plan.blocks[b].nbytes for b in self._resident))

    def _note_resident(self, extra: int = 0) -> None:
        self.stats.peak_resident_weight_bytes = max(self.stats.peak_resident_weight_bytes,
                                                    self._resident_bytes() + extra)


def _layout(store: BlockStore) -> tuple:
    """What a plan and a binding depend on: everything in the manifest but checksums and ids."""
    return (store.ref, store.call, tuple(store.calls),
            tuple(dataclasses.replace(u, checksum=0) for u in store.units))


def load_resident(store: BlockStore | str, device: str | torch.device = "cpu") -> nn.Module:
    """The whole model resident, its tensors views into one buffer read from the store (checksums verified)."""
    store = store if isinstance(store, BlockStore) else BlockStore(store)
    module = store.build_skeleton()
    units = store.units
    if not units:
        return module.to(device)
    device = torch.device(device)
    memory = ArenaMemory(units[-1].end - units[0].offset, device)
    reader = BlockReader(store.weights_path, "direct")
    stager = Stager(memory, max([64 << 20] + [u.nbytes for u in units]))  # staging (discrete GPUs) in pieces
    try:
        if stager.fill(reader, units, 0) is not None:
            torch.cuda.synchronize(device)
    finally:
        reader.close()
        stager.close()
    binder = _Binder(module, units)
    for u in units:
        binder.bind(u, memory.compute, u.offset - units[0].offset)
    module._swapnet_memory = memory  # keeps the buffer alive as long as the module
    return module
