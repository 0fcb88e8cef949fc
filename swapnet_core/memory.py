"""The arena's memory, per device kind, and how a read lands in it.

  cpu       page-aligned anonymous memory (HostBuffer): the read lands where the model computes.
  unified   (a Jetson: `is_integrated`) the same page-aligned memory, registered with CUDA as mapped
            host memory; the GPU computes on the very bytes the read wrote, through the device
            pointer CUDA gives for them (cudaHostGetDevicePointer): no host-to-device copy.
  discrete  device memory; each model reads through its own Stager: two pinned staging buffers and
            a copy stream, so the disk read of block k+1 overlaps the copy of block k, and ordering is
            kept with events on the right streams (the copy waits for the slot to be free, the
            compute waits for the copy), not with host waits.

Every backend owns exactly the memory it asked for and gives it back on close(): host memory is
mapped by us (not PyTorch's caching host allocator, which rounds up to a power of two and keeps
freed blocks), registered with CUDA where a GPU uses it, and unregistered on close.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading
from dataclasses import dataclass, field

import torch

from .io import BlockReader
from .store import Unit

CUDA_HOST_REGISTER_PORTABLE, CUDA_HOST_REGISTER_MAPPED = 1, 2


class HostBuffer:
    """Page-aligned host memory (an anonymous mapping), exposed as a uint8 tensor."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        # MAP_POPULATE: the budget is taken up front, and the swap path never page-faults
        self._map = mmap.mmap(-1, max(nbytes, mmap.PAGESIZE),
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))
        self.tensor = torch.frombuffer(self._map, dtype=torch.uint8, count=nbytes) if nbytes else torch.empty(0, dtype=torch.uint8)
        self.view = memoryview(self._map)[:nbytes]
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._map)) if nbytes else 0

    def close(self) -> None:
        """Drop our references: the mapping is unmapped when the last tensor view of it dies (closing
        it under a live view, say a model output that aliases a weight, would crash the process)."""
        self.tensor = None
        self.view.release()
        self._map = None


class CudaHostMemory:
    """A HostBuffer registered with CUDA (cudaHostRegister): pinned for DMA, and mapped into the
    device's address space when `mapped`; unregistered on close."""

    def __init__(self, nbytes: int, device: torch.device, mapped: bool):
        self.buffer = HostBuffer(nbytes)
        self.device = device
        flags = CUDA_HOST_REGISTER_PORTABLE | (CUDA_HOST_REGISTER_MAPPED if mapped else 0)
        with torch.cuda.device(device):
            _check(torch.cuda.cudart().cudaHostRegister(self.buffer.address, max(nbytes, 1), flags), "cudaHostRegister")
        self._registered = True
        self.host = self.buffer.tensor
        self.device_pointer = _device_pointer(self.buffer.address, device) if mapped else None

    def close(self) -> None:
        if self._registered:
            torch.cuda.synchronize(self.device)  # nothing may still read it
            _check(torch.cuda.cudart().cudaHostUnregister(self.buffer.address), "cudaHostUnregister")
            self._registered = False
        self.host = None
        self.buffer.close()


class ArenaMemory:
    """One preallocated buffer of `nbytes` that weights are read into and computed on."""

    def __init__(self, nbytes: int, device: torch.device):
        self.nbytes, self.device = nbytes, torch.device(device)
        self._owner = None
        if self.device.type == "cpu":
            self._owner = HostBuffer(nbytes)
            self.kind, self.compute, self.host = "cpu", self._owner.tensor, self._owner.tensor
        elif self.device.type == "cuda":
            if torch.cuda.get_device_properties(self.device).is_integrated:
                self._owner = CudaHostMemory(nbytes, self.device, mapped=True)
                self.kind, self.host = "unified", self._owner.host
                self.compute = torch.as_tensor(_CudaArrayInterface(self._owner.device_pointer, nbytes), device=self.device)
            else:
                self.kind, self.host = "discrete", None
                self.compute = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        else:
            raise ValueError(f"unsupported device {self.device}")

    def close(self) -> None:
        self.compute = self.host = None
        if self._owner is not None:
            self._owner.close()
            self._owner = None
        if self.kind == "discrete":
            torch.cuda.empty_cache()  # the arena's device memory goes back to the driver, not to a cache


@dataclass
class ArenaRegion:
    """A slice [offset, offset + nbytes) of an ArenaMemory that one SwapModel may use."""
    memory: ArenaMemory
    offset: int
    nbytes: int
    owned: bool = False  # the SwapModel frees the memory when it closes


@dataclass
class SwapWindow:
    """Where a SwapModel streams its blocks: [offset, offset + nbytes) of an ArenaMemory, laid from
    both ends. Models that run one at a time may share one; `freed` (side -> CUDA event recorded
    when the block there left) is shared with it, so a fill waits for any model's kernels."""
    memory: ArenaMemory
    offset: int
    nbytes: int
    freed: dict = field(default_factory=dict)


class Stager:
    """How one model's reads land in the arena. cpu and unified: straight into it. discrete: into one
    of two pinned staging buffers, then copied on the model's copy stream.

    fill() returns the event the compute stream must wait for before using the block (None where the
    bytes are in place when fill returns). A Stager serves one model, whose fills never overlap; the
    fills in flight are counted (`most_in_flight`) so a test can hold that to 1."""

    def __init__(self, memory: ArenaMemory, largest_bytes: int):
        self.memory = memory
        self._lock = threading.Lock()
        self._in_flight = 0
        self.most_in_flight = 0
        self._staging: list[CudaHostMemory] = []
        if memory.kind == "discrete":
            self._staging = [CudaHostMemory(max(largest_bytes, 4096), memory.device, mapped=False) for _ in range(2)]
            self._copied: list[torch.cuda.Event | None] = [None, None]  # the last copy out of each buffer
            self._next = 0
            self._copy_stream = torch.cuda.Stream(memory.device)

    def fill(self, reader: BlockReader, units: list[Unit], offset: int, slot_free=None,
             memory: ArenaMemory | None = None):
        """Read consecutive units into the arena at `offset` (of `memory`, by default the Stager's, on
        the same device). slot_free: the event recorded when the block that was there left it
        (kernels queued before it may still read the slot)."""
        memory = memory or self.memory
        with self._lock:
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
        try:
            n = units[-1].end - units[0].offset
            if memory.kind != "discrete":
                if slot_free is not None:
                    slot_free.synchronize()  # unified: the GPU may still read the bytes the read overwrites
                reader.read_into(units, memoryview(memory.host[offset:offset + n].numpy()))
                return None
            if slot_free is not None:
                with torch.cuda.device(memory.device):
                    self._copy_stream.wait_event(slot_free)  # on the GPU: the old block's kernels are done
            copied = None
            for piece in _pieces(units, self._staging[0].buffer.nbytes):  # a long resident run: in pieces
                copied = self._stage(reader, piece, offset + piece[0].offset - units[0].offset, memory)
            return copied  # one copy stream, in order: the last copy done means all are
        finally:
            with self._lock:
                self._in_flight -= 1

    def _stage(self, reader: BlockReader, units: list[Unit], offset: int, memory: ArenaMemory):
        n = units[-1].end - units[0].offset
        k, self._next = self._next, 1 - self._next
        if self._copied[k] is not None:
            self._copied[k].synchronize()  # this staging buffer's previous copy has left it
        staging = self._staging[k].host[:n]
        reader.read_into(units, memoryview(staging.numpy()))  # meanwhile the other buffer's copy runs
        with torch.cuda.device(memory.device), torch.cuda.stream(self._copy_stream):
            memory.compute[offset:offset + n].copy_(staging, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        self._copied[k] = copied
        return copied

    def close(self) -> None:
        if self._staging:
            self._copy_stream.synchronize()
        for buf in self._staging:
            buf.close()
        self._staging = []


def _pieces(units: list[Unit], most: int) -> list[list[Unit]]:
    """Consecutive units in runs of at most `most` bytes (a unit larger than that alone)."""
    out: list[list[Unit]] = []
    for u in units:
        if out and u.end - out[-1][0].offset <= most:
            out[-1].append(u)
        else:
            out.append([u])
    return out


class _CudaArrayInterface:
    """Exposes a device pointer so torch can wrap it without a copy."""

    def __init__(self, ptr: int, nbytes: int):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": (nbytes,), "typestr": "|u1", "version": 3}


def _check(err, what: str) -> None:
    code = int(getattr(err, "value", err))
    if code != 0:
        raise RuntimeError(f"{what} failed: CUDA error {code} ({torch.cuda.cudart().cudaGetErrorString(err)})")


_cudart_lib = None


def _cudart():
    """The CUDA runtime library PyTorch loaded (for the calls torch.cuda.cudart() lacks)."""
    global _cudart_lib
    if _cudart_lib is None:
        torch.cuda.init()
        path = None
        with open("/proc/self/maps") as f:
            for line in f:
                name = line.rsplit(None, 1)[-1]
                if "/libcudart" in name and ".so" in name:
                    path = name
                    break
        path = path or ctypes.util.find_library("cudart")
        if path is None:
            raise RuntimeError("cannot find the CUDA runtime library (libcudart) that PyTorch uses")
        _cudart_lib = ctypes.CDLL(path)
    return _cudart_lib


def _device_pointer(host_address: int, device: torch.device) -> int:
    """The device address of registered, mapped host memory, as CUDA gives it (with unified virtual
    addressing it is usually the host address, but that is the device's to say)."""
    with torch.cuda.device(device):
        pointer = ctypes.c_void_p()
        err = _cudart().cudaHostGetDevicePointer(ctypes.byref(pointer), ctypes.c_void_p(host_address), ctypes.c_uint(0))
    if err != 0:
        raise RuntimeError(f"cudaHostGetDevicePointer failed on {device}: CUDA error {err}")
    return int(pointer.value)
