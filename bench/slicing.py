#!/usr/bin/env python3
"""What slicing buys: the minimum feasible budget of each network with and without slicing, which
layers were sliced or kept whole (and why), exactness at 1/4, 1/6 and 1/10 of the weights (or the new
minimum) in both io modes, and the latency of the sliced store against the unsliced one at a budget
both can run. Prints a table, writes bench/results/slicing.json.

  .venv/bin/python bench/slicing.py [--quick] [--stores DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import open_or_convert  # noqa: E402

NETWORKS = {  # the four zoo networks and those that 1/4 of the weights used to refuse
    "fasterrcnn_resnet50_fpn": ("torchvision:fasterrcnn_resnet50_fpn?min_size=160&max_size=224", "random:1x3x160x224"),
    "deeplabv3_resnet101": ("torchvision:deeplabv3_resnet101", "random:1x3x96x128"),
    "vit_b_16": ("torchvision:vit_b_16", "random:1x3x224x224"),
    "depth_anything_base": ("transformers:depth-anything-base", "random:1x3x98x126"),
    "mobilenet_v3_large": ("torchvision:mobilenet_v3_large", "random:1x3x224x224"),
    "shufflenet_v2_x1_0": ("torchvision:shufflenet_v2_x1_0", "random:1x3x224x224"),
    "squeezenet1_1": ("torchvision:squeezenet1_1", "random:1x3x224x224"),
    "vgg11_bn": ("torchvision:vgg11_bn", "random:1x3x224x224"),
    "fcn_resnet50": ("torchvision:fcn_resnet50", "random:1x3x96x128"),
    "maskrcnn_resnet50_fpn_v2": ("torchvision:maskrcnn_resnet50_fpn_v2?min_size=160&max_size=224", "random:1x3x160x224"),
}
QUICK = {k: NETWORKS[k] for k in ("mobilenet_v3_large", "squeezenet1_1")}
SHARES = ("1/4", "1/6", "1/10")


def median_ms(model, call, x, repeat):
    from swapnet_core.models import call_model
    times = []
    with torch.no_grad():
        call_model(model, call, x)
        for _ in range(repeat):
            t = time.perf_counter()
            call_model(model, call, x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--stores", default="stores/bench_slicing")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from swapnet_core import convert, load_resident, minimum_budget, open_swapped
    from swapnet_core.models import call_model, max_abs_diff
    from swapnet_core.sizes import format_bytes, parse_size

    rows = []
    for name, (ref, spec) in (QUICK if args.quick else NETWORKS).items():
        store = open_or_convert(name, ref, spec, args.stores)
        whole_path = Path(args.stores) / f"{name}-unsliced"
        whole = convert(ref, whole_path, input_spec=spec, force=whole_path.exists(), progress=False, slice_bytes="off")
        x = store.make_input(spec, seed=1)
        with torch.no_grad():
            want = call_model(load_resident(whole), whole.call, x)
        low, high = minimum_budget(store), minimum_budget(whole)
        row = {"model": name, "ref": ref, "input": spec, "weight_bytes": store.total_bytes,
               "minimum_sliced_bytes": low, "minimum_unsliced_bytes": high,
               "sliced_layers": {k: len(v) - 1 for k, v in store.sliced_layers.items()},
               "kept_whole": store.slicing.get("whole", {}), "exact": {}, "peak_within_budget": True}
        for share in SHARES:
            budget = max(parse_size(share, of=store.total_bytes), low)
            for io in ("direct", "mmap"):
                with open_swapped(store, budget, io=io) as model:
                    with torch.no_grad():
                        diff = max_abs_diff(want, call_model(model, store.call, x))
                    row["exact"][f"{share}/{io}"] = diff == 0
                    row["peak_within_budget"] &= model.stats.peak_resident_weight_bytes <= budget
        common = max(high, parse_size("1/4", of=store.total_bytes))  # a budget both can run
        for label, s in (("sliced", store), ("unsliced", whole)):
            with open_swapped(s, common) as model:
                row[f"{label}_ms_at_common_budget"] = median_ms(model, s.call, x, args.repeat)
        row["common_budget_bytes"] = common
        rows.append(row)
        print(f"{name:26} W {format_bytes(row['weight_bytes']):>10}  min {format_bytes(high):>10} -> {format_bytes(low):>10} "
              f"({high / row['weight_bytes']:.3f} -> {low / row['weight_bytes']:.3f} of W)  sliced {len(row['sliced_layers'])}, "
              f"whole {len(row['kept_whole'])}  exact {all(row['exact'].values())}  "
              f"ms at {format_bytes(common)}: {row['sliced_ms_at_common_budget']:.0f} sliced / "
              f"{row['unsliced_ms_at_common_budget']:.0f} unsliced", flush=True)
    out = Path(f"bench/results/slicing{'_quick' if args.quick else ''}.json")
    out.write_text(json.dumps({"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=1))
    print(f"wrote {out}")
    return 0 if all(all(r["exact"].values()) and r["peak_within_budget"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
