"""Record the execution order of a network and decide which tensors form which unit.

The runtime changes what is resident only when a unit's module is entered (a forward pre-hook).
So a tensor is safe to swap with unit U exactly when every use of it (or of a view of it) happens
while U is the most recently entered unit: we watch every torch call during one real forward and
group tensors by the "window" they are used in. A tensor used in several windows (a container's
class token used after its children ran, a tied weight, a view that outlives its window) is pinned:
always resident, counted in the budget. Tensors never used stay with the module that owns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

# Tensor attributes and methods that read only metadata, which a meta tensor answers as well.
_METADATA = {"shape", "dtype", "requires_grad", "ndim", "is_leaf", "grad_fn", "layout", "names",
             "grad", "is_sparse", "is_quantized", "is_nested", "_version", "size", "dim", "numel",
             "stride", "element_size", "is_floating_point", "is_complex", "nelement", "is_contiguous",
             "ndimension", "__len__", "storage_offset"}

PINNED = -1  # window id of tensors that must stay resident
IN_PLACE = "modified in place during the forward"


@dataclass
class TensorRef:
    """One stored tensor and every (module path, attribute, kind) that holds it."""
    tensor: torch.Tensor
    bindings: list[tuple[str, str, str]]  # kind: "param" | "buffer"
    owner: int  # candidate module index of its first holder

    @property
    def name(self) -> str:
        path, attr, _ = self.bindings[0]
        return f"{path}.{attr}" if path else attr


@dataclass
class TraceResult:
    modules: list[str]  # candidate module paths (modules that hold tensors directly)
    tensors: list[TensorRef]
    tensor_unit: list[int]  # per tensor: candidate module index whose window uses it, or PINNED
    calls: list[int]  # candidate module indices in the order they were entered
    pin_reasons: dict[int, str] = field(default_factory=dict)  # tensor index -> why pinned


def collect_tensors(model: nn.Module) -> tuple[list[str], list[TensorRef]]:
    """Every parameter and buffer (persistent or not) once, with all of its holders."""
    modules: list[str] = []
    refs: list[TensorRef] = []
    by_id: dict[int, TensorRef] = {}
    for path, module in model.named_modules():
        direct = [(a, t, "param") for a, t in module._parameters.items() if t is not None]
        direct += [(a, t, "buffer") for a, t in module._buffers.items() if t is not None]
        if not direct:
            continue
        index = len(modules)
        modules.append(path)
        for attr, tensor, kind in direct:
            ref = by_id.get(id(tensor))
            if ref is None:
                ref = by_id[id(tensor)] = TensorRef(tensor, [], index)
                refs.append(ref)
            ref.bindings.append((path, attr, kind))
    return modules, refs


def trace(model: nn.Module, run) -> TraceResult:
    """Run `run()` (one forward of `model` on real tensors) and return the window of every tensor."""
    modules, refs = collect_tensors(model)
    path_to_module = dict(model.named_modules())
    # storage data_ptr -> [(first byte, end byte, tensor index)]: views share their base's storage
    storage_of: dict[int, list[tuple[int, int, int]]] = {}
    for i, ref in enumerate(refs):
        t = ref.tensor
        if t.numel():
            start = t.data_ptr()
            span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
            storage_of.setdefault(t.untyped_storage().data_ptr(), []).append(
                (start, start + span * t.element_size(), i))
    uses: list[set[int]] = [set() for _ in refs]
    calls: list[int] = []
    state = {"window": None}

    def enter(index):
        def hook(_module, _args):
            calls.append(index)
            state["window"] = index
        return hook

    handles = [path_to_module[p].register_forward_pre_hook(enter(i)) for i, p in enumerate(modules)]

    def tensor_indices(t: torch.Tensor) -> list[int]:
        if t.device.type == "meta" or t.numel() == 0:
            return []
        ranges = storage_of.get(t.untyped_storage().data_ptr())
        if not ranges:
            return []
        if len(ranges) == 1:
            return [ranges[0][2]]
        p = t.data_ptr()
        return [i for start, end, i in ranges if start <= p < end] or [i for _, _, i in ranges]

    # A tensor fetched from its module in one window and computed on in another is only safe if
    # resident across both: count the fetch window as a use too (it catches `w = self.b.weight`
    # taken before another unit runs). Metadata-only reads (w.dtype) never reach a data use.
    last_fetch: dict[int, int | None] = {}
    original_getattr = nn.Module.__getattr__

    def fetching_getattr(module, name):
        value = original_getattr(module, name)
        if isinstance(value, torch.Tensor):
            for i in tensor_indices(value):
                last_fetch[i] = state["window"]
        return value

    class UseTracker(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if not reads_metadata_only(func):
                window = state["window"]
                for leaf in tree_leaves((args, kwargs)):
                    if isinstance(leaf, torch.Tensor):
                        for i in tensor_indices(leaf):
                            uses[i].add(PINNED if window is None else window)
                            fetched = last_fetch.get(i, window)
                            if fetched != window:
                                uses[i].add(PINNED if fetched is None else fetched)
            return func(*args, **kwargs)

    versions = [ref.tensor._version for ref in refs]
    nn.Module.__getattr__ = fetching_getattr
    try:
        with torch.no_grad(), UseTracker():
            out = run()
    finally:
        nn.Module.__getattr__ = original_getattr
        for h in handles:
            h.remove()

    tensor_unit: list[int] = []
    reasons: dict[int, str] = {}
    escaping = {i for t in _tensors_in(out) for i in tensor_indices(t)}
    for i, ref in enumerate(refs):
        windows = uses[i]
        if ref.tensor._version != versions[i]:
            tensor_unit.append(PINNED)  # state that a forward updates must persist, like the resident model's
            reasons[i] = IN_PLACE
        elif i in escaping:
            tensor_unit.append(PINNED)
            reasons[i] = "a view of it is part of the model's output"
        elif PINNED in windows:
            tensor_unit.append(PINNED)
            reasons[i] = "used before any module holding tensors was entered"
        elif len(windows) > 1:
            tensor_unit.append(PINNED)
            reasons[i] = "used in the windows of " + ", ".join(sorted(modules[w] or "<root>" for w in windows))
        elif windows:
            tensor_unit.append(next(iter(windows)))
        else:
            tensor_unit.append(ref.owner)
    return TraceResult(modules, refs, tensor_unit, calls, reasons)


def _tensors_in(obj, depth: int = 6) -> list[torch.Tensor]:
    """Tensors anywhere in an output: containers, dataclasses and plain objects' attributes."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth == 0 or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return []
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, nn.Module)):
        items = list(vars(obj).values())
    else:
        return []
    return [t for item in items for t in _tensors_in(item, depth - 1)]


def torch_function_name(func) -> str:
    """The method or attribute a __torch_function__ call stands for ('shape' for Tensor.shape.__get__)."""
    name = getattr(func, "__name__", "")
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", "")
    return name


def reads_metadata_only(func) -> bool:
    return torch_function_name(func) in _METADATA
