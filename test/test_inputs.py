"""Networks that take several inputs: comma-separated input specs, passed as positional tensors, and
the swapped model bit-identical to the resident one."""

import json

import pytest
import torch

from conftest import swapnet_cli
from swapnet_core import InputSpecError, load_resident, minimum_budget, open_swapped
from swapnet_core.models import CALL_PIXEL_VALUES, call_model, make_input


def test_several_inputs_are_seeded_apart_and_a_single_one_is_unchanged():
    one, two = make_input("random:1x3x8x8,random:1x3x8x8")
    assert one.shape == two.shape == (1, 3, 8, 8) and not torch.equal(one, two)
    assert torch.equal(one, make_input("random:1x3x8x8"))
    with pytest.raises(InputSpecError, match="positional"):
        call_model(lambda **kw: None, CALL_PIXEL_VALUES, (one, two))


def test_a_two_image_network_swaps_bit_identically(convert_once):
    store = convert_once("toy_models:two_images", "random:1x3x32x32,random:1x3x32x32", slice_bytes="off")
    x = store.make_input()
    assert isinstance(x, tuple) and len(x) == 2
    with torch.no_grad():
        want = call_model(load_resident(store), store.call, x)
        assert minimum_budget(store) < store.total_bytes / 2
        model = open_swapped(store, minimum_budget(store), example_input=x)
        try:
            got = call_model(model, store.call, x)
        finally:
            model.close()
    assert torch.equal(got, want)


def test_the_command_runs_a_two_image_network(convert_once):
    store = convert_once("toy_models:two_images", "random:1x3x32x32,random:1x3x32x32", slice_bytes="off")
    r = swapnet_cli("run", store.path, "--budget", str(minimum_budget(store)), "--compare-resident", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["max_abs_diff"] == 0 and result["bytes_read"] > 0
