"""How several models lay out one arena (the scheduler's total budget), and what a layout admits.

shared       one worker runs one job at a time, so only the running job streams: each model keeps
             in its own part only what it holds between jobs (pinned tensors and the blocks its plan
             keeps resident), and one streaming window takes the blocks of whichever job runs. The
             window fits the largest stream of any plan, plus, where the total leaves room, the
             largest first block (the next job's, read while a job's last block computes). Admitted
             while the kept parts and the window fit the total.
partitioned  the baseline: each model its budget, rounded down to whole units, laid end to end in
             one buffer, each part with its own swap region (idle between that model's jobs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import BudgetError
from .memory import ArenaMemory, ArenaRegion, SwapWindow
from .plan import Plan
from .sizes import format_bytes
from .store import UNIT_ALIGN

ARENAS = ("shared", "partitioned")


@dataclass(frozen=True)
class Need:
    """What one model's plan takes of a shared arena."""
    kept: int  # held between jobs: pinned tensors and resident blocks
    stream: int  # the swap region its blocks stream through while its job runs
    first: int = 0  # its first swapped block

    @staticmethod
    def of(plan: Plan, io: str) -> Need:
        swapped = plan.swapped_sequence
        stream = plan.swap_bytes if io == "direct" else 0  # mmap: blocks compute on file pages
        first = plan.blocks[swapped[0]].nbytes if swapped and stream else 0
        return Need(plan.pinned_bytes + plan.resident_bytes, stream, first)


def window_bytes(total: int, needs: dict[str, Need]) -> int:
    """The shared window for these plans under `total`; BudgetError (one line) if they do not fit."""
    kept = sum(n.kept for n in needs.values())
    stream = max((n.stream for n in needs.values()), default=0)
    if kept + stream > total:
        raise BudgetError(f"the models keep {format_bytes(kept)} between jobs and stream through a window of "
                          f"{format_bytes(stream)}: {format_bytes(kept + stream)}, over the total {format_bytes(total)}")
    spare = (total - kept - stream) // UNIT_ALIGN * UNIT_ALIGN
    return stream + min(max((n.first for n in needs.values()), default=0), spare)


class SharedArena:
    """Each model's kept part in its own allocation (so one model is re-planned without moving the
    others) and one streaming window; nbytes is what is held, never more than the total admitted."""

    def __init__(self, device: torch.device, io: str):
        self.device, self.io = device, io
        self.kept: dict[str, ArenaMemory] = {}
        self.window: SwapWindow | None = None

    def place(self, name: str, plan: Plan) -> tuple[ArenaRegion, SwapWindow]:
        """Allocate `name`'s kept part for `plan` (replacing its old one) and give the window."""
        self.drop(name)
        need = Need.of(plan, self.io)
        if self.window is None or self.window.nbytes < need.stream:
            raise BudgetError(f"model {name!r} streams through {format_bytes(need.stream)}, more than the window "
                              f"of {format_bytes(self.window.nbytes if self.window else 0)}")
        memory = ArenaMemory(need.kept, self.device)
        self.kept[name] = memory
        return ArenaRegion(memory, 0, need.kept), self.window

    def drop(self, name: str) -> None:
        memory = self.kept.pop(name, None)
        if memory is not None:
            memory.close()

    def resize_window(self, nbytes: int) -> bool:
        """Reallocate the window at `nbytes`; True if it changed (every model must hold nothing in the
        old one and move to the new one)."""
        if self.window is not None and self.window.nbytes == nbytes:
            return False
        if self.window is not None:
            self.window.memory.close()  # first: the memory held never exceeds the total
        self.window = SwapWindow(ArenaMemory(nbytes, self.device), 0, nbytes)
        return True

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.kept.values()) + (self.window.nbytes if self.window else 0)

    def close(self) -> None:
        for name in list(self.kept):
            self.drop(name)
        if self.window is not None:
            self.window.memory.close()
            self.window = None


class PartitionedArena:
    """The baseline: each model its own part of one buffer, its budget rounded down to whole units (a
    plan's arena is made of UNIT_ALIGN-sized units, so it fits; the parts never add up to more than
    the budgets do)."""

    def __init__(self, device: torch.device, budgets: dict[str, int]):
        sizes = {n: b // UNIT_ALIGN * UNIT_ALIGN for n, b in budgets.items()}
        self.memory = ArenaMemory(sum(sizes.values()), device)
        self.regions, offset = {}, 0
        for name, size in sizes.items():
            self.regions[name] = (offset, size)
            offset += size

    def place(self, name: str, plan: Plan) -> tuple[ArenaRegion, None]:
        offset, size = self.regions[name]
        return ArenaRegion(self.memory, offset, size), None

    def drop(self, name: str) -> None:
        pass  # its part stays reserved for it

    @property
    def nbytes(self) -> int:
        return self.memory.nbytes

    def close(self) -> None:
        self.memory.close()
