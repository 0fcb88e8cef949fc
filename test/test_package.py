"""The package's contracts: the core imports no ROS, nothing unpickles from disk, the messages build."""

import ast
import subprocess
import sys
from pathlib import Path

import swapnet_core


def core_sources():
    return sorted(Path(swapnet_core.__file__).parent.rglob("*.py"))


def test_core_imports_nothing_from_ros():
    code = ("import sys, swapnet_core, swapnet_core.cli, swapnet_core.io, swapnet_core.memory;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosidl_runtime_py', 'rosidl_parser',"
            " 'sensor_msgs', 'std_msgs', 'swapnet_ros')]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for path in core_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("rclpy", "swapnet_ros") for n in names), path


def test_nothing_unpickles_from_disk():
    for path in core_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", "")
                if owner == "pickle" and node.func.attr in ("load", "loads"):
                    raise AssertionError(f"{path}:{node.lineno} unpickles")
                if owner == "torch" and node.func.attr == "load":
                    flags = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True
                    assert ok, f"{path}:{node.lineno} torch.load without weights_only=True"


def test_messages_are_generated_and_round_trip_through_rclpy():
    from rclpy.serialization import deserialize_message, serialize_message
    from swapnet_ros.msg import CoordinatorStatus, Detection2D, Detection2DArray, ModelStatus, ObjectHypothesisWithPose

    det = Detection2D()
    det.bbox.center.position.x, det.bbox.size_x = 12.5, 40.0
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id, hyp.hypothesis.score = "person", 0.875
    det.results.append(hyp)
    arr = Detection2DArray(detections=[det])
    arr.header.frame_id = "camera"
    assert deserialize_message(serialize_message(arr), Detection2DArray) == arr
    status = CoordinatorStatus(models=[ModelStatus(name="detection", budget_bytes=96 << 20)])
    assert deserialize_message(serialize_message(status), CoordinatorStatus) == status
