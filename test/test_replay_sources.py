"""camera_replay's sources: the bundled photos, a folder of images, a video file, a bare MCAP file and
rosbag2 recordings in sqlite3 and MCAP storage (stamps, frame_id, encoding and camera info kept)."""

from pathlib import Path

import numpy as np
import pytest

from swapnet_ros.camera_replay import SAMPLES, read_source

ROS_SHARE = Path(__import__("sys").prefix) / "share"


def test_bundled_photos_are_real_rgb_frames():
    frames = [f.pixels() for f in read_source("")]
    assert len(frames) == len(SAMPLES)
    assert all(f.ndim == 3 and f.shape[2] == 3 and f.dtype == np.uint8 and f.std() > 10 for f in frames)


def test_folder_of_images(tmp_path):
    from PIL import Image

    frames = [np.full((20, 30, 3), v, np.uint8) for v in (10, 120, 240)]
    for k, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{k:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    got = [f.pixels() for f in read_source(str(tmp_path))]
    assert [g.shape for g in got] == [(20, 30, 3)] * 3 and [int(g[0, 0, 0]) for g in got] == [10, 120, 240]


def test_video_file(tmp_path):
    import imageio.v3 as iio

    frames = np.stack([np.full((32, 48, 3), v, np.uint8) for v in (20, 128, 230)])
    path = tmp_path / "clip.mp4"
    iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=5)
    got = [f.pixels() for f in read_source(str(path))]
    assert len(got) == 3 and got[0].shape == (32, 48, 3)
    assert [int(round(g.mean() / 10)) for g in got] == [2, 13, 23]  # lossy codec: about the same


def test_mcap_recording(tmp_path):
    from mcap_ros2.writer import Writer

    from swapnet_ros.image_codec import make_image

    parts = [("sensor_msgs/msg/Image", ROS_SHARE / "sensor_msgs/msg/Image.msg"),
             ("std_msgs/msg/Header", ROS_SHARE / "std_msgs/msg/Header.msg"),
             ("builtin_interfaces/msg/Time", ROS_SHARE / "builtin_interfaces/msg/Time.msg")]
    if not all(p.is_file() for _, p in parts):
        pytest.skip("message definitions not found next to the ROS wheels")
    text = parts[0][1].read_text() + "".join(
        f"\n================================================================================\nMSG: {name.replace('/msg/', '/')}\n{p.read_text()}"
        for name, p in parts[1:])
    path = tmp_path / "bag.mcap"
    frames = [np.random.default_rng(k).integers(0, 256, (6, 8, 3), dtype=np.uint8) for k in range(3)]
    with open(path, "wb") as f:
        writer = Writer(f)
        schema = writer.register_msgdef("sensor_msgs/msg/Image", text)
        for k, frame in enumerate(frames):
            msg = make_image(None, frame, "rgb8")
            writer.write_message("/camera/image_raw", schema, {
                "header": {"stamp": {"sec": k, "nanosec": 0}, "frame_id": "cam"}, "height": 6, "width": 8,
                "encoding": "rgb8", "is_bigendian": 0, "step": msg.step, "data": bytes(msg.data)}, log_time=k)
        writer.finish()
    got = list(read_source(str(path)))
    assert len(got) == 3 and all(np.array_equal(a.pixels(), b) for a, b in zip(got, frames))
    assert [g.stamp for g in got] == [(k, 0) for k in range(3)] and {g.frame_id for g in got} == {"cam"}


def test_unknown_source_is_refused_clearly(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="cannot replay"):
        list(read_source(str(tmp_path / "x.bin")))


def write_rosbag2(path, storage, frames, *, info=True):
    """A recording as `ros2 bag record` writes it: bgr8 images on /cam/image_raw (stamps k s + 5 ns,
    frame_id cam_optical) and the camera's CameraInfo beside them."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    Img, Info = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CameraInfo"]
    Header, Time, Roi = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"], T["sensor_msgs/msg/RegionOfInterest"]
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    with Writer(path, version=8 if storage == "sqlite3" else 9, storage_plugin=plugin) as w:
        images = w.add_connection("/cam/image_raw", Img.__msgtype__, typestore=ts)
        infos = w.add_connection("/cam/camera_info", Info.__msgtype__, typestore=ts) if info else None
        for k, bgr in enumerate(frames):
            header = Header(stamp=Time(sec=k, nanosec=5), frame_id="cam_optical")
            h, wd = bgr.shape[:2]
            if infos is not None:
                msg = Info(header=header, height=h, width=wd, distortion_model="plumb_bob",
                           d=np.array([0.1, 0, 0, 0, 0], float), k=np.array([50.0, 0, wd / 2, 0, 60.0, h / 2, 0, 0, 1]),
                           r=np.eye(3).ravel(), p=np.array([50.0, 0, wd / 2, 0, 0, 60.0, h / 2, 0, 0, 0, 1, 0]),
                           binning_x=0, binning_y=0, roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
                w.write(infos, k * 10**9, ts.serialize_cdr(msg, Info.__msgtype__))
            msg = Img(header=header, height=h, width=wd, encoding="bgr8", is_bigendian=0, step=wd * 3,
                      data=np.ascontiguousarray(bgr).ravel())
            w.write(images, k * 10**9 + 1, ts.serialize_cdr(msg, Img.__msgtype__))


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag2_recordings_keep_their_stamps_frame_ids_encoding_and_camera_info(tmp_path, storage):
    frames = [np.random.default_rng(k).integers(0, 256, (6, 8, 3), dtype=np.uint8) for k in range(3)]
    bag = tmp_path / f"run_{storage}"
    write_rosbag2(bag, storage, frames)
    got = list(read_source(str(bag)))
    assert len(got) == 3
    for k, (f, bgr) in enumerate(zip(got, frames)):
        assert f.stamp == (k, 5) and f.frame_id == "cam_optical"
        assert f.image.encoding == "bgr8" and bytes(f.image.data) == bgr.tobytes()
        assert np.array_equal(f.pixels(), bgr[..., ::-1])  # decoded to RGB where it must be
        assert f.info is not None and list(f.info.k)[:3] == [50.0, 0.0, 4.0]
    with pytest.raises(ValueError, match="no image topic '/other'.*image topics: /cam/image_raw"):
        list(read_source(str(bag), "/other"))


def test_a_rosbag2_folder_without_its_metadata_is_refused_with_the_reason(tmp_path):
    bag = tmp_path / "cut"
    write_rosbag2(bag, "sqlite3", [np.zeros((4, 4, 3), np.uint8)])
    (bag / "metadata.yaml").unlink()
    with pytest.raises(ValueError, match="no metadata.yaml"):
        list(read_source(str(bag)))


def test_replay_publishes_as_recorded_or_restamped_or_resized(ros_env, tmp_path):
    """camera_replay over DDS in this process: the recorded image (bgr8, its stamp and frame_id) and
    the recorded camera info; restamp:=true stamps with now; size:=[12, 16] publishes rgb8 with the
    calibration scaled."""
    import time

    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from swapnet_ros.camera_replay import CameraReplay

    frames = [np.random.default_rng(k).integers(0, 256, (6, 8, 3), dtype=np.uint8) for k in range(2)]
    bag = tmp_path / "run"
    write_rosbag2(bag, "sqlite3", frames)

    def replay(**params):
        node = CameraReplay(parameter_overrides=[Parameter("source", value=str(bag)), Parameter("rate_hz", value=50.0),
                                                 Parameter("loop", value=False), Parameter("topic", value="/rp/image"),
                                                 Parameter("info_topic", value="/rp/camera_info")]
                            + [Parameter(k, value=v) for k, v in params.items()])
        client = rclpy.create_node("replay_client")
        images, infos = [], []
        client.create_subscription(Image, "/rp/image", images.append, qos_profile_sensor_data)
        client.create_subscription(CameraInfo, "/rp/camera_info", infos.append, qos_profile_sensor_data)
        try:
            end = time.monotonic() + 10
            while node._image_pub.get_subscription_count() < 1 and time.monotonic() < end:
                rclpy.spin_once(client, timeout_sec=0.05)
            while not node.done and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.02)
                rclpy.spin_once(client, timeout_sec=0.02)
            for _ in range(20):
                rclpy.spin_once(client, timeout_sec=0.02)
        finally:
            node.destroy_node()
            client.destroy_node()
        assert len(images) == 2 and len(infos) == 2, (len(images), len(infos))
        return images, infos

    images, infos = replay()
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in images] == [(0, 5), (1, 5)]
    assert {m.header.frame_id for m in images} == {"cam_optical"} and {m.encoding for m in images} == {"bgr8"}
    assert bytes(images[0].data) == frames[0].tobytes()
    assert list(infos[0].k)[:3] == [50.0, 0.0, 4.0] and infos[0].header.stamp == images[0].header.stamp
    images, _ = replay(restamp=True, frame_id="front")
    assert all(m.header.stamp.sec > 1_000_000 for m in images) and {m.header.frame_id for m in images} == {"front"}
    images, infos = replay(size=[12, 16])
    assert {(m.encoding, m.height, m.width) for m in images} == {("rgb8", 12, 16)}
    assert list(infos[0].k)[0] == 100.0 and list(infos[0].k)[4] == 120.0 and (infos[0].width, infos[0].height) == (16, 12)
