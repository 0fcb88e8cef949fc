"""Model nodes serving transformers models from save_pretrained folders, over real DDS: a DETR detector
publishes Detection2DArray with boxes in the frame's pixels (as DETR's own image processor places
them) and the names of the `labels` parameter; a SegFormer its class ids; a metric Depth Anything
metres on ~/depth and nothing on ~/depth_relative."""

import numpy as np
import pytest
import torch
import transformers as T

import tiny_transformers as tiny
from swapnet_core.models import IMAGENET_NORMALIZE
from conftest import collect, spin_for, start_perception, stop_process, wait_for

H, W = 120, 160  # the frame
NET = (64, 96)  # the detector's input_size


@pytest.fixture(scope="module")
def served(ros_env, ros_store_dir):
    folders = {name: ros_env / name for name in ("detr", "segformer", "depth")}
    seg = tiny.segformer()
    seg.id2label = {0: "road", 1: "car", 2: "tree", 3: "sky"}
    models = {"detr": tiny.save_folder(tiny.detr(), folders["detr"], seed=3, shard="20KB"),
              "segformer": tiny.save_folder(seg, folders["segformer"]),
              "depth": tiny.save_folder(tiny.depth_anything("metric"), folders["depth"])}
    node = lambda task, folder, **p: {"ros__parameters": dict(task=task, model=f"transformers:{folder}",  # noqa: E731
                                                              budget_mb=2.0, **p)}
    params = {"swap_coordinator": {"ros__parameters": dict(total_budget_mb=16.0, autostart=True, status_period_s=0.5,
                                                           store_dir=str(ros_store_dir / "adapters"),
                                                           models=["detection", "segmentation", "depth"])},
              "detection": node("detection", folders["detr"], input_size=list(NET), score_threshold=0.0,
                                labels=["cat", "dog", "bird"]),
              "segmentation": node("segmentation", folders["segformer"], input_size=[64, 80]),
              "depth": node("depth", folders["depth"], input_size=[28, 42])}
    proc = start_perception(params, ros_env, name="perception_adapters")
    proc.folders = folders
    yield proc, models
    stop_process(proc)


@pytest.fixture(scope="module")
def client(served):
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from swapnet_ros.msg import CoordinatorStatus, Detection2DArray

    node = rclpy.create_node("swapnet_adapters_client")
    c = type("Client", (), {})()
    c.node, (c.proc, c.models) = node, served
    c.pub = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    c.results = collect(node, {"detections": (Detection2DArray, "/detection/detections"),
                               "mask": (Image, "/segmentation/mask"), "depth": (Image, "/depth/depth"),
                               "depth_relative": (Image, "/depth/depth_relative")})
    c.status = []
    node.create_subscription(CoordinatorStatus, "/swap_coordinator/status", c.status.append, 10)
    c.spin = lambda secs: spin_for(node, secs)
    wait_for(c, lambda: c.status and c.status[-1].state == "active", 240, "the coordinator to activate")
    models = c.status[-1].models
    assert all(m.state in ("ready", "serving") for m in models), [(m.name, m.last_error) for m in models]
    wait_for(c, lambda: c.pub.get_subscription_count() >= 3, 30, "the model nodes to subscribe")
    yield c
    node.destroy_node()


def test_transformers_models_publish_in_frame_pixels_with_their_names(client):
    from swapnet_ros.image_codec import array_to_tensor, make_image

    rgb = np.random.default_rng(4).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    msg = make_image(None, rgb, "rgb8")
    msg.header.stamp = client.node.get_clock().now().to_msg()
    msg.header.frame_id = "cam"
    client.pub.publish(msg)
    wait_for(client, lambda: all(client.results[k] for k in ("detections", "mask", "depth")), 90, "every result")
    client.spin(0.5)
    assert not client.results["depth_relative"]  # a metric model publishes metres only

    # what DETR's own image processor makes of the same network input, for a frame of H x W
    x = torch.nn.functional.interpolate(array_to_tensor(rgb), size=NET, mode="bilinear", align_corners=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET_NORMALIZE)
    with torch.no_grad():
        out = client.models["detr"](pixel_values=(x - mean) / std)
    want = T.DetrImageProcessor().post_process_object_detection(out, threshold=-1.0, target_sizes=[(H, W)])[0]
    got = client.results["detections"][-1]
    assert got.header.frame_id == "cam" and len(got.detections) == len(want["scores"]) == 10
    for det, box, label, score in zip(got.detections, want["boxes"].tolist(), want["labels"].tolist(),
                                      want["scores"].tolist()):
        center, size = (box[0] + box[2]) / 2, box[2] - box[0]
        assert det.bbox.center.position.x == pytest.approx(center, abs=1e-3)
        assert det.bbox.center.position.y == pytest.approx((box[1] + box[3]) / 2, abs=1e-3)
        assert det.bbox.size_x == pytest.approx(size, abs=1e-3)
        assert det.bbox.size_y == pytest.approx(box[3] - box[1], abs=1e-3)
        assert det.results[0].hypothesis.class_id == ["cat", "dog", "bird"][label]
        assert det.results[0].hypothesis.score == pytest.approx(score, abs=1e-6)

    mask = client.results["mask"][-1]
    assert (mask.encoding, mask.height, mask.width) == ("mono8", H, W)
    assert np.frombuffer(bytes(mask.data), np.uint8).max() < 4
    depth = client.results["depth"][-1]
    assert (depth.encoding, depth.height, depth.width) == ("32FC1", H, W)
    assert np.isfinite(np.frombuffer(bytes(depth.data), np.float32)).all()


def test_the_log_says_which_weights_each_model_runs(client):
    log = client.proc.log_path.read_text()
    assert "(3 safetensors files)" in log  # the sharded DETR folder's own weights
    folder = client.proc.folders["segformer"]
    assert f"segmentation: transformers:{folder} with the weights of {folder} (1 safetensors file)" in log, log
