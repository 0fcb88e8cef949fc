"""camera_replay: publish sensor_msgs/Image (+ CameraInfo) from a folder of images, a video file, a
rosbag2 recording (sqlite3 or MCAP storage, as `ros2 bag record` writes them) or a bare MCAP file, at a
given rate, optionally looping. With no source it plays real photos that scikit-image ships
(astronaut, coffee, chelsea, rocket).

A recording is replayed as `ros2 bag play` would: each image keeps its recorded stamp, frame_id and
encoding (sensor_msgs/CompressedImage is decoded to rgb8), and the recorded CameraInfo of that camera
is published beside it; `restamp` stamps with the current time instead, `size` resizes (to rgb8,
the camera info scaled to match).

  camera_replay --ros-args -p source:=/data/run1 -p rate_hz:=10.0 -p loop:=true
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from swapnet_ros.lifecycle_util import stops_quietly_on_shutdown
from swapnet_ros.image_codec import ImageError, image_to_array, make_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm"}
SAMPLES = ("astronaut", "coffee", "chelsea", "rocket")
IMAGE_TYPE, COMPRESSED_TYPE, INFO_TYPE = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo"


@dataclass
class Frame:
    """One frame to publish: decoded RGB pixels, or a recorded Image as it was recorded; with the
    recording's stamp (sec, nanosec), frame_id and camera info where it had them."""
    rgb: np.ndarray | None = None
    image: Any = None  # a recorded sensor_msgs/Image (fields as recorded)
    stamp: tuple[int, int] | None = None
    frame_id: str = ""
    info: Any = None  # the camera's latest recorded sensor_msgs/CameraInfo

    def pixels(self) -> np.ndarray:
        return self.rgb if self.rgb is not None else image_to_array(self.image)


def bundled_frames() -> list[np.ndarray]:
    import skimage.data

    return [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in SAMPLES]


def read_source(source: str, topic: str = "") -> Iterator[Frame]:
    """Frames from a folder of images, a video, a rosbag2 folder (sqlite3 or MCAP storage) or a bare
    MCAP file; `topic` picks the image topic of a recording that has several."""
    if not source:
        yield from (Frame(rgb=f) for f in bundled_frames())
        return
    path = Path(source)
    if path.is_dir() and (path / "metadata.yaml").is_file():
        yield from _read_rosbag2(path, topic)
        return
    if path.is_dir() and list(path.glob("*.db3")):
        raise ValueError(f"{path} holds .db3 files but no metadata.yaml: not a whole rosbag2 recording")
    if path.is_dir() and list(path.glob("*.mcap")):
        for f in sorted(path.glob("*.mcap")):
            yield from _read_mcap(f, topic)
        return
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and is not a recording")
        from PIL import Image as PILImage

        for f in files:
            yield Frame(rgb=np.asarray(PILImage.open(f).convert("RGB")))
        return
    if path.suffix == ".mcap" and path.is_file():
        yield from _read_mcap(path, topic)
        return
    if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
        import imageio.v3 as iio

        for frame in iio.imiter(path, plugin="pyav"):
            yield Frame(rgb=np.ascontiguousarray(frame[..., :3]))
        return
    raise ValueError(f"cannot replay {source!r}: not a folder of images, a video ({', '.join(sorted(VIDEO_SUFFIXES))}), "
                     f"a rosbag2 folder or an MCAP file")


def _pick_topic(where: str, topics: dict[str, str], topic: str) -> str:
    """The image topic to replay: `topic`, or the only (or first) image topic of the recording."""
    images = sorted(t for t, kind in topics.items() if kind in (IMAGE_TYPE, COMPRESSED_TYPE))
    if topic:
        if topic not in images:
            raise ValueError(f"{where} has no image topic {topic!r} (image topics: {', '.join(images) or 'none'})")
        return topic
    if not images:
        raise ValueError(f"{where} holds no sensor_msgs/Image or CompressedImage topic "
                         f"(topics: {', '.join(sorted(topics)) or 'none'})")
    return images[0]


def _camera_info_topic(image_topic: str, topics: dict[str, str]) -> str | None:
    """The CameraInfo topic beside an image topic (/cam/image_raw -> /cam/camera_info), if recorded."""
    base = image_topic.rsplit("/", 1)[0]
    for t, kind in topics.items():
        if kind == INFO_TYPE and t.rsplit("/", 1)[0] == base:
            return t
    return None


def _frame_of(kind: str, msg, info) -> Frame:
    stamp, frame_id = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)), str(msg.header.frame_id)
    if kind == COMPRESSED_TYPE:
        import io

        from PIL import Image as PILImage

        rgb = np.asarray(PILImage.open(io.BytesIO(bytes(msg.data))).convert("RGB"))
        return Frame(rgb=rgb, stamp=stamp, frame_id=frame_id, info=info)
    return Frame(image=msg, stamp=stamp, frame_id=frame_id, info=info)


def _read_rosbag2(path: Path, topic: str) -> Iterator[Frame]:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.LATEST)
    try:
        reader = Reader(path)
        reader.open()
    except Exception as e:  # noqa: BLE001 - the library's own errors: one line naming the recording
        raise ValueError(f"cannot read the rosbag2 recording {path}: {e}") from None
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        chosen = _pick_topic(str(path), topics, topic)
        info_topic = _camera_info_topic(chosen, topics)
        wanted = [c for c in reader.connections if c.topic in (chosen, info_topic)]
        info = None
        for connection, _time, raw in reader.messages(connections=wanted):
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            if connection.msgtype == INFO_TYPE:
                info = msg
            else:
                yield _frame_of(connection.msgtype, msg, info)
    finally:
        reader.close()


def _read_mcap(path: Path, topic: str) -> Iterator[Frame]:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        schemas = summary.schemas if summary else {}
        topics = {c.topic: schemas[c.schema_id].name for c in (summary.channels.values() if summary else [])
                  if c.schema_id in schemas}
        chosen = _pick_topic(str(path), topics, topic)
        info_topic = _camera_info_topic(chosen, topics)
        info = None
        for schema, channel, _message, decoded in reader.iter_decoded_messages(topics=[t for t in (chosen, info_topic) if t]):
            if schema.name == INFO_TYPE:
                info = decoded
            else:
                yield _frame_of(schema.name, decoded, info)


class CameraReplay(Node):
    def __init__(self, **kwargs):
        super().__init__("camera_replay", **kwargs)
        ro = ParameterDescriptor(read_only=True)
        self.declare_parameter("source", "", ParameterDescriptor(
            description="folder of images, video file, rosbag2 folder (sqlite3 or MCAP) or MCAP file; "
                        "empty = bundled photos", read_only=True))
        self.declare_parameter("rate_hz", 5.0, ParameterDescriptor(
            description="frames per second", read_only=True,
            floating_point_range=[FloatingPointRange(from_value=0.01, to_value=1000.0, step=0.0)]))
        self.declare_parameter("loop", True, ro)
        self.declare_parameter("max_frames", 0, ParameterDescriptor(description="stop after this many; 0 = no limit",
                                                                    read_only=True))
        self.declare_parameter("frame_id", "", ParameterDescriptor(
            description="frame_id of the published images; empty = the recording's (\"camera\" for images and videos)",
            read_only=True))
        self.declare_parameter("restamp", False, ParameterDescriptor(
            description="stamp frames with the current time instead of the recorded stamps", read_only=True))
        self.declare_parameter("topic", "/camera/image_raw", ro)
        self.declare_parameter("info_topic", "/camera/camera_info", ro)
        self.declare_parameter("recording_topic", "", ParameterDescriptor(
            description="the image topic to replay from a recording with several; empty = its only (or first) one",
            read_only=True))
        self.declare_parameter("size", [0, 0], ParameterDescriptor(
            description="[height, width] to resize frames to (then rgb8); [0, 0] = as recorded", read_only=True))
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

    def _frame_source(self) -> Iterator[Frame]:
        source, topic = self.get_parameter("source").value, self.get_parameter("recording_topic").value
        while True:
            count = 0
            for frame in read_source(source, topic):
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
        try:
            image, info = self._messages(frame)
        except ImageError as e:  # a recorded frame in an encoding we cannot resize: said once per cause
            self.get_logger().warning(f"skipping a recorded frame: {e}", once=True)
            return
        self._image_pub.publish(image)
        self._info_pub.publish(info)
        self.published += 1

    def _messages(self, frame: Frame) -> tuple[Image, CameraInfo]:
        h, w = self.get_parameter("size").value
        if frame.image is not None and not (h and w):
            image = _recorded_image(frame.image)  # as recorded: encoding, step, data
        else:
            rgb = frame.pixels()
            if h and w and rgb.shape[:2] != (h, w):
                from PIL import Image as PILImage

                rgb = np.asarray(PILImage.fromarray(rgb).resize((w, h), PILImage.BILINEAR))
            image = make_image(None, rgb, "rgb8")
        if frame.stamp is not None and not self.get_parameter("restamp").value:
            image.header.stamp.sec, image.header.stamp.nanosec = frame.stamp
        else:
            image.header.stamp = self.get_clock().now().to_msg()
        image.header.frame_id = self.get_parameter("frame_id").value or frame.frame_id or "camera"
        if frame.info is None:
            return image, _pinhole_guess(image)
        info = _recorded_info(frame.info, image)
        if (info.width, info.height) != (image.width, image.height):  # resized: the calibration follows
            info = _scaled_info(info, image)
        return image, info


def _recorded_image(msg) -> Image:
    return Image(height=int(msg.height), width=int(msg.width), encoding=str(msg.encoding),
                 is_bigendian=int(msg.is_bigendian), step=int(msg.step), data=bytes(msg.data))


def _recorded_info(msg, image: Image) -> CameraInfo:
    info = CameraInfo(header=image.header, height=int(msg.height), width=int(msg.width),
                      distortion_model=str(msg.distortion_model),
                      binning_x=int(msg.binning_x), binning_y=int(msg.binning_y))
    info.d = [float(v) for v in msg.d]
    info.k, info.r, info.p = ([float(v) for v in m] for m in (msg.k, msg.r, msg.p))
    return info


def _scaled_info(info: CameraInfo, image: Image) -> CameraInfo:
    """The recorded calibration for a resized frame: focal lengths and centre scale with the pixels."""
    sx, sy = image.width / info.width if info.width else 1.0, image.height / info.height if info.height else 1.0
    k, p = list(info.k), list(info.p)
    k[0], k[2], k[4], k[5] = k[0] * sx, k[2] * sx, k[4] * sy, k[5] * sy
    p[0], p[2], p[3], p[5], p[6] = p[0] * sx, p[2] * sx, p[3] * sx, p[5] * sy, p[6] * sy
    info.k, info.p, info.width, info.height = k, p, image.width, image.height
    return info


def _pinhole_guess(image: Image) -> CameraInfo:
    """A plausible pinhole for frames that carry no calibration (images, videos, recordings without one)."""
    info = CameraInfo(header=image.header, height=image.height, width=image.width, distortion_model="plumb_bob")
    f = float(max(image.width, image.height))
    info.k = [f, 0.0, image.width / 2, 0.0, f, image.height / 2, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, image.width / 2, 0.0, 0.0, f, image.height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    return info


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
