"""camera_replay: publish sensor_msgs/Image (+ CameraInfo) from a folder of images, a video file, or an
MCAP / rosbag2 (MCAP storage) recording, at a given rate, optionally looping. With no source it plays
real photos that scikit-image ships (astronaut, coffee, chelsea, rocket).

  camera_replay --ros-args -p source:=/data/frames -p rate_hz:=10.0 -p loop:=true
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from swapnet_ros.lifecycle_util import stops_quietly_on_shutdown
from swapnet_ros.image_codec import make_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm"}
SAMPLES = ("astronaut", "coffee", "chelsea", "rocket")


def bundled_frames() -> list[np.ndarray]:
    import skimage.data

    return [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in SAMPLES]


def read_source(source: str, mcap_topic: str = "") -> Iterator[np.ndarray]:
    """RGB frames (HxWx3 uint8) from a folder, a video, or an MCAP file / rosbag2 folder."""
    if not source:
        yield from bundled_frames()
        return
    path = Path(source)
    if path.is_dir() and not list(path.glob("*.mcap")):
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        from PIL import Image as PILImage

        for f in files:
            yield np.asarray(PILImage.open(f).convert("RGB"))
        return
    if path.is_dir() or path.suffix == ".mcap":
        yield from _read_mcap(path, mcap_topic)
        return
    if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
        import imageio.v3 as iio

        for frame in iio.imiter(path, plugin="pyav"):
            yield np.ascontiguousarray(frame[..., :3])
        return
    raise ValueError(f"cannot replay {source!r}: not a folder of images, a video ({', '.join(sorted(VIDEO_SUFFIXES))}) "
                     f"or an MCAP file / rosbag2 folder")


def _read_mcap(path: Path, topic: str) -> Iterator[np.ndarray]:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from swapnet_ros.image_codec import image_to_array

    files = sorted(path.glob("*.mcap")) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as stream:
            reader = make_reader(stream, decoder_factories=[DecoderFactory()])
            for schema, channel, _message, decoded in reader.iter_decoded_messages():
                if schema.name == "sensor_msgs/msg/Image" and (not topic or channel.topic == topic):
                    yield image_to_array(decoded)


class CameraReplay(Node):
    def __init__(self, **kwargs):
        super().__init__("camera_replay", **kwargs)
        ro = ParameterDescriptor(read_only=True)
        self.declare_parameter("source", "", ParameterDescriptor(
            description="folder of images, video file, MCAP file or rosbag2 folder; empty = bundled photos",
            read_only=True))
        self.declare_parameter("rate_hz", 5.0, ParameterDescriptor(
            description="frames per second", read_only=True,
            floating_point_range=[FloatingPointRange(from_value=0.01, to_value=1000.0, step=0.0)]))
        self.declare_parameter("loop", True, ro)
        self.declare_parameter("max_frames", 0, ParameterDescriptor(description="stop after this many; 0 = no limit",
                                                                    read_only=True))
        self.declare_parameter("frame_id", "camera", ro)
        self.declare_parameter("topic", "/camera/image_raw", ro)
        self.declare_parameter("info_topic", "/camera/camera_info", ro)
        self.declare_parameter("mcap_topic", "", ro)
        self.declare_parameter("size", [0, 0], ParameterDescriptor(
            description="[height, width] to resize frames to; [0, 0] = as recorded", read_only=True))
        self.declare_parameter("reliable", False, ParameterDescriptor(
            description="reliable QoS instead of sensor-data (best effort)", read_only=True))
        qos = qos_profile_sensor_data
        if self.get_parameter("reliable").value:
            qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self._image_pub = self.create_publisher(Image, self.get_parameter("topic").value, qos)
        self._info_pub = self.create_publisher(CameraInfo, self.get_parameter("info_topic").value, qos)
        self._frames = self._frame_source()
        self.published = 0
        self.done = False
        self.create_timer(1.0 / self.get_parameter("rate_hz").value, self._tick)

    def _frame_source(self) -> Iterator[np.ndarray]:
        source, topic = self.get_parameter("source").value, self.get_parameter("mcap_topic").value
        h, w = self.get_parameter("size").value
        while True:
            count = 0
            for frame in read_source(source, topic):
                if h and w and frame.shape[:2] != (h, w):
                    from PIL import Image as PILImage

                    frame = np.asarray(PILImage.fromarray(frame).resize((w, h), PILImage.BILINEAR))
                count += 1
                yield frame
            if not count or not self.get_parameter("loop").value:
                return

    def _tick(self) -> None:
        limit = self.get_parameter("max_frames").value
        if self.done or (limit and self.published >= limit):
            self.done = True
            return
        frame = next(self._frames, None)
        if frame is None:
            self.done = True
            return
        image = make_image(None, frame, "rgb8")
        image.header.stamp = self.get_clock().now().to_msg()
        image.header.frame_id = self.get_parameter("frame_id").value
        info = CameraInfo(header=image.header, height=image.height, width=image.width, distortion_model="plumb_bob")
        f = float(max(image.width, image.height))  # a plausible pinhole guess: replayed frames carry no calibration
        info.k = [f, 0.0, image.width / 2, 0.0, f, image.height / 2, 0.0, 0.0, 1.0]
        info.p = [f, 0.0, image.width / 2, 0.0, 0.0, f, image.height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.d = [0.0] * 5
        self._image_pub.publish(image)
        self._info_pub.publish(info)
        self.published += 1


def main(args=None) -> int:
    rclpy.init(args=args)
    node = CameraReplay()
    try:
        with stops_quietly_on_shutdown():
            while rclpy.ok() and not node.done:
                rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        if rclpy.ok():
            node.get_logger().info(f"published {node.published} frames")
        else:  # after Ctrl-C the context is gone: rosout cannot take a log message any more
            print(f"camera_replay: published {node.published} frames", file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
