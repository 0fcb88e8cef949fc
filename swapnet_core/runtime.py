"""SwapModel: a network that runs under a weight budget by swapping blocks in just before they run.

The skeleton lives on torch.device("meta"). Entering a unit's module (a forward pre-hook) makes its
block resident: the block's bytes are read straight into an arena slot and the unit's parameters and
buffers become views of that slot (no copy). While a block computes, the next one is read on an I/O
thread into the other end of the arena. Leaving a block points its tensors back at meta.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .io import BlockReader
from .memory import ArenaMemory
from .models import make_input
from .plan import Plan, make_plan
from .profile import load_profile
from .sizes import parse_size
from .store import BlockStore, Unit


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


class _Binder:
    """Points a unit's module attributes at views of a byte buffer, or back at meta."""

    def __init__(self, module: nn.Module, units: list[Unit]):
        modules = dict(module.named_modules())
        self.slots: dict[int, list[tuple]] = {}
        for u in units:
            entries = []
            for t in u.tensors:
                for path, attr, kind in t.bindings:
                    m = modules[path]
                    table = m._parameters if kind == "param" else m._buffers
                    entries.append((table, attr, kind == "param", t.dtype, t.shape, t.offset, t.nbytes, table[attr]))
            self.slots[u.index] = entries

    def bind(self, unit: Unit, base: torch.Tensor, offset: int) -> None:
        for table, attr, is_param, dtype, shape, off, n, _meta in self.slots[unit.index]:
            view = base[offset + off:offset + off + n].view(dtype).view(shape)
            table[attr] = nn.Parameter(view, requires_grad=False) if is_param else view

    def unbind(self, unit: Unit) -> None:
        for table, attr, _p, _d, _s, _o, _n, meta in self.slots[unit.index]:
            table[attr] = meta


@dataclass
class _Resident:
    side: int
    mapping: object = None  # the file mapping in mmap mode


class SwapModel:
    """Callable like the original module; peak weight memory bounded by the plan's arena.

    store:  a BlockStore or its path.      budget_bytes: bytes, or a string such as '96MB', '25%', '1/4'.
    device: 'cpu' or 'cuda[:N]'.            io: 'direct' (O_DIRECT into the arena) or 'mmap'.
    prefetch: 1 reads the next block while the current one computes; 0 reads on demand.
    """

    def __init__(self, store: BlockStore | str, budget_bytes: int | str, device: str | torch.device = "cpu",
                 io: str = "direct", prefetch: int = 1, plan: Plan | str = "optimal", verify: bool = True,
                 example_input: torch.Tensor | None = None, activation_reserve: int = 0):
        self.store = store if isinstance(store, BlockStore) else BlockStore(store)
        self.device = torch.device(device)
        if io == "mmap" and self.device.type != "cpu":
            raise ValueError("io='mmap' computes on mapped file pages, which only the CPU can; use io='direct'")
        self.budget_bytes = parse_size(budget_bytes, of=self.store.total_bytes)
        if not isinstance(plan, Plan):
            profile = None
            if plan == "optimal":
                x = example_input if example_input is not None else make_input(self.store.default_input)
                profile = load_profile(self.store, x, self.device, io, budget_bytes=self.budget_bytes)
            plan = make_plan(self.store, self.budget_bytes, plan, profile, prefetch, activation_reserve)
        self.plan = plan
        self.io = io
        self.stats = SwapStats()
        self.module = self.store.build_skeleton()
        units = self.store.units
        self._binder = _Binder(self.module, units)
        self._reader = BlockReader(self.store.weights_path, io, verify)
        fixed = [b for b in self.plan.blocks if b.resident]
        self._swap_base = self.plan.pinned_bytes + self.plan.resident_bytes
        arena_bytes = self._swap_base + (self.plan.swap_bytes if io == "direct" else 0)
        self._memory = ArenaMemory(arena_bytes, self.device,
                                   staging_bytes=max([self._swap_base] + [b.nbytes for b in self.plan.blocks]))
        self._block_of = self.plan.block_of_unit()
        self._lock = threading.Lock()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="swapnet-io")
        self._resident: dict[int, _Resident] = {}  # swapped blocks now in the swap region
        self._fixed = {b.index for b in fixed}  # blocks loaded once, next to the pinned tensors
        self._pending: tuple[int, int, Future] | None = None
        self._current: int | None = None
        self._closed = False
        # pinned tensors and resident blocks: the file's leading units, one read into the arena's start
        always = [u for u in units if u.pinned] + [self.store.units[i] for b in fixed for i in b.units]
        always.sort(key=lambda u: u.offset)
        if always:
            if always[-1].end - always[0].offset != self._swap_base:
                raise RuntimeError("pinned tensors and resident blocks must lead the store file")
            self.stats.bytes_read += self._memory.fill(self._reader, always, 0)
            for u in always:
                self._binder.bind(u, self._memory.compute, u.offset - always[0].offset)
        self._hooks = [self._hook_unit(u) for u in units if not u.pinned and self._block_of.get(u.index) not in self._fixed]
        self._note_resident()

    # -- public --------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        with self._lock, torch.no_grad():
            if self._closed:
                raise RuntimeError("SwapModel is closed")
            start, stalled = time.perf_counter(), self.stats.stall_seconds
            ok = False
            try:
                self._begin()
                out = self.module(*args, **kwargs)
                ok = True
                return out
            finally:
                self._finish()
                self.stats.calls += 1
                self.stats.compute_seconds += time.perf_counter() - start - (self.stats.stall_seconds - stalled)

    def reset_stats(self) -> None:
        self.stats = SwapStats(peak_resident_weight_bytes=self._resident_bytes())

    def close(self) -> None:
        """Free the arena and the I/O thread; the module goes back to meta."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._finish()
            self._io.shutdown(wait=True)
            for u in self.store.units:
                if u.pinned or self._block_of.get(u.index) in self._fixed:
                    self._binder.unbind(u)
            for h in self._hooks:
                h.remove()
            self._reader.close()
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

    # -- swapping --------------------------------------------------------------------------------
    def _hook_unit(self, unit: Unit):
        index = unit.index
        module = dict(self.module.named_modules())[unit.name]

        def pre_hook(_module, _args):
            if self._block_of[index] != self._current:
                self._enter(self._block_of[index])

        return module.register_forward_pre_hook(pre_hook)

    def _begin(self) -> None:
        first = next((b.index for b in self.plan.blocks if b.in_sequence and not b.resident), None)
        if first is not None and first not in self._resident and self._pending is None:
            self._prefetch(first)  # read while the prologue and any resident blocks compute

    def _enter(self, b: int) -> None:
        t0 = time.perf_counter()
        blocks = self.plan.blocks
        if b not in self._resident:
            if self._pending is not None and self._pending[0] == b:
                self._await_pending()
            else:
                cur = self._current
                sequential = (blocks[b].in_sequence and self.plan.prefetch == 0
                              and cur is not None and b == cur + 1)
                if not sequential:
                    self.stats.misses += 1
                self._load_now(b)
        previous, self._current = self._current, b
        if (previous is not None and previous < b and previous in self._resident
                and blocks[previous].in_sequence and blocks[b].in_sequence):
            self._evict(previous)  # recorded order: nothing of an earlier block runs again
        nxt = b + 1
        if (self.plan.prefetch and blocks[b].in_sequence and nxt < self.plan.n_sequence
                and nxt not in self._resident and self._pending is None):
            self._prefetch(nxt)
        self.stats.stall_seconds += time.perf_counter() - t0

    def _side_offset(self, b: int, side: int) -> int:
        if side == 0:
            return self._swap_base
        return self._swap_base + self.plan.swap_bytes - self.plan.blocks[b].nbytes

    def _make_room(self, b: int, keep_first: list) -> int:
        """Evict what must go for block b to load; return the side it goes to. Runs at a unit boundary,
        where no swapped unit is mid-forward, so any resident block may go. Keeps the first block of
        `keep_first` that is resident and fits beside b."""
        if self._pending is not None:
            self._await_pending()
        keep = next((k for k in keep_first if k in self._resident and
                     self.plan.blocks[k].nbytes + self.plan.blocks[b].nbytes <= self.plan.swap_bytes), None)
        side = 0 if keep is None else 1 - self._resident[keep].side
        for other in [k for k in self._resident if k != keep]:
            self._evict(other)
        return side

    def _prefetch(self, b: int) -> None:
        side = self._make_room(b, [self._current])
        future = self._io.submit(self._fill, b, side)
        self._pending = (b, side, future)
        self._note_resident(extra=self.plan.blocks[b].nbytes)

    def _load_now(self, b: int) -> None:
        # a detour (data-dependent branch) usually returns to the recorded order: keep the next block
        cur = self._current
        upcoming = cur + 1 if cur is not None and self.plan.blocks[cur].in_sequence else None
        side = self._make_room(b, [upcoming, cur])
        self._note_resident(extra=self.plan.blocks[b].nbytes)
        self._resident[b] = self._collect(self._fill(b, side))

    def _await_pending(self) -> None:
        b, _side, future = self._pending
        self._pending = None
        self._resident[b] = self._collect(future.result())

    def _collect(self, result) -> _Resident:
        resident, nbytes, seconds = result
        self.stats.bytes_read += nbytes
        self.stats.read_seconds += seconds
        self.stats.blocks_loaded += 1
        return resident

    def _fill(self, b: int, side: int):
        """Read block b and bind its units (on the I/O thread for prefetches)."""
        t0 = time.perf_counter()
        block = self.plan.blocks[b]
        units = [self.store.units[i] for i in block.units]
        if self.io == "mmap":
            mapping = self._reader.map(units)
            base, offset = torch.frombuffer(mapping, dtype=torch.uint8), 0
        else:
            mapping, offset = None, self._side_offset(b, side)
            self._memory.fill(self._reader, units, offset)
            base = self._memory.compute
        for u in units:
            self._binder.bind(u, base, offset + u.offset - block.offset)
        return _Resident(side, mapping), block.nbytes, time.perf_counter() - t0

    def _evict(self, b: int) -> None:
        resident = self._resident.pop(b)
        for i in self.plan.blocks[b].units:
            self._binder.unbind(self.store.units[i])
        if resident.mapping is not None:
            try:
                resident.mapping.close()
            except BufferError:  # a view survived (never expected): the mapping closes when it dies
                pass
        if self._current == b:
            self._current = None

    def _finish(self) -> None:
        if self._pending is not None:
            try:
                self._await_pending()
            except Exception:
                pass  # the forward already failed or finished; nothing waits for this block
        for b in list(self._resident):
            self._evict(b)
        self._current = None

    def _resident_bytes(self) -> int:
        return self._swap_base + sum(self.plan.blocks[b].nbytes for b in self._resident)

    def _note_resident(self, extra: int = 0) -> None:
        self.stats.peak_resident_weight_bytes = max(self.stats.peak_resident_weight_bytes,
                                                    self._resident_bytes() + extra)


def load_resident(store: BlockStore | str, device: str | torch.device = "cpu") -> nn.Module:
    """The whole model resident, its tensors views into one buffer read from the store (checksums verified)."""
    store = store if isinstance(store, BlockStore) else BlockStore(store)
    module = store.build_skeleton()
    units = store.units
    if not units:
        return module.to(device)
    memory = ArenaMemory(units[-1].end - units[0].offset, torch.device(device), staging_bytes=units[-1].end - units[0].offset)
    reader = BlockReader(store.weights_path, "direct")
    try:
        memory.fill(reader, units, 0)
    finally:
        reader.close()
    binder = _Binder(module, units)
    for u in units:
        binder.bind(u, memory.compute, u.offset - units[0].offset)
    module._swapnet_memory = memory  # keeps the buffer alive as long as the module
    return module
