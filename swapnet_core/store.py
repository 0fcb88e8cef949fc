"""BlockStore: a model converted once into an execution-ordered, direct-I/O-aligned safetensors file.

Layout of a store directory:
  manifest.json          architecture, units (byte range, checksum, tensors), the recorded call order
  weights.safetensors    a valid safetensors file whose tensors lie in execution order; every unit
                         starts on a 4096-byte boundary (padding tensors named __pad_N__ fill gaps), so
                         any run of consecutive units is one contiguous, O_DIRECT-readable byte range.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import struct
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .errors import StoreError, StoreFormatError, StoreMismatchError, StoreNotFoundError, StoreTruncatedError
from .identity import RANDOM_SEED, weights_record
from .models import ModelSpec, call_model, make_input, map_inputs, resolve
from .sizes import align_up, format_bytes
from .skeleton import build_on_meta
from .slicing import apply_slicing, auto_slice_bytes, exact_bounds, layer_inputs, slice_candidates
from .trace import IN_PLACE, PINNED, trace

FORMAT, FORMAT_VERSION = "swapnet-blockstore", 1
MANIFEST_NAME, WEIGHTS_NAME = "manifest.json", "weights.safetensors"
UNIT_ALIGN = 4096  # O_DIRECT needs file offset, length and buffer aligned to the logical block size
TENSOR_ALIGN = 64  # every tensor view starts on a cache line inside its unit
PINNED_UNIT = "<pinned>"

_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
              torch.uint8: "U8", torch.bool: "BOOL"}
_DTYPE_BY_NAME = {str(d).removeprefix("torch."): d for d in _ST_DTYPES}
STORE_DTYPES = ("float32", "float16", "bfloat16")  # what convert(dtype=) casts floating-point weights to


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # bytes from the start of its unit
    nbytes: int
    bindings: tuple[tuple[str, str, str], ...]  # (module path, attribute, "param" | "buffer")


@dataclass(frozen=True)
class Unit:
    index: int
    name: str
    offset: int  # absolute offset in the weights file, UNIT_ALIGN-aligned
    nbytes: int  # padded length, a multiple of UNIT_ALIGN
    checksum: int  # crc32 of the unit's padded byte range
    pinned: bool
    traced: bool
    tensors: tuple[TensorEntry, ...]

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


def unit_checksum(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


class BlockStore:
    """An opened, validated block store. Opening reads only the manifest and the safetensors header."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise StoreNotFoundError(f"{self.path} is not a block store (no {MANIFEST_NAME})")
        try:
            m = json.loads(manifest_path.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise StoreFormatError(f"{manifest_path}: unreadable manifest: {e}") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise StoreFormatError(f"{manifest_path}: not a {FORMAT} manifest")
        if m.get("format_version") != FORMAT_VERSION:
            raise StoreFormatError(f"{manifest_path}: format version {m.get('format_version')!r} "
                                   f"is not supported (this swapnet_core reads {FORMAT_VERSION})")
        self.manifest = m
        self.weights_path = self.path / WEIGHTS_NAME
        try:
            self.file_bytes = _int(m, "file_bytes")
            self.store_id = str(m["store_id"])
            self.units = [_parse_unit(i, u) for i, u in enumerate(m["units"])]
            self.calls = [_int_value(c, "a call") for c in m["calls"]]
            self.ref = str(m["architecture"]["ref"])
            self.call = str(m["architecture"]["call"])
            self.task = str(m["architecture"]["task"])
            if not isinstance(m.get("weights", {}), dict) or not isinstance(m.get("example_input", ""), str):
                raise TypeError("'weights' must be an object and 'example_input' a string")
            if m.get("dtype", "float32") not in STORE_DTYPES:
                raise ValueError(f"dtype {m.get('dtype')!r:.40} is not one of {STORE_DTYPES}")
            _check_slicing(m.get("slicing", {"mode": "off"}))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as e:
            raise StoreFormatError(f"{manifest_path}: malformed manifest ({type(e).__name__}: {e})") from None
        self._check_layout()
        self._check_weights_file()

    # -- facts -----------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        """Weight bytes as stored (units padded to UNIT_ALIGN)."""
        return sum(u.nbytes for u in self.units)

    @property
    def pinned_bytes(self) -> int:
        return sum(u.nbytes for u in self.units if u.pinned)

    @property
    def random_weights(self) -> bool:
        return self.manifest.get("weights", {}).get("source") == "random"

    @property
    def default_input(self) -> str:
        return self.manifest.get("example_input", "random:1x3x224x224")

    @property
    def dtype(self) -> str:
        """The floating-point dtype of the stored weights (float32 unless converted with dtype=)."""
        return self.manifest.get("dtype", "float32")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPE_BY_NAME[self.dtype]

    @property
    def slicing(self) -> dict:
        """What convert sliced: mode, max_slice_bytes, layers (path -> output bounds), whole (path -> why not)."""
        return self.manifest.get("slicing", {"mode": "off"})

    @property
    def sliced_layers(self) -> dict[str, list[int]]:
        return self.slicing.get("layers", {})

    def make_input(self, spec: str | None = None, *, seed: int = 0) -> torch.Tensor:
        """An input for this store's network (its conversion's example by default), in the store's dtype."""
        x = make_input(spec or self.default_input, seed=seed)
        return map_inputs(x, lambda t: t.to(self.torch_dtype) if t.is_floating_point() else t)

    def spec(self) -> ModelSpec:
        return resolve(self.ref)

    def __repr__(self) -> str:
        return f"BlockStore({str(self.path)!r}, {self.ref!r}, {len(self.units)} units, {self.total_bytes} bytes)"

    # -- validation --------------------------------------------------------------------------
    def _check_layout(self) -> None:
        """Everything the planner and runtime take for granted, so that a damaged or hand-edited manifest
        is refused here with StoreFormatError instead of reading out of bounds or binding garbage later."""
        where = self.path / MANIFEST_NAME
        end = self.units[0].offset if self.units else self.file_bytes
        bound: set[tuple[str, str]] = set()
        for u in self.units:
            if u.offset % UNIT_ALIGN or u.nbytes % UNIT_ALIGN or u.nbytes <= 0:
                raise StoreFormatError(f"{where}: unit '{u.name}' is empty or not aligned to {UNIT_ALIGN} bytes")
            if u.offset != end:  # consecutive units are one contiguous range: blocks are single reads
                raise StoreFormatError(f"{where}: unit '{u.name}' overlaps the unit before it or leaves a gap")
            if u.end > self.file_bytes:
                raise StoreFormatError(f"{where}: unit '{u.name}' ends past the end of the file")
            end = u.end
            spans = []
            for t in u.tensors:
                numel = 1
                for d in t.shape:
                    numel *= d
                if t.offset < 0 or t.offset + t.nbytes > u.nbytes or t.nbytes != numel * t.dtype.itemsize:
                    raise StoreFormatError(f"{where}: tensor '{t.name}' lies outside unit '{u.name}' "
                                           f"or its size does not match its shape")
                if t.offset % t.dtype.itemsize:
                    raise StoreFormatError(f"{where}: tensor '{t.name}' is not aligned to its element size")
                spans.append((t.offset, t.offset + t.nbytes, t.name))
                for path, attr, _kind in t.bindings:
                    if (path, attr) in bound:
                        raise StoreFormatError(f"{where}: '{path}.{attr}' is bound to two stored tensors")
                    bound.add((path, attr))
            spans.sort()
            for (_a0, a1, a), (b0, _b1, b) in zip(spans, spans[1:]):
                if b0 < a1:
                    raise StoreFormatError(f"{where}: tensors '{a}' and '{b}' overlap in unit '{u.name}'")
        if end != self.file_bytes:
            raise StoreFormatError(f"{where}: the units end at {end}, the file_bytes say {self.file_bytes}")
        pinned = [u.pinned for u in self.units]
        if pinned != sorted(pinned, reverse=True):
            raise StoreFormatError(f"{where}: pinned units must lead the store")
        if any(not 0 <= c < len(self.units) or self.units[c].pinned for c in self.calls):
            raise StoreFormatError(f"{where}: the call order names a unit that does not exist")
        # units lie in first-call order, the never-called ones last: the runtime's prefetch relies on it
        swapped = [u for u in self.units if not u.pinned]
        traced = [u.traced for u in swapped]
        if traced != sorted(traced, reverse=True) or set(self.calls) != {u.index for u in swapped if u.traced}:
            raise StoreFormatError(f"{where}: the traced flags and the call order disagree")
        first_calls = list(dict.fromkeys(self.calls))
        if first_calls != sorted(first_calls):
            raise StoreFormatError(f"{where}: the units are not stored in the order they are first called")

    def _check_weights_file(self) -> None:
        try:
            size = self.weights_path.stat().st_size
        except FileNotFoundError:
            raise StoreTruncatedError(f"{self.weights_path} is missing") from None
        if size < self.file_bytes:
            raise StoreTruncatedError(f"{self.weights_path} is truncated: {size} bytes, "
                                      f"the manifest says {self.file_bytes}")
        with open(self.weights_path, "rb") as f:
            head = f.read(8)
            (header_len,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
            if not 0 < header_len < min(size, 100 << 20):
                raise StoreMismatchError(f"{self.weights_path} is not a safetensors file")
            try:
                header = json.loads(f.read(header_len))
            except (ValueError, RecursionError):
                header = None
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(metadata, dict) or not all(isinstance(v, dict) for k, v in header.items() if k != "__metadata__"):
            raise StoreMismatchError(f"{self.weights_path} has a malformed safetensors header")
        if metadata.get("store_id") != self.store_id:
            raise StoreMismatchError(f"{self.path / MANIFEST_NAME} does not belong to {self.weights_path} "
                                     f"(store ids differ: a manifest of another model or conversion)")
        data_start = 8 + header_len
        if self.units and self.units[0].offset < data_start:
            raise StoreMismatchError(f"{self.weights_path}: unit '{self.units[0].name}' starts inside the "
                                     f"safetensors header (which ends at {data_start})")
        for u in self.units:
            for t in u.tensors:
                entry = header.get(t.name)
                want = [u.offset + t.offset - data_start, u.offset + t.offset + t.nbytes - data_start]
                if (not entry or entry.get("data_offsets") != want or entry.get("shape") != list(t.shape)
                        or entry.get("dtype") != _ST_DTYPES[t.dtype]):
                    raise StoreMismatchError(f"{self.weights_path}: tensor '{t.name}' differs from the manifest")

    # -- the skeleton --------------------------------------------------------------------------
    def build_skeleton(self) -> nn.Module:
        """The network on torch.device('meta'): structure only, no weight memory. Checked against the store."""
        spec = self.spec()
        model = build_on_meta(spec.build).to(self.torch_dtype)  # floating-point tensors, as convert cast them
        try:
            apply_slicing(model, self.sliced_layers)  # the same parts, on meta, as convert cut
        except (AttributeError, TypeError, ValueError) as e:
            raise StoreMismatchError(f"{self.path}: the store's slicing does not fit {self.ref}: {e}") from None
        held = {}
        for path, module in model.named_modules():
            for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
                for attr, t in table.items():
                    if t is not None:
                        held[(path, attr)] = (kind, t)
            for attr, value in vars(module).items():
                inner = [] if attr in ("_parameters", "_buffers", "_modules") else (
                    list(value.values()) if isinstance(value, dict) else list(value) if isinstance(value, (list, tuple)) else [])
                if any(isinstance(v, torch.Tensor) and v.device.type == "meta" for v in [value] + inner):
                    raise StoreError(f"{self.ref}: module '{path}' keeps tensor '{attr}' outside its parameters "
                                     f"and buffers; it cannot be rebuilt without weights")
        stored = {}
        for u in self.units:
            for t in u.tensors:
                for path, attr, kind in t.bindings:
                    stored[(path, attr)] = (kind, t)
        missing = sorted(f"{p}.{a}" for p, a in held.keys() - stored.keys())
        extra = sorted(f"{p}.{a}" for p, a in stored.keys() - held.keys())
        if missing or extra:
            raise StoreMismatchError(f"{self.path} does not match {self.ref}: not in the store: "
                                     f"{missing[:3] or 'none'}, not in the model: {extra[:3] or 'none'}")
        paths = {path for path, _ in model.named_modules()}
        for u in self.units:
            if not u.pinned and u.name not in paths:
                raise StoreMismatchError(f"{self.path}: unit '{u.name}' is not a module of {self.ref}")
        for key, (kind, entry) in stored.items():
            held_kind, t = held[key]
            if held_kind != kind or tuple(t.shape) != entry.shape or t.dtype != entry.dtype:
                raise StoreMismatchError(f"{self.path}: '{entry.name}' is {kind} {entry.dtype} {list(entry.shape)} "
                                         f"in the store but {held_kind} {t.dtype} {list(t.shape)} in {self.ref}")
        return model


def _int(d: dict, key: str) -> int:
    return _int_value(d[key], key)


def _int_value(v, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {v!r:.40}")
    return v


def _check_slicing(slicing) -> None:
    layers = slicing.get("layers", {}) if isinstance(slicing, dict) else None
    if not isinstance(layers, dict):
        raise TypeError("'slicing' must be an object whose 'layers' is an object")
    for path, bounds in layers.items():
        if not (isinstance(path, str) and isinstance(bounds, list) and len(bounds) >= 3
                and all(type(b) is int for b in bounds) and bounds[0] == 0 and bounds == sorted(set(bounds))):
            raise ValueError(f"slicing of {path!r:.40}: bounds must be increasing integers from 0")


def _parse_unit(index: int, u: dict) -> Unit:
    tensors = []
    for t in u["tensors"]:
        dtype = _DTYPE_BY_NAME.get(t["dtype"]) if isinstance(t["dtype"], str) else None
        if dtype is None:
            raise ValueError(f"unknown dtype {t['dtype']!r}")
        if not isinstance(t["shape"], list):
            raise TypeError(f"the shape of {t['name']!r:.40} is not a list")
        shape = tuple(_int_value(d, "a dimension") for d in t["shape"])
        if not isinstance(t["bindings"], list) or not all(isinstance(b, list) and len(b) == 3 for b in t["bindings"]):
            raise TypeError(f"the bindings of {t['name']!r:.40} are not [module, attribute, kind] lists")
        bindings = tuple((str(p), str(a), str(k)) for p, a, k in t["bindings"])
        if not bindings or any(k not in ("param", "buffer") for _, _, k in bindings):
            raise ValueError(f"bad bindings for {t['name']!r:.40}")
        tensors.append(TensorEntry(str(t["name"]), dtype, shape, _int(t, "offset"), _int(t, "nbytes"), bindings))
    checksum = u["checksum"]
    if not isinstance(checksum, str) or not re.fullmatch(r"crc32:[0-9a-f]{8}", checksum):
        raise ValueError(f"unknown checksum {checksum!r:.40}")
    if not isinstance(u["pinned"], bool) or not isinstance(u["traced"], bool) or not isinstance(u["name"], str):
        raise TypeError("a unit's 'pinned' and 'traced' must be booleans and its 'name' a string")
    return Unit(index, u["name"], _int(u, "offset"), _int(u, "nbytes"), int(checksum[6:], 16),
                u["pinned"], u["traced"], tuple(tensors))


# ------------------------------------------------------------------------------------------------
# conversion

def convert(ref: str, out: str | os.PathLike, *, weights: str | os.PathLike | None = None,
            input_spec: str | None = None, force: bool = False, progress: bool = True,
            spec: ModelSpec | None = None, progress_file=None, dtype: str = "float32",
            on_progress=None, slice_bytes: int | str | None = "auto") -> BlockStore:
    """Convert a model into a block store at `out`, atomically (a temporary folder renamed into place).
    weights: a checkpoint file, "DEFAULT" (torchvision's pretrained weights from the torch hub cache), or
    None: the reference's own (a save_pretrained folder's safetensors), else random weights.
    dtype: float32, float16 or bfloat16, what floating-point weights are stored (and computed) in.
    slice_bytes: "auto" (1/64 of the weights, at least 1 MiB), a size in bytes, or None/"off": layers
    larger than twice that are cut into output slices where that is bit-identical (slicing.py).
    on_progress(bytes_written, bytes_total) is called as the weights file is written."""
    out = Path(out)
    if dtype not in STORE_DTYPES:
        raise StoreError(f"dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    if out.exists() and not force:
        raise StoreError(f"{out} exists (use force=True / --force to replace it)")
    if out.exists() and not (out / MANIFEST_NAME).is_file():
        raise StoreError(f"{out} exists and is not a block store; refusing to replace it")
    spec = spec or resolve(ref)
    weights = spec.weights_for(weights)  # DEFAULT: the cached file; none given: the reference's own, if any
    torch.manual_seed(RANDOM_SEED)  # random weights are reproducible
    model = spec.build()
    if weights is not None:
        spec.load(model, weights)
    model.to(_DTYPE_BY_NAME[dtype])  # floating-point parameters and buffers only
    input_spec = input_spec or spec.default_input
    example = map_inputs(make_input(input_spec), lambda t: t.to(_DTYPE_BY_NAME[dtype]))
    before = {name: b.detach().clone() for name, b in model.named_buffers()}  # small: stats, anchors

    def forward():
        return call_model(model, spec.call, example)

    def restore():  # every later forward starts from the model's state as given (outside any trace)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in before:
                    b.copy_(before[name])

    result = trace(model, forward)
    slicing = {"mode": "off"}
    if slice_bytes not in (None, 0, "off"):
        limit = auto_slice_bytes(sum(r.tensor.numel() * r.tensor.element_size() for r in result.tensors)) \
            if slice_bytes == "auto" else int(slice_bytes)
        candidates, whole = slice_candidates(model, result, limit)
        restore()
        inputs = layer_inputs(model, candidates, forward)
        chosen = {}
        for path, nbytes in candidates.items():  # kept only where bit-identical to the whole layer
            bounds, why = exact_bounds(model.get_submodule(path), nbytes, limit, inputs[path])
            if bounds is None:
                whole[path] = why
            else:
                chosen[path] = bounds
        slicing = {"mode": str(slice_bytes), "max_slice_bytes": limit, "layers": chosen, "whole": whole}
        if chosen:
            apply_slicing(model, chosen)
            restore()
            result = trace(model, forward)
    for i, why in result.pin_reasons.items():
        if why == IN_PLACE:  # store the state from before the trace, as the model was given
            changed = result.tensors[i]
            if changed.bindings[0][2] == "param":
                raise StoreError(f"{ref}: the forward changes parameter '{changed.name}' in place; not supported")
            changed.tensor = before[changed.name]
    units = _group_units(result)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    lock = _lock_folder(tmp)  # held until the store is in place: tells a later convert we are alive
    try:
        manifest = _write_store(tmp, units, result, progress=progress, desc=ref, progress_file=progress_file,
                                on_progress=on_progress)
        manifest.update({
            "architecture": {"ref": ref, "task": spec.task, "call": spec.call,
                             "class": f"{type(model).__module__}.{type(model).__qualname__}"},
            "weights": weights_record(weights),
            "example_input": input_spec,
            "dtype": dtype,
            "slicing": slicing,
            "created_by": f"swapnet_core {__version__}, torch {torch.__version__}",
        })
        _write_durably(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        if out.exists():
            _replace_folder(tmp, out)  # tmp now holds the old store
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in _DISK_FULL:
            raise StoreError(f"cannot write {out}: {os.strerror(e.errno)}; nothing was left behind") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    return BlockStore(out)


def _group_units(result) -> list[tuple[str, bool, bool, list[int]]]:
    """(name, pinned, traced, tensor indices) per unit, in storage order: pinned, called, never called."""
    members: dict[int, list[int]] = {}
    for i, unit in enumerate(result.tensor_unit):
        members.setdefault(unit, []).append(i)
    units = []
    if PINNED in members:
        units.append((PINNED_UNIT, True, True, members.pop(PINNED)))
    for m in dict.fromkeys(result.calls):  # first-call order
        if m in members:
            units.append((result.modules[m], False, True, members.pop(m)))
    for m in sorted(members):
        units.append((result.modules[m], False, False, members[m]))
    return units


def _write_store(folder: Path, units, result, *, progress: bool, desc: str, progress_file=None,
                 on_progress=None) -> dict:
    # Lay out every unit, relative to the start of the data section.
    layout = []  # (name, pinned, traced, [(tensor index, offset in unit, nbytes)], unit rel offset, unit nbytes)
    rel = 0
    for name, pinned, traced, idx in units:
        placed, off = [], 0
        for i in idx:
            t = result.tensors[i].tensor
            off = align_up(off, TENSOR_ALIGN)
            placed.append((i, off, t.numel() * t.element_size()))
            off += t.numel() * t.element_size()
        size = align_up(max(off, 1), UNIT_ALIGN)
        layout.append((name, pinned, traced, placed, rel, size))
        rel += size
    data_len = rel

    store_id = uuid.uuid4().hex
    header: dict = {"__metadata__": {"format": FORMAT, "store_id": store_id}}
    pads = 0
    cursor = 0
    for name, _, _, placed, urel, size in layout:
        for i, off, n in placed:
            if urel + off > cursor:
                header[f"__pad_{pads}__"] = {"dtype": "U8", "shape": [urel + off - cursor], "data_offsets": [cursor, urel + off]}
                pads += 1
            t = result.tensors[i].tensor
            header[result.tensors[i].name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                                              "data_offsets": [urel + off, urel + off + n]}
            cursor = urel + off + n
    if data_len > cursor:
        header[f"__pad_{pads}__"] = {"dtype": "U8", "shape": [data_len - cursor], "data_offsets": [cursor, data_len]}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    data_start = align_up(8 + len(header_bytes), UNIT_ALIGN)
    header_bytes += b" " * (data_start - 8 - len(header_bytes))  # safetensors allows trailing spaces

    need = data_start + data_len
    fs = os.statvfs(folder)
    if need > fs.f_bavail * fs.f_frsize:  # say so before writing, with the sizes
        raise _no_space(folder, need, errno.ENOSPC)
    try:
        return _write_data(folder, units, result, layout, header_bytes, data_start, data_len, store_id,
                           progress=progress, desc=desc, progress_file=progress_file, on_progress=on_progress)
    except OSError as e:
        if e.errno in _DISK_FULL:  # filled up meanwhile, or a file size limit
            raise _no_space(folder, need, e.errno) from None
        raise


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _no_space(folder: Path, need: int, err: int) -> StoreError:
    fs = os.statvfs(folder)
    free = fs.f_bavail * fs.f_frsize
    room = (f"{format_bytes(free)} ({free} bytes) are free" if err != errno.EFBIG else
            "a file size limit (ulimit -f) is lower")
    return StoreError(f"{os.strerror(err)}: the store needs {format_bytes(need)} ({need} bytes) in "
                      f"{folder.parent}, {room}; nothing was left behind")


def _write_data(folder, units, result, layout, header_bytes, data_start, data_len, store_id, *,
                progress, desc, progress_file, on_progress) -> dict:
    from tqdm import tqdm

    manifest_units, written = [], 0
    path = folder / WEIGHTS_NAME
    with open(path, "wb") as f, tqdm(total=data_len, unit="B", unit_scale=True, desc=f"convert {desc}",
                                     disable=not progress, leave=False, file=progress_file,
                                     mininterval=0.1 if progress_file is None else 2.0) as bar:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        for name, pinned, traced, placed, urel, size in layout:
            buf = bytearray(size)
            entries = []
            for i, off, n in placed:
                ref = result.tensors[i]
                t = ref.tensor.detach().to("cpu").contiguous().reshape(-1)
                buf[off:off + n] = t.view(torch.uint8).numpy().tobytes() if n else b""
                entries.append({"name": ref.name, "dtype": str(t.dtype).removeprefix("torch."),
                                "shape": list(ref.tensor.shape), "offset": off, "nbytes": n,
                                "bindings": [list(b) for b in ref.bindings]})
            f.write(buf)
            manifest_units.append({"name": name, "offset": data_start + urel, "nbytes": size,
                                   "checksum": f"crc32:{unit_checksum(buf):08x}", "pinned": pinned,
                                   "traced": traced, "tensors": entries})
            bar.update(size)
            written += size
            if on_progress is not None:
                on_progress(written, data_len)
        f.flush()
        os.fsync(f.fileno())
    # the recorded call order, in unit indices (pinned and tensor-less modules drop out)
    module_index = {path: i for i, path in enumerate(result.modules)}
    unit_of_module = {module_index[name]: k for k, (name, pinned, *_r) in enumerate(units) if not pinned}
    calls = [unit_of_module[m] for m in result.calls if m in unit_of_module]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "store_id": store_id,
            "weights_file": WEIGHTS_NAME, "file_bytes": data_start + data_len, "data_offset": data_start,
            "unit_alignment": UNIT_ALIGN, "units": manifest_units, "calls": calls}


def _lock_folder(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _remove_stale_temporaries(out: Path) -> None:
    """Remove what killed conversions to `out` left beside it (.NAME.*.partial / .old folders): a folder
    whose lock can be taken has no live owner. (A folder is unlocked for the instant between its
    mkdtemp and its flock: a cleanup landing exactly then would remove a live conversion's folder,
    which then fails with an error; it never yields a broken store.)"""
    for p in out.parent.iterdir():
        if not (p.name.startswith(f".{out.name}.") and p.name.endswith((".partial", ".old")) and p.is_dir()):
            continue
        try:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a conversion in progress
        else:
            shutil.rmtree(p, ignore_errors=True)
        finally:
            os.close(fd)


def _replace_folder(new: Path, out: Path) -> None:
    """Put folder `new` at `out` in one step (renameat2 RENAME_EXCHANGE: a reader of `out` sees the old
    store or the new one, never no store); `new` then holds the old store. Where the file system or
    C library lacks it, two renames, with the old store parked in a .old folder between them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(out), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(out))
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, trash / "store")
    os.replace(new, out)
    os.replace(trash / "store", new)
    trash.rmdir()


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
