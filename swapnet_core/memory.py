"""Where the arena lives, per device, and how a read lands in it.

CPU: page-aligned host memory; the read lands where the model computes.
Unified-memory GPU (Jetson, `is_integrated`): pinned host memory that the GPU addresses directly
(one buffer, two tensors over it): the read lands where the GPU computes, no host-to-device copy.
Discrete GPU: device memory, filled from a pinned staging buffer on a copy stream.
"""

from __future__ import annotations

import torch

from .io import BlockReader, HostBuffer
from .store import UNIT_ALIGN, Unit


class _CudaArrayInterface:
    """Exposes a device-addressable pointer so torch can wrap it without a copy."""

    def __init__(self, ptr: int, nbytes: int):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": (nbytes,), "typestr": "|u1", "version": 3}


def _pinned(nbytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, page-aligned view) of pinned host memory: O_DIRECT wants aligned buffers."""
    owner = torch.empty(nbytes + UNIT_ALIGN, dtype=torch.uint8, pin_memory=True)
    skip = (-owner.data_ptr()) % UNIT_ALIGN
    return owner, owner[skip:skip + nbytes]


class ArenaMemory:
    """One preallocated buffer of `nbytes` that weights are read into and computed on."""

    def __init__(self, nbytes: int, device: torch.device, staging_bytes: int = 0):
        self.nbytes, self.device = nbytes, device
        self._owners: list = []
        self._staging = None
        if device.type == "cpu":
            host = HostBuffer(nbytes)
            self._owners.append(host)
            self.kind, self.compute, self.host = "cpu", host.tensor, host.tensor
        elif device.type == "cuda":
            if torch.cuda.get_device_properties(device).is_integrated:
                owner, host = _pinned(nbytes)
                self._owners.append(owner)
                self.kind, self.host = "unified", host
                # UVA: a pinned, mapped host allocation has the same address on the device.
                self.compute = torch.as_tensor(_CudaArrayInterface(host.data_ptr(), nbytes), device=device)
            else:
                self.kind, self.host = "discrete", None
                self.compute = torch.empty(nbytes, dtype=torch.uint8, device=device)
                owner, staging = _pinned(max(staging_bytes, UNIT_ALIGN))
                self._owners.append(owner)
                self._staging = staging
                self._copy_stream = torch.cuda.Stream(device)
        else:
            raise ValueError(f"unsupported device {device}")

    def fill(self, reader: BlockReader, units: list[Unit], offset: int) -> int:
        """Read consecutive units into the arena at `offset` (called on the I/O thread)."""
        n = units[-1].end - units[0].offset
        if self._staging is None:
            return reader.read_into(units, memoryview(self.host[offset:offset + n].numpy()))
        got = reader.read_into(units, memoryview(self._staging[:n].numpy()))
        with torch.cuda.stream(self._copy_stream):
            self.compute[offset:offset + n].copy_(self._staging[:n], non_blocking=True)
        self._copy_stream.synchronize()  # staging is reused, and the block must be whole before use
        return got

    def close(self) -> None:
        self.compute = self.host = self._staging = None
        for owner in self._owners:
            if isinstance(owner, HostBuffer):
                owner.close()
        self._owners.clear()
