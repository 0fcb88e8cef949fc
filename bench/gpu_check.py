#!/usr/bin/env python3
"""What scripts/gpu_check.sh runs: which torch and device, the CUDA test module, and swapped vs.
resident on the device (I/O-bound inputs, 1/2 and 1/4 of the weights): exact outputs, peak device
memory against the budget, latency ratios. Writes OUT/gpu_check.json (and the tests' junit XML).
Without CUDA the benchmark runs on the CPU and the JSON says so (the tests then skip).

  python3 bench/gpu_check.py --out DIR [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"resnet50": ("torchvision:resnet50", "random:1x3x32x32"),
         "convnext_large": ("torchvision:convnext_large", "random:1x3x32x32")}
SHARES = ("1/2", "1/4")


def environment() -> dict:
    import torch
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"device": props.name, "device_memory_bytes": props.total_memory, "unified_memory": props.is_integrated,
                 "device_count": torch.cuda.device_count()}
    return info


def run_tests(out: Path, seconds: float) -> dict:
    junit = out / "cuda_tests.xml"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           f"--junitxml={junit}", str(ROOT / "test" / "test_cuda.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=seconds)
    result = {"exit_code": proc.returncode, "seconds": time.monotonic() - started,
              "output_tail": (proc.stdout + proc.stderr)[-4000:]}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result |= {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        result["failed"] = [c.get("name") for c in suite.iter("testcase")
                            if c.find("failure") is not None or c.find("error") is not None]
    return result


def bench(stores: Path, repeat: int, cases: dict) -> list[dict]:
    import torch
    from swapnet_core import convert, load_resident, minimum_budget, open_swapped
    from swapnet_core.models import call_model, max_abs_diff
    from swapnet_core.sizes import parse_size

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(model, call, x):
        times = []
        with torch.no_grad():
            out = call_model(model, call, x)  # warm-up
            for _ in range(repeat):
                sync()
                t = time.perf_counter()
                call_model(model, call, x)
                sync()
                times.append((time.perf_counter() - t) * 1000)
        return out, statistics.median(times)

    rows = []
    for name, (ref, spec) in cases.items():
        store = convert(ref, stores / name, input_spec=spec, progress=False, force=(stores / name).exists())
        x = store.make_input(spec, seed=1).to(device)
        resident = load_resident(store, device)
        want, resident_ms = timed(resident, store.call, x)
        del resident
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for share in SHARES:
            budget = max(parse_size(share, of=store.total_bytes), minimum_budget(store))
            if device.type == "cuda":
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            with open_swapped(store, budget, device=device, example_input=x) as model:
                got, ms = timed(model, store.call, x)
                kind = model._memory.kind
                rows.append({"model": name, "ref": ref, "input": spec, "device": str(device), "memory_kind": kind,
                             "weight_bytes": store.total_bytes, "budget_fraction": share, "budget_bytes": budget,
                             "resident_ms": resident_ms, "swapped_ms": ms, "ratio": ms / resident_ms,
                             "max_abs_diff": max_abs_diff(want, got),
                             "peak_resident_weight_bytes": model.stats.peak_resident_weight_bytes,
                             "bytes_read_per_call": model.stats.bytes_read / (repeat + 1),
                             "predicted_ms": model.plan.prediction.latency_s * 1000,
                             "peak_device_bytes_over_start": (torch.cuda.max_memory_allocated() - base
                                                              if device.type == "cuda" else None)})
            print(f"{name} {share}: swapped {ms:.1f} ms vs resident {resident_ms:.1f} ms, |diff| {rows[-1]['max_abs_diff']:g}",
                  flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="resnet50 only, no tests (the CPU-side trial)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = {"environment": environment()}
    print(json.dumps(result["environment"]), flush=True)
    if not args.quick:
        result["tests"] = run_tests(out, seconds=300)
        print(f"tests: {result['tests'].get('tests')} run, {result['tests'].get('failures')} failed, "
              f"{result['tests'].get('skipped')} skipped, exit {result['tests']['exit_code']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=os.environ.get("TMPDIR")) as tmp:
        cases = {"resnet50": CASES["resnet50"]} if args.quick else CASES
        result["benchmark"] = bench(Path(tmp), repeat=3 if args.quick else 10, cases=cases)
    result["seconds"] = time.monotonic() - started
    ok = all(r["max_abs_diff"] == 0 and r["peak_resident_weight_bytes"] <= r["budget_bytes"] for r in result["benchmark"])
    ok = ok and result.get("tests", {}).get("exit_code", 0) in (0, 5)
    result["ok"] = ok
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'gpu_check.json'} in {result['seconds']:.0f} s: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
