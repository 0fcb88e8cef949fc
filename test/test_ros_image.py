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


def test_segmentation_class_ids_never_hold_logits_at_frame_size():
    """Argmax at the network's resolution, then the ids upsampled: the same ids as upsampling the
    argmax with interpolate(mode="nearest"), and no frame-sized float tensor on the way (21 classes
    upsampled to 1080x1920 first would be 174 MB outside any budget)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from swapnet_ros.model_node import class_ids_at

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and not t._is_view():  # memory made, not a view of it
                    self.largest = max(self.largest, t.numel() * t.element_size())
            return out

    logits = torch.randn(1, 21, 135, 240, generator=torch.Generator().manual_seed(0))
    with LargestOutput() as mode:
        ids = class_ids_at(logits, (1080, 1920))
    assert ids.shape == (1080, 1920) and ids.dtype == np.uint8
    limit = max(1080 * 1920, logits.numel() * logits.element_size())  # the uint8 ids, or a copy of the logits
    assert mode.largest <= limit, f"a {mode.largest / 2**20:.0f} MiB tensor was made"
    nearest = torch.nn.functional.interpolate(logits.argmax(1, keepdim=True).float(), size=(1080, 1920), mode="nearest")
    assert np.array_equal(ids, nearest[0, 0].to(torch.uint8).numpy())
    assert np.array_equal(class_ids_at(logits, (135, 240)), logits[0].argmax(0).to(torch.uint8).numpy())
