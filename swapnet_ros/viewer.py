"""viewer: subscribe to the camera and the three result topics, and write what a person wants to look at:
one annotated picture per frame (boxes and labels, coloured mask, colour-mapped depth, side by side)
and a contact sheet of all of them.

  viewer --ros-args -p out_dir:=out/frames -p max_frames:=8
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from swapnet_ros.lifecycle_util import stops_quietly_on_shutdown
from swapnet_ros.image_codec import colorize, colormap_depth, image_to_array
from swapnet_ros.msg import Detection2DArray


def _stamp(header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


class Viewer(Node):
    def __init__(self, **kwargs):
        super().__init__("viewer", **kwargs)
        ro = ParameterDescriptor(read_only=True)
        for name, default in (("camera_topic", "/camera/image_raw"), ("detections_topic", "/detection/detections"),
                              ("mask_topic", "/segmentation/mask"), ("depth_topic", "/depth/depth"),
                              ("depth_relative_topic", "/depth/depth_relative"), ("out_dir", "out/frames")):
            self.declare_parameter(name, default, ro)
        self.declare_parameter("max_frames", 0, ParameterDescriptor(
            description="write the contact sheet and stop after this many frames; 0 = run until stopped",
            read_only=True))
        self.out = Path(self.get_parameter("out_dir").value)
        self.out.mkdir(parents=True, exist_ok=True)
        self.frames: dict[tuple[int, int], dict] = {}
        self.written: list[Path] = []
        self.latency_ms: dict[str, list[float]] = {"detections": [], "mask": [], "depth": []}
        self.done = False
        self.create_subscription(Image, self.get_parameter("camera_topic").value,
                                 lambda m: self._add(m, "image"), qos_profile_sensor_data)
        self.create_subscription(Detection2DArray, self.get_parameter("detections_topic").value,
                                 lambda m: self._add(m, "detections"), 10)
        self.create_subscription(Image, self.get_parameter("mask_topic").value, lambda m: self._add(m, "mask"), 10)
        for topic in ("depth_topic", "depth_relative_topic"):  # metric or relative: a depth network publishes one
            self.create_subscription(Image, self.get_parameter(topic).value, lambda m: self._add(m, "depth"), 10)

    def _add(self, msg, kind: str) -> None:
        key = _stamp(msg.header)
        entry = self.frames.setdefault(key, {"first": time.monotonic()})
        entry[kind] = msg
        if kind != "image" and "image" in entry:
            # image in -> result out, as seen by a subscriber (both clocks are this machine's)
            now = self.get_clock().now().nanoseconds
            sent = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            self.latency_ms[kind].append((now - sent) / 1e6)
        if all(k in entry for k in ("image", "detections", "mask", "depth")):
            self._write(key, self.frames.pop(key))
        for old in [k for k, e in self.frames.items() if time.monotonic() - e["first"] > 30]:
            del self.frames[old]  # results that never came: do not grow

    def _write(self, key, entry) -> None:
        from PIL import Image as PILImage
        from PIL import ImageDraw

        rgb = image_to_array(entry["image"])
        boxes = PILImage.fromarray(rgb)
        draw = ImageDraw.Draw(boxes)
        for det in entry["detections"].detections:
            cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
            w, h = det.bbox.size_x, det.bbox.size_y
            draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], outline=(255, 40, 40), width=2)
            if det.results:
                hyp = det.results[0].hypothesis
                draw.text((cx - w / 2 + 3, cy - h / 2 + 2), f"{hyp.class_id} {hyp.score:.2f}", fill=(255, 255, 0))
        mask = _as_array(entry["mask"])
        blend = (0.5 * rgb + 0.5 * colorize(mask)).astype(np.uint8)
        depth = colormap_depth(_as_array(entry["depth"]))
        panel = np.concatenate([np.asarray(boxes), blend, depth], axis=1)
        path = self.out / f"frame_{len(self.written):04d}.png"
        PILImage.fromarray(panel).save(path)
        self.written.append(path)
        limit = self.get_parameter("max_frames").value
        if limit and len(self.written) >= limit:
            self.write_contact_sheet()
            self.done = True

    def write_contact_sheet(self) -> Path | None:
        from PIL import Image as PILImage

        if not self.written:
            return None
        thumbs = [PILImage.open(p) for p in self.written]
        width = 900
        thumbs = [t.resize((width, max(1, int(t.height * width / t.width)))) for t in thumbs]
        sheet = PILImage.new("RGB", (width, sum(t.height for t in thumbs)), (20, 20, 20))
        y = 0
        for t in thumbs:
            sheet.paste(t, (0, y))
            y += t.height
        path = self.out / "contact_sheet.png"
        sheet.save(path)
        import json

        (self.out / "latency.json").write_text(json.dumps(self.latency_ms))
        text = f"wrote {len(self.written)} annotated frames and {path}"
        self.get_logger().info(text) if rclpy.ok() else print(f"viewer: {text}", file=sys.stderr)
        return path


def _as_array(msg: Image) -> np.ndarray:
    dtype = {"mono8": np.uint8, "16UC1": np.uint16, "32FC1": np.float32}[msg.encoding]
    data = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    return data[:, :msg.width * np.dtype(dtype).itemsize].copy().view(dtype).reshape(msg.height, msg.width)


def main(args=None) -> int:
    rclpy.init(args=args)
    node = Viewer()
    try:
        with stops_quietly_on_shutdown():
            while rclpy.ok() and not node.done:
                rclpy.spin_once(node, timeout_sec=0.1)
        if not node.done:  # stopped before max_frames: still leave a contact sheet
            node.write_contact_sheet()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
