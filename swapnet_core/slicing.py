"""Layers larger than a slice cut into output slices, so that one big layer no longer sets the floor
of the whole network's budget.

A sliced nn.Linear (by output rows), nn.Conv2d or nn.ConvTranspose2d (by output channels, groups=1)
becomes a Sliced module whose `parts` are ordinary layers of the same kind, each owning a contiguous
slice of the weight and bias: each part is a unit of the store, so the planner and the runtime swap
slices like any other units, and the minimum budget falls to pinned bytes plus the largest pair of
neighbouring slices. The parts' outputs are concatenated along the output dimension.

Slicing is only kept where it is exact: at conversion every sliced layer is run on the very inputs
the example forward gave it (batch 1 as traced and a batch of 3 made from it) and compared bit for
bit with the whole layer; where they differ, coarser slices are tried (boundaries on multiples of
64, 128, ... outputs: kernels block and split work by rows, and a slice that starts inside a block
rounds differently), and a layer that no slicing keeps exact stays whole, the manifest saying why.
The check holds for the conversion's input shape and thread count; swapped outputs always equal the
store's own resident model, which computes the same slices.
"""

from __future__ import annotations

import torch
from torch import nn

SLICE_ALIGNS = (64, 128, 256, 512, 1024, 2048)  # outputs per slice boundary, tried in turn (see above)
SLICEABLE = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


class _Sliced(nn.Module):
    """The parts of one layer, run one after the other, their outputs concatenated."""

    dim = 1

    def __init__(self, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x):
        return torch.cat([part(x) for part in self.parts], dim=self.dim)


class SlicedLinear(_Sliced):
    dim = -1


class SlicedConv2d(_Sliced):
    pass


class SlicedConvTranspose2d(_Sliced):
    pass


_SLICED = {nn.Linear: SlicedLinear, nn.Conv2d: SlicedConv2d, nn.ConvTranspose2d: SlicedConvTranspose2d}


def outputs_of(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def can_slice(layer: nn.Module) -> str | None:
    """Why `layer` cannot be sliced, or None."""
    if type(layer) not in _SLICED:  # exactly these types: a subclass may compute differently
        return f"{type(layer).__name__} is not sliced (only nn.Linear, nn.Conv2d and nn.ConvTranspose2d)"
    if not isinstance(layer, nn.Linear) and layer.groups != 1:
        return "grouped convolution"
    if not isinstance(layer, nn.Linear) and layer.padding_mode != "zeros":
        return f"padding mode {layer.padding_mode}"
    return None


def slice_bounds(outputs: int, nbytes: int, max_slice_bytes: int, align: int = SLICE_ALIGNS[0]) -> list[int]:
    """Boundaries [0, b1, ..., outputs] of about-equal slices of at most max_slice_bytes (if the
    alignment allows), each a multiple of `align` outputs but the last."""
    rows = max(align, int(max_slice_bytes / (nbytes / outputs)) // align * align)
    parts = -(-outputs // rows)
    if parts < 2:
        return [0, outputs]
    step = -(-(-(-outputs // parts)) // align) * align  # about equal slices, still aligned
    bounds = list(range(0, outputs, step)) + [outputs]
    return bounds if len(bounds) > 2 else [0, outputs]


def exact_bounds(layer: nn.Module, nbytes: int, max_slice_bytes: int, x: torch.Tensor) -> tuple[list[int] | None, str]:
    """The finest slicing of `layer` (coarser alignments tried in turn) that is bit-identical to it
    on input `x`: (bounds, "") or (None, why not)."""
    why = f"too few outputs to slice on {SLICE_ALIGNS[0]}-output boundaries"
    for align in SLICE_ALIGNS:
        bounds = slice_bounds(outputs_of(layer), nbytes, max_slice_bytes, align)
        if len(bounds) <= 2:
            break
        why = exact_when_sliced(layer, bounds, x)
        if why is None:
            return bounds, ""
    return None, why


def sliced(layer: nn.Module, bounds: list[int]) -> nn.Module:
    """The Sliced module for `layer` with parts at `bounds`; on meta if the layer is, else holding
    copies of its weight and bias slices."""
    parts = []
    weight_dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
    for a, b in zip(bounds, bounds[1:]):
        with torch.device("meta"):
            part = _part_like(layer, b - a)
        part.weight = nn.Parameter(layer.weight.narrow(weight_dim, a, b - a).clone(), requires_grad=False)
        if layer.bias is not None:
            part.bias = nn.Parameter(layer.bias[a:b].clone(), requires_grad=False)
        parts.append(part.train(layer.training))
    return _SLICED[type(layer)](parts).train(layer.training)


def _part_like(layer: nn.Module, outputs: int) -> nn.Module:
    bias = layer.bias is not None
    kw = dict(device="meta", dtype=layer.weight.dtype)
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, outputs, bias=bias, **kw)
    common = dict(kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                  dilation=layer.dilation, bias=bias, **kw)
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(layer.in_channels, outputs, **common)
    return nn.ConvTranspose2d(layer.in_channels, outputs, output_padding=layer.output_padding, **common)


def apply_slicing(model: nn.Module, layers: dict[str, list[int]]) -> None:
    """Replace each layer named in `layers` (module path -> bounds) with its Sliced module."""
    for path, bounds in layers.items():
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        layer = getattr(parent, name)
        why = can_slice(layer) if isinstance(layer, nn.Module) else f"{path} is not a module"
        if why is not None or bounds[-1] != outputs_of(layer):
            raise ValueError(f"cannot slice {path} at {bounds[:3]}..{bounds[-1]}: {why or 'its outputs differ'}")
        setattr(parent, name, sliced(layer, bounds))


def exact_when_sliced(layer: nn.Module, bounds: list[int], x: torch.Tensor) -> str | None:
    """Why slicing `layer` at `bounds` is not bit-identical on input `x` (as traced, and as a batch
    of three made from it), or None."""
    candidate = sliced(layer, bounds)
    with torch.no_grad():
        for batch in (x, torch.cat([x, x.flip(0), x], 0)):
            whole, cut = layer(batch), candidate(batch)
            if not torch.equal(whole, cut):
                diff = (whole.double() - cut.double()).abs().max().item()
                return f"sliced outputs differ from the whole layer's by up to {diff:g} (batch {batch.shape[0]})"
    return None


def auto_slice_bytes(total_bytes: int) -> int:
    """The slice size "auto" means: 1/64 of the weights, at least 1 MiB. Layers over twice that are sliced."""
    return max(1 << 20, total_bytes // 64)


def slice_candidates(model: nn.Module, result, max_slice_bytes: int) -> tuple[dict[str, int], dict[str, str]]:
    """(layers that may be sliced -> their weight bytes, layers left whole -> why) among the traced
    model's layers whose weight bytes exceed twice max_slice_bytes."""
    chosen, whole = {}, {}
    calls = {}
    for m in result.calls:
        calls[m] = calls.get(m, 0) + 1
    for index, path in enumerate(result.modules):
        layer = model.get_submodule(path) if path else model
        if not isinstance(layer, SLICEABLE):
            continue
        own = [i for i, ref in enumerate(result.tensors) if ref.owner == index]
        nbytes = sum(result.tensors[i].tensor.numel() * result.tensors[i].tensor.element_size() for i in own)
        if nbytes <= 2 * max_slice_bytes:
            continue
        why = can_slice(layer)
        if why is None and any(result.tensor_unit[i] != index or len(result.tensors[i].bindings) > 1 for i in own):
            why = "its tensors are used outside its own forward, or shared"
        if why is None and calls.get(index, 0) != 1:
            why = f"it runs {calls.get(index, 0)} times per forward"
        if why is None:
            chosen[path] = nbytes
        else:
            whole[path] = why
    return chosen, whole


def layer_inputs(model: nn.Module, paths, run) -> dict[str, torch.Tensor]:
    """The first input each layer in `paths` gets during `run()` (one forward)."""
    got: dict[str, torch.Tensor] = {}

    def keep(path):
        def hook(_module, args):
            got.setdefault(path, args[0].detach().clone())
        return hook

    handles = [model.get_submodule(p).register_forward_pre_hook(keep(p)) for p in paths]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return got
