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

    @property
    def swapped_sequence(self) -> tuple[int, ...]:
        """Indices of the blocks read on every call, in the order they run (resident ones left out)."""
        return tuple(b.index for b in self.blocks if b.in_sequence and not b.resident)

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


def segments(store: BlockStore, slices: bool = True) -> tuple[list[list[int]], list[list[int]]]:
    """(segments visited in order, segments of never-called units): the smallest groups of
    consecutive units a block may hold. slices=False: the parts of each sliced layer as one segment,
    as if the store were not sliced (to state what slicing buys)."""
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
    if not slices:
        ordered = _merge_slices(store, ordered)
    detached = [[u.index] for u in store.units if not u.traced and not u.pinned]
    return ordered, detached


def _merge_slices(store: BlockStore, ordered: list[list[int]]) -> list[list[int]]:
    layer_of = {}
    for path in store.sliced_layers:
        for u in store.units:
            if u.name.startswith(f"{path}.parts."):
                layer_of[u.index] = path
    merged: list[list[int]] = []
    for seg in ordered:
        layer = layer_of.get(seg[0])
        if merged and layer is not None and layer_of.get(merged[-1][-1]) == layer:
            merged[-1] += seg
        else:
            merged.append(list(seg))
    return merged


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


def minimum_budget(store: BlockStore, prefetch: int = 1, activation_reserve: int = 0, slices: bool = True) -> int:
    """The exact smallest feasible budget: every segment its own block (merging only adds bytes).
    slices=False: what it would be had the store's sliced layers been left whole."""
    ordered, detached = segments(store, slices)
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


def _make_plan(store, kind, budget, prefetch, reserve, groups, resident, profile) -> Plan:
    """A plan from groups of segment indices (in order); the groups whose index is in `resident` (an
    int n: the first n) are kept resident between calls."""
    ordered, detached = segments(store)
    resident = set(range(resident)) if isinstance(resident, int) else set(resident)
    blocks = []
    for k, group in enumerate(groups):
        units = tuple(u for s in group for u in ordered[s])
        blocks.append(Block(k, units, store.units[units[0]].offset, _nbytes(store, units), True, k in resident))
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
    """Which segments to keep resident between calls, and how to cut the others into blocks, for the
    least predicted latency under the budget.

    Candidates, for each swap capacity of a list that depends on the store only and each priority
    order (file order, most exposed read time per byte, largest first):
      - keep the longest prefix of the order, over segments, that fits beside the swap region, and
        cut the rest by dynamic programming (optimal_cut; a block never spans a kept segment);
      - cut everything first, then keep the longest prefix of the order over those blocks;
    and the greedy and uniform plans. A plan feasible at a smaller budget is feasible at a larger one, so the planner also weighs the
    candidates of every budget on a ladder below this one (the common shares 1/2 ... 1/10 and steps
    of 2^(1/2)): it never returns a plan slower, by its own model, than one it would return there."""
    _check_budget(store, budget_bytes, prefetch, activation_reserve)
    whole = _all_resident(store, "optimal", budget_bytes, prefetch, activation_reserve, profile)
    if whole:
        return whole
    candidates = _Candidates(store, profile, prefetch, activation_reserve)
    floor = minimum_budget(store, prefetch, activation_reserve)

    def best_at(budget: int) -> Plan | None:
        # the baselines are candidates too: with a per-read latency in the profile, the greedy cut of a
        # large window can beat every capacity of the list above by the model's own measure
        plans = [candidates.best(budget)] + [baseline(store, budget, prefetch, activation_reserve, profile)
                                             for baseline in (plan_greedy, plan_uniform)]
        plans = [p for p in plans if p is not None and p.prediction is not None]
        return min(plans, key=lambda p: p.prediction.latency_s, default=None)

    best = best_at(budget_bytes)
    for rung in budget_ladder(store.total_bytes):
        if floor <= rung < budget_bytes:
            lower = best_at(rung)
            if lower is not None and (best is None or lower.prediction.latency_s < best.prediction.latency_s):
                best = lower
    if best is None:  # every segment its own block fits, by the budget check above
        return _finest(store, "optimal", budget_bytes, prefetch, activation_reserve, profile)
    return replace(best, kind="optimal", budget_bytes=budget_bytes)


def budget_ladder(total_bytes: int) -> list[int]:
    """Budgets a plan at a larger budget is weighed against: the usual shares and steps of 2^(1/2)."""
    shares = {1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 8, 1 / 10} | {2 ** (-k / 2) for k in range(1, 21)}
    return sorted(int(total_bytes * f) for f in shares)


class _Candidates:
    """The candidate plans at one budget, with the dynamic programs shared across budgets (a cut
    depends only on the capacity and on which segments are kept)."""

    def __init__(self, store, profile, prefetch, reserve):
        self.store, self.profile, self.prefetch, self.reserve = store, profile, prefetch, reserve
        ordered, detached = segments(store)
        self.sizes = [_nbytes(store, s) for s in ordered]
        self.compute = [sum(profile.compute.unit_s.get(u, 0.0) for u in s) for s in ordered]
        self.detached_need = max((_nbytes(store, s) for s in detached), default=0)
        self.orders = keep_orders(self.sizes, self.compute, profile)
        self._cuts: dict = {}

    def best(self, budget: int) -> Plan | None:
        room = budget - self.reserve - self.store.pinned_bytes  # kept segments + swap region
        best = None
        for cap in swap_capacities(self.sizes):
            if cap > room:
                break
            for plan in (*self._keep_then_cut(budget, room, cap), *self._cut_then_keep(budget, room, cap)):
                if plan is not None and (best is None or plan.prediction.latency_s < best.prediction.latency_s):
                    best = plan
        return best

    def _keep_then_cut(self, budget, room, cap):
        for order in self.orders:
            kept = _prefix(order, self.sizes, room - cap)
            swapped = [i for i in range(len(self.sizes)) if i not in kept]
            if not swapped or (self.detached_need and max(self.sizes[i] for i in swapped) + self.detached_need > cap):
                continue
            cut = self._cut(cap, frozenset(kept))
            if cut is None:
                continue
            groups, resident, pieces = [], set(), iter([[swapped[r] for r in g] for g in cut])
            i = 0
            while i < len(self.sizes):
                if i in kept:
                    run = [i]
                    while i + 1 < len(self.sizes) and i + 1 in kept:
                        i += 1
                        run.append(i)
                    resident.add(len(groups))
                    groups.append(run)
                else:
                    groups.append(next(pieces))
                    i = groups[-1][-1]
                i += 1
            yield self._plan(budget, groups, resident)

    def _cut_then_keep(self, budget, room, cap):
        cut = self._cut(cap, frozenset())
        if cut is None:
            return
        block_bytes = [sum(self.sizes[s] for s in g) for g in cut]
        block_compute = [sum(self.compute[s] for s in g) for g in cut]
        for order in keep_orders(block_bytes, block_compute, self.profile):
            kept = _prefix(order, block_bytes, room - cap)
            if len(kept) < len(cut):
                yield self._plan(budget, cut, kept)

    def _cut(self, cap: int, kept: frozenset):
        """Groups of reduced indices (the segments not kept, in order) for this capacity, or None."""
        key = (cap, kept)
        if key not in self._cuts:
            head, reduced, breaks = self.profile.compute.prologue_s, [], set()
            for i, c in enumerate(self.compute):
                if i in kept:
                    if reduced:
                        reduced[-1] += c  # a kept segment computes while the next block is read
                        breaks.add(len(reduced))
                    else:
                        head += c
                else:
                    reduced.append(c)
            sizes = [b for i, b in enumerate(self.sizes) if i not in kept]
            result = optimal_cut(sizes, reduced, cap, head=head, latency_s=self.profile.io.latency_s,
                                 bandwidth=self.profile.io.bandwidth_bytes_per_s, prefetch=self.prefetch,
                                 breaks=breaks)
            self._cuts[key] = None if result is None else result[1]
        return self._cuts[key]

    def _plan(self, budget, groups, resident) -> Plan | None:
        plan = _make_plan(self.store, "optimal", budget, self.prefetch, self.reserve, groups, resident, self.profile)
        return plan if plan.arena_bytes + self.reserve <= budget else None


def _prefix(order: list[int], sizes: list[int], room: int) -> set[int]:
    """The longest prefix of `order` whose sizes fit `room` (a prefix: more room keeps a superset)."""
    kept, used = set(), 0
    for i in order:
        if used + sizes[i] > room:
            break
        kept.add(i)
        used += sizes[i]
    return kept


def swap_capacities(sizes: list[int]) -> list[int]:
    """Swap-region capacities to try, smallest first: from the largest segment up to all of them, in
    steps of sqrt(2). They depend on the store only, never on the budget."""
    caps, cap, total = [], float(max(sizes)), sum(sizes)
    while cap < total * 2:
        caps.append(int(cap))
        cap *= 2 ** 0.5
    return caps


def keep_orders(sizes: list[int], compute: list[float], profile: Profile) -> list[list[int]]:
    """Orders in which segments (or blocks) are taken to stay resident: file order (a resident prefix),
    most exposed read time per byte first (a read its predecessor's compute cannot hide costs most),
    and largest first (big pieces force a large swap region)."""
    n = len(sizes)
    read = [profile.io.read_seconds(b) for b in sizes]
    exposed = [max(0.0, read[i] - (compute[i - 1] if i else profile.compute.prologue_s)) / max(sizes[i], 1)
               for i in range(n)]
    return [list(range(n)), sorted(range(n), key=lambda i: (-exposed[i], i)),
            sorted(range(n), key=lambda i: (-sizes[i], i))]


def optimal_cut(sizes: list[int], compute: list[float], cap: int, *, head: float, latency_s: float,
                bandwidth: float, prefetch: int = 1, breaks: set[int] = frozenset()) -> tuple[float, list[list[int]]] | None:
    """Cut segments (bytes, compute seconds, in execution order) into blocks of consecutive segments
    for a swap region of `cap` bytes, minimising the cost model's latency; `head` is the compute that
    runs before the first block is needed; a block starts at every index in `breaks`. Returns
    (latency, groups of segment indices) or None."""
    m = len(sizes)
    if m == 0:
        return head, []
    # next_break[x]: the first forced block start after x (m if none): a block from x ends before it
    next_break, nb = [m] * m, m
    for x in range(m - 1, -1, -1):
        next_break[x] = nb
        if x in breaks:
            nb = x
    off = np.concatenate([[0.0], np.cumsum(np.asarray(sizes, dtype=np.float64))])
    csum = np.concatenate([[0.0], np.cumsum(np.asarray(compute, dtype=np.float64))])
    lat, bw, inf = latency_s, bandwidth, float("inf")
    if not prefetch:  # reads exposed, but for the first: F[j+1] = min_i F[i] + R(i..j) + C(i..j)
        F = np.full(m + 1, inf)
        parent = np.zeros(m + 1, dtype=np.int64)
        F[0] = 0.0
        start = 0  # the last forced block start at or before j
        for j in range(m):
            if j in breaks:
                start = j
            i = np.arange(0, j + 1)
            size = off[j + 1] - off[i]
            read = lat + size / bw
            read[0] = max(head, read[0])  # the first block is read while the head computes
            cost = F[i] + read + csum[j + 1] - csum[i]
            cost[size > cap] = inf
            cost[:start] = inf
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
    fits = (first <= cap) & (ends < next_break[0])
    F[0, ends[fits]] = np.maximum(head, lat + first[fits] / bw)
    for j in range(m - 1):
        starts = np.nonzero(np.isfinite(F[:j + 1, j]))[0]
        if starts.size == 0:
            continue
        used = off[j + 1] - off[starts]  # bytes of each candidate current block
        limit = int(np.searchsorted(off, off[j + 1] + (cap - used.min()), side="right")) - 2
        limit = min(limit, next_break[j + 1] - 1)
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
    """Predicted latency of one call under `plan`, from the profile (the cost model above). A resident
    block computes from the arena: its time joins the swapped block before it (the next block's read
    goes on meanwhile), or the head if no swapped block came yet."""
    unit_s = profile.compute.unit_s
    head, swapped = profile.compute.prologue_s, []  # swapped: [compute, read seconds, bytes] per block
    for b in plan.blocks:
        if not b.in_sequence:
            continue
        c = sum(unit_s.get(u, 0.0) for u in b.units)
        if not b.resident:
            swapped.append([c, profile.io.read_seconds(b.nbytes), b.nbytes])
        elif swapped:
            swapped[-1][0] += c
        else:
            head += c
    comp = [c for c, _r, _n in swapped]
    if not swapped:
        latency = head
    elif plan.prefetch:
        latency = max(head, swapped[0][1])
        latency += sum(max(c, r_next) for (c, _r, _n), (_c, r_next, _m) in zip(swapped, swapped[1:]))
        latency += swapped[-1][0]
    else:
        latency = max(head, swapped[0][1]) + swapped[0][0] + sum(c + r for c, r, _n in swapped[1:])
    compute = head + sum(comp)
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
