"""One node class, three configurations: detection, segmentation, depth.

Subscribes to an image topic with sensor-data QoS, turns each frame into the model's input, submits it
to the SwapCoordinator with a deadline, and publishes the result with the input's stamp and frame_id:
  detection    ~/detections   swapnet_ros/Detection2DArray (vision_msgs layout), boxes in input pixels
  segmentation ~/mask         class ids, mono8 (16UC1 beyond 256 classes); ~/mask_color rgb8 if asked
  depth        ~/depth        32FC1 metres (REP 118), at the input's resolution, when the model predicts metres;
               ~/depth_relative  32FC1 relative inverse depth (larger is nearer, no unit) otherwise
The network's raw output becomes these through an output adapter (swapnet_core.adapters), chosen from
the output itself or named by the `output_adapter` parameter.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.subscription import Subscription
from sensor_msgs.msg import Image

from swapnet_core.adapters import ClassScores, Depth, Detections, OutputInfo, choose, named_adapter
from swapnet_core.models import IMAGENET_NORMALIZE
from swapnet_core.sizes import format_bytes
from swapnet_ros.image_codec import ImageError, array_to_tensor, colorize, image_to_array, make_image
from swapnet_ros.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
from swapnet_ros.params import accept_integers_as_doubles, mib_to_bytes, on_parameters

TASKS = ("detection", "segmentation", "depth")
DEPTH_KINDS = ("auto", "metric", "relative")
MB = 1 << 20
DEFAULT_MODELS = {"detection": "torchvision:ssdlite320_mobilenet_v3_large",
                  "segmentation": "torchvision:lraspp_mobilenet_v3_large",
                  "depth": "transformers:depth-anything-small"}


class SwapModelNode(Node):
    def __init__(self, name: str, coordinator, task: str | None = None, **kwargs):
        super().__init__(name, **kwargs)
        ro = dict(read_only=True)
        self.declare_parameter("task", task or (name if name in TASKS else "detection"), ParameterDescriptor(
            description=f"one of {', '.join(TASKS)}", **ro))
        self.task = self.get_parameter("task").value
        if self.task not in TASKS:
            raise ValueError(f"{name}: task must be one of {TASKS}, got {self.task!r}")
        self.declare_parameter("model", DEFAULT_MODELS[self.task], ParameterDescriptor(
            description="model reference (torchvision:NAME, transformers:PRESET, package.module:factory) "
                        "or a block store folder", **ro))
        self.declare_parameter("weights", "", ParameterDescriptor(
            description="local checkpoint (.safetensors or a weights_only state dict); empty = random weights", **ro))
        self.declare_parameter("dtype", "float32", ParameterDescriptor(
            description="what the store holds and the network computes in: float32, float16 or bfloat16", **ro))
        self.declare_parameter("budget_mb", 64.0, ParameterDescriptor(
            description="the most this model may hold while its job runs (kept blocks + the shared streaming window), "
                        "MiB; applied at the next job boundary",
            floating_point_range=[FloatingPointRange(from_value=0.5, to_value=1e6, step=0.0)]))
        self.declare_parameter("deadline_ms", 0.0, ParameterDescriptor(
            description="relative deadline of a frame; 0 = the measured input period",
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=60000.0, step=0.0)]))
        self.declare_parameter("input_topic", "/camera/image_raw", ParameterDescriptor(
            description="sensor_msgs/Image topic to serve", **ro))
        self.declare_parameter("input_size", [0, 0], ParameterDescriptor(
            description="[height, width] the frame is resized to for the network; [0, 0] = as received", **ro))
        self.declare_parameter("score_threshold", 0.3, ParameterDescriptor(
            description="detections below this score are not published",
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)]))
        self.declare_parameter("publish_color", True, ParameterDescriptor(
            description="segmentation: also publish ~/mask_color (rgb8)"))
        self.declare_parameter("labels", Parameter.Type.STRING_ARRAY, ParameterDescriptor(
            description="class names by id, instead of the model's own (config.id2label, torchvision's categories)",
            **ro))
        self.declare_parameter("output_adapter", "", ParameterDescriptor(
            description="package.module:function marked @swapnet_core.output_adapter; empty = chosen from the "
                        "network's outputs", **ro))
        self.declare_parameter("depth_kind", "auto", ParameterDescriptor(
            description="depth: metric (metres, ~/depth), relative (relative inverse depth, ~/depth_relative) or "
                        "auto (what the model says it predicts)", **ro))
        kind = self.get_parameter("depth_kind").value
        if kind not in DEPTH_KINDS:
            raise ValueError(f"{name}: depth_kind must be one of {DEPTH_KINDS}, got {kind!r}")
        on_parameters(self, self._check_parameters, self._apply_parameters)
        accept_integers_as_doubles(self, ["budget_mb", "deadline_ms", "score_threshold"])
        self.coordinator = coordinator
        self.malformed: dict[str, int] = {}
        self.last_input_error = ""
        self.dropped_inactive = 0
        self.frames_received = 0
        # frames a publisher sent that never reached this callback: overwritten in the subscription's
        # queue (sensor-data QoS keeps 5) or lost on the network; found from gaps in its sequence numbers
        self.lost_before_intake = 0
        self._sequences: dict[bytes, tuple[int, int]] = {}  # per publisher: (first, highest) seen
        self._period = None  # measured input period, seconds (EMA)
        self._last_arrival = None
        self._lock = threading.Lock()
        if self.task == "detection":
            self._pub = self.create_publisher(Detection2DArray, "~/detections", 10)
        elif self.task == "segmentation":
            self._pub = self.create_publisher(Image, "~/mask", 10)
            self._color_pub = self.create_publisher(Image, "~/mask_color", 10)
        else:
            self._pub = self.create_publisher(Image, "~/depth", 10)
            self._relative_pub = self.create_publisher(Image, "~/depth_relative", 10)
        # set from the model by bind_store at configure; until then torchvision's conventions
        self._adapter, self._info, self._labels = None, OutputInfo(), None
        self._normalize = None if self.task == "detection" else IMAGENET_NORMALIZE
        # rclpy passes the message info (sequence numbers) to two-argument callbacks since Jazzy; Humble
        # calls with the message alone
        on_image = self._on_image if hasattr(Subscription, "CallbackType") else (lambda msg: self._on_image(msg, {}))
        self.create_subscription(Image, self.get_parameter("input_topic").value, on_image, qos_profile_sensor_data)
        coordinator.register(self)

    # -- used by the coordinator --------------------------------------------------------------
    def budget_bytes(self) -> int:
        return int(self.get_parameter("budget_mb").value * MB)

    def input_spec(self) -> str:
        h, w = self.get_parameter("input_size").value
        return f"random:1x3x{h or 240}x{w or 320}"

    def example_input(self) -> torch.Tensor:
        h, w = self.get_parameter("input_size").value
        return self._preprocess(torch.rand(1, 3, h or 240, w or 320))

    def bind_store(self, store) -> None:
        """The coordinator's call at configure, with this node's store: the model's calling convention,
        input normalisation, class names and depth kind, and the adapter `output_adapter` names (a bad
        one is refused here, so the model is left out with the reason instead of failing every frame)."""
        spec = store.spec()
        if spec.task in TASKS and spec.task != self.task:
            raise ValueError(f"{spec.ref} is a {spec.task} network, and this node's task is {self.task}")
        ref = self.get_parameter("output_adapter").value
        kind = self.get_parameter("depth_kind").value
        self._adapter = named_adapter(ref) if ref else None
        self._info = OutputInfo(spec.num_labels, spec.depth if kind == "auto" else kind)
        try:
            self._labels = list(self.get_parameter("labels").value) or spec.labels
        except ParameterUninitializedException:
            self._labels = spec.labels
        self._normalize = spec.normalize

    # -- parameters ----------------------------------------------------------------------------
    def _check_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "budget_mb":
                try:
                    reason = self.coordinator.check_budget(self.get_name(), mib_to_bytes(p.name, p.value))
                except ValueError as e:
                    reason = str(e)
                if reason:
                    return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        for p in params:
            if p.name == "budget_mb":
                reason = self.coordinator.request_budget(self.get_name(), mib_to_bytes(p.name, p.value))
                if reason:  # another budget was applied between the check and now
                    self.get_logger().error(f"budget {format_bytes(p.value * MB)} accepted but not applied: {reason}")
                else:
                    self.get_logger().info(f"budget {format_bytes(p.value * MB)}: re-planned at the next job boundary")

    # -- frames --------------------------------------------------------------------------------
    def _on_image(self, msg: Image, info: dict) -> None:
        arrival = time.monotonic()
        self.frames_received += 1
        self._count_lost_before_intake(info)
        if self._last_arrival is not None:
            gap = arrival - self._last_arrival
            self._period = gap if self._period is None else 0.8 * self._period + 0.2 * gap
        self._last_arrival = arrival
        try:
            rgb = image_to_array(msg)
        except ImageError as e:
            first = e.cause not in self.malformed
            self.malformed[e.cause] = self.malformed.get(e.cause, 0) + 1
            self.last_input_error = str(e)
            if first:  # once per cause; the count is in the status message
                self.get_logger().warning(f"dropping malformed image on {self.get_parameter('input_topic').value}: {e}")
            return
        if not self.coordinator.serving:
            self.dropped_inactive += 1
            return
        x = self._preprocess(array_to_tensor(rgb))
        deadline_ms = self.get_parameter("deadline_ms").value or (self._period or 0.0) * 1000
        # before the input period is known (the first frame) a frame has no deadline to miss
        deadline = arrival + deadline_ms / 1000 if deadline_ms else None
        future = self.coordinator.submit(self.get_name(), x, deadline)
        if future is None:
            self.dropped_inactive += 1
            return
        header, size, net_size = msg.header, rgb.shape[:2], tuple(x.shape[2:])
        future.add_done_callback(lambda f: self._publish(f, header, size, net_size))

    def _count_lost_before_intake(self, info: dict) -> None:
        sequence, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
        # sequence numbers are per publisher: without its gid (rclpy before Kilted) gaps cannot be told
        # from another publisher's frames; an rmw that does not report them (Cyclone: UINT64_MAX)
        if not sequence or not gid or sequence >= 2**63:
            return
        key = bytes(gid["data"])
        first, highest = self._sequences.pop(key, (sequence, sequence - 1))  # the first frame sets the baseline
        if sequence > highest:
            self.lost_before_intake += sequence - highest - 1
            highest = sequence
        elif sequence > first:  # late, out of order: it was counted lost when a later one came first
            self.lost_before_intake -= 1
        self._sequences[key] = (first, highest)  # re-inserted last: the oldest publishers go first
        if len(self._sequences) > 64:  # publishers come and go (restarts): keep the recent ones
            del self._sequences[next(iter(self._sequences))]

    def input_counters(self) -> dict[str, int]:
        """Frames as this node saw them, counted since it started."""
        return {"frames_received": self.frames_received, "lost_before_intake": self.lost_before_intake,
                "dropped_inactive": self.dropped_inactive, "malformed_inputs": sum(self.malformed.values())}

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.get_parameter("input_size").value
        if self.task == "depth":  # ViT patches of 14: round the size to a multiple
            h, w = (max(14, round((h or x.shape[2]) / 14) * 14), max(14, round((w or x.shape[3]) / 14) * 14))
        if h and w and (h, w) != tuple(x.shape[2:]):
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if self._normalize is not None:  # None: the model normalises inside (torchvision detectors)
            mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in self._normalize)
            x = (x - mean) / std
        return x

    def _publish(self, future, header, size, net_size) -> None:
        """Runs on the scheduler's thread when the job ends; never raises into it."""
        if future.cancelled():
            return
        try:
            error = future.exception()
            if error is not None:  # counted by the scheduler, shown in the status and /diagnostics
                self.get_logger().error(f"inference failed: {error}", throttle_duration_sec=5.0)
                return
            self._publish_result(future.result(), header, size, net_size)
        except Exception as e:  # noqa: BLE001 - after Ctrl-C/SIGTERM the context is gone: nowhere to publish
            if self.context.ok():
                self.get_logger().error(f"publishing a result failed: {e}", throttle_duration_sec=5.0)

    def _publish_result(self, out, header, size, net_size) -> None:
        h, w = size
        result = (self._adapter or choose(out, self.task))(out, net_size, self._info)
        if self.task == "detection" and isinstance(result, Detections):
            self._pub.publish(self._detections(result, header, h / net_size[0], w / net_size[1]))
        elif self.task == "segmentation" and isinstance(result, ClassScores):
            ids = class_ids_at(result.scores.unsqueeze(0), (h, w))
            ids = ids if ids.dtype == np.uint8 else ids.astype(np.uint16)
            self._pub.publish(make_image(header, ids, "mono8" if ids.dtype == np.uint8 else "16UC1"))
            if self.get_parameter("publish_color").value:
                self._color_pub.publish(make_image(header, colorize(ids), "rgb8"))
        elif self.task == "depth" and isinstance(result, Depth):
            depth = torch.nn.functional.interpolate(result.values[None, None].float(), size=(h, w), mode="bilinear",
                                                    align_corners=False)[0, 0]
            pub = self._pub if result.metric else self._relative_pub
            pub.publish(make_image(header, depth.cpu().numpy().astype(np.float32), "32FC1"))
        else:
            raise TypeError(f"the output adapter gave {type(result).__name__}, not what a {self.task} node publishes")

    def _detections(self, found: Detections, header, sy: float, sx: float) -> Detection2DArray:
        """Boxes scaled from the network's input back to the frame's pixels."""
        msg = Detection2DArray(header=header)
        threshold = self.get_parameter("score_threshold").value
        names = self._labels
        for box, label, score in zip(found.boxes.tolist(), found.labels.tolist(), found.scores.tolist()):
            if score < threshold:
                continue
            det = Detection2D(header=header)
            x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
            det.bbox.center.position.x, det.bbox.center.position.y = (x1 + x2) / 2, (y1 + y2) / 2
            det.bbox.size_x, det.bbox.size_y = x2 - x1, y2 - y1
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = names[label] if names and 0 <= label < len(names) else str(label)
            hyp.hypothesis.score = float(score)
            det.results.append(hyp)
            msg.detections.append(det)
        return msg


def class_ids_at(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Per-pixel class ids of the first image at `size`: argmax at the network's resolution, then
    nearest-neighbour upsampling of the ids. Upsampling the logits first would hold classes x frame
    floats (21 x 1080 x 1920 x 4 bytes, 174 MB) outside any budget."""
    ids = logits[0].argmax(0).to(torch.uint8 if logits.shape[1] <= 256 else torch.int32)
    (h, w), (net_h, net_w) = size, ids.shape
    if (h, w) != (net_h, net_w):  # nearest source pixel, as interpolate(mode="nearest") picks it
        rows = (torch.arange(h) * (net_h / h)).long().clamp_(max=net_h - 1)
        cols = (torch.arange(w) * (net_w / w)).long().clamp_(max=net_w - 1)
        ids = ids.index_select(0, rows).index_select(1, cols)
    return ids.cpu().numpy()

