"""Which device a model runs on: a user's word for it ("auto", "cpu", "cuda", "cuda:1") checked
against what this machine has, with a one-line reason when it cannot be had."""

from __future__ import annotations

import re

import torch

from .errors import SwapNetError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


class DeviceError(SwapNetError, ValueError):
    """A device that is malformed or that this machine does not have."""


def resolve_device(spec: str | torch.device) -> torch.device:
    """"auto": the first CUDA device where PyTorch sees one, else the CPU; "cpu"; "cuda" (the current
    CUDA device); "cuda:N". Raises DeviceError saying why a CUDA device cannot be used."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec.strip()):
        raise DeviceError(f"device must be {DEVICE_CHOICES}, got {spec!r}")
    spec = spec.strip()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, " + (f"built for CUDA {torch.version.cuda}" if torch.version.cuda
                                                  else "built without CUDA")
        raise DeviceError(f"device {spec!r} asked for, but no CUDA device is visible ({build}); "
                          f"use device 'auto' or 'cpu'")
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def describe_device(device: torch.device) -> str:
    """A device and, for CUDA, its name and memory kind (what the arena is made of there)."""
    if device.type != "cuda":
        return str(device)
    props = torch.cuda.get_device_properties(device)
    return f"{device} ({props.name}, {'unified memory' if props.is_integrated else 'discrete'})"
