"""The planner on synthetic segment lists with hand-checkable answers, and on real stores."""

import pytest
import torch

from swapnet_core import BudgetTooSmallError, open_swapped, load_profile, make_plan, minimum_budget
from swapnet_core.models import make_input
from swapnet_core.plan import optimal_cut, predict

MB, MS = 10**6, 1e-3
GBPS = 1e9


def cut(sizes_mb, compute_ms, cap_mb, *, head_ms=0.0, latency_ms=0.0, bandwidth=GBPS, prefetch=1):
    result = optimal_cut([s * MB for s in sizes_mb], [c * MS for c in compute_ms], cap_mb * MB,
                         head=head_ms * MS, latency_s=latency_ms * MS, bandwidth=bandwidth, prefetch=prefetch)
    return None if result is None else (round(result[0] / MS, 6), result[1])


def test_compute_bound_reads_hide_behind_compute():
    # 10 MB reads take 10 ms, each segment computes 100 ms; pairs must fit 20 MB: one segment a block.
    # latency = first read 10 + 3 x max(100, 10) + last compute 100
    assert cut([10] * 4, [100] * 4, 20) == (410.0, [[0], [1], [2], [3]])


def test_io_bound_prefers_few_large_reads():
    # 100 MB/s and 50 ms per read, 1 ms compute: one 40 MB block costs 50 + 400 + 4 = 454 ms,
    # two 20 MB blocks 250 + max(2, 250) + 2 = 502 ms, four single ones 150 + 3 x 150 + 1 = 601 ms
    assert cut([10] * 4, [1] * 4, 40, latency_ms=50, bandwidth=100 * MB) == (454.0, [[0, 1, 2, 3]])
    # at 39 MB no two 20 MB blocks fit side by side: 20+10+10 MB gives 250 + 150 + 150 + 1 = 551 ms
    assert cut([10] * 4, [1] * 4, 39, latency_ms=50, bandwidth=100 * MB)[0] == 551.0
    # without prefetch only single blocks must fit: 30+10 MB gives (350 + 3) + (150 + 1) = 504 ms
    assert cut([10] * 4, [1] * 4, 39, latency_ms=50, bandwidth=100 * MB, prefetch=0)[0] == 504.0


def test_a_unit_bigger_than_half_the_swap_region():
    # 30 MB next to 5 MB neighbours fits a 35 MB region; a uniform half-size slot never would
    latency, groups = cut([30, 5, 5, 30], [10, 10, 10, 10], 35)
    assert groups == [[0], [1], [2], [3]] or groups == [[0], [1, 2], [3]]
    assert cut([30, 5, 5, 30], [10] * 4, 34) is None  # 30 + 5 no longer fits


def test_tiny_and_zero_compute_units():
    # zero compute: only reads count, and each read pays 1 ms: one block is best
    assert cut([1] * 50, [0] * 50, 100, latency_ms=1) == (51.0, [list(range(50))])
    # tiny units, compute-bound: nothing exposed beyond the first read of the first block
    latency, groups = cut([0.004] * 300, [0.1] * 300, 1, latency_ms=0.05)
    assert latency == pytest.approx(30.0 + 0.05 + 0.004 * 1000 * len(groups[0]) / 1000, rel=1e-3)


def test_prefetch_zero_exposes_every_read_but_the_first():
    # head 15 ms hides the first 10 ms read; then 100 + (10 + 100) x 3
    assert cut([10] * 4, [100] * 4, 10, head_ms=15, prefetch=0) == (15 + 100 + 330.0, [[0], [1], [2], [3]])


@pytest.fixture(scope="module")
def resnet_profile(convert_once):
    store = convert_once("torchvision:resnet18", "random:1x3x64x64")
    return store, load_profile(store, make_input("random:1x3x64x64"))


def test_profile_is_cached_next_to_the_store(resnet_profile):
    store, profile = resnet_profile
    assert (store.path / "profile.json").is_file()
    again = load_profile(store, make_input("random:1x3x64x64"))
    assert again.compute.unit_s == profile.compute.unit_s  # reused, not measured again
    assert set(profile.compute.unit_s) == {u.index for u in store.units if not u.pinned}
    assert profile.io.bandwidth_bytes_per_s > 0 and profile.compute.total_s > 0


def test_reads_are_profiled_at_block_sizes_beyond_the_budget_profiled_at(resnet_profile):
    """The io profile is cached for every later budget: profiled at the minimum budget (about 1 MiB
    of reads allowed), it must still sample the sizes larger budgets cut, or its fit sees one size, no
    per-read latency, and plans cut far too many blocks."""
    store, _profile = resnet_profile
    x = make_input("random:1x3x64x64")
    floor = minimum_budget(store)
    assert floor // 2 < (8 << 20)
    profile = load_profile(store, x, budget_bytes=floor, refresh=True)
    sizes = [n for n, _t in profile.io.samples]
    assert max(sizes) >= 8 << 20 and max(sizes) >= 8 * min(sizes)


def test_optimal_is_no_slower_than_greedy_and_uniform_by_its_own_model(resnet_profile):
    store, profile = resnet_profile
    for share in (2, 3, 4, 6):
        budget = max(store.total_bytes // share, minimum_budget(store))
        plans = {k: make_plan(store, budget, k, profile) for k in ("optimal", "greedy", "uniform")}
        assert all(p.arena_bytes <= budget for p in plans.values())
        best = plans["optimal"].prediction.latency_s
        assert best <= plans["greedy"].prediction.latency_s + 1e-12
        assert best <= plans["uniform"].prediction.latency_s + 1e-12
        assert plans["optimal"].prediction == predict(store, plans["optimal"], profile)


def test_minimum_budget_is_exact_and_above_the_model_all_is_resident(resnet_profile):
    store, profile = resnet_profile
    minimum = minimum_budget(store)
    plan = make_plan(store, minimum, "optimal", profile)
    assert plan.arena_bytes == minimum  # feasible at the minimum, and using all of it
    with pytest.raises(BudgetTooSmallError) as e:
        make_plan(store, minimum - 1, "optimal", profile)
    assert e.value.minimum_bytes == minimum
    reserve = 8 << 20
    with pytest.raises(BudgetTooSmallError):
        make_plan(store, minimum + reserve - 1, "optimal", profile, activation_reserve=reserve)
    whole = make_plan(store, store.total_bytes, "optimal", profile)
    assert whole.keep_resident and whole.prediction.exposed_io_s == 0
    with open_swapped(store, store.total_bytes, plan=whole) as model:
        model(make_input("random:1x3x64x64"))
        model(make_input("random:1x3x64x64"))
        assert model.stats.bytes_read == store.total_bytes  # once, at open


def test_a_block_never_spans_a_forced_break():
    # one block would be cheapest (reads pay 50 ms each), but a kept segment lies between 1 and 2
    result = optimal_cut([10 * MB] * 4, [1 * MS] * 4, 40 * MB, head=0.0, latency_s=50 * MS, bandwidth=100 * MB,
                         breaks={2})
    assert result[1] == [[0, 1], [2, 3]]
    for prefetch in (0, 1):
        for breaks in ({1}, {1, 3}, {2, 3}):
            _latency, groups = optimal_cut([10 * MB] * 4, [1 * MS] * 4, 40 * MB, head=0.0, latency_s=50 * MS,
                                           bandwidth=100 * MB, prefetch=prefetch, breaks=breaks)
            starts = {g[0] for g in groups}
            assert breaks <= starts, (prefetch, breaks, groups)


def test_predicted_latency_never_rises_with_the_budget(resnet_profile):
    """A plan feasible at a smaller budget is feasible at a larger one, so the planner must never pick a
    slower one there: over a fine sweep of budgets, no plan is predicted slower than the plan at any
    rung of the budget ladder below it (the usual shares and steps of 2^(1/2)), and it falls along the
    ladder."""
    from swapnet_core.plan import budget_ladder

    store, profile = resnet_profile
    minimum = minimum_budget(store)
    rungs = [b for b in budget_ladder(store.total_bytes) if b >= minimum]
    sweep = sorted({minimum + (store.total_bytes - minimum) * k // 40 for k in range(41)} | set(rungs))
    latency = {b: make_plan(store, b, "optimal", profile).prediction.latency_s for b in sweep}
    for b in sweep:
        worse = [r for r in rungs if r <= b and latency[b] > latency[r] * (1 + 1e-9)]
        assert not worse, f"the plan at {b} bytes is predicted slower than the one at {worse[0]}"
    on_ladder = [latency[r] for r in rungs]
    assert all(a >= b * (1 - 1e-9) for a, b in zip(on_ladder, on_ladder[1:])), "latency rose along the ladder"


def test_resident_blocks_anywhere_in_the_file_swap_exactly(resnet_profile):
    """Blocks kept resident between calls need not lead the file: with blocks 1 and 3 kept, outputs are
    bit-identical, the kept bytes are read once, and only the others are read on every call."""
    from swapnet_core import load_resident
    from swapnet_core.plan import _make_plan, segments

    store, profile = resnet_profile
    ordered, _ = segments(store)
    n = len(ordered)
    groups = [list(range(k * n // 5, (k + 1) * n // 5)) for k in range(5)]
    plan = _make_plan(store, "optimal", store.total_bytes, 1, 0, groups, {1, 3}, profile)
    assert [b.resident for b in plan.blocks if b.in_sequence] == [False, True, False, True, False]
    x = make_input("random:1x3x64x64", seed=5)
    with torch.no_grad():
        want = load_resident(store)(x)
        with open_swapped(store, plan.budget_bytes, plan=plan) as model:
            for _ in range(3):
                assert torch.equal(model(x), want)
            kept = plan.pinned_bytes + plan.resident_bytes
            swapped = sum(b.nbytes for b in plan.blocks if b.in_sequence and not b.resident)
            assert model.stats.bytes_read == kept + 3 * swapped and model.stats.misses == 0
            assert model.stats.peak_resident_weight_bytes <= plan.arena_bytes
