"""The launch file cannot run here (no `launch` package), so check it statically against the install:
the executables it names are installed, the params file it points at is installed and parses, and
its node names match the executables' nodes."""

import ast
from pathlib import Path

import yaml

import swapnet_ros

PREFIX = Path(swapnet_ros.__file__).resolve().parents[4]
SHARE = PREFIX / "share" / "swapnet_ros"


def launch_calls():
    tree = ast.parse((SHARE / "launch" / "perception.launch.py").read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]


def kw(call, name):
    for k in call.keywords:
        if k.arg == name and isinstance(k.value, ast.Constant):
            return k.value.value
    return None


def test_launch_file_names_installed_executables_and_an_installed_params_file():
    calls = launch_calls()
    assert {kw(c, "executable") for c in calls} == {"perception", "camera_replay"}
    for c in calls:
        assert kw(c, "package") == "swapnet_ros"
        exe = PREFIX / "lib" / "swapnet_ros" / kw(c, "executable")
        assert exe.is_file() and exe.stat().st_mode & 0o111, exe
    # a name= on the multi-node process would rename every node in it
    assert kw(next(c for c in calls if kw(c, "executable") == "perception"), "name") is None
    source = (SHARE / "launch" / "perception.launch.py").read_text()
    assert '"config", "perception.yaml"' in source and '"config", "fastdds.xml"' in source
    # the device reaches the coordinator: a launch argument, passed to the perception process
    assert 'DeclareLaunchArgument("device"' in source
    perception = next(c for c in calls if kw(c, "executable") == "perception")
    params = next(k.value for k in perception.keywords if k.arg == "parameters")
    assert any(isinstance(e, ast.Dict) and any(isinstance(key, ast.Constant) and key.value == "device" for key in e.keys)
               for e in params.elts)
    assert (SHARE / "config" / "fastdds.xml").is_file()


def test_params_file_keys_match_the_nodes():
    params = yaml.safe_load((SHARE / "config" / "perception.yaml").read_text())
    coordinator = params["swap_coordinator"]["ros__parameters"]
    models = coordinator["models"]
    assert set(params) == {"swap_coordinator", "camera_replay", *models}
    budgets = sum(params[m]["ros__parameters"]["budget_mb"] for m in models)
    assert budgets <= coordinator["total_budget_mb"]
    for m in models:
        assert params[m]["ros__parameters"]["task"] in ("detection", "segmentation", "depth")
    # the node the executables create carry exactly these names
    from swapnet_ros.coordinator import SwapCoordinator
    import inspect

    assert inspect.signature(SwapCoordinator.__init__).parameters["name"].default == "swap_coordinator"
    from swapnet_ros.camera_replay import CameraReplay

    assert '"camera_replay"' in inspect.getsource(CameraReplay.__init__)
