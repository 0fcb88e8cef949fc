"""Property tests of what the core reads from outside: store manifests (mutated from a real store) and
budget strings. Bad input must come out as a documented SwapNetError, never as a raw KeyError/TypeError/
ValueError, an out-of-bounds read or a crash; what is accepted must still run bit-identically."""

import copy
import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swapnet_core import (BlockStore, BudgetError, BudgetTooSmallError, open_swapped, SwapNetError, load_resident,
                          minimum_budget)
from swapnet_core.models import make_input
from swapnet_core.sizes import MAX_SIZE, parse_size

RESNET, X = "torchvision:resnet18", "random:1x3x64x64"
MANIFEST_EXAMPLES, GARBAGE_EXAMPLES, SIZE_EXAMPLES, BUDGET_EXAMPLES = 700, 300, 2000, 40
FUZZ = settings(deadline=None, derandomize=False, suppress_health_check=[HealthCheck.too_slow])
refused: dict = {}
ran = {"manifest": 0, "manifest_opened": 0, "manifest_ran": 0, "garbage": 0, "sizes": 0, "budgets": 0,
       "budgets_accepted": 0}


FUZZED = [(RESNET, X), ("toy_models:tied", "random:1x3x16x16")]  # the toy has a pinned (tied) unit


@pytest.fixture(scope="module")
def fuzz_stores(convert_once, disk_dir):
    """Per fuzzed model: (folder whose manifest the tests rewrite, the original manifest, input,
    resident output). Each weights file is a hard link to a real store's: never written, only read."""
    stores = []
    for i, (ref, spec) in enumerate(FUZZED):
        store = convert_once(ref, spec)
        folder = disk_dir / f"fuzz_store{i}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        try:
            os.link(store.weights_path, folder / "weights.safetensors")
        except OSError:
            shutil.copy(store.weights_path, folder / "weights.safetensors")
        manifest = json.loads((store.path / "manifest.json").read_text())
        x = make_input(spec, seed=5)
        with torch.no_grad():
            want = load_resident(store)(x)
        stores.append((folder, manifest, x, want))
    yield stores
    print(f"\nhypothesis examples run: {ran}\nrefused: {sorted(refused.items(), key=lambda kv: -kv[1])[:25]}")


def locations(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from locations(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from locations(v, prefix + (i,))


ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.sampled_from([0, 1, -1, 7, 4095, 4096, 4097, 2**31, 2**63, 2**64 + 1, 10**30, -4096]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
    st.sampled_from(["float16", "float64", "int64", "int32", "uint8", "bool", "bfloat16", "complex64", "F32",
                     "crc32:00000000", "crc32:xyz", "crc32:-1", "param", "buffer", "<pinned>", "fc", "conv1",
                     "torchvision:resnet34", "random:1x3x8x8", "image_list"]),
    st.lists(st.integers(-5, 5000), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
NUDGES = st.sampled_from([-2**40, -4096, -64, -4, -1, 1, 4, 64, 4096, 2**40])


@st.composite
def mutated(draw, manifest):
    m = copy.deepcopy(manifest)
    where = list(locations(m))
    tops = [w for w in where if len(w) <= 2]  # top-level keys, architecture, calls entries
    units = [w for w in where if len(w) == 3 and w[0] == "units"]
    tensors = [w for w in where if len(w) >= 5 and w[0] == "units"]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.one_of(st.sampled_from(tops), st.sampled_from(units), st.sampled_from(tensors)))
        parent = m
        try:
            for key in path[:-1]:
                parent = parent[key]
            value = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation moved it
        if not isinstance(parent, (dict, list)):
            continue  # ... or made its parent a string
        kind = draw(st.sampled_from(["replace", "delete", "nudge", "duplicate", "swap", "copy", "sibling",
                                     "recut", "recut"]))
        key = path[-1]
        if kind == "replace":
            parent[key] = draw(ODD_VALUES)
        elif kind == "delete":
            del parent[key]
        elif kind == "nudge" and isinstance(value, bool):
            parent[key] = not value
        elif kind == "nudge" and isinstance(value, int):
            parent[key] = value + draw(NUDGES)
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(value))
        elif kind == "sibling" and len(path) >= 3:  # the same field of another unit or tensor
            index = draw(st.integers(0, len(m["units"]) - 1)) if isinstance(m.get("units"), list) else 0
            donor = ("units", index) + path[2:]
            try:
                source = m
                for k in donor:
                    source = source[k]
            except (KeyError, IndexError, TypeError):
                continue
            parent[key] = copy.deepcopy(source)
        elif kind == "recut":  # move the boundary between two units, keeping every tensor in place
            recut(m, draw(st.integers(0, 200)), draw(st.integers(-3, 3)) * 4096)
        elif kind == "swap" and isinstance(parent, list) and len(parent) > 1:
            other = draw(st.integers(0, len(parent) - 1))
            parent[key], parent[other] = parent[other], parent[key]
        else:  # copy: a sibling's value of the same key in another unit or tensor, or any other value
            donor = draw(st.sampled_from(where))
            try:
                source = m
                for k in donor:
                    source = source[k]
            except (KeyError, IndexError, TypeError):
                continue
            parent[key] = copy.deepcopy(source)
    return m


def recut(m, at, shift):
    """Move the boundary between units `at` and `at`+1 by `shift` bytes: the file stays as it is, the
    tensors keep their absolute places (a tensor the new boundary cuts goes out of its unit)."""
    try:
        a, b = m["units"][at], m["units"][at + 1]
        a["nbytes"] += shift
        b["offset"] += shift
        b["nbytes"] -= shift
        for t in b["tensors"]:
            t["offset"] -= shift
    except (KeyError, IndexError, TypeError):
        pass


def open_and_run(folder, x, want):
    """Open the store and, if it opens, run it in both io modes. Only SwapNetErrors may come out, and
    whatever runs must give the resident model's output bit for bit."""
    try:
        store = BlockStore(folder)
    except SwapNetError as e:
        assert str(e)
        reason = str(e).split(": ", 1)[-1][:40]
        refused[reason] = refused.get(reason, 0) + 1
        return
    ran["manifest_opened"] += 1
    try:
        budget = max(store.total_bytes // 2, minimum_budget(store))
    except SwapNetError:
        return
    for io in ("direct", "mmap"):
        try:
            with open_swapped(store, budget, io=io, plan="greedy") as model:
                out = model(x)
        except SwapNetError as e:
            assert str(e)
            continue
        ran["manifest_ran"] += 1
        assert torch.equal(out, want), f"a mutated manifest was accepted and changed the output ({io})"


@settings(FUZZ, max_examples=MANIFEST_EXAMPLES)
@given(data=st.data())
def test_mutated_manifests_are_refused_with_a_typed_error_or_run_exactly(fuzz_stores, data):
    folder, manifest, x, want = data.draw(st.sampled_from(fuzz_stores))
    m = data.draw(mutated(manifest))
    (folder / "manifest.json").write_text(json.dumps(m))
    ran["manifest"] += 1
    open_and_run(folder, x, want)


@settings(FUZZ, max_examples=GARBAGE_EXAMPLES)
@given(data=st.data())
def test_garbage_manifests_are_refused_with_a_typed_error(fuzz_stores, data):
    folder, manifest, x, want = fuzz_stores[0]
    text = json.dumps(manifest, indent=1).encode()
    blob = data.draw(st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(text) - 1).map(lambda n: text[:n]),  # a manifest cut short
        st.integers(1, 100_000).map(lambda n: b"[" * n),  # deep nesting
        st.sampled_from([b"", b"null", b"[]", b"{}", b"\xff\xfe{", b'{"format": "swapnet-blockstore"}',
                         b'{"format": "swapnet-blockstore", "format_version": 1}', b"NaN", b"1e999"])))
    (folder / "manifest.json").write_bytes(blob)
    ran["garbage"] += 1
    open_and_run(folder, x, want)


def test_the_fuzzer_can_fail(fuzz_stores):
    """The property above would notice an accepted manifest that changes the output: swap two
    same-shaped tensors' offsets in the manifest only (the store refuses it), as a control."""
    folder, manifest, x, want = fuzz_stores[0]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    open_and_run(folder, x, want)  # the unmutated manifest runs exactly
    assert BlockStore(folder).store_id == manifest["store_id"]
    m = copy.deepcopy(manifest)
    a, b = m["units"][2]["tensors"][0], m["units"][5]["tensors"][0]  # two BatchNorm weights
    a["name"], b["name"] = b["name"], a["name"]
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SwapNetError):
        BlockStore(folder)


# -- budgets ---------------------------------------------------------------------------------------

ANY_SIZE = st.one_of(
    st.text(max_size=16), st.text(alphabet="0123456789.eE+-/%xXkKmMgGiIbB _", max_size=12),
    st.sampled_from(["1/0", "-25%", "1e400", " 96 MB ", "٩٦MB", "٩٦%", "NaN", "inf", "-inf", "1_0MB", "0x10",
                     "25 %", "1/4", "0.25x", "1e-9", "0.5", "1/1000", "9" * 400, "1" * 30 + "/1", "½", "96MB\n"]),
    st.none(), st.booleans(), st.integers(-2**80, 2**80), st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8), st.lists(st.integers(), max_size=2), st.just(object()), st.just(1 + 2j))


@settings(FUZZ, max_examples=SIZE_EXAMPLES)
@given(text=ANY_SIZE, of=st.one_of(st.none(), st.integers(1, 2**50)))
def test_parse_size_returns_bytes_or_a_clear_budget_error(text, of):
    ran["sizes"] += 1
    try:
        n = parse_size(text, of=of)
    except BudgetError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 300, msg
        return
    assert type(n) is int and 1 <= n <= MAX_SIZE


UNITS = {"": 1, "B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
         "k": 2**10, "M": 2**20, "G": 2**30}


@settings(FUZZ, max_examples=300)
@given(n=st.integers(1, 2**32), unit=st.sampled_from(sorted(UNITS)), pad=st.sampled_from(["", " ", "  "]),
       p=st.integers(1, 1000), q=st.integers(1, 1000), of=st.integers(1, 2**40))
def test_valid_sizes_keep_working(n, unit, pad, p, q, of):
    assert parse_size(f"{pad}{n}{pad}{unit}{pad}") == n * UNITS[unit]
    assert parse_size(n) == n
    share = of * p // q
    if share >= 1:
        assert parse_size(f"{p}/{q}", of=of) == share
        assert parse_size(f" {p} / {q} ", of=of) == share
    if of * p // 100 >= 1:
        assert parse_size(f"{p}%", of=of) == of * p // 100
    assert parse_size(f"{n}.5e3") == n * 1000 + 500  # exact: no float rounding of large sizes


def test_odd_budget_strings():
    for bad in ["1/0", "-25%", "1e400", "٩٦MB", "٩٦%", "NaN", "inf", "1_0MB", "0.5", "1/2000", "", " ", "%",
                None, [1], b"96MB", True, float("nan"), float("inf"), -1, 0, 2**64, "1" * 30 + "/1"]:
        with pytest.raises(BudgetError) as e:
            parse_size(bad, of=1000)
        assert str(e.value), bad
    assert parse_size(" 96 MB ") == 96_000_000 and parse_size("1/4", of=1000) == 250
    with pytest.raises(BudgetError, match="share of the model size"):
        parse_size("25%")


@settings(FUZZ, max_examples=BUDGET_EXAMPLES)
@given(budget=st.one_of(ANY_SIZE, st.integers(1, 2**26), st.sampled_from(["1/2", "90%", "0.3x", "30MB", "1GiB"])))
def test_swapmodel_budgets_are_refused_with_the_reason_or_honoured(fuzz_stores, convert_once, budget):
    ran["budgets"] += 1
    store = convert_once(RESNET, X)
    minimum = minimum_budget(store)
    try:
        model = open_swapped(store, budget, plan="greedy")
    except BudgetTooSmallError as e:
        assert e.minimum_bytes == minimum and str(minimum) in str(e)
        assert parse_size(budget, of=store.total_bytes) < minimum
        return
    except BudgetError as e:
        assert str(e) and "\n" not in str(e)
        with pytest.raises(BudgetError):
            parse_size(budget, of=store.total_bytes)
        return
    ran["budgets_accepted"] += 1
    with model:
        assert minimum <= model.budget_bytes == parse_size(budget, of=store.total_bytes)
        assert model.plan.arena_bytes <= model.budget_bytes


def test_activation_reserve_and_budget_types_are_checked(convert_once):
    store = convert_once(RESNET, X)
    for bad in [-1, float("nan"), "lots", None, [64]]:
        with pytest.raises(BudgetError):
            open_swapped(store, "1/2", plan="greedy", activation_reserve=bad)
    with pytest.raises(BudgetTooSmallError) as e:  # a reserve counts against the budget
        open_swapped(store, minimum_budget(store), plan="greedy", activation_reserve="1MiB")
    assert e.value.minimum_bytes == minimum_budget(store) + (1 << 20)
