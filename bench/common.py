"""What the benchmark scripts (and the tests that watch a process) share: opening (or converting once) a
store, percentiles, and a process's measured memory, storage reads and shared-memory files."""

from __future__ import annotations

import math
import os
from pathlib import Path


def open_or_convert(folder_name: str, ref: str, input_spec: str, stores: str | os.PathLike, dtype: str = "float32"):
    """The store for `ref` (random weights, this trace input and dtype) under stores/folder_name,
    converted (with progress) if missing or not that."""
    from swapnet_core import BlockStore, SwapNetError, convert
    from swapnet_core.identity import identity_mismatch
    path = Path(stores) / folder_name
    try:
        store = BlockStore(path)
        if identity_mismatch(store, ref, input_spec=input_spec, dtype=dtype, slicing="auto") is None:
            return store
    except SwapNetError:
        pass
    return convert(ref, path, input_spec=input_spec, force=path.exists(), dtype=dtype)


def storage_bandwidth(path: str | os.PathLike, threads: int = 4, chunk: int = 8 << 20, nbytes: int | None = None,
                      start: int = 0) -> float:
    """Bytes per second of reading `nbytes` of the file (default: all of it) from `start` on, wrapping
    at its end, with `threads` concurrent O_DIRECT reads of `chunk` bytes (the page cache bypassed):
    what the storage gives this file now, for a burst of that length (a disk that throttles after a
    burst gives short bursts more)."""
    import mmap
    import time
    from concurrent.futures import ThreadPoolExecutor

    size = os.path.getsize(path) // 4096 * 4096
    todo = size if nbytes is None else max(4096, min(nbytes, size) // 4096 * 4096)
    start = start // 4096 * 4096 % size
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    bufs = [mmap.mmap(-1, chunk) for _ in range(threads)]
    try:
        def lane(k) -> int:
            view, got = memoryview(bufs[k]), 0
            for at in range(k * chunk, todo, threads * chunk):
                off = (start + at) % size  # a chunk that meets the end stops there
                got += os.preadv(fd, [view[:min(chunk, todo - at, size - off)]], off)
            view.release()
            return got

        began = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            got = sum(pool.map(lane, range(threads)))
        return got / (time.perf_counter() - began)
    finally:
        os.close(fd)
        for b in bufs:
            b.close()


def p95(values) -> float:
    """Nearest-rank 95th percentile (the largest of fewer than 20 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def process_memory(pid: int | str = "self") -> dict:
    """rss and hwm (VmHWM, the peak) in bytes from /proc/PID/status; read_bytes: bytes this process
    has read from storage (not the page cache), from /proc/PID/io."""
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss" if key == "VmRSS" else "hwm"] = int(value.split()[0]) * 1024
    for line in open(f"/proc/{pid}/io"):
        key, _, value = line.partition(":")
        if key == "read_bytes":
            out["read_bytes"] = int(value)
    return out


def shm_paths(pid: int) -> set[str]:
    """The /dev/shm files a process maps or holds open (its FastDDS segments, lock files and ports)."""
    found = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                    found.add(parts[5].strip().removesuffix(" (deleted)"))
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/shm/"):
                found.add(target.removesuffix(" (deleted)"))
    except OSError:  # the process is gone, or not ours to look at
        pass
    return found
