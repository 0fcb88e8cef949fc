"""sensor_msgs/Image <-> tensors and arrays, without cv_bridge (which pip cannot install).

Conversions check the message against its own header fields first: a malformed image raises
ImageError (a ValueError) with a short cause ('encoding', 'size', 'step', 'data') and the values that
disagree; the nodes count it and log once per cause. Encodings are matched exactly, as sensor_msgs
spells them ('RGB8' is refused); is_bigendian does not matter for these 8-bit encodings.
"""

from __future__ import annotations

import numpy as np
import torch

CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}


class ImageError(ValueError):
    def __init__(self, cause: str, detail: str):
        self.cause = cause
        super().__init__(f"{cause}: {detail}")


def image_to_array(msg) -> np.ndarray:
    """An HxWx3 uint8 RGB array from an rgb8/bgr8/mono8/rgba8/bgra8 Image (a copy, never a view of msg)."""
    channels = CHANNELS.get(msg.encoding)
    if channels is None:
        raise ImageError("encoding", f"unsupported encoding {msg.encoding!r} (supported: {', '.join(CHANNELS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError("size", f"empty image {w}x{h}")
    if step < w * channels:
        raise ImageError("step", f"step {step} is less than width x channels = {w * channels}")
    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.empty(0, np.uint8)
    if data.size != step * h:
        raise ImageError("data", f"{data.size} data bytes, expected step x height = {step * h}")
    rows = data.reshape(h, step)[:, :w * channels].reshape(h, w, channels)
    if msg.encoding in ("bgr8", "bgra8"):
        rows = rows[..., [2, 1, 0]]
    elif msg.encoding == "mono8":
        rows = np.repeat(rows, 3, axis=2)
    else:
        rows = rows[..., :3]
    out = np.ascontiguousarray(rows)
    # rgb8 with unpadded rows is still a view of msg.data here: copy, so the caller owns the pixels
    return out.copy() if np.may_share_memory(out, data) else out


def array_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """1x3xHxW float in [0, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def make_image(header, array: np.ndarray, encoding: str):
    """A sensor_msgs/Image of `array` (HxW or HxWxC) with the given header (stamp and frame_id copied)."""
    from sensor_msgs.msg import Image

    array = np.ascontiguousarray(array)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()
    return msg


_PALETTE = np.random.default_rng(7).integers(40, 256, size=(65536, 3), dtype=np.uint8)
_PALETTE[0] = 0  # background stays black


def colorize(class_ids: np.ndarray) -> np.ndarray:
    """A stable colour per class id (HxW -> HxWx3 uint8); the palette is made once, not per frame."""
    return _PALETTE[class_ids.astype(np.int64)]


def colormap_depth(depth: np.ndarray) -> np.ndarray:
    """Depth (HxW float) to an HxWx3 uint8 picture, near = bright."""
    finite = np.isfinite(depth)
    if not finite.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    lo, hi = np.percentile(depth[finite], [2, 98])
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    t = np.where(finite, t, 0)
    r = np.clip(1.5 - abs(4 * t - 3), 0, 1)
    g = np.clip(1.5 - abs(4 * t - 2), 0, 1)
    b = np.clip(1.5 - abs(4 * t - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)
