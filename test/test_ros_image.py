"""sensor_msgs/Image conversion: every supported encoding, and clear refusals of malformed images."""

import numpy as np
import pytest
from sensor_msgs.msg import Image

from swapnet_ros.image_codec import ImageError, array_to_tensor, image_to_array, make_image


def image(encoding, h, w, channels, step=None, data=None, fill=None):
    msg = Image(encoding=encoding, height=h, width=w)
    msg.step = step if step is not None else w * channels
    if data is None:
        rng = np.random.default_rng(1)
        data = (fill if fill is not None else rng.integers(0, 256, size=msg.step * h, dtype=np.uint8)).tobytes()
    msg.data = data
    return msg


def test_rgb_bgr_mono_and_padded_rows():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    assert np.array_equal(image_to_array(make_image(None, rgb, "rgb8")), rgb)
    assert np.array_equal(image_to_array(make_image(None, rgb[..., ::-1].copy(), "bgr8")), rgb)
    mono = rgb[..., 0].copy()
    assert np.array_equal(image_to_array(make_image(None, mono, "mono8")), np.repeat(mono[..., None], 3, 2))
    padded = np.zeros((5, 7 * 3 + 3), np.uint8)  # rows padded to a step larger than width x 3
    padded[:, :21] = rgb.reshape(5, 21)
    msg = image("rgb8", 5, 7, 3, step=24, data=padded.tobytes())
    assert np.array_equal(image_to_array(msg), rgb)
    t = array_to_tensor(rgb)
    assert t.shape == (1, 3, 5, 7) and float(t.max()) <= 1.0


@pytest.mark.parametrize("msg,cause", [
    (image("yuv422", 4, 4, 2), "encoding"),
    (image("rgb8", 0, 4, 3), "size"),
    (image("rgb8", 4, 4, 3, step=5), "step"),
    (image("rgb8", 4, 4, 3, data=b"\0" * 10), "data"),
])
def test_malformed_images_raise_a_cause(msg, cause):
    with pytest.raises(ImageError) as e:
        image_to_array(msg)
    assert e.value.cause == cause
