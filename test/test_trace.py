"""Real graphs are not nn.Sequential: containers, repeated heads, tied and escaping tensors,
data-dependent branches, buffers. Each stays bit-identical when swapped."""

import pytest
import torch

from swapnet_core import open_swapped, load_resident
from swapnet_core.models import call_model, make_input, max_abs_diff
from swapnet_core.plan import minimum_budget, segments

SMALL = "random:1x3x16x16"


def run_both(store, x, **kw):
    resident = load_resident(store)
    with torch.no_grad():
        want = call_model(resident, store.call, x)
    with open_swapped(store, minimum_budget(store, kw.get("prefetch", 1)), **kw) as swapped:
        got = [call_model(swapped, store.call, x) for _ in range(2)]
        stats = swapped.stats
    return max(max_abs_diff(want, g) for g in got), stats


@pytest.mark.parametrize("io", ["direct", "mmap"])
@pytest.mark.parametrize("name", ["class_token", "shared_head", "tied", "escaping", "branchy"])
def test_toy_graphs_are_bit_identical_at_minimum_budget(convert_once, name, io):
    store = convert_once(f"toy_models:{name}", SMALL)
    diff, stats = run_both(store, make_input(SMALL, seed=1), io=io)
    assert diff == 0
    assert stats.peak_resident_weight_bytes <= minimum_budget(store)


def test_container_tensors_join_the_window_they_are_used_in(convert_once):
    store = convert_once("toy_models:class_token", SMALL)
    where = {t.name: u for u in store.units for t in u.tensors}
    assert where["cls"].name == "proj" and where["pos"].name == "proj"  # used right after proj ran
    assert where["unused"].name == "" and not where["unused"].pinned  # never used: stays with its owner
    assert not any(u.pinned for u in store.units)


def test_tied_and_escaping_tensors_are_pinned_and_stored_once(convert_once):
    tied = convert_once("toy_models:tied", SMALL)
    pinned = [u for u in tied.units if u.pinned]
    assert [t.name for u in pinned for t in u.tensors] == ["embed.weight"]
    assert sorted(pinned[0].tensors[0].bindings) == [("embed", "weight", "param"), ("out", "weight", "param")]
    escaping = convert_once("toy_models:escaping", SMALL)
    assert [t.name for u in escaping.units if u.pinned for t in u.tensors] == ["a.bias"]


def test_interleaved_repeated_calls_form_one_segment(convert_once):
    store = convert_once("toy_models:shared_head", SMALL)
    ordered, _ = segments(store)
    names = [[store.units[u].name for u in seg] for seg in ordered]
    assert ["head_conv", "head_cls"] in names  # never cut between two modules whose calls interleave
    assert ["levels.0"] in names and ["tail"] in names


def test_data_dependent_branch_is_loaded_on_demand_and_counted(convert_once):
    store = convert_once("toy_models:branchy", SMALL)
    rare = next(u for u in store.units if u.name == "rare")
    assert not rare.traced  # the example input never took the branch
    dark, bright = make_input(SMALL, seed=2), make_input(SMALL, seed=2) * 50
    # per bright call: the detour itself, then the prefetched next block it displaced (2 calls)
    for x, expected_misses in ((dark, 0), (bright, 4)):
        diff, stats = run_both(store, x)
        assert diff == 0 and stats.misses == expected_misses


def test_buffers_are_swapped_with_their_unit(convert_once):
    store = convert_once("toy_models:branchy", SMALL)
    names = {t.name for u in store.units for t in u.tensors}
    assert {"stem.1.running_mean", "stem.1.running_var", "stem.1.num_batches_tracked", "scale"} <= names
    # the non-persistent buffer is used after body ran: it joins the last unit entered before its use
    owner = next(u for u in store.units for t in u.tensors if t.name == "scale")
    assert owner.name == "body.3.1" and not owner.pinned


def test_a_detour_inside_a_units_forward_keeps_that_unit_resident(convert_once):
    store = convert_once("toy_models:detour", SMALL)
    assert not next(u for u in store.units if u.name == "child").traced
    bright = make_input(SMALL, seed=4) * 1000  # takes the branch the trace never saw
    diff, stats = run_both(store, bright)
    assert diff == 0 and stats.misses >= 2


def test_a_weight_taken_before_another_unit_runs_is_pinned(convert_once):
    store = convert_once("toy_models:fetch_before", SMALL)
    assert [t.name for u in store.units if u.pinned for t in u.tensors] == ["b.weight"]
    diff, _ = run_both(store, make_input(SMALL, seed=1))
    assert diff == 0


def test_state_updated_in_place_persists_like_the_resident_models(convert_once):
    from swapnet_core import minimum_budget

    store = convert_once("toy_models:counter", SMALL)
    assert [t.name for u in store.units if u.pinned for t in u.tensors] == ["steps"]
    resident = load_resident(store)
    x = make_input(SMALL, seed=1)
    with open_swapped(store, minimum_budget(store)) as swapped, torch.no_grad():
        for _ in range(3):  # the counter was stored as before the trace, and both count alike
            assert torch.equal(call_model(resident, store.call, x), call_model(swapped, store.call, x))
        assert resident.steps.item() == 3


def test_tensors_kept_outside_parameters_and_buffers_are_refused(disk_dir):
    from swapnet_core import StoreError, convert

    store = convert("toy_models:list_holder", disk_dir / "list_holder", input_spec=SMALL, progress=False)
    with pytest.raises(StoreError, match="outside its parameters"):
        store.build_skeleton()


def test_an_evicted_weight_raises_instead_of_computing_on_garbage(convert_once):
    from swapnet_core import WeightNotResidentError

    store = convert_once("toy_models:shared_head", SMALL)
    with open_swapped(store, minimum_budget(store)) as model:
        weight = model.module.head_cls.weight  # not resident between calls
        assert weight.shape == (4, 8, 1, 1) and weight.device.type == "meta"
        with pytest.raises(WeightNotResidentError, match="head_cls.weight"):
            weight.sum()
