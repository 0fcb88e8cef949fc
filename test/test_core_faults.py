"""The core under faults: conversion killed with SIGKILL or out of disk, loading that never unpickles,
paths that are not stores, and a store truncated, corrupted, restored or re-converted under a running
SwapModel (the contract the ROS-level tests build on)."""

import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TEST_DIR
from swapnet_core import (BlockStore, StoreCorruptError, StoreError, StoreFormatError, StoreMismatchError,
                          StoreNotFoundError, StoreTruncatedError, open_swapped, SwapNetError, convert, load_resident)
from swapnet_core.io import BlockReader
from swapnet_core.memory import HostBuffer
from swapnet_core.models import make_input

REPO = TEST_DIR.parent
RESNET, X = "torchvision:resnet18", "random:1x3x64x64"
KILL_MODEL = "torchvision:resnet34"  # about 1.2 s to convert here: kill points spread over it
KILL_TRIALS = 6


def run_python(code: str, *args, env_extra=None, timeout=300, prefix=()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TEST_DIR), os.environ.get("PYTHONPATH")])))
    env.update(env_extra or {})
    return subprocess.run([*prefix, sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(TEST_DIR))


def without_store_id(folder: Path) -> tuple[dict, bytes]:
    """A store's manifest and weights bytes with its random store id taken out: what must be identical
    between two conversions of the same model."""
    m = json.loads((folder / "manifest.json").read_text())
    sid = m.pop("store_id")
    return m, (folder / "weights.safetensors").read_bytes().replace(sid.encode(), b"0" * len(sid))


def verify_all(folder: Path) -> None:
    """Open the store and check every unit's checksum."""
    store = BlockStore(folder)
    buf = HostBuffer(store.units[-1].end - store.units[0].offset)
    reader = BlockReader(store.weights_path, "direct", verify="always")
    try:
        reader.read_into(store.units, buf.view)
    finally:
        reader.close()
        buf.close()


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# -- 3. SIGKILL during conversion --------------------------------------------------------------------

# Imports once, then forks one `swapnet convert` (the CLI's main) per trial and SIGKILLs it after the
# trial's delay: the child is the real command; the import time (seconds here) is paid once.
KILLER = r"""
import json, os, signal, sys, time
import torchvision, swapnet_core.store
from swapnet_core.cli import main
trials = json.loads(sys.argv[1])
for t in trials:
    argv = ["convert", t["ref"], "--out", t["out"], "--input", t["input"], "--quiet"] + (["--force"] if t["force"] else [])
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)  # the report below is the only output
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            code = main(argv)
        except BaseException:
            code = 99
        os._exit(code)
    if t["delay"] is not None:
        time.sleep(t["delay"])
        os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid cannot have been reused
    _, status = os.waitpid(pid, 0)
    print("TRIAL", json.dumps({"out": t["out"], "killed": os.WIFSIGNALED(status),
                      "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                      "seconds": time.monotonic() - start}), flush=True)
"""


def trial_reports(stdout: str) -> list[dict]:
    return [json.loads(line[len("TRIAL "):]) for line in stdout.splitlines() if line.startswith("TRIAL ")]


def test_sigkill_during_convert_never_leaves_a_broken_store(disk_dir):
    base = disk_dir / "kill"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    reference = base / "reference"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # first an uninterrupted conversion (its time spreads the kill points), then the trials: odd ones
    # replace an existing store (--force), even ones create a new one
    timing = run_python(KILLER, json.dumps([{"ref": KILL_MODEL, "out": str(reference), "input": X,
                                             "force": False, "delay": None}]))
    assert timing.returncode == 0, timing.stderr
    duration = trial_reports(timing.stdout)[0]["seconds"]
    verify_all(reference)
    trials = []
    for i in range(KILL_TRIALS):
        out = base / f"trial{i}"
        force = i % 2 == 1
        if force:
            shutil.copytree(reference, out)
        trials.append({"ref": KILL_MODEL, "out": str(out), "input": X, "force": force,
                       "delay": (0.05 + (i + rng.random()) * 1.05 / KILL_TRIALS) * duration})  # stratified
    r = run_python(KILLER, json.dumps(trials))
    assert r.returncode == 0, r.stderr
    outcomes = trial_reports(r.stdout)
    assert len(outcomes) == KILL_TRIALS
    want = without_store_id(reference)
    report = []
    for t, o in zip(trials, outcomes):
        out = Path(t["out"])
        # what the kill left: nothing, or a whole store (the old one or the new one): never a broken one
        if out.exists():
            verify_all(out)
            assert without_store_id(out) == want
        else:
            assert not t["force"], "a --force conversion killed midway lost the old store"
        left = leftovers(out)
        report.append((round(t["delay"], 2), "killed" if o["killed"] else f"rc {o['rc']}",
                       "store" if out.exists() else "none", len(left)))
        # a re-run succeeds, removes what the killed one left, and gives the same store
        convert(KILL_MODEL, out, input_spec=X, progress=False, force=out.exists())
        assert without_store_id(out) == want
        assert leftovers(out) == [], leftovers(out)
    print(f"\nkill -9 trials (seed {seed}, uninterrupted conversion {duration:.2f} s; "
          f"delay s, outcome, store at --out, leftover temporaries): {report}")
    assert sum(o["killed"] for o in outcomes) >= KILL_TRIALS // 2  # the kills landed during conversion


def test_sigkill_of_the_console_script_while_it_writes(disk_dir):
    """The installed `swapnet` command, killed once its temporary folder exists (it is writing)."""
    exe = shutil.which("swapnet") or str(Path(sys.executable).with_name("swapnet"))
    base = disk_dir / "kill_cli"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    out = base / "store"
    proc = subprocess.Popen([exe, "convert", KILL_MODEL, "--out", str(out), "--input", X, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert leftovers(out), "the conversion finished before its temporary folder was seen"
        time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    if out.exists():  # only on a machine that writes 87 MB in 10 ms: then the store must be whole
        verify_all(out)
    else:  # killed while writing: no store, a stale temporary
        assert leftovers(out)
        with pytest.raises(StoreNotFoundError):
            BlockStore(out)
    convert(KILL_MODEL, out, input_spec=X, progress=False, force=out.exists())
    verify_all(out)
    assert leftovers(out) == []


def test_a_live_conversions_temporary_folder_is_not_removed(disk_dir, convert_once):
    """The next convert removes only folders whose owner is dead (their lock is free)."""
    import fcntl

    store = convert_once("toy_models:branchy", "random:1x3x16x16")
    out = disk_dir / "live_tmp" / "store"
    out.parent.mkdir(exist_ok=True)
    live, dead = out.parent / ".store.live.partial", out.parent / ".store.dead.partial"
    live.mkdir()
    dead.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running conversion holds it
    try:
        convert(store.ref, out, input_spec="random:1x3x16x16", progress=False)
        assert live.exists() and not dead.exists()
    finally:
        os.close(fd)
        shutil.rmtree(live)


# -- 4. disk full ------------------------------------------------------------------------------------

NAMESPACE_OK = shutil.which("unshare") is not None and subprocess.run(
    ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode == 0

# Runs inside a user+mount namespace where argv[1] is an 8 MiB tmpfs. Two conversions of resnet18
# (45 MiB): one refused before writing (not enough free space on the tmpfs), one into argv[2] (plenty
# of space) under a file size limit below the weights file, so that the write itself fails: the path a
# disk that fills up meanwhile takes.
DISK_FULL = r"""
import contextlib, io, json, os, resource, sys
from swapnet_core.cli import main
results = []
for folder, limit in ((sys.argv[1], None), (sys.argv[2], 4 << 20)):
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["convert", "torchvision:resnet18", "--out", os.path.join(folder, "store"),
                   "--input", "random:1x3x64x64"])
    results.append({"rc": rc, "stderr": err.getvalue(), "left": sorted(os.listdir(folder))})
print(json.dumps(results))
"""


@pytest.mark.skipif(not NAMESPACE_OK, reason="unshare --user --map-root-user --mount is not available here")
def test_disk_full_gives_one_line_and_leaves_nothing(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    script = f'mount -t tmpfs -o size=8m none "{small}" && exec "{sys.executable}" -c "$0" "{small}" "{big}"'
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, DISK_FULL],
                       capture_output=True, text=True, timeout=300, cwd=str(TEST_DIR))
    assert r.returncode == 0, r.stderr
    full, fsize = json.loads(r.stdout.splitlines()[-1])
    for result in (full, fsize):
        assert result["rc"] == 2, result
        assert result["stderr"].count("swapnet: error") == 1, result
        line = result["stderr"].replace("\r", "\n").strip().splitlines()[-1]  # after any progress bar
        assert line.startswith("swapnet: error: ") and "the store needs 44.7 MiB" in line, line
        assert result["left"] == [], result  # no store, no temporary folder
    assert full["stderr"].strip().count("\n") == 0  # refused before writing: one line, no progress bar
    assert "No space left on device" in full["stderr"] and "8.0 MiB" in full["stderr"]  # and what was free
    assert "File too large" in fsize["stderr"]
    print(f"\ndisk full: {full['stderr'].strip()}\nfile size limit: {line}")


# -- 5. never unpickle ---------------------------------------------------------------------------------

# pickle's loaders raise (and say so on stderr) in this process; then every command runs through the
# CLI's main. Safetensors and torch.load(weights_only=True) use no pickle.Unpickler.
NO_PICKLE = r"""
import contextlib, io, json, pickle, _pickle, sys
attempts = []
def refuse(*a, **k):
    attempts.append(1)
    raise RuntimeError("unpickling attempted")
class Refuse:
    def __init__(self, *a, **k):
        refuse()
for mod in (pickle, _pickle):
    mod.load = mod.loads = refuse
    mod.Unpickler = Refuse
pickle._load = pickle._loads = refuse
pickle._Unpickler = Refuse
from swapnet_core.cli import main
results = []
try:
    pickle.loads(pickle.dumps(1))
    guard = False
except RuntimeError:
    guard = attempts.pop() == 1
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    results.append({"argv": argv, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps({"guard": guard, "attempts": len(attempts), "results": results}))
"""

EVIL = r"""
import os, pickle, sys, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[1],))
torch.save({"state_dict": {"conv.weight": Evil()}}, sys.argv[2])
with open(sys.argv[3], "wb") as f:
    pickle.dump({"conv.weight": Evil()}, f)
"""


def test_no_command_unpickles_and_a_malicious_checkpoint_is_refused(tmp_path, disk_dir):
    from safetensors.torch import save_file

    from swapnet_core.models import resolve

    torch.manual_seed(7)
    net = resolve("toy_models:branchy").build()
    pt, st = tmp_path / "branchy.pt", tmp_path / "branchy.safetensors"
    torch.save({"state_dict": net.state_dict()}, pt)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st))
    marker, evil_pt, evil_pkl = tmp_path / "PWNED", tmp_path / "evil.pt", tmp_path / "evil.pkl"
    made = run_python(EVIL, marker, evil_pt, evil_pkl)
    assert made.returncode == 0 and not marker.exists(), made.stderr
    base = disk_dir / "nopickle"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    (base / "empty").mkdir()
    x = ["--input", "random:1x3x16x16"]
    commands = [
        ["convert", "toy_models:branchy", "--out", str(base / "pt"), "--weights", str(pt), *x, "--quiet"],
        ["convert", "toy_models:branchy", "--out", str(base / "st"), "--weights", str(st), *x, "--quiet"],
        ["info", str(base / "pt"), "--verify", "--json"],
        ["plan", str(base / "pt"), "--budget", "1/2", "--json"],
        ["run", str(base / "st"), "--budget", "1/2", "--repeat", "1", "--compare-resident", "--json"],
        ["run", str(base / "st"), "--budget", "1/2", "--repeat", "1", "--io", "mmap", "--json"],
        ["convert", "toy_models:branchy", "--out", str(base / "evil"), "--weights", str(evil_pt), *x, "--quiet"],
        ["convert", "toy_models:branchy", "--out", str(base / "evil2"), "--weights", str(evil_pkl), *x, "--quiet"],
        ["info", str(pt)],  # a checkpoint given where a store belongs
        ["info", str(base / "empty")],
    ]
    r = run_python(NO_PICKLE, json.dumps(commands))
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["guard"]  # the guard works: a real unpickling in that process raises
    assert done["attempts"] == 0, "a command tried to unpickle (even if it caught the error)"
    res = done["results"]
    for ok in res[:6]:
        assert ok["rc"] == 0, ok
    assert json.loads(res[4]["stdout"])["max_abs_diff"] == 0
    for bad in res[6:]:
        assert bad["rc"] == 2, bad
        lines = bad["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("swapnet: error: "), bad["stderr"]
    assert "did not unpickle" in res[6]["stderr"] and "evil.pt" in res[6]["stderr"]
    assert "evil.pkl" in res[7]["stderr"]
    assert "not a block store" in res[8]["stderr"] and "not a block store" in res[9]["stderr"]
    assert not marker.exists(), "the malicious checkpoint ran"
    assert not (base / "evil").exists() and not (base / "evil2").exists()


def test_static_scan_finds_no_unpickling_in_core_or_ros():
    """No pickle.load(s)/Unpickler, numpy allow_pickle=True, or torch.load without weights_only=True
    anywhere in swapnet_core/ or swapnet_ros/ (test_package scans torch.load in the core alone)."""
    found = []
    for path in sorted((REPO / "swapnet_core").glob("*.py")) + sorted((REPO / "swapnet_ros").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and node.attr in ("Unpickler", "_Unpickler"):
                found.append(f"{where} pickle Unpickler")
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "dill", "cloudpickle",
                                                                    "joblib"):
                found.append(f"{where} imports from {node.module}")
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            owner = getattr(node.func.value, "id", "") if isinstance(node.func, ast.Attribute) else ""
            flags = {k.arg: k.value for k in node.keywords}
            if owner in ("pickle", "_pickle", "dill", "cloudpickle", "joblib") and name in ("load", "loads"):
                found.append(f"{where} {owner}.{name}")
            if owner == "torch" and name == "load" and not (
                    isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                found.append(f"{where} torch.load without weights_only=True")
            if isinstance(flags.get("allow_pickle"), ast.Constant) and flags["allow_pickle"].value is not False:
                found.append(f"{where} allow_pickle={flags['allow_pickle'].value}")
    assert found == []


def test_paths_that_are_not_stores_are_refused_clearly(tmp_path, convert_once):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\0" * 100)
    ckpt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, ckpt)
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (plain, ckpt, empty, tmp_path / "missing"):
        with pytest.raises(StoreNotFoundError, match="not a block store"):
            BlockStore(path)
    random_manifest = tmp_path / "random"
    random_manifest.mkdir()
    (random_manifest / "manifest.json").write_text('{"name": "something else", "layers": [1, 2]}')
    with pytest.raises(StoreFormatError, match="not a swapnet-blockstore manifest"):
        BlockStore(random_manifest)
    # a real manifest whose weights file is not a safetensors file (a pickle in its place)
    real = convert_once("toy_models:branchy", "random:1x3x16x16")
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(real.path / "manifest.json", swapped)
    shutil.copy(ckpt, swapped / "weights.safetensors")
    with pytest.raises((StoreTruncatedError, StoreMismatchError)):
        BlockStore(swapped)


def test_a_store_naming_an_unmarked_function_is_refused_without_calling_it(tmp_path, convert_once):
    """A store's manifest names the factory that rebuilds its network: a store from elsewhere could name
    any importable function with arguments of its choosing. Only @model_factory functions are called."""
    from swapnet_core import ModelRefError
    from swapnet_core.models import resolve

    real = convert_once("toy_models:branchy", "random:1x3x16x16")
    evil = tmp_path / "evil"
    shutil.copytree(real.path, evil)
    marker = tmp_path / "ran"
    manifest = json.loads((evil / "manifest.json").read_text())
    manifest["architecture"]["ref"] = f"os:system?command='touch {marker}'"
    (evil / "manifest.json").write_text(json.dumps(manifest))
    store = BlockStore(evil)  # the layout is sound: only the reference is refused, when it would be used
    with pytest.raises(ModelRefError, match="not marked as a model factory"):
        open_swapped(store, store.total_bytes)
    with pytest.raises(ModelRefError, match="not marked as a model factory"):
        load_resident(store)
    cli = run_python("import sys; from swapnet_core.cli import main; sys.exit(main(sys.argv[1:]))",
                     "run", evil, "--budget", "1/2", "--repeat", "1")
    assert cli.returncode != 0 and "not marked as a model factory" in cli.stderr and "Traceback" not in cli.stderr
    assert not marker.exists()
    with pytest.raises(ModelRefError, match="not marked"):
        resolve("toy_models:Branchy")  # a class is callable too: not marked, not called
    assert resolve("toy_models:branchy").build() is not None  # the marked factory still works
    import toy_models
    from swapnet_core import model_factory

    with pytest.raises(TypeError, match="marks functions"):
        model_factory(toy_models.Branchy)  # a class's mark would pass to every subclass


# -- 6. the store changed under a running model --------------------------------------------------------

@pytest.fixture(scope="module")
def live(convert_once, disk_dir):
    """(the original store, its weights bytes, input, resident output)."""
    store = convert_once(RESNET, X)
    x = make_input(X, seed=11)
    with torch.no_grad():
        want = load_resident(store)(x)
    return store, store.weights_path.read_bytes(), x, want


def fresh_copy(store, dest: Path) -> BlockStore:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(store.path, dest)
    return BlockStore(dest)


def put_back(path: Path, data: bytes) -> None:
    """Restore the file's bytes in place (same inode), as a restore from backup would."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))


@pytest.mark.parametrize("io", ["direct", "mmap"])
def test_truncated_then_restored_in_place(live, disk_dir, io):
    store, data, x, want = live
    s = fresh_copy(store, disk_dir / f"trunc_{io}")
    with open_swapped(s, "1/2", io=io, plan="greedy") as model:
        assert torch.equal(model(x), want)
        for cut in (s.file_bytes // 2, s.units[-1].offset + 100):  # early units, then only the last one
            os.truncate(s.weights_path, cut)
            first_cut = next(u for u in s.units if u.end > cut)
            for _ in range(2):  # every call while it is cut: a typed error naming the unit and file
                with pytest.raises(StoreTruncatedError) as e:
                    model(x)
                assert e.value.unit == first_cut.name and str(s.weights_path) in str(e.value)
                assert f"'{first_cut.name}'" in str(e.value)
            put_back(s.weights_path, data)
            for _ in range(2):
                assert torch.equal(model(x), want)
        assert model.stats.peak_resident_weight_bytes <= model.budget_bytes


@pytest.mark.parametrize("io", ["direct", "mmap"])
def test_corrupted_then_restored_in_place(live, disk_dir, io):
    store, data, x, want = live
    s = fresh_copy(store, disk_dir / f"corrupt_{io}")
    victim = s.units[len(s.units) // 2]
    with open_swapped(s, "1/2", io=io, plan="greedy") as model:
        assert torch.equal(model(x), want)
        with open(s.weights_path, "r+b") as f:
            f.seek(victim.offset + 3)
            f.write(bytes([data[victim.offset + 3] ^ 0x40]))
        for _ in range(2):
            with pytest.raises(StoreCorruptError) as e:
                model(x)
            assert e.value.unit == victim.name and str(s.weights_path) in str(e.value)
        put_back(s.weights_path, data)
        assert torch.equal(model(x), want)


@pytest.mark.parametrize("io", ["direct", "mmap"])
def test_a_failed_prefetch_does_not_poison_later_calls(live, disk_dir, io):
    store, data, x, want = live
    s = fresh_copy(store, disk_dir / f"prefetch_{io}")
    with open_swapped(s, "1/2", io=io, plan="greedy") as model:
        assert torch.equal(model(x), want)
        os.truncate(s.weights_path, 8192)
        model.prefetch()  # as a scheduler does for the next job: fails on the I/O thread, raises nothing
        put_back(s.weights_path, data)
        assert torch.equal(model(x), want)  # the failed read is not handed to this call
        os.truncate(s.weights_path, 8192)
        model.prefetch()
        with pytest.raises(StoreTruncatedError):  # still cut: the call says so itself
            model(x)
        put_back(s.weights_path, data)
        assert torch.equal(model(x), want)
        assert model._pending is None and not model._resident  # nothing half-loaded left behind


def reconvert(ref, folder, weights=None):
    return convert(ref, folder, input_spec=X, progress=False, force=True, weights=weights)


def test_reconverted_store_is_followed_or_refused(live, disk_dir, tmp_path):
    from safetensors.torch import save_file

    from swapnet_core.models import resolve

    store, data, x, want = live
    folder = disk_dir / "reconvert"
    s = fresh_copy(store, folder)
    torch.manual_seed(1)
    other = resolve(RESNET).build()
    other_weights = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(other_weights))
    with torch.no_grad():
        want_other = other(x)
    # in both io modes: a swapped model, and one that keeps every block resident (read once, at open)
    models = [open_swapped(BlockStore(folder), budget, io=io, plan="greedy")
              for io in ("direct", "mmap") for budget in ("1/2", s.total_bytes * 2)]
    try:
        for model in models:
            assert torch.equal(model(x), want)
        same = reconvert(RESNET, folder)  # the same model again: a new file, same layout and bytes
        assert same.store_id != s.store_id
        for model in models:
            assert torch.equal(model(x), want) and model.store.store_id == same.store_id
        reconvert(RESNET, folder, weights=other_weights)  # same layout, other weights: followed, re-read
        for model in models:
            assert torch.equal(model(x), want_other)
        reconvert("torchvision:resnet34", folder)  # another layout: the model must be rebuilt
        for model in models:
            for _ in range(2):
                with pytest.raises(StoreMismatchError, match="reconfigured"):
                    model(x)
            model.prefetch()  # raises nothing; the call does
        reconvert(RESNET, folder)  # the layout it was planned for comes back: it goes on
        for model in models:
            assert torch.equal(model(x), want)
        shutil.rmtree(folder)
        for model in models:
            with pytest.raises(StoreNotFoundError):
                model(x)
    finally:
        for model in models:
            model.close()


def test_errors_are_documented_swapnet_errors():
    for cls in (StoreCorruptError, StoreTruncatedError, StoreMismatchError, StoreNotFoundError, StoreFormatError):
        assert issubclass(cls, StoreError) and issubclass(cls, SwapNetError)


@pytest.mark.parametrize("queue_depth", [1, 2, 4])
def test_reads_in_flight_land_the_same_bytes_and_a_cut_file_is_named(live, disk_dir, queue_depth):
    """A range read as several reads in flight gives the file's bytes exactly (checksums verified);
    cut short under it, every depth raises StoreTruncatedError naming the unit, never hands back a
    half-filled buffer as good."""
    store, data, _x, _want = live
    copy = fresh_copy(store, disk_dir / f"qd-{queue_depth}")
    units = [u for u in copy.units if not u.pinned]
    n = units[-1].end - units[0].offset
    buf = HostBuffer(n)
    reader = BlockReader(copy.weights_path, "direct", verify="always", queue_depth=queue_depth, chunk_bytes=1 << 20)
    try:
        assert reader.read_into(units, buf.view) == n
        assert bytes(buf.view) == data[units[0].offset:units[-1].end]
        with open(copy.weights_path, "r+b") as f:
            f.truncate(units[len(units) // 2].offset)
        with pytest.raises(StoreTruncatedError) as e:
            reader.read_into(units, buf.view)
        assert e.value.unit == units[len(units) // 2].name
    finally:
        reader.close()
        buf.close()
