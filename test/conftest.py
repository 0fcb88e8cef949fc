"""Shared fixtures. No root conftest and no test/__init__.py on purpose: tests import the installed
packages (colcon's install/ for swapnet_ros with its generated messages)."""

import os
import shutil
import signal
import subprocess
import sys
import time
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
    """convert_once(ref, input_spec[, slice_bytes=...]) -> BlockStore, converted once per session."""
    from swapnet_core import convert

    cache = {}

    def get(ref: str, input_spec: str, **options):
        key = (ref, input_spec, tuple(sorted(options.items())))
        if key not in cache:
            out = disk_dir / f"store{len(cache)}"
            cache[key] = convert(ref, out, input_spec=input_spec, progress=False, **options)
        return cache[key]

    return get


def swapnet_cli(*args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the installed `swapnet` command."""
    exe = shutil.which("swapnet") or str(Path(sys.executable).with_name("swapnet"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TEST_DIR), os.environ.get("PYTHONPATH")])))
    env.update(env_extra or {})
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


# -- ROS 2 helpers shared by the test_ros_* modules (imported from conftest: the test folder is on sys.path) --
def ros_prefix() -> Path:
    """The install prefix colcon made (tests import swapnet_ros from there)."""
    import swapnet_ros

    return Path(swapnet_ros.__file__).resolve().parents[4]


def rclpy_reports_publisher_gid() -> bool:
    """Whether subscriptions get each message's publisher gid (rclpy in Kilted and later, not Jazzy):
    without it, frames lost before intake cannot be counted."""
    try:
        from rclpy.subscription import MessageInfo
    except ImportError:
        return False
    return "publisher_gid" in getattr(MessageInfo, "__annotations__", {})


def ros_executable(name: str) -> str:
    path = ros_prefix() / "lib" / "swapnet_ros" / name
    assert path.is_file(), f"{path} is not installed (colcon build)"
    return str(path)


@pytest.fixture(scope="module")
def ros_env(tmp_path_factory):
    """An isolated DDS domain on localhost, shared by this process and the ones it starts."""
    import random

    os.environ["ROS_DOMAIN_ID"] = str(random.randint(40, 99))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    profile = ros_prefix() / "share" / "swapnet_ros" / "config" / "fastdds.xml"
    if profile.is_file():
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    import rclpy

    rclpy.init()
    yield tmp_path_factory.mktemp("ros")
    rclpy.try_shutdown()


@pytest.fixture(scope="session")
def ros_store_dir(disk_dir) -> Path:
    """Where the perception processes of all test_ros_* modules convert their models: once per session."""
    return disk_dir / "ros_stores"


def start_perception(params: dict, folder: Path, name: str = "perception", env_extra=None) -> subprocess.Popen:
    """Start the perception executable with `params` (a parameters-file dict); its output goes to
    folder/<name>.log (the Popen's .log_path)."""
    params_file = folder / f"{name}.yaml"
    params_file.write_text(yaml_dump(params))
    log_path = folder / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, ros_executable("perception"), "--ros-args", "--params-file",
                                 str(params_file)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, **(env_extra or {})))
    proc.log_path = log_path
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(data)


def collect(node, topics: dict) -> dict[str, list]:
    """Subscribe `node` to {key: (message type, topic)}; the messages arrive in the returned lists."""
    results = {key: [] for key in topics}
    for key, (kind, topic) in topics.items():
        node.create_subscription(kind, topic, results[key].append, 10)
    return results


def spin_for(node, seconds: float) -> None:
    import rclpy

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=min(0.05, max(0.0, end - time.monotonic())))


def wait_for(c, condition, timeout, what):
    """Spin c.node until condition() holds; fails if c.proc exits or the time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        c.spin(0.1)
        assert c.proc.poll() is None, f"perception exited ({c.proc.returncode}) while waiting for {what}"
    raise AssertionError(f"timed out waiting for {what}")


def call(c, client, request, timeout=60):
    """A service call from c.node, answered or failed."""
    import rclpy

    future = client.call_async(request)
    rclpy.spin_until_future_complete(c.node, future, timeout_sec=timeout)
    assert future.done(), f"no answer from {client.srv_name}"
    return future.result()
