"""The GPU paths (a discrete GPU's staged copies, a Jetson's mapped host memory), on a machine with
CUDA; every test skips cleanly without one. scripts/gpu_check.sh runs this module on a GPU machine
from the source tree, with that machine's own Python (no ROS there)."""

import time

import pytest
import torch

from swapnet_core import load_resident, minimum_budget, open_swapped
from swapnet_core.models import call_model, max_abs_diff
from swapnet_core.scheduler import Scheduler
from swapnet_core.sizes import parse_size

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to this torch")

ZOO = {  # the zoo networks at small inputs: full-size weights, short forwards
    "resnet50": ("torchvision:resnet50", "random:1x3x64x64"),
    "fasterrcnn": ("torchvision:fasterrcnn_resnet50_fpn?min_size=160&max_size=224", "random:1x3x160x224"),
    "deeplabv3": ("torchvision:deeplabv3_resnet101", "random:1x3x96x128"),
    "vit_b_16": ("torchvision:vit_b_16", "random:1x3x224x224"),
    "depth_anything": ("transformers:depth-anything-base", "random:1x3x98x126"),
}
DEVICE = torch.device("cuda")


def resident_output(store, x):
    with torch.no_grad():
        model = load_resident(store, DEVICE)
        out = call_model(model, store.call, x)
        torch.cuda.synchronize()
        del model
    torch.cuda.empty_cache()
    return out


@pytest.mark.parametrize("name", list(ZOO))
def test_swapped_on_the_gpu_is_bit_identical_and_bounded(convert_once, name):
    ref, spec = ZOO[name]
    store = convert_once(ref, spec)
    x = store.make_input(spec, seed=3).to(DEVICE)
    want = resident_output(store, x)
    budget = max(parse_size("1/4", of=store.total_bytes), minimum_budget(store))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    with open_swapped(store, budget, device=DEVICE, example_input=x) as model, torch.no_grad():
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            got = call_model(model, store.call, x)
        torch.cuda.synchronize()
        assert max_abs_diff(got, want) == 0
        assert model.stats.peak_resident_weight_bytes <= budget
        kind = model._memory.kind
        peak = torch.cuda.max_memory_allocated() - base
        activations = _activation_peak(store, x)
        arena_on_device = model.plan.arena_bytes if kind == "discrete" else 0  # unified: host memory, mapped
        assert peak <= arena_on_device + activations + (64 << 20), (
            f"{name}: {peak / 2**20:.0f} MiB on the device, arena {arena_on_device / 2**20:.0f} MiB "
            f"+ activations {activations / 2**20:.0f} MiB")
    del got
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() - base <= (1 << 20), "closing the model did not give the arena back"


def _activation_peak(store, x) -> int:
    """What the resident model's forward allocates beyond its weights."""
    with torch.no_grad():
        model = load_resident(store, DEVICE)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call_model(model, store.call, x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del model
    torch.cuda.empty_cache()
    return peak


def test_cleanup_gives_the_memory_back(convert_once):
    store = convert_once(*ZOO["resnet50"])
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    reserved = torch.cuda.memory_reserved()
    for _ in range(3):
        model = open_swapped(store, "1/2", device=DEVICE, plan="greedy")
        with torch.no_grad():
            model(store.make_input().to(DEVICE))
        model.close()
        del model
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved() - reserved <= (2 << 20)


def test_two_models_with_prefetch_and_preemption_stay_exact(convert_once):
    """Two models share one scheduler on the GPU: the next job's first block is read while the other
    computes, an urgent job preempts a long one between blocks; every output equals the resident one
    and no staging buffer is filled twice at once."""
    stores = {"a": convert_once(*ZOO["resnet50"]), "b": convert_once("torchvision:mobilenet_v3_large", "random:1x3x64x64")}
    xs = {n: s.make_input("random:1x3x64x64", seed=9) for n, s in stores.items()}
    want = {n: resident_output(s, xs[n].to(DEVICE)) for n, s in stores.items()}
    budgets = {n: max(s.total_bytes // 4, minimum_budget(s)) for n, s in stores.items()}
    sched = Scheduler(sum(budgets.values()) + (1 << 20), preemption=True, device="cuda")
    for n, s in stores.items():
        sched.add_model(n, s, budgets[n], example_input=xs[n])
    sched.start()
    try:
        for k in range(8):
            now = time.monotonic()
            futures = {"a": sched.submit("a", xs["a"], deadline=now + 5.0), "b": sched.submit("b", xs["b"], deadline=now + 0.001)}
            for n, f in futures.items():
                assert torch.equal(f.result(timeout=120), want[n]), f"{n} job {k} differs from the resident model"
        for n, m in sched._models.items():
            assert m.swap._stager.most_in_flight == 1
    finally:
        sched.shutdown()
