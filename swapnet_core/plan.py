"""Cutting a store's units into blocks under a memory budget, and predicting what a plan costs.

The arena holds the pinned tensors, any leading blocks kept resident between calls, and a swap
region. The swap region holds at most two blocks at once (the one computing and the one being read),
laid from its two ends, so consecutive blocks k and k+1 need size_k + size_k+1 <= its capacity.
Blocks never split a segment: a run of units whose uses interleave in the recorded call order (an
FPN head running once per level) must be resident together.

Cost model (prefetch=1): the read of the first swapped block starts when the call starts; block k+1
is read while block k computes; so latency = max(prologue + resident compute, R_0)
+ sum_k max(C_k, R_k+1) + C_last, with R = read latency + bytes / bandwidth (prefetch=0: every
read is exposed).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .errors import BudgetTooSmallError
from .sizes import format_bytes
from .store import BlockStore

if TYPE_CHECKING:
    from .profile import Profile

PREFETCH_DEPTHS = (0, 1)
PLAN_KINDS = ("optimal", "greedy", "uniform")


@dataclass(frozen=True)
class Block:
    index: int
    units: tuple[int, ...]  # consecutive unit indices of the store
    offset: int  # file offset of the first unit
    nbytes: int
    in_sequence: bool  # visited in order on every call; False for units the trace never saw
    resident: bool = False  # loaded once, kept between calls


@dataclass(frozen=True)
class Prediction:
    latency_s: float
    compute_s: float
    exposed_io_s: float
    read_bytes: int
    peak_bytes: int | None  # arena + activation peak, where the activation peak is known


@dataclass(frozen=True)
class Plan:
    kind: str
    budget_bytes: int
    prefetch: int
    pinned_bytes: int
    swap_bytes: int  # capacity of the swap region
    blocks: tuple[Block, ...]
    activation_reserve: int = 0
    prediction: Prediction | None = None

    @property
    def resident_bytes(self) -> int:
        return sum(b.nbytes for b in self.blocks if b.resident)

    @property
    def arena_bytes(self) -> int:
        return self.pinned_bytes + self.resident_bytes + self.swap_bytes

    @property
    def keep_resident(self) -> bool:
        return bool(self.blocks) and all(b.resident for b in self.blocks)

    @property
    def n_sequence(self) -> int:
        return sum(b.in_sequence for b in self.blocks)

    def block_of_unit(self) -> dict[int, int]:
        return {u: b.index for b in self.blocks for u in b.units}

    def describe(self) -> str:
        swapped = [b.nbytes for b in self.blocks if not b.resident]
        n = len(self.blocks)
        text = (f"{self.kind} plan: {n} block{'s' * (n != 1)} ({sum(b.resident for b in self.blocks)} resident), "
                f"largest swapped {format_bytes(max(swapped, default=0))}, pinned {format_bytes(self.pinned_bytes)}, "
                f"arena {format_bytes(self.arena_bytes)} of budget {format_bytes(self.budget_bytes)}")
        if self.prediction:
            text += f", predicted {self.prediction.latency_s * 1000:.1f} ms"
        return text

    def as_dict(self) -> dict:
        return {"kind": self.kind, "budget_bytes": self.budget_bytes, "prefetch": self.prefetch,
                "activation_reserve": self.activation_reserve, "pinned_bytes": self.pinned_bytes,
                "resident_bytes": self.resident_bytes, "swap_bytes": self.swap_bytes, "arena_bytes": self.arena_bytes,
                "blocks": [{"units": [b.units[0], b.units[-1]], "nbytes": b.nbytes, "resident": b.resident,
                            "in_sequence": b.in_sequence} for b in self.blocks],
                "prediction": None if self.prediction is None else self.prediction.__dict__}


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


def _nbytes(store: BlockStore, units) -> int:
    return store.units[units[-1]].end - store.units[units[0]].offset


def _swap_need(sizes: list[int], prefetch: int, detached: list[int]) -> int:
    """Swap capacity that blocks of these sizes (in order) need: neighbours side by side (prefetch),
    and any never-traced block beside any block, since a detour may run inside a block's forward."""
    need = max(sizes + detached, default=0)
    if prefetch:
        need = max([need] + [a + b for a, b in zip(sizes, sizes[1:])])
    if detached:
        need = max(need, max(sizes, default=0) + max(detached))
    return need


def minimum_budget(store: BlockStore, prefetch: int = 1, activation_reserve: int = 0) -> int:
    """The exact smallest feasible budget: every segment its own block (merging only adds bytes)."""
    ordered, detached = segments(store)
    need = _swap_need([_nbytes(store, s) for s in ordered], prefetch, [_nbytes(store, s) for s in detached])
    return store.pinned_bytes + need + activation_reserve


def _check_budget(store: BlockStore, budget: int, prefetch: int, reserve: int) -> None:
    if prefetch not in PREFETCH_DEPTHS:
        raise ValueError(f"prefetch must be one of {PREFETCH_DEPTHS}, got {prefetch!r}")
    minimum = minimum_budget(store, prefetch, reserve)
    if budget < minimum:
        ordered, detached = segments(store)
        big = max(ordered + detached, key=lambda s: _nbytes(store, s))
        raise BudgetTooSmallError(budget, minimum,
                                  f"pinned {format_bytes(store.pinned_bytes)}"
                                  + (f" + activation reserve {format_bytes(reserve)}" if reserve else "")
                                  + f" + swap space for the largest {'pair of neighbouring ' if prefetch else ''}"
                                    f"indivisible segments (largest: {store.units[big[0]].name}, "
                                    f"{format_bytes(_nbytes(store, big))})")


def _make_plan(store, kind, budget, prefetch, reserve, groups, n_resident, profile) -> Plan:
    """A plan from groups of segment indices (in order); the first n_resident groups stay resident."""
    ordered, detached = segments(store)
    blocks = []
    for k, group in enumerate(groups):
        units = tuple(u for s in group for u in ordered[s])
        blocks.append(Block(k, units, store.units[units[0]].offset, _nbytes(store, units), True, k < n_resident))
    for seg in detached:
        blocks.append(Block(len(blocks), tuple(seg), store.units[seg[0]].offset, _nbytes(store, seg), False))
    sizes = [b.nbytes for b in blocks if b.in_sequence and not b.resident]
    swap = _swap_need(sizes, prefetch, [b.nbytes for b in blocks if not b.in_sequence])
    plan = Plan(kind, budget, prefetch, store.pinned_bytes, swap, tuple(blocks), reserve)
    return replace(plan, prediction=predict(store, plan, profile)) if profile else plan


def _all_resident(store, kind, budget, prefetch, reserve, profile) -> Plan | None:
    ordered, _ = segments(store)
    if budget - reserve >= store.total_bytes and ordered:
        return _make_plan(store, kind, budget, prefetch, reserve, [list(range(len(ordered)))], 1, profile)
    return None


def plan_greedy(store: BlockStore, budget_bytes: int, prefetch: int = 1, activation_reserve: int = 0,
                profile: Profile | None = None) -> Plan:
    """Pack segments in order into blocks of at most (budget - pinned - reserve) / (prefetch + 1) bytes;
    where one segment is larger than that, it goes alone."""
    _check_budget(store, budget_bytes, prefetch, activation_reserve)
    whole = _all_resident(store, "greedy", budget_bytes, prefetch, activation_reserve, profile)
    if whole:
        return whole
    ordered, _ = segments(store)
    slot = (budget_bytes - activation_reserve - store.pinned_bytes) // (prefetch + 1)
    groups, group = [], []
    for s in range(len(ordered)):
        if group and _nbytes(store, ordered[group[0]] + ordered[s]) > slot:
            groups.append(group)
            group = []
        group.append(s)
    if group:
        groups.append(group)
    plan = _make_plan(store, "greedy", budget_bytes, prefetch, activation_reserve, groups, 0, profile)
    return plan if plan.arena_bytes + activation_reserve <= budget_bytes else \
        _finest(store, "greedy", budget_bytes, prefetch, activation_reserve, profile)


def _finest(store, kind, budget, prefetch, reserve, profile) -> Plan:
    ordered, _ = segments(store)
    return _make_plan(store, kind, budget, prefetch, reserve, [[s] for s in range(len(ordered))], 0, profile)


def plan_uniform(store: BlockStore, budget_bytes: int, prefetch: int = 1, activation_reserve: int = 0,
                 profile: Profile | None = None) -> Plan:
    """The fewest blocks of about equal bytes that fit the budget."""
    _check_budget(store, budget_bytes, prefetch, activation_reserve)
    whole = _all_resident(store, "uniform", budget_bytes, prefetch, activation_reserve, profile)
    if whole:
        return whole
    ordered, _ = segments(store)
    ends = np.cumsum([_nbytes(store, s) for s in ordered])
    for n in range(1, len(ordered) + 1):
        cuts = sorted({int(np.searchsorted(ends, ends[-1] * k / n)) for k in range(1, n)} - {len(ordered) - 1})
        bounds = [0] + [c + 1 for c in cuts] + [len(ordered)]
        groups = [list(range(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a]
        plan = _make_plan(store, "uniform", budget_bytes, prefetch, activation_reserve, groups, 0, profile)
        if plan.arena_bytes + activation_reserve <= budget_bytes:
            return plan
    return _finest(store, "uniform", budget_bytes, prefetch, activation_reserve, profile)


def plan_optimal(store: BlockStore, budget_bytes: int, profile: Profile, prefetch: int = 1,
                 activation_reserve: int = 0) -> Plan:
    """Block boundaries (and a resident prefix) that minimise predicted latency under the budget,
    by dynamic programming over the execution-ordered segments."""
    _check_budget(store, budget_bytes, prefetch, activation_reserve)
    whole = _all_resident(store, "optimal", budget_bytes, prefetch, activation_reserve, profile)
    if whole:
        return whole
    ordered, detached = segments(store)
    seg_compute = [sum(profile.compute.unit_s.get(u, 0.0) for u in s) for s in ordered]
    detached_need = max((_nbytes(store, s) for s in detached), default=0)
    room = budget_bytes - activation_reserve - store.pinned_bytes  # resident prefix + swap region
    # File offsets make block bytes exact (units are contiguous): bytes(i..j) = off[j+1] - off[i].
    # File offsets make block bytes exact (units are contiguous): bytes(i..j) = off[j+1] - off[i].
    off = [store.units[s[0]].offset for s in ordered] + [store.units[ordered[-1][-1]].end]
    best = None
    for q in _prefix_candidates(off, room):
        cap = room - (off[q] - off[0])
        if cap < detached_need:
            continue
        result = optimal_cut([b - a for a, b in zip(off[q:], off[q + 1:])], seg_compute[q:], cap,
                             head=profile.compute.prologue_s + sum(seg_compute[:q]),
                             latency_s=profile.io.latency_s, bandwidth=profile.io.bandwidth_bytes_per_s,
                             prefetch=prefetch)
        if result is not None and (best is None or result[0] < best[0]):
            best = (result[0], q, [[q + s for s in g] for g in result[1]])
    _, q, groups = best
    groups = ([list(range(q))] if q else []) + groups
    return _make_plan(store, "optimal", budget_bytes, prefetch, activation_reserve, groups, 1 if q else 0, profile)


def _prefix_candidates(off, room):
    """Resident-prefix lengths worth trying: none, and prefixes using up to 7/8 of the room in steps."""
    m = len(off) - 1
    cands = {0}
    for k in range(1, 8):
        q = bisect.bisect_right(off, off[0] + room * k / 8) - 1
        if 0 < q < m:
            cands.add(q)
    return sorted(cands)


def optimal_cut(sizes: list[int], compute: list[float], cap: int, *, head: float, latency_s: float,
                bandwidth: float, prefetch: int = 1) -> tuple[float, list[list[int]]] | None:
    """Cut segments (bytes, compute seconds, in execution order) into blocks of consecutive segments
    for a swap region of `cap` bytes, minimising the cost model's latency; `head` is the compute that
    runs before the first block is needed. Returns (latency, groups of segment indices) or None."""
    m = len(sizes)
    if m == 0:
        return head, []
    off = np.concatenate([[0.0], np.cumsum(np.asarray(sizes, dtype=np.float64))])
    csum = np.concatenate([[0.0], np.cumsum(np.asarray(compute, dtype=np.float64))])
    lat, bw, inf = latency_s, bandwidth, float("inf")
    if not prefetch:  # reads exposed, but for the first: F[j+1] = min_i F[i] + R(i..j) + C(i..j)
        F = np.full(m + 1, inf)
        parent = np.zeros(m + 1, dtype=np.int64)
        F[0] = 0.0
        for j in range(m):
            i = np.arange(0, j + 1)
            size = off[j + 1] - off[i]
            read = lat + size / bw
            read[0] = max(head, read[0])  # the first block is read while the head computes
            cost = F[i] + read + csum[j + 1] - csum[i]
            cost[size > cap] = inf
            k = int(np.argmin(cost))
            F[j + 1], parent[j + 1] = cost[k], i[k]
        if not np.isfinite(F[m]):
            return None
        return float(F[m]), _unwind(parent, m)
    # prefetch=1: state (i, j) = the last block so far covers segments i..j; F excludes its compute.
    # For each j, every state (i, j) moves to every next block (j+1, l) at once (an i x l array).
    F = np.full((m, m), inf)
    parent = np.full((m, m), -1, dtype=np.int64)
    ends = np.arange(m)
    first = off[ends + 1]
    fits = first <= cap
    F[0, ends[fits]] = np.maximum(head, lat + first[fits] / bw)
    for j in range(m - 1):
        starts = np.nonzero(np.isfinite(F[:j + 1, j]))[0]
        if starts.size == 0:
            continue
        used = off[j + 1] - off[starts]  # bytes of each candidate current block
        limit = int(np.searchsorted(off, off[j + 1] + (cap - used.min()), side="right")) - 2
        if limit < j + 1:
            continue
        ls = np.arange(j + 1, limit + 1)
        nxt = off[ls + 1] - off[j + 1]  # bytes of each candidate next block
        cand = F[starts, j][:, None] + np.maximum((csum[j + 1] - csum[starts])[:, None], lat + nxt[None, :] / bw)
        cand[used[:, None] + nxt[None, :] > cap] = inf
        best = np.argmin(cand, axis=0)
        value = cand[best, np.arange(ls.size)]
        F[j + 1, ls] = value
        parent[j + 1, ls] = np.where(np.isfinite(value), starts[best], -1)
    total = F[:, m - 1] + (csum[m] - csum[:m])
    i = int(np.argmin(total))
    if not np.isfinite(total[i]):
        return None
    latency, groups, j = float(total[i]), [], m - 1
    while True:
        groups.append(list(range(i, j + 1)))
        if i == 0:
            break
        i, j = int(parent[i, j]), i - 1
    return latency, groups[::-1]


def _unwind(parent, m):
    groups, j = [], m
    while j > 0:
        i = int(parent[j])
        groups.append(list(range(i, j)))
        j = i
    return groups[::-1]


def predict(store: BlockStore, plan: Plan, profile: Profile) -> Prediction:
    """Predicted latency of one call under `plan`, from the profile (the cost model above)."""
    unit_s = profile.compute.unit_s
    comp = [sum(unit_s.get(u, 0.0) for u in b.units) for b in plan.blocks if b.in_sequence]
    seq = [b for b in plan.blocks if b.in_sequence]
    head = profile.compute.prologue_s + sum(c for c, b in zip(comp, seq) if b.resident)
    swapped = [(c, profile.io.read_seconds(b.nbytes), b.nbytes) for c, b in zip(comp, seq) if not b.resident]
    if not swapped:
        latency = head
    elif plan.prefetch:
        latency = max(head, swapped[0][1])
        latency += sum(max(c, r_next) for (c, _r, _n), (_c, r_next, _m) in zip(swapped, swapped[1:]))
        latency += swapped[-1][0]
    else:
        latency = max(head, swapped[0][1]) + swapped[0][0] + sum(c + r for c, r, _n in swapped[1:])
    compute = profile.compute.prologue_s + sum(comp)
    act = profile.compute.activation_peak_bytes
    return Prediction(latency, compute, max(latency - compute, 0.0), sum(n for *_x, n in swapped),
                      None if act is None else plan.arena_bytes + act)


def make_plan(store: BlockStore, budget_bytes: int, kind: str = "optimal", profile: Profile | None = None,
              prefetch: int = 1, activation_reserve: int = 0) -> Plan:
    if kind == "optimal":
        if profile is None:
            raise ValueError("the optimal plan needs a profile (swapnet_core.profile.load_profile)")
        return plan_optimal(store, budget_bytes, profile, prefetch, activation_reserve)
    if kind == "greedy":
        return plan_greedy(store, budget_bytes, prefetch, activation_reserve, profile)
    if kind == "uniform":
        return plan_uniform(store, budget_bytes, prefetch, activation_reserve, profile)
    raise ValueError(f"plan kind must be one of {PLAN_KINDS}, got {kind!r}")
