"""Model references, builders, example inputs and output comparison.

A model reference names how to build a network, never where to download it:
  torchvision:NAME[?key=value&...]       any torchvision model builder, weights=None
  transformers:PRESET | transformers:PATH   a preset below, a local config.json, or a save_pretrained folder
                                           (its safetensors are the weights); the task follows the
                                           architecture (...ForObjectDetection, ...ForDepthEstimation, ...)
  package.module:factory[?key=value&...]   a user's own factory returning an nn.Module, marked with
                                           @model_factory (only marked functions are ever called)
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pickle  # only for its exception type: nothing here unpickles
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import InputSpecError, ModelRefError, WeightsError
from .pretrained import DEFAULT, hf_folder_weights, hub_cache_file, load_hf_folder

# Depth Anything V1 sizes (backbone DINOv2 + DPT-style neck), matching the published HF configs.
_DEPTH_ANYTHING = {
    "small": dict(hidden=384, heads=6, layers=12, out=[3, 6, 9, 12], neck=[48, 96, 192, 384], fusion=64),
    "base": dict(hidden=768, heads=12, layers=12, out=[3, 6, 9, 12], neck=[96, 192, 384, 768], fusion=128),
    "large": dict(hidden=1024, heads=16, layers=24, out=[5, 12, 18, 24], neck=[256, 512, 1024, 1024], fusion=256),
}
TRANSFORMERS_PRESETS = [f"depth-anything-{s}" for s in _DEPTH_ANYTHING] + ["dpt-large"]
# a transformers class's task, from its name's head
_TRANSFORMERS_TASKS = {"ForObjectDetection": "detection", "ForSemanticSegmentation": "segmentation",
                       "ForUniversalSegmentation": "segmentation", "ForInstanceSegmentation": "segmentation",
                       "ForDepthEstimation": "depth"}
_AUTO_HEADS = ("AutoModelForDepthEstimation", "AutoModelForObjectDetection", "AutoModelForSemanticSegmentation",
               "AutoModelForUniversalSegmentation")  # where a config naming no architecture is looked up
_TASK_INPUTS = {"detection": "random:1x3x480x640", "segmentation": "random:1x3x480x640",
                "depth": "random:1x3x364x490"}
_METRIC_DEPTH = ("zoedepth", "glpn", "depth_pro")  # model types trained to predict metres

# How a model is called with one image batch x (N x 3 x H x W).
CALL_TENSOR, CALL_IMAGE_LIST, CALL_PIXEL_VALUES = "tensor", "image_list", "pixel_values"
IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # (mean, std) of pixels in [0, 1]


@dataclass
class ModelSpec:
    ref: str
    builder: Callable[[], nn.Module] = field(repr=False)
    task: str = "other"
    call: str = CALL_TENSOR
    default_input: str = "random:1x3x224x224"
    labels: list[str] | None = None  # class names by id, from the model's own metadata
    num_labels: int | None = None  # classes the head predicts (a DETR head adds a no-object class)
    depth: str = "relative"  # what a depth head predicts: "metric" (metres) or "relative" (inverse depth)
    bundled_weights: tuple[Path, ...] = ()  # weights the reference itself carries (a save_pretrained folder)
    bundled_loader: Callable[[nn.Module], None] | None = field(default=None, repr=False)
    pretrained: Callable[[], Path] | None = field(default=None, repr=False)  # weights DEFAULT: the cached file
    pretrained_file: Path | None = field(default=None, repr=False)  # what weights_for found for DEFAULT
    normalize: tuple | None = IMAGENET_NORMALIZE  # (mean, std) a frame in [0, 1] is normalised with; None: inside

    def __post_init__(self):
        if self.call == CALL_IMAGE_LIST:  # torchvision detectors normalise inside
            self.normalize = None

    def weights_for(self, weights: str | os.PathLike | None):
        """What to load into the network: `weights` as given (DEFAULT: the cached pretrained file), else
        the reference's own files; None means random weights."""
        if weights is None or weights == "":
            return self.bundled_weights or None
        if weights == DEFAULT:
            if self.pretrained is None:
                raise WeightsError(f"{self.ref}: weights DEFAULT name torchvision's pretrained weights; "
                                   f"this model has none (give a checkpoint file)")
            self.pretrained_file = self.pretrained()
            return self.pretrained_file
        return weights

    def load(self, model: nn.Module, weights) -> None:
        """Load what weights_for gave into a network this spec built."""
        if self.bundled_loader is not None and weights == self.bundled_weights:
            self.bundled_loader(model)
        else:
            load_weights(model, weights, training_extras=weights == self.pretrained_file)

    def build(self) -> nn.Module:
        """Build the network (on the current default device: use `torch.device('meta')` for a skeleton)."""
        try:
            model = self.builder()
        except Exception as e:  # a constructor's own failure: one line naming the model, not a traceback
            raise ModelRefError(f"{self.ref}: building the network failed: {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise ModelRefError(f"{self.ref}: the factory returned {type(model).__name__}, not an nn.Module")
        return model.eval()


def model_factory(fn: Callable | None = None, *, task: str = "other", call: str = CALL_TENSOR,
                  example_input: str = "random:1x3x224x224"):
    """Mark a function returning an nn.Module as one that `package.module:factory` references may name.

    A store's manifest carries its model reference, so a store from elsewhere could otherwise name any
    importable function with arguments of its choosing (`os:system?command=...`): unmarked functions
    are refused, never called. `task`, `call` (how the model takes an image batch) and `example_input`
    are the defaults `swapnet convert` uses.

        @model_factory(task="detection", call="image_list")
        def my_detector(num_classes=91): ...
    """
    if call not in (CALL_TENSOR, CALL_IMAGE_LIST, CALL_PIXEL_VALUES):
        raise ValueError(f"call must be one of {CALL_TENSOR}, {CALL_IMAGE_LIST}, {CALL_PIXEL_VALUES}, got {call!r}")

    def mark(f: Callable) -> Callable:
        mark_function(f, "swapnet_factory", "@model_factory")
        f.swapnet_task, f.swapnet_call, f.swapnet_input = task, call, example_input
        return f

    return mark(fn) if fn is not None else mark


def mark_function(f: Callable, mark: str, decorator: str) -> None:
    if not inspect.isfunction(f):  # a class's mark would pass to every subclass
        raise TypeError(f"{decorator} marks functions, not {type(f).__name__} objects")
    setattr(f, mark, True)


def marked_function(ref: str, mark: str, decorator: str, what: str) -> Callable:
    """The function `package.module:name` names, if it carries its own `mark` (set by `decorator`);
    anything else is refused with a ModelRefError, never called."""
    module_name, _, name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelRefError(f"{ref!r}: cannot import {module_name!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ModelRefError(f"{ref!r}: {module_name!r} has no {what} {name!r}")
    if not (inspect.isfunction(fn) and vars(fn).get(mark) is True):  # its own mark, not inherited
        raise ModelRefError(f"{ref!r}: {module_name}.{name} is not marked as {'an' if what[0] in 'aeiou' else 'a'} "
                            f"{what}, so it is not called (decorate it with {decorator}; a reference names any "
                            f"importable function, and an unmarked one could be anything)")
    return fn


def call_model(model: Callable, call: str, x: torch.Tensor | tuple[torch.Tensor, ...]):
    """Run `model` on the image batch x with the model's calling convention; several inputs (a tuple,
    from a spec such as random:1x3x64x64,random:1x3x64x64) are passed as positional arguments."""
    if isinstance(x, tuple):
        if call != CALL_TENSOR:
            raise InputSpecError(f"several inputs are passed as positional tensors; a {call} model takes one batch")
        return model(*x)
    if call == CALL_IMAGE_LIST:
        return model(list(x.unbind(0)))
    if call == CALL_PIXEL_VALUES:
        return model(pixel_values=x)
    return model(x)


def resolve(ref: str) -> ModelSpec:
    """Turn a model reference into a ModelSpec, or raise ModelRefError saying why not."""
    if not isinstance(ref, str) or ":" not in ref:
        raise ModelRefError(f"unknown model reference {ref!r}: expected torchvision:NAME, "
                            f"transformers:PRESET|CONFIG, or package.module:factory")
    scheme, _, rest = ref.partition(":")
    if scheme == "torchvision":
        return _torchvision(ref, rest)
    if scheme == "transformers":
        return _transformers(ref, rest)
    if re.fullmatch(r"[A-Za-z_][\w.]*", scheme):
        return _factory(ref, scheme, rest)
    raise ModelRefError(f"unknown model reference {ref!r}")


def _split_query(text: str) -> tuple[str, dict[str, Any]]:
    name, _, query = text.partition("?")
    kwargs: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise ModelRefError(f"bad option {item!r} in model reference (expected key=value)")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return name, kwargs


def _torchvision(ref: str, rest: str) -> ModelSpec:
    import torchvision

    name, kwargs = _split_query(rest)
    try:
        fn = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ModelRefError(f"unknown torchvision model {name!r} in {ref!r}; "
                            f"see torchvision.models.list_models()") from None
    params = inspect.signature(fn).parameters
    kwargs.setdefault("weights", None)  # never download
    if "weights_backbone" in params:
        kwargs.setdefault("weights_backbone", None)
    module = fn.__module__
    if ".optical_flow" in module:  # RAFT: the flow from image1 to image2
        task, call, default = "optical_flow", CALL_TENSOR, "random:1x3x128x128,random:1x3x128x128"
    elif ".detection" in module:
        task, call, default = "detection", CALL_IMAGE_LIST, "random:1x3x480x640"
    elif ".segmentation" in module:
        task, call, default = "segmentation", CALL_TENSOR, "random:1x3x480x640"
    elif ".video" in module:
        task, call, default = "video", CALL_TENSOR, "random:1x3x16x112x112"
    else:
        task, call, default = "classification", CALL_TENSOR, "random:1x3x224x224"
    labels = _torchvision_categories(name, kwargs)
    return ModelSpec(ref, lambda: fn(**kwargs), task, call, default, labels=labels,
                     num_labels=len(labels) if labels else None, pretrained=lambda: hub_cache_file(ref, name))


def _torchvision_categories(name: str, kwargs: dict) -> list[str] | None:
    """The class names torchvision's weight enum ships for this builder (no download), unless the
    reference asks for another number of classes."""
    import torchvision

    try:
        categories = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")
    except (ValueError, AttributeError):
        return None
    if not categories or kwargs.get("num_classes", len(categories)) != len(categories):
        return None
    return list(categories)


def _transformers(ref: str, rest: str) -> ModelSpec:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelRefError(f"{ref!r} needs the transformers package") from None
    config = _transformers_config(ref, rest)  # fails early on a bad preset or config
    cls = _transformers_class(ref, config)
    task = next((t for head, t in _TRANSFORMERS_TASKS.items() if cls.__name__.endswith(head)), "other")
    spec = ModelSpec(ref, lambda: cls(_transformers_config(ref, rest)), task, CALL_PIXEL_VALUES,
                     _TASK_INPUTS.get(task, "random:1x3x224x224"))
    if task in ("detection", "segmentation"):
        spec.num_labels = config.num_labels
        spec.labels = [str(config.id2label.get(i, i)) for i in range(config.num_labels)]
    metric = getattr(config, "depth_estimation_type", None) == "metric" or config.model_type in _METRIC_DEPTH
    spec.depth = "metric" if metric else "relative"
    folder = Path(rest)
    if folder.is_dir():
        spec.bundled_weights = hf_folder_weights(folder)
        spec.bundled_loader = lambda model: load_hf_folder(model, folder)
        spec.normalize = _preprocessor_normalize(ref, folder / "preprocessor_config.json")
    return spec


def _preprocessor_normalize(ref: str, path: Path) -> tuple | None:
    """The normalisation a folder's image processor applies (RT-DETR's applies none), else ImageNet's."""
    if not path.is_file():
        return IMAGENET_NORMALIZE
    try:
        data = json.loads(path.read_text())
        if not data.get("do_normalize", True):
            return None
        mean, std = data.get("image_mean", IMAGENET_NORMALIZE[0]), data.get("image_std", IMAGENET_NORMALIZE[1])
        return tuple(map(float, mean)), tuple(map(float, std))
    except (ValueError, TypeError, AttributeError) as e:
        raise ModelRefError(f"{ref!r}: cannot read {path}: {e}") from None


def _transformers_class(ref: str, config):
    """The model class: the config's own architecture, else the detection, segmentation or depth head
    transformers registers for its model type."""
    import transformers

    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    for auto in _AUTO_HEADS if cls is None else ():
        mapping = getattr(transformers, auto)._model_mapping
        if type(config) in mapping:
            return mapping[type(config)]
    if cls is None:
        raise ModelRefError(f"{ref!r}: transformers has no detection, segmentation or depth model for "
                            f"{config.model_type!r} (name one in the config's architectures)")
    return cls


def _transformers_config(ref: str, rest: str):
    import transformers

    if rest.startswith("depth-anything-") and rest[len("depth-anything-"):] in _DEPTH_ANYTHING:
        s = _DEPTH_ANYTHING[rest[len("depth-anything-"):]]
        backbone = transformers.Dinov2Config(
            hidden_size=s["hidden"], num_attention_heads=s["heads"], num_hidden_layers=s["layers"],
            out_indices=s["out"], image_size=518, patch_size=14, reshape_hidden_states=False)
        return transformers.DepthAnythingConfig(
            backbone_config=backbone, neck_hidden_sizes=s["neck"], fusion_hidden_size=s["fusion"],
            reassemble_hidden_size=s["hidden"], architectures=["DepthAnythingForDepthEstimation"])
    if rest == "dpt-large":
        return transformers.DPTConfig(architectures=["DPTForDepthEstimation"])
    path = Path(rest)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
            return transformers.AutoConfig.for_model(**data)
        except (ValueError, KeyError) as e:
            raise ModelRefError(f"{ref!r}: cannot read the config: {e}") from None
    raise ModelRefError(f"unknown transformers model {rest!r} in {ref!r}: use one of "
                        f"{', '.join(TRANSFORMERS_PRESETS)} or a local config.json")


def _factory(ref: str, module_name: str, rest: str) -> ModelSpec:
    name, kwargs = _split_query(rest)
    fn = marked_function(f"{module_name}:{name}", "swapnet_factory", "@swapnet_core.model_factory", "model factory")
    task = getattr(fn, "swapnet_task", "other")
    call = getattr(fn, "swapnet_call", CALL_TENSOR)
    default = getattr(fn, "swapnet_input", "random:1x3x224x224")
    return ModelSpec(ref, lambda: fn(**kwargs), task, call, default)


def load_weights(model: nn.Module, path: str | Path, *, training_extras: bool = False) -> None:
    """Load a local checkpoint into `model`: safetensors, or a state dict read with weights_only=True.
    training_extras: the checkpoint is torchvision's pretrained one, saved from the builder's training
    configuration: FrozenBatchNorm layers (no num_batches_tracked counters, which inference never
    reads) and auxiliary heads (aux_classifier, AuxLogits) that a network built for inference lacks."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # torch's own text would suggest weights_only=False
        raise WeightsError(f"{path} holds pickled objects other than tensors; swapnet reads only safetensors or "
                           f"plain state dicts (torch.load weights_only=True) and did not unpickle it") from None
    except Exception as e:  # any reader error becomes one clear line
        raise WeightsError(f"cannot read weights file {path}: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state dict")
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if training_extras:
        children = dict(model.named_children())
        missing = [k for k in missing if not k.endswith(".num_batches_tracked")]
        unexpected = [k for k in unexpected if k.partition(".")[0] in children]
    if missing or unexpected:
        raise WeightsError(f"{path} does not fit the model: missing {_few(missing)}, unexpected {_few(unexpected)}")


def _few(keys: list[str]) -> str:
    return "none" if not keys else ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def map_inputs(x, fn: Callable[[torch.Tensor], torch.Tensor]):
    """fn applied to the input, or to each of several inputs (a tuple)."""
    return tuple(fn(t) for t in x) if isinstance(x, tuple) else fn(x)


def make_input(spec: str, *, seed: int = 0) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """An image batch from 'random:NxCxHxW' (seeded, in [0, 1)) or an image file path[@HxW]; several
    comma-separated specs give a tuple of inputs (a two-image network: random:1x3x64x64,random:1x3x64x64),
    each seeded differently."""
    parts = spec.split(",") if isinstance(spec, str) else [spec]
    if len(parts) > 1 and not Path(spec.partition("@")[0]).is_file():
        return tuple(make_input(part.strip(), seed=seed + i) for i, part in enumerate(parts))
    if spec.startswith("random:"):
        try:
            shape = [int(d) for d in spec[len("random:"):].lower().split("x")]
        except ValueError:
            shape = []
        if len(shape) < 2 or any(d <= 0 for d in shape):
            raise InputSpecError(f"bad input spec {spec!r}: expected random:NxCxHxW with positive sizes")
        return torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    path, _, size = spec.partition("@")
    if not Path(path).is_file():
        raise InputSpecError(f"input {spec!r} is neither an image file nor random:NxCxHxW")
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InputSpecError(f"cannot read image {path}: {e}") from None
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise InputSpecError(f"bad size in {spec!r}: expected PATH@HxW") from None
        img = img.resize((w, h), Image.BILINEAR)
    import numpy as np

    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).unsqueeze(0).float().div_(255)


def flatten_outputs(out) -> list[torch.Tensor]:
    """The tensors of a model output, in a stable order (tensors, lists, tuples, dicts, ModelOutputs)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two outputs; inf when their structure or shapes differ."""
    ta, tb = flatten_outputs(a), flatten_outputs(b)
    if len(ta) != len(tb):
        return float("inf")
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return float("inf")
        if x.numel() == 0:
            continue
        x, y = x.detach().cpu().double(), y.detach().cpu().double()
        same_nan = torch.isnan(x) & torch.isnan(y)
        d = torch.where(same_nan, torch.zeros_like(x), (x - y).abs())
        worst = max(worst, float(d.nan_to_num(nan=float("inf")).max()))
    return worst
