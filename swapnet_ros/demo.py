"""The README's main job: camera_replay -> perception -> viewer on the bundled photos, then a per-model
table (latency image in -> result out, budget, resident peak, misses) and the annotated images.
A model whose `weights` are left empty runs torchvision's pretrained weights where the torch hub cache
holds them (nothing is downloaded), else random ones; the demo says which, per network.

  python -m swapnet_ros.demo [--params config/perception.yaml] [--frames 4] [--rate 0.2] [--out out/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import swapnet_ros
from swapnet_core.errors import SwapNetError
from swapnet_core.pretrained import DEFAULT, describe
from swapnet_core.sizes import format_bytes

PREFIX = Path(swapnet_ros.__file__).resolve().parents[4]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(PREFIX / "share" / "swapnet_ros" / "config" / "perception.yaml"))
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--rate", type=float, default=0.2, help="frames per second from camera_replay")
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(40, 99)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = PREFIX / "share" / "swapnet_ros" / "config" / "fastdds.xml"
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    exe = {n: str(PREFIX / "lib" / "swapnet_ros" / n) for n in ("perception", "camera_replay", "viewer")}

    import rclpy
    from lifecycle_msgs.srv import GetState

    from swapnet_ros.msg import CoordinatorStatus

    rclpy.init()
    node = rclpy.create_node("swapnet_demo")
    status: list = []
    node.create_subscription(CoordinatorStatus, "/swap_coordinator/status", status.append, 10)
    get_state = node.create_client(GetState, "/swap_coordinator/get_state")
    procs = []

    def start(name, *ros_args, log=True):
        p = subprocess.Popen([sys.executable, exe[name], "--ros-args", *ros_args],
                             stdout=open(out / f"{name}.log", "w") if log else None, stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append(p)
        return p

    import yaml

    params = yaml.safe_load(Path(args.params).read_text())
    random_models = choose_weights(params)
    params_file = out / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    try:
        print(f"starting perception with {args.params} (first run converts and profiles the models: minutes)")
        perception = start("perception", "--params-file", str(params_file))
        end = time.monotonic() + args.timeout
        shown = 0
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.5)
            lines = (out / "perception.log").read_text().splitlines()
            for line in lines[shown:]:
                # "[INFO] [1795875808.98] [swap_coordinator]: text" -> "swap_coordinator: text"
                print("  " + (line.split("] [", 2)[-1].replace("]:", ":", 1) if line.startswith("[") else line))
            shown = len(lines)
            if perception.poll() is not None:
                raise SystemExit(f"perception exited with {perception.returncode}; see {out / 'perception.log'}")
            if get_state.service_is_ready():
                future = get_state.call_async(GetState.Request())
                rclpy.spin_until_future_complete(node, future, timeout_sec=5)
                if future.done() and future.result().current_state.label == "active":
                    break
        viewer = start("viewer", "-p", f"out_dir:={out / 'frames'}", "-p", f"max_frames:={args.frames}")
        time.sleep(2.0)  # let the viewer discover the topics before the first frame
        start("camera_replay", "-p", f"rate_hz:={args.rate}", "-p", f"max_frames:={args.frames + 2}")
        print(f"replaying {args.frames} bundled photos at {args.rate} Hz")
        while viewer.poll() is None and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.5)
        status.clear()
        while not status and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    latency_file = out / "frames" / "latency.json"
    if not status or not latency_file.exists():
        print(f"the pipeline produced no complete frame in time; logs in {out}")
        return 1
    e2e = json.loads(latency_file.read_text())
    topic = {"detection": "detections", "segmentation": "mask", "depth": "depth"}
    print(f"\n{'model':14}{'image->result ms':>18}{'scheduler p50 ms':>18}{'ROS overhead ms':>17}{'budget':>11}"
          f"{'min budget':>12}{'peak resident':>15}{'blocks':>8}{'jobs':>6}{'misses':>8}{'drops':>7}")
    for m in status[-1].models:
        lat = sorted(e2e.get(topic.get(m.name, ""), []))
        # nearest-rank median, as the status's p50, so that the two compare frame for frame
        end_to_end = lat[int(round(0.5 * (len(lat) - 1)))] if lat else float("nan")
        print(f"{m.name:14}{end_to_end:18.0f}{m.latency_p50_ms:18.0f}{end_to_end - m.latency_p50_ms:17.0f}"
              f"{format_bytes(m.budget_bytes):>11}{format_bytes(m.min_budget_bytes):>12}"
              f"{format_bytes(m.peak_resident_bytes):>15}{m.num_blocks:>8}{m.jobs_done:>6}{m.deadline_misses:>8}"
              f"{m.drops:>7}")
    total = status[-1].total_budget_bytes
    print(f"total budget {format_bytes(total)}; annotated frames and contact sheet in {out / 'frames'}")
    print("image->result: camera stamp to result received by the viewer (another process); scheduler: frame "
          "submitted to result ready, swapping included; ROS overhead: the difference")
    if random_models:
        print(f"note: {', '.join(random_models)} run with random weights (no `weights` configured, no pretrained "
              f"file in the torch hub cache): "
              f"their outputs are noise; the swapping, scheduling and timing are real")
    return 0


def choose_weights(params: dict) -> list[str]:
    """Sets `weights: DEFAULT` where a model's weights are empty and the torch hub cache holds its
    pretrained file; prints what each network runs with; returns the models left with random weights."""
    from swapnet_core.models import resolve

    random_models = []
    for name in params["swap_coordinator"]["ros__parameters"]["models"]:
        p = params[name]["ros__parameters"]
        ref, weights = p.get("model", ""), p.get("weights") or None
        if Path(ref).is_dir():
            print(f"  {name}: the weights of the store {ref}")
            continue
        if weights is None:
            try:
                spec = resolve(ref)
                if spec.pretrained is not None:
                    spec.pretrained()  # raises when the file is not in the cache
                    weights = p["weights"] = DEFAULT
                else:
                    weights = spec.bundled_weights or None
            except SwapNetError:
                pass
        if weights is None:
            random_models.append(name)
        print(f"  {name}: {ref}: {describe(weights, ref)}")
    return random_models


if __name__ == "__main__":
    sys.exit(main())
