"""Output adapters chosen from the network's outputs, checked against transformers' own post-processing
on tiny real models; class names and depth kind from the model's own metadata; marked user adapters."""

import json
import sys
import textwrap

import pytest
import torch
import transformers as T

import tiny_transformers as tiny
from swapnet_core import ModelRefError, output_adapter
from swapnet_core.adapters import (ClassScores, Depth, Detections, OutputInfo, choose, mask_queries, named_adapter,
                                   semantic_logits, set_detections, torchvision_detections)
from swapnet_core.models import resolve


def config_ref(config, tmp_path, name="model"):
    """A transformers:FOLDER reference holding only config.json (random weights), as save_pretrained writes it."""
    folder = tmp_path / name
    tiny.model_of(config).config.save_pretrained(folder)
    return f"transformers:{folder}"


@pytest.mark.parametrize("make,processor", [(tiny.detr, T.DetrImageProcessor), (tiny.yolos, T.YolosImageProcessor),
                                            (tiny.rt_detr, T.RTDetrImageProcessor)])
def test_set_detections_match_transformers_post_processing(make, processor, tmp_path):
    """DETR and YOLOS (softmax, no-object class last) and RT-DETR (sigmoid, best query-class pairs):
    boxes in input pixels, as the model's own image processor gives them for that input size."""
    config = make()
    spec = resolve(config_ref(config, tmp_path))
    assert spec.task == "detection" and spec.num_labels == 3 and spec.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    model = tiny.model_of(config, seed=1)
    with torch.no_grad():
        out = model(pixel_values=torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)))
    adapter = choose(out, "detection")
    assert adapter is set_detections
    got = adapter(out, (64, 96), OutputInfo(spec.num_labels))
    want = processor().post_process_object_detection(out, threshold=-1.0, target_sizes=[(64, 96)])[0]
    assert isinstance(got, Detections) and len(got.scores) == len(want["scores"]) > 0
    assert torch.equal(got.labels, want["labels"])
    assert torch.allclose(got.scores, want["scores"], atol=1e-6)
    assert torch.allclose(got.boxes, want["boxes"].float(), atol=1e-4)


def test_semantic_logits_and_mask_queries_match_transformers(tmp_path):
    seg = tiny.segformer()
    spec = resolve(config_ref(seg, tmp_path, "segformer"))
    assert (spec.task, spec.num_labels, spec.call) == ("segmentation", 4, "pixel_values")
    with torch.no_grad():
        out = tiny.model_of(seg)(pixel_values=torch.rand(1, 3, 64, 80))
    assert choose(out, "segmentation") is semantic_logits
    ids = choose(out, "segmentation")(out, (64, 80), OutputInfo(4)).scores.argmax(0)
    assert ids.shape == (16, 20)  # SegFormer: a quarter of the input
    assert torch.equal(ids, T.SegformerImageProcessor().post_process_semantic_segmentation(out)[0])

    m2f = tiny.mask2former()
    assert resolve(config_ref(m2f, tmp_path, "m2f")).task == "segmentation"
    with torch.no_grad():
        out = tiny.model_of(m2f)(pixel_values=torch.rand(1, 3, 64, 64))
    assert choose(out, "segmentation") is mask_queries
    # transformers resizes the masks to 384x384 first: give them at that size, so both see the same masks
    out.masks_queries_logits = torch.nn.functional.interpolate(out.masks_queries_logits, size=(384, 384),
                                                               mode="bilinear", align_corners=False)
    scores = mask_queries(out, (64, 64), OutputInfo(4)).scores
    want = T.Mask2FormerImageProcessor().post_process_semantic_segmentation(out)[0]
    assert scores.shape == (4, 384, 384) and torch.equal(scores.argmax(0), want)


@pytest.mark.parametrize("kind", ["relative", "metric"])
def test_depth_kind_comes_from_the_config(kind, tmp_path):
    config = tiny.depth_anything(kind)
    spec = resolve(config_ref(config, tmp_path))
    assert spec.task == "depth" and spec.depth == kind
    with torch.no_grad():
        out = tiny.model_of(config)(pixel_values=torch.rand(1, 3, 28, 42))
    depth = choose(out, "depth")(out, (28, 42), OutputInfo(depth=spec.depth))
    assert isinstance(depth, Depth) and depth.metric == (kind == "metric") and depth.values.shape == (28, 42)
    assert resolve("transformers:depth-anything-small").depth == "relative"


def test_torchvision_outputs_and_category_names():
    spec = resolve("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn")
    assert spec.labels[:2] == ["__background__", "person"] and spec.num_labels == 91
    assert resolve("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn?num_classes=3").labels is None
    assert resolve("torchvision:lraspp_mobilenet_v3_large").labels[15] == "person"  # VOC
    boxes = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}]
    assert choose(boxes, "detection") is torchvision_detections
    assert isinstance(choose({"out": torch.zeros(1, 21, 8, 8)}, "segmentation")({"out": torch.zeros(1, 21, 8, 8)},
                                                                             (8, 8), OutputInfo()), ClassScores)
    assert isinstance(choose(torch.zeros(1, 1, 8, 8), "depth")(torch.zeros(1, 1, 8, 8), (8, 8), OutputInfo()), Depth)
    with pytest.raises(ModelRefError, match="no output adapter knows"):
        choose({"something": 1}, "detection")


def test_transformers_refs_carry_their_task_and_input():
    assert resolve("transformers:depth-anything-small").default_input == "random:1x3x364x490"
    raft = resolve("torchvision:raft_small")  # two images: two inputs (test_inputs.py)
    assert raft.default_input == "random:1x3x128x128,random:1x3x128x128"


def test_only_marked_adapters_are_named(tmp_path, monkeypatch):
    (tmp_path / "my_adapters.py").write_text(textwrap.dedent("""
        import torch
        import swapnet_core
        from swapnet_core.adapters import Detections

        @swapnet_core.output_adapter
        def corners(output, input_size, info):
            return Detections(torch.tensor([[0.0, 0.0, input_size[1], input_size[0]]]), torch.tensor([0]),
                              torch.tensor([1.0]))

        def unmarked(output, input_size, info):
            return None

        class Adapter:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = named_adapter("my_adapters:corners")
    assert fn(None, (4, 6), OutputInfo()).boxes.tolist() == [[0.0, 0.0, 6.0, 4.0]]
    for ref, why in [("my_adapters:unmarked", "not marked as an output adapter"),
                     ("my_adapters:Adapter", "not marked"), ("my_adapters:absent", "has no output adapter"),
                     ("no_such_module:f", "cannot import"), ("os:system", "not marked"),
                     ("my_adapters", "expected package.module:function")]:
        with pytest.raises(ModelRefError, match=why) as e:
            named_adapter(ref)
        assert "\n" not in str(e.value)
    with pytest.raises(TypeError):
        output_adapter(type("Adapter", (), {}))
    sys.modules.pop("my_adapters", None)


def test_preprocessor_config_sets_the_normalisation(tmp_path):
    ref = config_ref(tiny.rt_detr(), tmp_path)
    assert resolve(ref).normalize == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    (tmp_path / "model" / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    assert resolve(ref).normalize is None  # RT-DETR's processor only rescales
    assert resolve("torchvision:ssdlite320_mobilenet_v3_large").normalize is None  # normalises inside
