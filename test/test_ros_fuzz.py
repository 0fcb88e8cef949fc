"""Property test of sensor_msgs/Image -> array/tensor conversion: arbitrary headers and payloads give
either the exact pixels (checked against a row-by-row numpy reference) or ImageError with its cause,
never any other exception."""

import re
from collections import Counter

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from swapnet_ros.image_codec import CHANNELS, ImageError, array_to_tensor, image_to_array

U32 = 2**32 - 1
# the channel order each encoding's pixels map to, written independently of image_codec
ORDER = {"rgb8": [0, 1, 2], "bgr8": [2, 1, 0], "rgba8": [0, 1, 2], "bgra8": [2, 1, 0], "mono8": [0, 0, 0]}
MAX_PAYLOAD = 1 << 16


def reference(data: bytes, encoding: str, h: int, w: int, step: int) -> np.ndarray:
    c = CHANNELS[encoding]
    rows = []
    for i in range(h):  # row i starts at i * step; bytes past width x channels are padding
        row = np.frombuffer(data[i * step:i * step + w * c], np.uint8).reshape(w, c)
        rows.append(row[:, ORDER[encoding]])
    return np.stack(rows)


valid_encodings = st.sampled_from(sorted(CHANNELS))
odd_encodings = st.one_of(
    valid_encodings.map(str.upper),  # 'RGB8': not a sensor_msgs encoding
    st.sampled_from(["Bgr8", " rgb8", "rgb8 ", "mono16", "16UC1", "32FC1", "yuv422", "bayer_rggb8", "", "8UC3"]),
    st.text(max_size=12))
small = st.integers(1, 40)
odd_dims = st.sampled_from([0, 1, 4096, 65535, 2**31, U32])


def weighted(draw, usual, odd, usual_share=4):
    """Mostly `usual`, sometimes `odd`: random branches alone would rarely build a valid image."""
    return draw(odd if draw(st.integers(0, usual_share)) == 0 else usual)


@st.composite
def images(draw):
    encoding = weighted(draw, valid_encodings, odd_encodings)
    h, w = weighted(draw, small, odd_dims, 6), weighted(draw, small, odd_dims, 6)
    c = CHANNELS.get(encoding, 3)
    row = w * c
    step = weighted(draw, st.one_of(st.just(row), st.integers(1, 16).map(lambda pad: row + pad)),  # exact, padded
                    st.one_of(st.integers(1, 8).map(lambda k: max(0, row - k)),  # too small
                              st.sampled_from([0, U32])))  # zero, huge
    step = min(step, U32)
    exact = step * h
    length = weighted(draw, st.just(exact), st.one_of(
        st.integers(1, 9).map(lambda k: max(0, exact - k)),  # short
        st.integers(1, 9).map(lambda k: exact + k), st.just(0)))  # long, empty
    length = min(length, MAX_PAYLOAD)  # a giant header with a small payload is the interesting case
    data = draw(st.binary(min_size=length, max_size=length)) if length <= 4096 else \
        np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    return Image(encoding=encoding, height=h, width=w, step=step, data=data,
                 is_bigendian=draw(st.integers(0, 1)))


def expected_cause(msg) -> str | None:
    c = CHANNELS.get(msg.encoding)
    if c is None:
        return "encoding"
    if msg.height == 0 or msg.width == 0:
        return "size"
    if msg.step < msg.width * c:
        return "step"
    if len(msg.data) != msg.step * msg.height:
        return "data"
    return None


def test_conversion_is_exact_or_refused_with_its_cause(record_property):
    outcomes = Counter()

    @settings(max_examples=1500, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(images())
    def check(msg):
        cause = expected_cause(msg)
        data = bytes(msg.data)
        try:
            rgb = image_to_array(msg)
        except ImageError as e:  # anything else fails the test
            assert cause is not None, f"refused a valid image: {e}"
            assert e.cause == cause, (e.cause, cause, str(e))
            assert re.match(rf"^{cause}: \S", str(e)), str(e)
            if cause == "encoding":
                assert repr(msg.encoding) in str(e) and "rgb8" in str(e)  # names the value and the options
            outcomes[cause] += 1
            return
        assert cause is None, f"accepted an image that should fail with {cause!r}"
        ref = reference(data, msg.encoding, msg.height, msg.width, msg.step)
        assert rgb.dtype == np.uint8 and rgb.shape == (msg.height, msg.width, 3)
        assert np.array_equal(rgb, ref)
        assert not np.may_share_memory(rgb, np.frombuffer(msg.data, np.uint8))  # a copy, not a view
        t = array_to_tensor(rgb)
        assert t.dtype == torch.float32 and t.shape == (1, 3, msg.height, msg.width)
        assert torch.equal(t, torch.from_numpy(ref.astype(np.float32) / np.float32(255)).permute(2, 0, 1)[None])
        assert bytes(msg.data) == data  # the message is left as it came
        outcomes["padded" if msg.step > msg.width * CHANNELS[msg.encoding] else "ok"] += 1

    check()
    total = sum(outcomes.values())
    record_property("hypothesis_examples", total)
    print(f"\nimage conversion fuzz: {total} examples: {dict(outcomes)}")
    # the generator must reach every branch, or the test proves little
    assert total >= 1000, outcomes
    for kind in ("ok", "padded", "encoding", "size", "step", "data"):
        assert outcomes[kind] >= 20, outcomes
