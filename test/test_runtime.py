"""SwapModel on a real network: exact, bounded, prefetching, and clear about bad budgets and bad stores."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from swapnet_core import (BudgetTooSmallError, BlockStore, StoreCorruptError, StoreMismatchError, StoreNotFoundError,
                          StoreTruncatedError, open_swapped, load_resident, minimum_budget)
from swapnet_core.models import make_input
from swapnet_core.sizes import parse_size

RESNET, X = "torchvision:resnet18", "random:1x3x64x64"


@pytest.fixture(scope="module")
def resnet(convert_once):
    store = convert_once(RESNET, X)
    with torch.no_grad():
        return store, load_resident(store)(make_input(X, seed=3))


@pytest.mark.parametrize("plan", ["optimal", "greedy", "uniform"])
@pytest.mark.parametrize("prefetch", [0, 1])
@pytest.mark.parametrize("io", ["direct", "mmap"])
@pytest.mark.parametrize("share", ["1/2", "1/4", "1/6"])
def test_swapped_is_bit_identical_and_within_budget(resnet, share, io, prefetch, plan):
    store, want = resnet
    budget = max(parse_size(share, of=store.total_bytes), minimum_budget(store, prefetch))
    with open_swapped(store, budget, io=io, prefetch=prefetch, plan=plan) as model:
        for _ in range(3):
            assert torch.equal(model(make_input(X, seed=3)), want)
        s, p = model.stats, model.plan
        assert s.peak_resident_weight_bytes <= budget
        assert p.arena_bytes <= budget and p.kind == plan
        # resident blocks are read once; swapped ones on every call; nothing out of order
        swapped = sum(b.nbytes for b in p.blocks if b.in_sequence and not b.resident)
        assert s.bytes_read == p.pinned_bytes + p.resident_bytes + 3 * swapped and s.misses == 0
        assert swapped > 0 and len(p.blocks) > 1
        # after a call no swapped block is bound: their weights point back at meta
        fixed = {u for b in p.blocks if b.resident for u in b.units}
        for u in store.units:
            if not u.pinned and u.index not in fixed:
                assert all(getattr(model.module.get_submodule(path), attr).device.type == "meta"
                           for t in u.tensors for path, attr, _ in t.bindings)


def test_budget_above_the_model_keeps_everything_resident(resnet):
    store, want = resnet
    with open_swapped(store, store.total_bytes * 2) as model:
        for _ in range(3):
            assert torch.equal(model(make_input(X, seed=3)), want)
        assert model.stats.bytes_read == store.total_bytes  # read once, kept between calls
        assert model.plan.keep_resident


def test_budget_below_minimum_is_refused_with_the_minimum(resnet):
    store, _ = resnet
    minimum = minimum_budget(store)
    with pytest.raises(BudgetTooSmallError) as e:
        open_swapped(store, minimum - 1)
    assert e.value.minimum_bytes == minimum and str(minimum) in str(e.value)
    for bad in ["0", "-5MB", "nan", "lots", "1/0", "12 parsecs"]:
        with pytest.raises(ValueError):
            open_swapped(store, bad)


def test_budget_strings(resnet):
    store, _ = resnet
    assert parse_size("96MB") == 96_000_000 and parse_size("64MiB") == 64 << 20
    assert parse_size("25%", of=1000) == parse_size("1/4", of=1000) == parse_size("0.25x", of=1000) == 250
    with open_swapped(store, "1/2") as model:
        assert model.budget_bytes == store.total_bytes // 2


def test_a_failing_forward_leaves_the_model_usable(resnet):
    store, want = resnet
    with open_swapped(store, "1/2") as model:
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 7, 64, 64))  # wrong channel count: fails inside the first conv
        assert torch.equal(model(make_input(X, seed=3)), want)


def test_close_releases_everything(resnet):
    store, _ = resnet
    model = open_swapped(store, "1/2")
    model(make_input(X))
    model.close()
    assert all(p.device.type == "meta" for p in model.module.parameters())
    with pytest.raises(RuntimeError, match="closed"):
        model(make_input(X))


def copy_store(store, dest):
    shutil.copytree(store.path, dest)
    return BlockStore(dest)


def test_flipped_byte_names_the_unit_and_file(resnet, disk_dir):
    store, _ = resnet
    bad = copy_store(store, disk_dir / "flipped")
    unit = bad.units[len(bad.units) // 2]
    with open(bad.weights_path, "r+b") as f:
        f.seek(unit.tensors[0].offset + unit.offset + 5)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    for io in ("direct", "mmap"):
        with open_swapped(bad, "1/2", io=io, plan="greedy") as model:  # greedy: the unit is swapped in per call
            with pytest.raises(StoreCorruptError) as e:
                model(make_input(X))
            assert e.value.unit == unit.name and str(bad.weights_path) in str(e.value)
    with pytest.raises(StoreCorruptError):  # a resident block is checked when it is loaded, at open
        open_swapped(bad, bad.total_bytes)


@pytest.mark.parametrize("io", ["direct", "mmap"])
def test_a_store_changed_while_in_use_is_checked_again(resnet, disk_dir, io):
    store, want = resnet
    live = copy_store(store, disk_dir / f"live_{io}")
    unit = live.units[-3]
    with open_swapped(live, "1/2", io=io, plan="greedy") as model:  # verify="first"
        assert torch.equal(model(make_input(X, seed=3)), want)  # every unit checked once
        with open(live.weights_path, "r+b") as f:  # written while the model runs: mtime changes
            f.seek(unit.offset + 67)  # the high byte of a float32: a large change
            b = f.read(1)
            f.seek(unit.offset + 67)
            f.write(bytes([b[0] ^ 0x40]))
        time.sleep(0.01)
        with pytest.raises(StoreCorruptError) as e:
            model(make_input(X, seed=3))
        assert e.value.unit == unit.name


def test_verify_modes(resnet, disk_dir):
    store, want = resnet
    bad = copy_store(store, disk_dir / "verify_modes")
    fc = bad.units[-1]
    bias = next(t for t in fc.tensors if t.name == "fc.bias")
    with open(bad.weights_path, "r+b") as f:  # the high byte of one logit's bias: that logit changes
        f.seek(fc.offset + bias.offset + 3)
        b = f.read(1)
        f.seek(fc.offset + bias.offset + 3)
        f.write(bytes([b[0] ^ 0x40]))
    with open_swapped(bad, "1/2", plan="greedy", verify="always") as model:
        with pytest.raises(StoreCorruptError):
            model(make_input(X))
    with open_swapped(bad, "1/2", plan="greedy", verify="never") as model:  # the user's choice: no check
        assert not torch.equal(model(make_input(X, seed=3)), want)
    with pytest.raises(ValueError, match="verify"):
        open_swapped(bad, "1/2", plan="greedy", verify="sometimes")


def test_truncated_store_is_refused_at_open_and_at_read(resnet, disk_dir):
    store, _ = resnet
    bad = copy_store(store, disk_dir / "truncated")
    model = open_swapped(bad, "1/2", plan="greedy")  # opened while whole
    os.truncate(bad.weights_path, bad.file_bytes // 2)
    with pytest.raises(StoreTruncatedError, match="truncated"):
        BlockStore(bad.path)
    with pytest.raises(StoreTruncatedError):
        model(make_input(X))
    model.close()


def test_manifest_of_another_model_is_refused(resnet, convert_once, disk_dir):
    store, _ = resnet
    other = convert_once("toy_models:branchy", "random:1x3x16x16")
    mixed = disk_dir / "mixed"
    mixed.mkdir()
    shutil.copy(other.path / "manifest.json", mixed / "manifest.json")
    shutil.copy(store.weights_path, mixed / "weights.safetensors")
    with pytest.raises(StoreMismatchError, match="another"):
        BlockStore(mixed)
    # a manifest whose model reference no longer builds the stored tensors
    renamed = copy_store(store, disk_dir / "renamed")
    m = json.loads((renamed.path / "manifest.json").read_text())
    m["architecture"]["ref"] = "torchvision:resnet34"
    (renamed.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreMismatchError, match="does not match"):
        open_swapped(renamed.path, "1/2")
    with pytest.raises(StoreNotFoundError):
        BlockStore(disk_dir)


def test_direct_io_bypasses_the_page_cache(resnet):
    from swapnet_core.io import page_cache_residency

    store, _ = resnet
    fd = os.open(store.weights_path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert page_cache_residency(store.weights_path) < 0.05
    with open_swapped(store, "1/2", io="direct") as model:
        assert model._reader.effective_mode == "direct"
        for _ in range(2):
            model(make_input(X))
    assert page_cache_residency(store.weights_path) < 0.05
    with open_swapped(store, "1/2", io="mmap") as model:  # the check can fail: mmap fills the cache
        model(make_input(X))
    assert page_cache_residency(store.weights_path) > 0.9


@pytest.fixture
def no_direct_io_dir(tmp_path):
    """A folder whose file system refuses O_DIRECT: a ramfs mounted for the test (root), else tmpfs if
    this kernel's tmpfs still refuses it."""
    from conftest import supports_o_direct

    mount = tmp_path / "ramfs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mount)], capture_output=True).returncode == 0
    try:
        if mounted and not supports_o_direct(mount):
            yield mount
        elif os.path.isdir("/dev/shm") and not supports_o_direct(Path("/dev/shm")):
            shm = Path(f"/dev/shm/swapnet-test-{os.getpid()}")
            shm.mkdir()
            yield shm
            shutil.rmtree(shm, ignore_errors=True)
        else:
            pytest.skip("no file system that refuses O_DIRECT can be had here (ramfs needs root)")
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], capture_output=True)


def test_no_o_direct_falls_back_to_buffered_reads_and_says_so_once(resnet, no_direct_io_dir, caplog):
    store, want = resnet
    copy = copy_store(store, no_direct_io_dir / "store")
    with caplog.at_level("WARNING"):
        for _ in range(2):
            with open_swapped(copy, "1/2", io="direct") as model:
                assert model._reader.effective_mode == "buffered"
                assert torch.equal(model(make_input(X, seed=3)), want)
    warnings = [r for r in caplog.records if "O_DIRECT" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_store_is_exact_against_its_resident_model_and_half_the_bytes(convert_once, disk_dir, dtype):
    """convert(dtype=) casts the floating-point weights: the store is about half the float32 one, its
    manifest says so, and swapped outputs equal the resident model of the same store bit for bit."""
    from swapnet_core import convert

    full = convert_once(RESNET, X)
    half = convert(RESNET, disk_dir / f"resnet18-{dtype}", input_spec=X, dtype=dtype, force=True, progress=False)
    assert half.dtype == dtype and BlockStore(half.path).manifest["dtype"] == dtype
    assert half.total_bytes <= full.total_bytes * 0.52, (half.total_bytes, full.total_bytes)
    x = half.make_input(X, seed=3)
    assert x.dtype == getattr(torch, dtype)
    with torch.no_grad():
        want = load_resident(half)(x)
        assert want.dtype == getattr(torch, dtype) and torch.isfinite(want).all()
        for io in ("direct", "mmap"):
            with open_swapped(half, "1/4", io=io) as model:
                assert torch.equal(model(x), want)
                assert model.stats.peak_resident_weight_bytes <= model.budget_bytes


def test_a_constructor_that_computes_with_its_tensors_still_gets_a_skeleton(convert_once):
    """torchvision's RegNet reads tensors back in its constructor, which a meta-device build cannot:
    its skeleton is built with each tensor moved to meta as it is registered, and it swaps exactly."""
    import torchvision

    with pytest.raises(NotImplementedError), torch.device("meta"):
        torchvision.models.get_model("regnet_y_400mf", weights=None)
    store = convert_once("torchvision:regnet_y_400mf", X)
    skeleton = store.build_skeleton()
    assert all(t.device.type == "meta" for t in [*skeleton.parameters(), *skeleton.buffers()])
    x = make_input(X, seed=4)
    with torch.no_grad():
        want = load_resident(store)(x)
        with open_swapped(store, "1/4") as model:
            assert torch.equal(model(x), want)


@pytest.mark.parametrize("io", ["direct", "mmap"])
def test_the_read_after_a_block_is_queued_before_that_block_is_awaited(resnet, io):
    """In the recorded order the read after block b is queued behind b's own read (b's predecessor
    has finished computing by then), so the I/O thread goes straight on instead of waiting for the
    compute thread to wake, bind b and ask: for every block past the first, its successor's read is
    submitted before b's read is collected, and once b is entered nothing else is held."""
    store, want = resnet
    budget = max(store.total_bytes // 6, minimum_budget(store))
    with open_swapped(store, budget, io=io, plan="greedy") as model:
        swapped = model.plan.swapped_sequence
        assert len(swapped) >= 4
        events = []
        submit, collect = model._io.submit, model._collect
        model._io.submit = lambda fn, b, side: events.append(("submit", b)) or submit(fn, b, side)
        model._collect = lambda result: events.append(("collect", result[0])) or collect(result)
        model.on_block_entered = lambda b: events.append(("entered", b, sorted(model._resident)))
        for _ in range(2):
            events.clear()
            assert torch.equal(model(make_input(X, seed=3)), want)
            order = {e[:2]: k for k, e in enumerate(events)}
            for b, nxt in zip(swapped[1:], swapped[2:]):
                assert order[("submit", nxt)] < order[("collect", b)]
            assert all(e[2] == [e[1]] for e in events if e[0] == "entered" and e[1] in swapped[1:])
        assert model.stats.peak_resident_weight_bytes <= budget and model.stats.misses == 0


def test_a_block_binds_the_views_cut_for_its_place_in_the_window_once(resnet):
    """Cutting views and Parameters per block per call cost 4-20 ms a forward: a block lands at one of
    two places in the window, and binds the tensors cut there the first time, until the window moves."""
    from swapnet_core.memory import ArenaMemory, SwapWindow
    store, want = resnet
    budget = max(store.total_bytes // 6, minimum_budget(store))
    with open_swapped(store, budget, plan="greedy") as model:
        swapped = model.plan.swapped_sequence
        first_unit = {b: store.units[model.plan.blocks[b].units[0]] for b in swapped}
        bound: dict[int, list] = {b: [] for b in swapped}

        def weight_of(b):
            path, attr, _kind = first_unit[b].tensors[0].bindings[0]
            return getattr(model.module.get_submodule(path), attr)

        model.on_block_entered = lambda b: b in bound and bound[b].append(weight_of(b))
        for _ in range(4):
            assert torch.equal(model(make_input(X, seed=3)), want)
        for b, tensors in bound.items():
            assert len(tensors) == 4 and len({id(t) for t in tensors}) <= 2  # one per end of the window
        before = {b: ts[-1] for b, ts in bound.items()}  # held, so no new tensor can reuse its id
        window = SwapWindow(ArenaMemory(model.window.nbytes, "cpu"), 0, model.window.nbytes)
        model.use_window(window)
        for ts in bound.values():
            ts.clear()
        assert torch.equal(model(make_input(X, seed=3)), want)
        for b, ts in bound.items():  # cut again, from the new window
            assert ts[0] is not before[b]
            assert ts[0].untyped_storage().data_ptr() == window.memory.compute.untyped_storage().data_ptr()
