#!/usr/bin/env python3
"""The read path on its own: how fast one block arrives, by block size and by how BlockReader splits
it (reads in flight, piece size), O_DIRECT into page-aligned memory as the runtime reads.

A block of at least two pieces is read as up to `queue_depth` contiguous pieces at once; a smaller
one by one preadv. Plans cut blocks of 0.4-50 MiB, so where a block stops being split decides the
read rate of most of them. Every (size, split) pair is read at random places of a store file (the
virtual disk here reads what it read lately faster), the splits taking turns in a shuffled order
each round, so drift hits them alike.

  .venv/bin/python bench/read_path.py [--quick] [--rounds N] [--stores DIR]

Prints a table of median GB/s, writes bench/results/read_path.json and bench/results/read_path.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import open_or_convert  # noqa: E402

SIZES = (512 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20)
SPLITS = ((1, 4 << 20), (4, 4 << 20), (4, 1 << 20), (4, 512 << 10), (8, 512 << 10), (8, 256 << 10))  # (depth, piece)
STORE = ("convnext_large", "torchvision:convnext_large", "random:1x3x32x32")  # io_bound.py's: 754 MiB


def label(split: tuple[int, int]) -> str:
    depth, piece = split
    return "one read" if depth == 1 else f"{depth} x >= {piece >> 10} KiB"


def measure(store, sizes, splits, rounds: int, reads_per_turn: int, seed: int = 0) -> list[dict]:
    from tqdm import tqdm

    from swapnet_core.io import BlockReader
    from swapnet_core.memory import HostBuffer
    from swapnet_core.store import UNIT_ALIGN, Unit

    rng = random.Random(seed)
    first, end = store.units[0].offset, store.units[-1].end
    buf = HostBuffer(max(sizes))

    def at_random(n: int) -> list[Unit]:  # a block of exactly n bytes somewhere in the weights
        offset = first + rng.randrange((end - first - n) // UNIT_ALIGN) * UNIT_ALIGN
        return [Unit(-1, f"bytes {offset}+{n}", offset, n, 0, False, False, ())]

    readers = {s: BlockReader(store.weights_path, "direct", verify="never", queue_depth=s[0], chunk_bytes=s[1])
               for s in splits}
    rates: dict[tuple, list[float]] = {(n, s): [] for n in sizes for s in splits}
    try:
        for _ in tqdm(range(rounds), desc="read path", file=sys.stderr):
            for n in sizes:
                for s in rng.sample(list(splits), len(splits)):
                    for _r in range(reads_per_turn):
                        block = at_random(n)
                        t = time.perf_counter()
                        readers[s].read_into(block, buf.view)
                        rates[(n, s)].append(n / (time.perf_counter() - t))
    finally:
        for r in readers.values():
            r.close()
        buf.close()
    return [{"block_bytes": n, "queue_depth": s[0],
             "piece_bytes": s[1], "split": label(s), "reads": len(rates[(n, s)]),
             "median_gbps": statistics.median(rates[(n, s)]) / 1e9,
             "p25_gbps": statistics.quantiles(rates[(n, s)], n=4)[0] / 1e9,
             "p75_gbps": statistics.quantiles(rates[(n, s)], n=4)[2] / 1e9}
            for n in sizes for s in splits if len(rates[(n, s)]) >= 2]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for split in dict.fromkeys(r["split"] for r in rows):
        mine = [r for r in rows if r["split"] == split]
        x = [r["block_bytes"] / 2**20 for r in mine]
        ax.plot(x, [r["median_gbps"] for r in mine], marker="o", label=split)
        ax.fill_between(x, [r["p25_gbps"] for r in mine], [r["p75_gbps"] for r in mine], alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block MiB")
    ax.set_ylabel("GB/s (median; band: quartiles)")
    ax.set_title("One block read with O_DIRECT, by how it is split")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="three rounds, sizes up to 8 MiB")
    ap.add_argument("--rounds", type=int, help="rounds over every (size, split) (default 8, quick 3)")
    ap.add_argument("--stores", default="stores/bench_io")
    ap.add_argument("--out", default=None, help="default bench/results/read_path.json (read_path_quick.json with --quick)")
    args = ap.parse_args()
    sizes = tuple(n for n in SIZES if n <= 8 << 20) if args.quick else SIZES
    rounds = args.rounds or (3 if args.quick else 8)
    store = open_or_convert(STORE[0], STORE[1], STORE[2], args.stores)
    started = time.time()
    rows = measure(store, sizes, SPLITS, rounds, reads_per_turn=4)
    print(f"{'block':>8}" + "".join(f"{label(s):>17}" for s in SPLITS) + "   median GB/s")
    for n in sizes:
        cells = {r["split"]: r["median_gbps"] for r in rows if r["block_bytes"] == n}
        print(f"{n / 2**20:7.1f}M" + "".join(f"{cells.get(label(s), float('nan')):17.2f}" for s in SPLITS))
    out = Path(args.out or f"bench/results/read_path{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"store": str(store.path), "store_bytes": store.total_bytes, "rounds": rounds,
                               "machine": platform.machine(), "seconds": time.time() - started, "rows": rows},
                              indent=1))
    png = out.with_suffix(".png")
    plot(rows, png)
    print(f"wrote {out} and {png} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
