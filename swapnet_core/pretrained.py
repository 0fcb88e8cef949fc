"""Weights the user does not name by path: torchvision's pretrained weights (`DEFAULT`) read from the
local torch hub cache, and the safetensors a Hugging Face model folder holds. Nothing is downloaded,
nothing is unpickled: a missing file is a one-line WeightsError naming where it was looked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from .errors import WeightsError

DEFAULT = "DEFAULT"  # a `weights` value: torchvision's weight enum's DEFAULT for that builder


def torchvision_checkpoint(ref: str, name: str) -> tuple[str, Path]:
    """(the weight enum member, its file in the torch hub cache) for torchvision builder `name`."""
    import torch
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        raise WeightsError(f"{ref}: torchvision has no pretrained weights for {name}") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    return str(weights), path


def hub_cache_file(ref: str, name: str) -> Path:
    """torchvision's DEFAULT checkpoint for `name`, which must already be in the cache."""
    enum, path = torchvision_checkpoint(ref, name)
    if not path.is_file():
        raise WeightsError(f"{ref}: weights DEFAULT ({enum}) are read from the torch hub cache, expected at {path}, "
                           f"which is absent; nothing is downloaded here (copy the file there, or set TORCH_HOME)")
    return path


def hf_folder_weights(folder: Path) -> tuple[Path, ...]:
    """The safetensors files of a save_pretrained folder: model.safetensors, or the shards its index
    names; () when it holds none. A folder with only pickled weights (pytorch_model.bin) is refused
    rather than silently served with random ones."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise WeightsError(f"{index} is malformed: {type(e).__name__}: {e}") from None
        files = tuple(folder / n for n in names)
        for f in files:
            if not f.is_file():
                raise WeightsError(f"{index} names {f.name}, which is not in {folder}")
        return files
    if (folder / "model.safetensors").is_file():
        return (folder / "model.safetensors",)
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise WeightsError(f"{folder} holds {pickled[0]} (pickled weights) and no safetensors; swapnet reads only "
                           f"safetensors (save it with save_pretrained(safe_serialization=True))")
    return ()


def load_hf_folder(model: nn.Module, folder: Path) -> None:
    """Load a save_pretrained folder's safetensors into `model` as from_pretrained reads them: the
    checkpoint's key names are converted by transformers (its saved names can differ from the
    module's), then the state is copied into our own build, so the structure the store traces is the
    one its skeleton rebuilds."""
    try:
        pretrained, info = type(model).from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                       output_loading_info=True)
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot load the weights of {folder}: {str(e).splitlines()[0]}") from None
    bad = [f"{what} {', '.join(sorted(map(str, keys))[:3])}" for what, keys in
           (("missing", info.get("missing_keys")), ("mismatched", info.get("mismatched_keys"))) if keys]
    if bad:
        raise WeightsError(f"the weights in {folder} do not fit {type(model).__name__}: {'; '.join(bad)}")
    state = pretrained.state_dict()
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"the weights in {folder} do not fit the model built from its config.json: "
                           f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")


def describe(weights: str | os.PathLike | tuple | None, ref: str = "") -> str:
    """What a node or a conversion runs with, in words (the demo prints it per network)."""
    from .identity import RANDOM_SEED

    if not weights:
        return f"random weights (seed {RANDOM_SEED})"
    if weights == DEFAULT:
        name = ref.partition(":")[2].partition("?")[0]
        enum, path = torchvision_checkpoint(ref, name)
        return f"DEFAULT = {enum} from the torch hub cache ({path})"
    if isinstance(weights, tuple):
        return f"the model folder's own safetensors ({len(weights)} file{'s' if len(weights) > 1 else ''})"
    return f"the checkpoint {weights}"
