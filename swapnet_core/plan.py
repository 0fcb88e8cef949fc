"""Cutting a store's units into blocks under a memory budget.

The swap region holds at most two blocks at once (the running one and the one being read), laid
from its two ends, so two consecutive blocks fit whenever their sizes add up to its capacity.
Blocks never split a segment: a run of units whose uses interleave in the recorded call order
(an FPN head running once per level) must be resident together.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BudgetTooSmallError
from .sizes import format_bytes
from .store import BlockStore

PREFETCH_DEPTHS = (0, 1)


@dataclass(frozen=True)
class Block:
    index: int
    units: tuple[int, ...]  # consecutive unit indices of the store
    offset: int  # file offset of the first unit
    nbytes: int
    in_sequence: bool  # visited in order on every call; False for units the trace never saw


@dataclass(frozen=True)
class Plan:
    kind: str
    budget_bytes: int
    prefetch: int
    pinned_bytes: int
    swap_bytes: int  # capacity of the swap region
    blocks: tuple[Block, ...]
    keep_resident: bool = False  # everything fits: load once, keep between calls

    @property
    def arena_bytes(self) -> int:
        return self.pinned_bytes + self.swap_bytes

    @property
    def n_sequence(self) -> int:
        return sum(b.in_sequence for b in self.blocks)

    def block_of_unit(self) -> dict[int, int]:
        return {u: b.index for b in self.blocks for u in b.units}

    def describe(self) -> str:
        sizes = [b.nbytes for b in self.blocks]
        return (f"{self.kind} plan: {len(self.blocks)} blocks ({self.n_sequence} in sequence), largest "
                f"{format_bytes(max(sizes, default=0))}, pinned {format_bytes(self.pinned_bytes)}, "
                f"arena {format_bytes(self.arena_bytes)} of budget {format_bytes(self.budget_bytes)}")


def segments(store: BlockStore) -> tuple[list[list[int]], list[list[int]]]:
    """(segments visited in order, segments of never-called units): the smallest groups of
    consecutive units a block may hold."""
    traced = [u.index for u in store.units if u.traced and not u.pinned]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for pos, unit in enumerate(store.calls):
        first.setdefault(unit, pos)
        last[unit] = pos
    ordered, current, reach = [], [], -1
    for unit in traced:
        if current and reach < first.get(unit, reach + 1):
            ordered.append(current)
            current = []
        current.append(unit)
        reach = max(reach, last.get(unit, -1))
    if current:
        ordered.append(current)
    detached = [[u.index] for u in store.units if not u.traced and not u.pinned]
    return ordered, detached


def _nbytes(store: BlockStore, units: list[int]) -> int:
    return store.units[units[-1]].end - store.units[units[0]].offset


def minimum_budget(store: BlockStore, prefetch: int = 1) -> int:
    ordered, detached = segments(store)
    largest = max((_nbytes(store, s) for s in ordered + detached), default=0)
    return store.pinned_bytes + (prefetch + 1) * largest


def plan_greedy(store: BlockStore, budget_bytes: int, prefetch: int = 1) -> Plan:
    """Pack segments in order into blocks of at most (budget - pinned) / (prefetch + 1) bytes."""
    if prefetch not in PREFETCH_DEPTHS:
        raise ValueError(f"prefetch must be one of {PREFETCH_DEPTHS}, got {prefetch!r}")
    minimum = minimum_budget(store, prefetch)
    if budget_bytes < minimum:
        ordered, detached = segments(store)
        big = max(ordered + detached, key=lambda s: _nbytes(store, s))
        raise BudgetTooSmallError(budget_bytes, minimum,
                                  f"pinned {format_bytes(store.pinned_bytes)} + {prefetch + 1} x the largest "
                                  f"indivisible segment ({store.units[big[0]].name}, "
                                  f"{format_bytes(_nbytes(store, big))})")
    ordered, detached = segments(store)
    swap_total = store.total_bytes - store.pinned_bytes
    if budget_bytes >= store.total_bytes:
        units = tuple(u for s in ordered + detached for u in s)
        blocks = (Block(0, units, store.units[units[0]].offset, _nbytes(store, list(units)), True),) if units else ()
        return Plan("greedy", budget_bytes, prefetch, store.pinned_bytes, swap_total, blocks, keep_resident=True)
    slot = (budget_bytes - store.pinned_bytes) // (prefetch + 1)
    blocks: list[Block] = []

    def close(group: list[int], in_sequence: bool) -> None:
        blocks.append(Block(len(blocks), tuple(group), store.units[group[0]].offset,
                            _nbytes(store, group), in_sequence))

    group: list[int] = []
    for seg in ordered:
        if group and _nbytes(store, group + seg) > slot:
            close(group, True)
            group = []
        group = group + seg
    if group:
        close(group, True)
    for seg in detached:
        close(seg, False)
    largest = max((b.nbytes for b in blocks), default=0)
    return Plan("greedy", budget_bytes, prefetch, store.pinned_bytes, (prefetch + 1) * largest, tuple(blocks))
