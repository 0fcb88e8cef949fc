"""BlockStore conversion: layout, safetensors validity, atomicity, the recorded order."""

import json
import os

import pytest
import torch
from safetensors import safe_open

from swapnet_core import BlockStore, ModelRefError, StoreError, convert
from swapnet_core.models import call_model, make_input, resolve
from swapnet_core.store import UNIT_ALIGN


def test_store_holds_every_tensor_once_in_execution_order(convert_once):
    store = convert_once("torchvision:resnet18", "random:1x3x64x64", slice_bytes="off")  # the network's own layers
    torch.manual_seed(0)
    original = resolve("torchvision:resnet18").build()
    expected = dict(original.named_parameters()) | dict(original.named_buffers())
    with safe_open(str(store.weights_path), "pt") as f:  # a valid safetensors file to the reference reader
        names = [k for k in f.keys() if not k.startswith("__pad_")]
        assert sorted(names) == sorted(expected)
        for name in names:
            assert torch.equal(f.get_tensor(name), expected[name]), name
    offsets = [u.offset for u in store.units]
    assert offsets == sorted(offsets) and all(o % UNIT_ALIGN == 0 for o in offsets)
    for a, b in zip(store.units, store.units[1:]):
        assert a.end == b.offset  # consecutive units form one contiguous range

    # the order of units is the order their modules first ran, seen here by independent hooks
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, _a, name=n: seen.append(name))
             for n, m in original.named_modules() if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False))]
    with torch.no_grad():
        original(make_input("random:1x3x64x64"))
    for h in hooks:
        h.remove()
    assert [u.name for u in store.units] == list(dict.fromkeys(seen))


def test_manifest_records_architecture_checksums_and_random_weights(convert_once):
    store = convert_once("torchvision:resnet18", "random:1x3x64x64")
    m = json.loads((store.path / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["architecture"]["ref"] == "torchvision:resnet18"
    assert m["weights"]["source"] == "random" and store.random_weights
    assert all(u["checksum"].startswith("crc32:") for u in m["units"])
    assert os.path.getsize(store.weights_path) == m["file_bytes"]


def test_convert_is_atomic_and_refuses_to_overwrite(disk_dir):
    out = disk_dir / "atomic"
    with pytest.raises(ModelRefError, match="building the network failed: RuntimeError: this factory always fails"):
        convert("toy_models:broken", out, input_spec="random:1x3x8x8", progress=False)
    assert not out.exists()
    assert not [p for p in disk_dir.iterdir() if p.name.startswith(".atomic")]  # no partial folder left
    first = convert("toy_models:branchy", out, input_spec="random:1x3x16x16", progress=False)
    with pytest.raises(StoreError, match="exists"):
        convert("toy_models:branchy", out, input_spec="random:1x3x16x16", progress=False)
    second = convert("toy_models:branchy", out, input_spec="random:1x3x16x16", progress=False, force=True)
    assert second.store_id != first.store_id and BlockStore(out).store_id == second.store_id
    plain = disk_dir / "not_a_store"
    plain.mkdir()
    (plain / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a block store"):
        convert("toy_models:branchy", plain, input_spec="random:1x3x16x16", progress=False, force=True)
    assert (plain / "precious.txt").read_text() == "keep me"


def test_weights_file_is_loaded_and_recorded(disk_dir):
    from safetensors.torch import save_file

    torch.manual_seed(123)
    trained = resolve("toy_models:branchy").build()
    weights = disk_dir / "branchy.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    store = convert("toy_models:branchy", disk_dir / "with_weights", weights=weights,
                    input_spec="random:1x3x16x16", progress=False)
    assert not store.random_weights and store.manifest["weights"]["sha256"]
    from swapnet_core import load_resident

    x = make_input("random:1x3x16x16")
    with torch.no_grad():
        assert torch.equal(call_model(load_resident(store), store.call, x), trained(x))
    pt = disk_dir / "branchy.pt"
    torch.save({"state_dict": trained.state_dict()}, pt)
    store2 = convert("toy_models:branchy", disk_dir / "with_pt", weights=pt, input_spec="random:1x3x16x16", progress=False)
    with torch.no_grad():
        assert torch.equal(call_model(load_resident(store2), store2.call, x), trained(x))
