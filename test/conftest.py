"""Shared fixtures. No root conftest and no test/__init__.py on purpose: tests import the installed
packages (colcon's install/ for swapnet_ros with its generated messages)."""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

TEST_DIR = Path(__file__).resolve().parent
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
if str(TEST_DIR) not in sys.path:  # toy_models:NAME references
    sys.path.insert(0, str(TEST_DIR))


def supports_o_direct(folder: Path) -> bool:
    probe = folder / f".odirect-{uuid.uuid4().hex}"
    probe.write_bytes(b"\0" * 4096)
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture(scope="session")
def disk_dir(tmp_path_factory) -> Path:
    """A folder on a file system that accepts O_DIRECT (pytest's tmp, else /var/tmp)."""
    base = tmp_path_factory.mktemp("stores")
    if supports_o_direct(base):
        yield base
        return
    fallback = Path("/var/tmp") / f"swapnet-test-{uuid.uuid4().hex[:8]}"
    fallback.mkdir(parents=True)
    if not supports_o_direct(fallback):
        pytest.skip("no file system here accepts O_DIRECT")
    yield fallback
    shutil.rmtree(fallback, ignore_errors=True)


@pytest.fixture(scope="session")
def convert_once(disk_dir):
    """convert_once(ref, input_spec) -> BlockStore, converted once per session."""
    from swapnet_core import convert

    cache = {}

    def get(ref: str, input_spec: str):
        key = (ref, input_spec)
        if key not in cache:
            out = disk_dir / f"store{len(cache)}"
            cache[key] = convert(ref, out, input_spec=input_spec, progress=False)
        return cache[key]

    return get


def swapnet_cli(*args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the installed `swapnet` command."""
    exe = shutil.which("swapnet") or str(Path(sys.executable).with_name("swapnet"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TEST_DIR), os.environ.get("PYTHONPATH")])))
    env.update(env_extra or {})
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
