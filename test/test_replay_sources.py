"""camera_replay's sources: the bundled photos, a folder of images, a video file and an MCAP recording."""

from pathlib import Path

import numpy as np
import pytest

from swapnet_ros.camera_replay import SAMPLES, read_source

ROS_SHARE = Path(__import__("sys").prefix) / "share"


def test_bundled_photos_are_real_rgb_frames():
    frames = list(read_source(""))
    assert len(frames) == len(SAMPLES)
    assert all(f.ndim == 3 and f.shape[2] == 3 and f.dtype == np.uint8 and f.std() > 10 for f in frames)


def test_folder_of_images(tmp_path):
    from PIL import Image

    frames = [np.full((20, 30, 3), v, np.uint8) for v in (10, 120, 240)]
    for k, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{k:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    got = list(read_source(str(tmp_path)))
    assert [g.shape for g in got] == [(20, 30, 3)] * 3 and [int(g[0, 0, 0]) for g in got] == [10, 120, 240]


def test_video_file(tmp_path):
    import imageio.v3 as iio

    frames = np.stack([np.full((32, 48, 3), v, np.uint8) for v in (20, 128, 230)])
    path = tmp_path / "clip.mp4"
    iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=5)
    got = list(read_source(str(path)))
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
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, frames))


def test_unknown_source_is_refused_clearly(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="cannot replay"):
        list(read_source(str(tmp_path / "x.bin")))
