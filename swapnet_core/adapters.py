"""Output adapters: a network's raw output turned into what a perception node publishes, chosen from
the output itself (its keys and shapes), not from where the network came from.

An adapter is `f(output, input_size, info)`: `input_size` is the network input's (height, width),
`info` an OutputInfo (the model's class count, whether its depth is metric); it returns Detections,
ClassScores or Depth for the first image of the batch. A user's own is marked `@output_adapter` and
named `package.module:function`: only functions carrying their own mark are ever called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ModelRefError
from .models import mark_function, marked_function


@dataclass
class OutputInfo:
    num_labels: int | None = None  # classes the model predicts (a DETR head adds a no-object class)
    depth: str = "relative"  # "metric": metres; "relative": relative inverse depth (larger is nearer)


@dataclass
class Detections:
    boxes: torch.Tensor  # (N, 4) x1, y1, x2, y2 in network-input pixels
    labels: torch.Tensor  # (N,) class ids
    scores: torch.Tensor  # (N,)


@dataclass
class ClassScores:
    scores: torch.Tensor  # (C, h, w) at the network's output resolution: the class id is the argmax


@dataclass
class Depth:
    values: torch.Tensor  # (h, w)
    metric: bool  # metres, or relative inverse depth


def output_adapter(fn: Callable) -> Callable:
    """Mark a function `f(output, input_size, info) -> Detections | ClassScores | Depth` as one a model
    node's `output_adapter` parameter may name."""
    mark_function(fn, "swapnet_adapter", "@output_adapter")
    return fn


def named_adapter(ref: str) -> Callable:
    """The marked adapter `package.module:function`; a ModelRefError for anything else."""
    if ref.count(":") != 1:
        raise ModelRefError(f"bad output adapter {ref!r}: expected package.module:function")
    return marked_function(ref, "swapnet_adapter", "@swapnet_core.output_adapter", "output adapter")


def _get(output, name: str):
    """A field of a dict or a ModelOutput (which is both), else None."""
    return output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)


@output_adapter
def torchvision_detections(output, input_size, info: OutputInfo) -> Detections:
    """torchvision detectors: one dict per image, boxes already x1, y1, x2, y2 in input pixels."""
    d = output[0]
    return Detections(d["boxes"], d["labels"], d["scores"])


@output_adapter
def set_detections(output, input_size, info: OutputInfo) -> Detections:
    """transformers detectors (DETR, YOLOS, RT-DETR, ...): per query class logits and a box (cx, cy, w, h)
    normalised to the input. A head with one class more than the model's labels has a no-object
    class last and is scored with a softmax (DETR, YOLOS); otherwise each class is scored on its own
    with a sigmoid and the best (query, class) pairs are kept, as many as there are queries (RT-DETR,
    Deformable DETR)."""
    logits, boxes = output.logits[0].float(), output.pred_boxes[0].float()
    queries, classes = logits.shape
    if info.num_labels is not None and classes == info.num_labels + 1:
        scores, labels = logits.softmax(-1)[:, :-1].max(-1)
        query = torch.arange(queries)
    else:
        scores, index = logits.sigmoid().flatten().topk(queries)
        labels, query = index % classes, index // classes
    cx, cy, w, h = boxes[query].unbind(-1)
    height, width = input_size
    xyxy = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)
    return Detections(xyxy, labels, scores)


@output_adapter
def torchvision_segmentation(output, input_size, info: OutputInfo) -> ClassScores:
    return ClassScores(output["out"][0])


@output_adapter
def semantic_logits(output, input_size, info: OutputInfo) -> ClassScores:
    """SegFormer, UperNet, DPT's segmentation head: per-pixel logits, often at a reduced resolution."""
    return ClassScores(_get(output, "logits")[0])


@output_adapter
def class_scores(output, input_size, info: OutputInfo) -> ClassScores:
    """A plain (N, C, H, W) tensor of per-class scores."""
    return ClassScores(output[0])


@output_adapter
def mask_queries(output, input_size, info: OutputInfo) -> ClassScores:
    """Mask2Former, MaskFormer: each query's class (no-object last) and mask; a class's score at a pixel
    is the sum over queries of P(class) x P(mask)."""
    classes = output.class_queries_logits[0].float().softmax(-1)[:, :-1]
    masks = output.masks_queries_logits[0].float().sigmoid()
    return ClassScores(torch.einsum("qc,qhw->chw", classes, masks))


@output_adapter
def depth_map(output, input_size, info: OutputInfo) -> Depth:
    """predicted_depth (transformers) or a (N, H, W) / (N, 1, H, W) tensor."""
    values = output if isinstance(output, torch.Tensor) else output.predicted_depth
    return Depth(values[0, 0] if values.dim() == 4 else values[0], info.depth == "metric")


def choose(output, task: str) -> Callable:
    """The adapter for a network's output, from its fields and shapes; `task` only tells a plain tensor
    of depth from one of class scores."""
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping) \
            and {"boxes", "labels", "scores"} <= output[0].keys():
        return torchvision_detections
    if _get(output, "pred_boxes") is not None and _get(output, "logits") is not None:
        return set_detections
    if _get(output, "class_queries_logits") is not None and _get(output, "masks_queries_logits") is not None:
        return mask_queries
    if _get(output, "predicted_depth") is not None:
        return depth_map
    if isinstance(_get(output, "out"), torch.Tensor):
        return torchvision_segmentation
    logits = _get(output, "logits")
    if isinstance(logits, torch.Tensor) and logits.dim() == 4:
        return semantic_logits
    if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
        if task == "depth" or output.dim() == 3 or output.shape[1] == 1:
            return depth_map
        return class_scores
    fields = list(output.keys()) if isinstance(output, Mapping) else type(output).__name__
    raise ModelRefError(f"no output adapter knows this network's output ({fields}); write one, mark it "
                        f"@swapnet_core.output_adapter and name it in the node's output_adapter parameter")
