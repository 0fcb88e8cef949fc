"""Weights the user has without naming a file: a save_pretrained folder's safetensors (single or
sharded), and torchvision's DEFAULT weights from the local torch hub cache. Nothing downloads."""

import pytest
import torch
import torchvision

import tiny_transformers as tiny
from conftest import swapnet_cli
from swapnet_core import WeightsError, convert, load_resident, open_swapped
from swapnet_core.identity import identity_mismatch
from swapnet_core.models import resolve


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_model_folder_serves_its_own_weights(shard, tmp_path, disk_dir):
    folder = tmp_path / "detr"
    original = tiny.save_folder(tiny.detr(), folder, seed=7, shard=shard)
    ref = f"transformers:{folder}"
    assert len(resolve(ref).bundled_weights) == (1 if shard is None else 3)
    store = convert(ref, disk_dir / f"detr-{shard}", input_spec="random:1x3x64x96", progress=False, force=True)
    assert not store.random_weights
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = original(pixel_values=x)
        resident = load_resident(store)(pixel_values=x)
        model = open_swapped(store, "1/2", example_input=x)
        try:
            swapped = model(pixel_values=x)
        finally:
            model.close()
    for got in (resident, swapped):
        assert torch.equal(got.logits, want.logits) and torch.equal(got.pred_boxes, want.pred_boxes)
    assert identity_mismatch(store, ref) is None
    # other weights in the folder: the store no longer holds what the reference names
    tiny.save_folder(tiny.detr(), folder, seed=8, shard=shard)
    assert "weights" in identity_mismatch(store, ref)


@pytest.mark.parametrize("name,make,size", [
    ("yolos", tiny.yolos, (64, 96)), ("rt_detr", tiny.rt_detr, (64, 96)), ("segformer", tiny.segformer, (64, 96)),
    ("mask2former", tiny.mask2former, (64, 64)), ("depth_metric", lambda: tiny.depth_anything("metric"), (28, 42))])
def test_every_family_swaps_bit_identically_to_the_model_it_was_saved_from(name, make, size, tmp_path, disk_dir):
    from swapnet_core import minimum_budget
    from swapnet_core.models import call_model, max_abs_diff

    original = tiny.save_folder(make(), tmp_path / name, seed=4)
    store = convert(f"transformers:{tmp_path / name}", disk_dir / f"family-{name}",
                    input_spec=f"random:1x3x{size[0]}x{size[1]}", progress=False, force=True)
    x = store.make_input()
    with torch.no_grad():
        want = original(pixel_values=x)
        model = open_swapped(store, max(minimum_budget(store), store.total_bytes // 2), example_input=x)
        try:
            got = call_model(model, store.call, x)
        finally:
            model.close()
    assert max_abs_diff(got, want) == 0


def test_model_folder_with_pickled_weights_only_is_refused(tmp_path):
    folder = tmp_path / "detr"
    model = tiny.model_of(tiny.detr())
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # how older transformers saved weights
    with pytest.raises(WeightsError, match="pickled weights") as e:
        resolve(f"transformers:{folder}")
    assert "\n" not in str(e.value)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-1.safetensors"}}')
    with pytest.raises(WeightsError, match="model-1.safetensors, which is not in"):
        resolve(f"transformers:{folder}")


def test_model_folder_missing_a_tensor_is_refused_in_one_line(tmp_path, disk_dir):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "seg"
    tiny.save_folder(tiny.segformer(), folder)
    state = load_file(folder / "model.safetensors")
    del state[sorted(state)[0]]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="do not fit SegformerForSemanticSegmentation: missing") as e:
        convert(f"transformers:{folder}", disk_dir / "seg-missing", input_spec="random:1x3x64x64", progress=False)
    assert "\n" not in str(e.value) and not (disk_dir / "seg-missing").exists()


def test_default_weights_come_from_the_torch_hub_cache(tmp_path, disk_dir, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ref = "torchvision:squeezenet1_1"
    with pytest.raises(WeightsError, match="expected at .*squeezenet1_1-b8a52dc0.pth") as e:
        convert(ref, disk_dir / "squeeze-default", weights="DEFAULT", input_spec="random:1x3x64x64", progress=False)
    assert "\n" not in str(e.value) and not (disk_dir / "squeeze-default").exists()
    path = tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    torch.manual_seed(5)
    pretrained = torchvision.models.squeezenet1_1().eval()
    path.parent.mkdir(parents=True)
    torch.save(pretrained.state_dict(), path)
    store = convert(ref, disk_dir / "squeeze-default", weights="DEFAULT", input_spec="random:1x3x64x64", progress=False)
    assert store.manifest["weights"]["source"] == str(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_resident(store)(x), pretrained(x))
    assert identity_mismatch(store, ref, weights="DEFAULT") is None
    assert identity_mismatch(store, ref) is not None  # random weights are something else
    torch.manual_seed(6)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)  # the cache now holds other weights
    assert "weights" in identity_mismatch(store, ref, weights="DEFAULT")


def test_default_checkpoints_saved_in_training_configuration_fit(tmp_path, monkeypatch):
    """torchvision's pretrained files come from the builder's training configuration: DeepLabV3's holds
    the auxiliary head (aux_loss), detectors' FrozenBatchNorm layers hold no num_batches_tracked. Both
    load into the network built for inference; an arbitrary checkpoint stays strict."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(2)
    trained = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights_backbone=None, aux_loss=True).eval()
    torch.save(trained.state_dict(), cache / "deeplabv3_mobilenet_v3_large-fc3c493d.pth")
    spec = resolve("torchvision:deeplabv3_mobilenet_v3_large")
    model = spec.build()
    spec.load(model, spec.weights_for("DEFAULT"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["out"], trained(x)["out"]) and "aux" not in model(x)
    mine = tmp_path / "mine.pth"  # the same bytes named as the user's own checkpoint: strict
    mine.write_bytes((cache / "deeplabv3_mobilenet_v3_large-fc3c493d.pth").read_bytes())
    with pytest.raises(WeightsError, match="unexpected aux_classifier"):
        spec.load(spec.build(), mine)

    detector = resolve("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn")
    state = {k: v for k, v in detector.build().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, cache / "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth")
    detector.load(detector.build(), detector.weights_for("DEFAULT"))


def test_default_weights_refusals_are_one_line(tmp_path):
    with pytest.raises(WeightsError, match="DEFAULT name torchvision's pretrained weights"):
        resolve("transformers:depth-anything-small").weights_for("DEFAULT")
    cli = swapnet_cli("convert", "torchvision:squeezenet1_1", "--out", tmp_path / "s", "--weights", "DEFAULT",
                      "--input", "random:1x3x32x32", env_extra={"TORCH_HOME": str(tmp_path / "empty")})
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.strip().count("\n") == 0 and "squeezenet1_1-b8a52dc0.pth" in cli.stderr


def test_demo_runs_pretrained_weights_where_the_cache_has_them(tmp_path, monkeypatch, capsys):
    from swapnet_ros.demo import choose_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    models = {"cached": "torchvision:squeezenet1_1", "absent": "torchvision:squeezenet1_0",
              "no_enum": "transformers:depth-anything-small"}
    params = {"swap_coordinator": {"ros__parameters": {"models": list(models)}}}
    params.update({name: {"ros__parameters": {"model": ref, "weights": ""}} for name, ref in models.items()})
    assert choose_weights(params) == ["absent", "no_enum"]
    assert [params[n]["ros__parameters"]["weights"] for n in models] == ["DEFAULT", "", ""]
    printed = capsys.readouterr().out
    assert f"cached: torchvision:squeezenet1_1: DEFAULT = SqueezeNet1_1_Weights.IMAGENET1K_V1 from the torch hub cache ({path})" in printed
    assert "absent: torchvision:squeezenet1_0: random weights (seed 0)" in printed
