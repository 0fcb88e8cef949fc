"""The process's real peak memory (VmHWM, in a subprocess): a swapped run stays within
budget + activation peak + a fixed allowance; the resident run of the same model does not."""

import json
import subprocess
import sys

import pytest

RESNET50, X = "torchvision:resnet50", "random:1x3x64x64"
ALLOWANCE = 24 << 20  # allocator slack, kernel workspaces, the I/O thread's stack

PROBE = r"""
import json, sys, torch
from swapnet_core import BlockStore, open_swapped, load_resident
from swapnet_core.models import call_model, make_input

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

mode, path, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = BlockStore(path)
x = make_input(store.default_input)
with torch.no_grad():
    store.build_skeleton()  # imports torchvision (over 100 MiB) before the measurement
    torch.nn.functional.conv2d(torch.ones(1, 3, 8, 8), torch.ones(4, 3, 3, 3))  # loads kernels
    if mode == "activations":
        model = load_resident(store)
        call_model(model, store.call, x)
    reset_peak()
    base = status()["VmRSS"]
    if mode == "swapped":
        model = open_swapped(store, budget)
    elif mode == "resident":
        model = load_resident(store)
    for _ in range(3):
        call_model(model, store.call, x)
print(json.dumps({"peak_delta": status()["VmHWM"] - base}))
"""


def peak_delta(mode, store, budget=0):
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(store.path), str(budget)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_delta"]


def test_swapped_peak_memory_is_bounded_and_resident_is_not(convert_once):
    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    store = convert_once(RESNET50, X)
    budget = store.total_bytes // 4
    activations = peak_delta("activations", store)
    swapped = peak_delta("swapped", store, budget)
    resident = peak_delta("resident", store)
    bound = budget + activations + ALLOWANCE
    print(f"weights {store.total_bytes >> 20} MiB, budget {budget >> 20} MiB, activations {activations >> 20} MiB: "
          f"swapped peak +{swapped >> 20} MiB, resident peak +{resident >> 20} MiB, bound {bound >> 20} MiB")
    assert swapped <= bound
    assert resident > bound
