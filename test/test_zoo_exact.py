"""The four networks the issue names, at 1/2, 1/4 and 1/6 of their weight bytes (or the minimum
feasible, if higher), in both io modes: swapped outputs are bit-identical to the resident model."""

import pytest
import torch

from swapnet_core import open_swapped, load_resident, minimum_budget
from swapnet_core.models import call_model, make_input, max_abs_diff
from swapnet_core.sizes import parse_size

pytestmark = pytest.mark.zoo

ZOO = {  # small inputs: the weights are full size, the test time stays small
    "fasterrcnn": ("torchvision:fasterrcnn_resnet50_fpn?min_size=160&max_size=224", "random:1x3x160x224"),
    "deeplabv3": ("torchvision:deeplabv3_resnet101", "random:1x3x96x128"),
    "vit_b_16": ("torchvision:vit_b_16", "random:1x3x224x224"),
    "depth_anything": ("transformers:depth-anything-base", "random:1x3x98x126"),
}
_reference = {}


def reference(convert_once, name):
    if name not in _reference:
        ref, spec = ZOO[name]
        store = convert_once(ref, spec)
        with torch.no_grad():
            _reference.clear()  # one resident model's output at a time is enough
            _reference[name] = store, call_model(load_resident(store), store.call, make_input(spec, seed=7))
    return _reference[name]


@pytest.mark.parametrize("io", ["direct", "mmap"])
@pytest.mark.parametrize("share", ["1/2", "1/4", "1/6"])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_swapped_is_bit_identical(convert_once, name, share, io):
    store, want = reference(convert_once, name)
    budget = max(parse_size(share, of=store.total_bytes), minimum_budget(store))
    with open_swapped(store, budget, io=io) as model:
        got = call_model(model, store.call, make_input(ZOO[name][1], seed=7))
        assert max_abs_diff(want, got) == 0
        assert model.stats.peak_resident_weight_bytes <= budget
        # one call reads the pinned tensors (at open) and every block in the recorded order, no more
        sequence = sum(b.nbytes for b in model.plan.blocks if b.in_sequence)
        assert model.stats.bytes_read == store.pinned_bytes + sequence and model.stats.misses == 0
