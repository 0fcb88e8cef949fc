#!/usr/bin/env python3
"""Soak and overload of the real pipeline: the `perception` executable (coordinator + detection,
segmentation and depth nodes, weights 3x the total budget; config/soak.yaml) in its own process over
real DDS, fed by a feeder node in this process.

  soak      closed loop: the next frame is published when the previous one has a result on every
            output topic, so every frame is served by every model (frames lost on the way are
            counted). Every --probe-every frames a fixed probe frame goes out instead; its outputs
            (the serialized messages, byte for byte) must equal those of the same model node code
            run here on the resident model (swapnet_core.load_resident on the same store folders).
  overload  the serviceable rate is measured first (closed loop), then frames go out at 3x that
            rate: the served latency (publish to result), drops (from ~/status and /diagnostics),
            and the backlog (frames published but neither served nor dropped) are recorded.
  Throughout, the perception process's RSS, threads, open fds and mapped /dev/shm segments (and the
  machine's /dev/shm entries) are sampled. Prints a table, writes its section of --out (JSON) and a
  plot of RSS and latency over time next to it.

  python bench/soak.py --quick            # CI-sized: 100 frames per model (~30 s here) after start-up
  python bench/soak.py                    # the full soak: 10,000 frames served per model
  python bench/soak.py --overload         # 3x the serviceable rate for 180 s
(after `bash scripts/build_ros.sh` and `source scripts/ros_env.sh`). Exit status 1 if a criterion fails.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shm_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
# what each model node publishes; the first topic of each is the one that says "served"
# (Depth Anything predicts relative inverse depth: ~/depth_relative)
OUTPUTS = {"detection": ["detections"], "segmentation": ["mask", "mask_color"], "depth": ["depth_relative"]}
PROBE_ID = "probe"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized soak: 100 frames per model, looser warm-up")
    ap.add_argument("--overload", action="store_true", help="3x the serviceable rate instead of the soak")
    ap.add_argument("--frames", type=int, help="soak: frames per model (default 10000; quick: 100)")
    ap.add_argument("--seconds", type=float, help="soak: stop feeding after this long even if short of --frames, which then fails "
                                                     "(quick: 600, a ceiling for a hung run, not a speed target); "
                                                     "overload: length of the overload (default 180)")
    ap.add_argument("--warmup", type=int, help="frames before the memory baseline (default 500; quick 30)")
    ap.add_argument("--probe-every", type=int, help="a probe frame every N frames (default 100; quick 10)")
    ap.add_argument("--sample-s", type=float, help="sampling period, s (default 5; quick 1; overload 2)")
    ap.add_argument("--drift-limit", type=float, help="RSS drift limit after warm-up, %% (default 2; quick 5)")
    ap.add_argument("--config", default=str(ROOT / "config" / "soak.yaml"))
    ap.add_argument("--stores", default=str(Path.home() / ".cache" / "swapnet_ros" / "stores" / "soak"))
    ap.add_argument("--out", help="default bench/results/soak.json (soak_quick.json with --quick: a quick run "
                                  "never touches the documented results)")
    args = ap.parse_args(argv)
    quick = args.quick
    args.out = args.out or str(ROOT / "bench" / "results" / ("soak_quick.json" if quick else "soak.json"))
    args.mode = "overload" if args.overload else ("quick" if quick else "soak")
    args.frames = args.frames or (100 if quick else 10000)
    # the soak is bounded by frames: a slow, shared machine takes longer but is judged on the same work
    args.seconds = args.seconds or (600.0 if quick else 180.0 if args.overload else float("inf"))
    args.warmup = args.warmup if args.warmup is not None else (30 if quick else 500)
    args.probe_every = args.probe_every or (10 if quick else 100)
    args.sample_s = args.sample_s or (1.0 if quick else 2.0 if args.overload else 5.0)
    args.drift_limit = args.drift_limit if args.drift_limit is not None else (5.0 if quick else 2.0)
    return args


def ros_environment() -> None:
    """A DDS domain of our own on localhost (other runs on this machine must not feed us frames)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ and (ROOT / "config" / "fastdds.xml").is_file():
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" / "fastdds.xml")


def prepare_stores(params: dict, store_dir: Path) -> dict[str, Path]:
    """Convert each node's model reference once into store_dir; the run points `model` at the folders."""
    from swapnet_core import BlockStore, SwapNetError, convert

    folders = {}
    for name in params["swap_coordinator"]["ros__parameters"]["models"]:
        p = params[name]["ros__parameters"]
        ref = p["model"]
        h, w = p.get("input_size", [0, 0])
        folder = store_dir / ref.replace(":", "_").replace("/", "_").replace("?", "_").replace("&", "_")
        try:
            ok = BlockStore(folder).ref == ref
        except SwapNetError:
            ok = False
        if not ok:
            print(f"converting {ref} into {folder}", flush=True)
            convert(ref, folder, input_spec=f"random:1x3x{h or 240}x{w or 320}", force=folder.exists())
        folders[name] = folder
    return folders


class ResidentCoordinator:
    """What a model node needs of a coordinator, served by the resident model (load_resident) on the
    calling thread: the model node's own pre- and post-processing run around it unchanged."""

    serving = True

    def __init__(self):
        self.models = {}

    def register(self, node) -> None:
        from swapnet_core import BlockStore, load_resident

        store = BlockStore(node.get_parameter("model").value)
        node.bind_store(store)
        self.models[node.get_name()] = (load_resident(store), store.call)

    def submit(self, name, x, deadline):
        import torch

        from swapnet_core.models import call_model

        model, call = self.models[name]
        future = Future()
        with torch.no_grad():
            future.set_result(call_model(model, call, x))
        return future

    def request_budget(self, name, budget_bytes):
        return None


def canonical(value):
    """A message as nested tuples in which every float is its IEEE bytes (so -0.0 != 0.0 and NaN == NaN)
    and every array its raw bytes: equal iff the messages are bit-identical field by field. (Serialized
    CDR bytes cannot be compared: their alignment padding is not initialised.)"""
    if hasattr(value, "get_fields_and_field_types"):
        return tuple((f, canonical(getattr(value, f))) for f in value.get_fields_and_field_types())
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, array.array):
        return value.typecode, value.tobytes()
    if isinstance(value, np.ndarray):
        return str(value.dtype), value.tobytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    return value


def percentiles(values) -> dict:
    v = sorted(values)
    if not v:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "n": 0}

    def pct(p):  # nearest rank
        return v[min(len(v) - 1, max(0, int(np.ceil(p / 100 * len(v))) - 1))] * 1000

    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": v[-1] * 1000, "n": len(v)}


class Driver:
    def __init__(self, args, params: dict, folders: dict[str, Path], proc: subprocess.Popen, run_dir: Path):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.parameter import Parameter
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from swapnet_ros.model_node import SwapModelNode
        from swapnet_ros.msg import CoordinatorStatus, Detection2DArray

        self.args, self.proc, self.run_dir = args, proc, run_dir
        self.ps = psutil.Process(proc.pid)
        self.models = list(params["swap_coordinator"]["ros__parameters"]["models"])
        self.node = rclpy.create_node("soak_driver")
        topic = params[self.models[0]]["ros__parameters"]["input_topic"]
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(Image, topic, reliable)
        self.ref_pub = self.node.create_publisher(Image, "/soak/probe_reference", reliable)
        self.lock = threading.Condition()
        self.published: dict[str, float] = {}  # frame_id -> publish time (s since epoch)
        self.publish_times: list[float] = []
        self.received: dict[str, dict[str, float]] = {}  # frame_id -> {topic: receive time}
        self.latency: dict[str, list[tuple[float, float]]] = {m: [] for m in self.models}  # (time, s)
        self.served = {m: 0 for m in self.models}
        self.probe_out: dict[str, bytes | None] = {}
        self.probe_checks = {t: 0 for m in self.models for t in OUTPUTS[m]}
        self.probe_mismatches = {t: 0 for t in self.probe_checks}
        self.reference: dict[str, bytes] = {}
        self.status = None
        self.status_log: list[tuple[float, dict]] = []  # (stamp, {model: counters})
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.samples: list[dict] = []
        self.shm_last: set[str] = set()
        self.marks: dict[str, float] = {}
        self.types = {"detections": Detection2DArray}
        for m in self.models:
            for t in OUTPUTS[m]:
                kind = self.types.get(t, Image)
                self.node.create_subscription(kind, f"/{m}/{t}", self._on_result(m, t), reliable)
                self.node.create_subscription(kind, f"/soak_ref_{m}/{t}", self._on_reference(t), reliable)
        self.node.create_subscription(CoordinatorStatus, "/swap_coordinator/status", self._on_status, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        # the model node code, here, on the resident model: the probe's reference outputs
        self.ref_coordinator = ResidentCoordinator()
        self.ref_nodes = []
        for m in self.models:
            p = dict(params[m]["ros__parameters"], model=str(folders[m]), input_topic="/soak/probe_reference")
            overrides = [Parameter(k, value=v) for k, v in p.items() if k != "budget_mb"]
            self.ref_nodes.append(SwapModelNode(f"soak_ref_{m}", self.ref_coordinator, parameter_overrides=overrides))
        self.executor = MultiThreadedExecutor(num_threads=2)
        for n in [self.node, *self.ref_nodes]:
            self.executor.add_node(n)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()
        self._stop_sampling = threading.Event()
        self._sampler = None
        h, w = params[self.models[0]]["ros__parameters"].get("input_size", [96, 128])
        rng = np.random.default_rng(7)
        self.pool = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(16)]
        self.probe_rgb = np.random.default_rng(12345).integers(0, 256, size=(h, w, 3), dtype=np.uint8)

    # -- callbacks (executor threads) --------------------------------------------------------------
    def _on_result(self, model: str, topic: str):
        served_topic = topic == OUTPUTS[model][0]

        def cb(msg):
            now = time.time()
            fid = msg.header.frame_id
            with self.lock:
                if fid == PROBE_ID:
                    self.probe_out[topic] = msg
                else:
                    sent = self.published.get(fid)
                    if sent is not None and served_topic:
                        self.served[model] += 1
                        self.latency[model].append((now, now - sent))
                    self.received.setdefault(fid, {})[topic] = now
                self.lock.notify_all()

        return cb

    def _on_reference(self, topic: str):
        def cb(msg):
            with self.lock:
                self.reference[topic] = msg
                self.lock.notify_all()

        return cb

    def _on_status(self, msg):
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        counters = {m.name: {"jobs_done": m.jobs_done, "drops": m.drops, "deadline_misses": m.deadline_misses,
                             "errors": m.errors, "malformed_inputs": m.malformed_inputs,
                             "frames_received": m.frames_received, "lost_before_intake": m.lost_before_intake,
                             "p50_ms": m.latency_p50_ms, "p95_ms": m.latency_p95_ms, "p99_ms": m.latency_p99_ms,
                             "peak_resident_bytes": m.peak_resident_bytes, "budget_bytes": m.budget_bytes,
                             "min_budget_bytes": m.min_budget_bytes, "num_blocks": m.num_blocks,
                             "last_error": m.last_error, "state": m.state}
                    for m in msg.models}
        with self.lock:
            self.status = msg
            self.status_log.append((stamp, counters))

    def _on_diagnostics(self, msg):
        with self.lock:
            for st in msg.status:
                if st.name.startswith("swapnet/"):
                    self.diagnostics[st.name.split("/", 1)[1]] = {kv.key: kv.value for kv in st.values} | {
                        "message": st.message, "level": int.from_bytes(st.level, "little")
                        if isinstance(st.level, bytes) else int(st.level)}

    # -- helpers ----------------------------------------------------------------------------------
    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"perception exited with {self.proc.returncode}; see its log")

    def wait(self, condition, timeout: float, what: str) -> bool:
        end = time.monotonic() + timeout
        with self.lock:
            while not condition():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.5))
                if self.proc.poll() is not None:
                    raise RuntimeError(f"perception exited ({self.proc.returncode}) while waiting for {what}")
        return True

    def image(self, rgb, frame_id: str, stamp_now: bool = True):
        from swapnet_ros.image_codec import make_image

        msg = make_image(None, rgb, "rgb8")
        msg.header.frame_id = frame_id
        if stamp_now:
            msg.header.stamp = self.node.get_clock().now().to_msg()
        else:
            msg.header.stamp.sec = 1  # the probe: the same message every time, so its outputs are too
        return msg

    def sample(self) -> dict:
        s = {"t": time.time()}
        try:
            with self.ps.oneshot():
                s.update(rss=self.ps.memory_info().rss, threads=self.ps.num_threads(), fds=self.ps.num_fds())
        except psutil.Error:
            return s
        self.shm_last = shm_paths(self.proc.pid)
        s["shm_mapped"] = len(self.shm_last)
        s["shm_entries"] = len(os.listdir("/dev/shm"))
        with self.lock:
            s["published"] = len(self.publish_times)
            s["served"] = dict(self.served)
        self.samples.append(s)
        return s

    def start_sampling(self) -> None:
        def loop():
            while not self._stop_sampling.wait(self.args.sample_s):
                self.sample()

        self.sample()
        self._sampler = threading.Thread(target=loop, daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        self.sample()

    # -- phases -----------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 600.0) -> None:
        ok = self.wait(lambda: self.status is not None and self.status.state == "active"
                       and all(m.state == "serving" for m in self.status.models), timeout, "the coordinator to serve")
        if not ok:
            raise RuntimeError(f"perception did not start serving within {timeout:.0f} s")
        subscribers = len(self.models) + len(self.ref_nodes)
        if not self.wait(lambda: self.pub.get_subscription_count() >= len(self.models)
                         and self.ref_pub.get_subscription_count() >= len(self.ref_nodes), 60, "subscribers"):
            raise RuntimeError(f"the {subscribers} model nodes did not subscribe")

    def compute_reference(self) -> None:
        """The probe through the model node code on the resident models, in this process."""
        want = set(self.probe_checks)
        for _ in range(10):
            self.ref_pub.publish(self.image(self.probe_rgb, PROBE_ID, stamp_now=False))
            if self.wait(lambda: want <= set(self.reference), 30, "the reference outputs"):
                return
        raise RuntimeError(f"no reference output on {sorted(want - set(self.reference))}")

    def send(self, rgb, frame_id: str) -> None:
        msg = self.image(rgb, frame_id, stamp_now=frame_id != PROBE_ID)
        with self.lock:
            if frame_id != PROBE_ID:
                self.published[frame_id] = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self.publish_times.append(time.time())
        self.pub.publish(msg)

    def send_probe(self, wait: bool, timeout: float = 60.0) -> bool:
        """Publish the probe; with wait, compare each output topic's message with the reference."""
        with self.lock:
            self.probe_out = {t: None for t in self.probe_checks}
        self.send(self.probe_rgb, PROBE_ID)
        if not wait:
            return True
        got = self.wait(lambda: all(v is not None for v in self.probe_out.values()), timeout, "the probe's outputs")
        self.check_probe()
        return got

    def check_probe(self) -> None:
        from rclpy.serialization import serialize_message

        with self.lock:
            for t, data in self.probe_out.items():
                if data is not None:
                    self.probe_checks[t] += 1
                    if canonical(data) != canonical(self.reference[t]):
                        self.probe_mismatches[t] += 1
                        if self.probe_mismatches[t] == 1:  # the evidence, next to perception's log
                            (self.run_dir / f"probe_{t}.swapped.cdr").write_bytes(serialize_message(data))
                            (self.run_dir / f"probe_{t}.resident.cdr").write_bytes(serialize_message(self.reference[t]))
                    self.probe_out[t] = None

    def closed_loop(self, k: int, timeout: float = 20.0) -> bool:
        """Frame k out; True once every output topic has its result."""
        fid = f"f{k}"
        topics = set(self.probe_checks)
        self.send(self.pool[k % len(self.pool)], fid)
        return self.wait(lambda: topics <= set(self.received.get(fid, ())), timeout, f"frame {k}")

    def latest_counters(self, after: float, timeout: float = 15.0) -> dict:
        """Status counters from a message stamped after `after` (s since epoch)."""
        self.wait(lambda: self.status_log and self.status_log[-1][0] > after, timeout, "a fresh status")
        with self.lock:
            return self.status_log[-1][1] if self.status_log else {}


def run_soak(d: Driver, args, bar) -> dict:
    lost = 0
    probes_missing = 0
    k = 0
    started = time.monotonic()
    d.marks["start"] = time.time()
    while min(d.served.values()) < args.frames and time.monotonic() - started < args.seconds:
        d.alive()
        if k and k % args.probe_every == 0:
            probes_missing += not d.send_probe(wait=True)
        if not d.closed_loop(k):
            lost += 1
        k += 1
        if k == args.warmup:
            d.marks["warm"] = time.time()
        bar(k)
    probes_missing += not d.send_probe(wait=True)  # one last probe at the end
    d.marks["end"] = time.time()
    return {"frames_published": k, "frames_lost": lost, "probes_unanswered": probes_missing}


def run_overload(d: Driver, args, bar) -> dict:
    # serviceable rate: closed loop, after a few frames to settle
    calib_s = 15.0 if not args.quick else 8.0
    for k in range(5):
        d.closed_loop(k)
    t0, k = time.monotonic(), 5
    while time.monotonic() - t0 < calib_s:
        d.alive()
        d.closed_loop(k)
        k += 1
    rate = (k - 5) / (time.monotonic() - t0)
    target = 3.0 * rate
    print(f"serviceable rate (closed loop, every model serves each frame): {rate:.2f} frames/s; "
          f"overload at {target:.2f} frames/s for {args.seconds:.0f} s", flush=True)
    time.sleep(1.0)
    with d.lock:
        for lst in d.latency.values():
            lst.clear()
        published_before = len(d.publish_times)
        served_before = dict(d.served)
    counters0 = d.latest_counters(time.time())
    d.marks["start"] = time.time()
    period = 1.0 / target
    next_t = time.monotonic()
    end = next_t + args.seconds
    n = 0
    backlog_max = {m: 0 for m in d.models}
    backlog_log: list[tuple[float, dict]] = []
    last_status_seen = 0.0
    warm_after = min(30.0, args.seconds / 4)
    while time.monotonic() < end:
        d.alive()
        if n and n % args.probe_every == 0:
            d.check_probe()
            d.send_probe(wait=False)
        else:
            d.send(d.pool[n % len(d.pool)], f"o{n}")
        n += 1
        if "warm" not in d.marks and time.time() - d.marks["start"] >= warm_after:
            d.marks["warm"] = time.time()
        # backlog = frames published before the status's stamp, neither served nor dropped
        with d.lock:
            entry = d.status_log[-1] if d.status_log else None
        if entry is not None and entry[0] > last_status_seen:
            last_status_seen = entry[0]
            sent = sum(1 for t in d.publish_times[published_before:] if t <= entry[0])
            point = {}
            for m, c in entry[1].items():
                done = c["jobs_done"] - counters0[m]["jobs_done"] + c["drops"] - counters0[m]["drops"]
                point[m] = sent - done
                backlog_max[m] = max(backlog_max[m], sent - done)
            backlog_log.append((entry[0], point))
        bar(n)
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    d.marks["end"] = time.time()
    time.sleep(3.0)  # the last frames finish
    d.check_probe()
    d.send_probe(wait=True)  # probes sent under overload may be dropped: one more, closed loop
    counters1 = d.latest_counters(time.time())
    with d.lock:
        published = len(d.publish_times) - published_before
        served = {m: d.served[m] - served_before[m] for m in d.models}
    per_model = {}
    for m in d.models:
        c0, c1 = counters0[m], counters1[m]
        jobs = c1["jobs_done"] - c0["jobs_done"]
        drops = c1["drops"] - c0["drops"]
        per_model[m] = {"published": published, "served_received": served[m], "jobs_done": jobs, "drops": drops,
                        "frames_received": c1["frames_received"] - c0["frames_received"],
                        "lost_before_intake": c1["lost_before_intake"] - c0["lost_before_intake"],
                        "unaccounted": published - jobs - drops, "max_backlog": backlog_max[m],
                        "deadline_misses": c1["deadline_misses"] - c0["deadline_misses"],
                        "errors": c1["errors"], "status_p99_ms": c1["p99_ms"],
                        "diagnostics_drops": d.diagnostics.get(m, {}).get("drops"),
                        "diagnostics_message": d.diagnostics.get(m, {}).get("message")}
    half = d.marks["start"] + args.seconds / 2
    for m in d.models:
        per_model[m]["max_backlog_first_half"] = max((p[m] for t, p in backlog_log if t < half), default=0)
        per_model[m]["max_backlog_second_half"] = max((p[m] for t, p in backlog_log if t >= half), default=0)
    d.backlog_log = backlog_log
    return {"serviceable_fps": rate, "target_fps": target, "achieved_fps": published / args.seconds,
            "frames_published": published, "per_model": per_model,
            "backlog_timeline": [{"t": t, **p} for t, p in backlog_log]}


def reference_summary(ref: dict) -> dict:
    """What the probe's reference holds, so that an exact match is seen to compare something."""
    out = {}
    for topic, msg in ref.items():
        if topic == "detections":
            out[topic] = {"boxes": len(msg.detections)}
        else:
            dtype = np.float32 if msg.encoding == "32FC1" else np.uint8
            a = np.frombuffer(bytes(msg.data), dtype)
            out[topic] = {"encoding": msg.encoding, "size": [msg.height, msg.width], "distinct_values": int(np.unique(a).size)}
    return out


def memory_summary(d: Driver) -> dict:
    samples = [s for s in d.samples if "rss" in s]
    ready = samples[0]
    warm_t = d.marks.get("warm", d.marks["start"])
    after = [s for s in samples if s["t"] >= warm_t] or samples[-1:]
    base = statistics.median(s["rss"] for s in after[:5])
    end = statistics.median(s["rss"] for s in after[-5:])
    last, first_after = samples[-1], after[0]
    ts = np.array([s["t"] for s in after])
    slope = float(np.polyfit(ts - ts[0], [s["rss"] / MB for s in after], 1)[0] * 3600) if len(after) > 2 else 0.0
    return {
        "samples": len(samples), "sample_period_s": d.args.sample_s,
        "rss_mib": {"ready": ready["rss"] / MB, "after_warmup": base / MB, "end": end / MB,
                    "peak": max(s["rss"] for s in samples) / MB,
                    "peak_after_warmup": max(s["rss"] for s in after) / MB},
        "rss_drift_pct": (end - base) / base * 100, "rss_slope_mib_per_hour": slope,
        "threads": {"ready": ready["threads"], "after_warmup": first_after["threads"], "end": last["threads"],
                    "max_after_warmup": max(s["threads"] for s in after)},
        "fds": {"ready": ready["fds"], "after_warmup": first_after["fds"], "end": last["fds"],
                "max_after_warmup": max(s["fds"] for s in after)},
        "shm_mapped": {"ready": ready["shm_mapped"], "after_warmup": first_after["shm_mapped"],
                       "end": last["shm_mapped"], "max_after_warmup": max(s["shm_mapped"] for s in after)},
        "shm_entries_machine": {"ready": ready["shm_entries"], "after_warmup": first_after["shm_entries"],
                                "end": last["shm_entries"]},
    }


def plot(d: Driver, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = d.samples[0]["t"]
    backlog = getattr(d, "backlog_log", None)
    fig, axes = plt.subplots(3 if backlog else 2, 1, figsize=(10, 8 if backlog else 6), sharex=True)
    ax1, ax2 = axes[0], axes[1]
    ax1.plot([(s["t"] - t0) / 60 for s in d.samples if "rss" in s], [s["rss"] / MB for s in d.samples if "rss" in s])
    ax1.set_ylabel("perception RSS (MiB)")
    for name, t in d.marks.items():
        ax1.axvline((t - t0) / 60, color="grey", ls=":")
        ax1.text((t - t0) / 60, ax1.get_ylim()[1], name, va="top", fontsize=8)
    for m, pts in d.latency.items():
        if pts:
            ax2.plot([(t - t0) / 60 for t, _ in pts], [v * 1000 for _, v in pts], ".", ms=1.5, label=m)
    ax2.set_ylabel("served latency (ms)")
    if backlog:
        for m in d.models:
            axes[2].step([(t - t0) / 60 for t, _ in backlog], [p[m] for _, p in backlog], where="post", label=m)
        axes[2].set_ylabel("published - served\n- counted drops")
        axes[2].legend()
    axes[-1].set_xlabel("minutes")
    ax2.set_yscale("log")
    ax2.legend(markerscale=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def start_perception(params_file: Path, log_path: Path) -> subprocess.Popen:
    import swapnet_ros

    prefix = Path(swapnet_ros.__file__).resolve().parents[4]  # the install prefix colcon made
    exe = prefix / "lib" / "swapnet_ros" / "perception"
    if not exe.is_file():
        raise SystemExit(f"{exe} is not installed: run `bash scripts/build_ros.sh` first")
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, str(exe), "--ros-args", "--params-file", str(params_file)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_perception(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def main(argv=None) -> int:
    args = parse_args(argv)
    ros_environment()
    import rclpy
    from tqdm import tqdm

    params = yaml.safe_load(Path(args.config).read_text())
    models = params["swap_coordinator"]["ros__parameters"]["models"]
    folders = prepare_stores(params, Path(args.stores))
    from swapnet_core import BlockStore

    weights = {m: BlockStore(folders[m]).total_bytes for m in models}
    total_budget = params["swap_coordinator"]["ros__parameters"]["total_budget_mb"] * MB
    run_params = json.loads(json.dumps(params))
    run_params["swap_coordinator"]["ros__parameters"]["store_dir"] = str(args.stores)
    for m in models:
        run_params[m]["ros__parameters"]["model"] = str(folders[m])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"swapnet_soak_{args.mode}_"))
    params_file = run_dir / "params.yaml"
    params_file.write_text(yaml.safe_dump(run_params))
    print(f"weights {sum(weights.values()) / MB:.1f} MiB over a total budget of {total_budget / MB:.1f} MiB "
          f"({sum(weights.values()) / total_budget:.2f}x); ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']}; "
          f"perception log {run_dir / 'perception.log'}", flush=True)

    rclpy.init()
    proc = start_perception(params_file, run_dir / "perception.log")
    t_launch = time.time()
    d = None
    result: dict = {"mode": args.mode, "config": str(Path(args.config).resolve().relative_to(ROOT))
                    if Path(args.config).resolve().is_relative_to(ROOT) else args.config,
                    "weights_mib": {m: w / MB for m, w in weights.items()}, "total_budget_mib": total_budget / MB,
                    "oversubscription": sum(weights.values()) / total_budget,
                    "budgets_mib": {m: params[m]["ros__parameters"]["budget_mb"] for m in models},
                    "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    try:
        d = Driver(args, params, folders, proc, run_dir)
        d.wait_ready()
        result["startup_s"] = time.time() - t_launch
        d.compute_reference()
        d.start_sampling()
        total = None if args.mode == "overload" else (args.frames if args.mode == "soak" else None)
        with tqdm(total=total, unit="frame", desc=args.mode, mininterval=5 if args.mode == "soak" else 1,
                  file=sys.stdout) as pbar:
            def bar(k):
                pbar.n = k
                if k % 20 == 0:
                    s = d.samples[-1] if d.samples else {}
                    pbar.set_postfix_str(f"served {min(d.served.values())}, RSS {s.get('rss', 0) / MB:.0f} MiB, "
                                         f"threads {s.get('threads')}, fds {s.get('fds')}", refresh=False)
                    pbar.refresh()
            phase = run_overload(d, args, bar) if args.mode == "overload" else run_soak(d, args, bar)
        final_counters = d.latest_counters(time.time())
        d.stop_sampling()
        result.update(phase)
        result["duration_s"] = d.marks["end"] - d.marks["start"]
        result["served_per_model"] = dict(d.served)
        result["status_per_model"] = final_counters
        result["diagnostics"] = d.diagnostics
        with d.lock:
            result["latency"] = {m: percentiles([v for t, v in pts if t >= d.marks.get("warm", 0)])
                                 for m, pts in d.latency.items()}
            result["latency_all"] = {m: percentiles([v for _, v in pts]) for m, pts in d.latency.items()}
        result["probe"] = {"checks": d.probe_checks, "mismatches": d.probe_mismatches,
                           "reference": reference_summary(d.reference)}
        result["memory"] = memory_summary(d)
        result["timeline"] = [{k: v for k, v in s.items() if k != "served"} | {"served": s.get("served")}
                              for s in d.samples]
        result["marks"] = d.marks
    finally:
        rc = stop_perception(proc)
        if d is not None:
            d.executor.shutdown()
        rclpy.try_shutdown()
    result["perception_exit_code"] = rc
    if d is not None:  # its own segments (not the port files every participant shares) go with it
        own = [p for p in d.shm_last if Path(p).name.startswith("fastdds_") and "_port" not in Path(p).name]
        result["memory"]["shm_own_segments"] = len(own)
        result["memory"]["shm_left_after_exit"] = sorted(p for p in own if os.path.exists(p))
    result["load_avg_end"] = os.getloadavg()
    result["criteria"] = criteria(result, args)
    png = out.with_name(f"{out.stem}_rss.png" if args.mode == "soak" else f"{out.stem}_{args.mode}.png")
    plot(d, png, f"{args.mode}: perception RSS and served latency ({result['duration_s'] / 60:.1f} min)")
    result["plot"] = png.name
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged[args.mode] = result
    out.write_text(json.dumps(merged, indent=1, default=float) + "\n")
    print_table(result)
    print(f"wrote {out} [{args.mode}] and {png}")
    failed = [k for k, v in result["criteria"].items() if not v["ok"]]
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


def criteria(r: dict, args) -> dict:
    mem = r["memory"]
    c = {"oversubscription >= 3": {"ok": r["oversubscription"] >= 3.0, "value": r["oversubscription"]},
         f"RSS drift after warm-up < {args.drift_limit}%": {"ok": abs(mem["rss_drift_pct"]) < args.drift_limit,
                                                            "value": mem["rss_drift_pct"]}}
    for what in ("threads", "fds", "shm_mapped"):
        v = mem[what]
        c[f"no growth in {what}"] = {"ok": v["end"] <= v["after_warmup"], "value": [v["after_warmup"], v["end"]]}
    checks, mism = r["probe"]["checks"], r["probe"]["mismatches"]
    c["probe outputs bit-identical"] = {"ok": sum(mism.values()) == 0 and min(checks.values()) >= 1,
                                        "value": {"checks": checks, "mismatches": mism}}
    errors = {m: v["errors"] for m, v in r["status_per_model"].items()}
    c["no inference errors"] = {"ok": not any(errors.values()), "value": errors}
    c["perception exits cleanly"] = {"ok": r["perception_exit_code"] == 0, "value": r["perception_exit_code"]}
    if r["mode"] == "overload":
        pm = r["per_model"]
        c["drops counted in ~/status and /diagnostics"] = {
            "ok": all(v["drops"] > 0 and v["diagnostics_drops"] is not None for v in pm.values()),
            "value": {m: [v["drops"], v["diagnostics_drops"]] for m, v in pm.items()}}
        # backlog = published - served - counted drops: frames in flight (one running, one pending, the
        # subscription's queue) plus frames lost without a count. Bounded: under 3 s of input, and no
        # higher in the second half of the run than in the first (a queue that grows would be).
        bound = 3 * r["target_fps"]
        c["queues bounded (backlog < 3 s of input, not growing)"] = {
            "ok": all(v["max_backlog"] <= bound and v["max_backlog_second_half"] <= v["max_backlog_first_half"] + 5
                      for v in pm.values()),
            "value": {m: [v["max_backlog_first_half"], v["max_backlog_second_half"]] for m, v in pm.items()}}
        c["every frame served or counted as a drop"] = {"ok": all(v["unaccounted"] == 0 for v in pm.values()),
                                                        "value": {m: v["unaccounted"] for m, v in pm.items()}}
    else:
        served = r["served_per_model"]
        c["every model served every frame"] = {
            "ok": r["frames_lost"] == 0 and min(served.values()) >= r["frames_published"],
            "value": {"published": r["frames_published"], "lost": r["frames_lost"], "served": served}}
        if r["mode"] in ("soak", "quick"):
            c[f"served >= {args.frames} frames per model"] = {"ok": min(served.values()) >= args.frames,
                                                            "value": served}
    return c


def print_table(r: dict) -> None:
    mem = r["memory"]
    print(f"\n{r['mode']}: {r['duration_s']:.0f} s, weights {sum(r['weights_mib'].values()):.1f} MiB in "
          f"{r['total_budget_mib']:.0f} MiB ({r['oversubscription']:.2f}x), load average "
          f"{r['load_avg_start'][0]:.1f} -> {r['load_avg_end'][0]:.1f} on {r['cpu_count']} cores")
    if r["mode"] == "overload":
        print(f"serviceable {r['serviceable_fps']:.2f} frames/s, target {r['target_fps']:.2f}, "
              f"achieved {r['achieved_fps']:.2f}; {r['frames_published']} frames published")
        # drops include the frames lost before intake; unaccounted = published - served - drops
        print(f"{'model':<14}{'served':>8}{'drops':>8}{'diag':>8}{'pre-intake':>11}{'backlog':>9}{'unacc.':>7}"
              f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
        for m, v in r["per_model"].items():
            lat = r["latency"][m]
            print(f"{m:<14}{v['jobs_done']:>8}{v['drops']:>8}{str(v['diagnostics_drops']):>8}{v.get('lost_before_intake', '-'):>11}"
                  f"{v['max_backlog']:>9}{v['unaccounted']:>7}"
                  f"{lat['p50_ms'] or 0:>9.0f}{lat['p95_ms'] or 0:>9.0f}{lat['p99_ms'] or 0:>9.0f}")
    else:
        print(f"frames published {r['frames_published']} (+ probes), lost {r['frames_lost']}")
        print(f"{'model':<14}{'served':>8}{'jobs':>8}{'drops':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
        for m, n in r["served_per_model"].items():
            lat, st = r["latency"][m], r["status_per_model"][m]
            print(f"{m:<14}{n:>8}{st['jobs_done']:>8}{st['drops']:>8}"
                  f"{lat['p50_ms'] or 0:>9.0f}{lat['p95_ms'] or 0:>9.0f}{lat['p99_ms'] or 0:>9.0f}")
    rss = mem["rss_mib"]
    print(f"RSS MiB: ready {rss['ready']:.1f}, after warm-up {rss['after_warmup']:.1f}, end {rss['end']:.1f}, "
          f"peak {rss['peak']:.1f}; drift {mem['rss_drift_pct']:+.2f}% ({mem['rss_slope_mib_per_hour']:+.1f} MiB/h)")
    for what in ("threads", "fds", "shm_mapped"):
        v = mem[what]
        print(f"{what}: ready {v['ready']}, after warm-up {v['after_warmup']}, end {v['end']}, "
              f"max after warm-up {v['max_after_warmup']}")
    e = mem["shm_entries_machine"]
    print(f"/dev/shm entries on the machine (all processes): ready {e['ready']}, end {e['end']}")
    print(f"probe: checks {r['probe']['checks']}, mismatches {r['probe']['mismatches']}")
    for name, v in r["criteria"].items():
        print(f"  [{'ok' if v['ok'] else 'FAIL'}] {name}: {v['value']}")


if __name__ == "__main__":
    sys.exit(main())
