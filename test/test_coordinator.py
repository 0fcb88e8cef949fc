"""The SwapCoordinator in this process (real rclpy, real stores): which store a model's parameters
get, a bad model among good ones, what a failed configure leaves, parameter side effects."""

import os
import shutil

import psutil
import pytest
import torch
from safetensors.torch import save_file

from swapnet_core import BlockStore, load_resident
from swapnet_core.models import call_model, resolve

MB = 1 << 20
SMALL = "torchvision:mobilenet_v3_small"


@pytest.fixture(scope="module")
def ros(ros_env):
    return ros_env  # rclpy initialised on an isolated domain for this module


class Rig:
    """A coordinator and its model nodes in this process, destroyed on close."""

    def __init__(self, store_dir, models: dict, total_mb=200.0):
        from rclpy.parameter import Parameter

        from swapnet_ros.coordinator import SwapCoordinator
        from swapnet_ros.model_node import SwapModelNode

        self.coordinator = SwapCoordinator("test_coordinator", parameter_overrides=[
            Parameter("models", value=list(models)), Parameter("store_dir", value=str(store_dir)),
            Parameter("total_budget_mb", value=float(total_mb)), Parameter("status_period_s", value=3600.0)])
        self.nodes = {}
        for name, params in models.items():
            params = {"task": "segmentation", "input_size": [64, 64], "budget_mb": 20.0,
                      "input_topic": f"/test_coordinator/{name}/image"} | params
            self.nodes[name] = SwapModelNode(name, self.coordinator, parameter_overrides=[
                Parameter(k, value=v) for k, v in params.items()])

    def configure(self):
        from rclpy.lifecycle import TransitionCallbackReturn

        return self.coordinator.trigger_configure() == TransitionCallbackReturn.SUCCESS

    def up(self):
        assert self.configure(), "configure failed"
        from rclpy.lifecycle import TransitionCallbackReturn

        assert self.coordinator.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def store(self, name) -> BlockStore:
        return self.coordinator.scheduler._models[name].store

    def run(self, name, x):
        future = self.coordinator.submit(name, x, None)
        assert future is not None, f"{name} is not served"
        return future.result(timeout=120)

    def status(self, name):
        from swapnet_ros.msg import CoordinatorStatus

        got = []
        sub = self.coordinator.create_subscription(CoordinatorStatus, "~/status", got.append, 10)
        try:
            self.coordinator.publish_status()
            import rclpy

            for _ in range(100):
                rclpy.spin_once(self.coordinator, timeout_sec=0.05)
                if got:
                    break
        finally:
            self.coordinator.destroy_subscription(sub)
        assert got, "no status message"
        return {m.name: m for m in got[-1].models}[name]

    def close(self):
        self.coordinator._release()
        for node in [*self.nodes.values(), self.coordinator]:
            node.destroy_node()


def rig(store_dir, models, **kw):
    return Rig(store_dir, models, **kw)


def test_a_cached_store_is_reused_only_if_weights_dtype_and_input_match(ros, disk_dir):
    """The cached store of a model reference is served only when it holds the weights, dtype and trace
    input the node's parameters ask for; any difference re-converts it (said in the log), so a
    checkpoint set after a first run with random weights is never ignored."""
    store_dir = disk_dir / "identity_stores"
    shutil.rmtree(store_dir, ignore_errors=True)
    x = torch.rand(1, 3, 64, 64)

    def serve(**params):
        r = rig(store_dir, {"seg": {"model": SMALL} | params})
        try:
            r.up()
            store = r.store("seg")
            out = r.run("seg", x)
            with torch.no_grad():
                want = call_model(load_resident(store), store.call, x.to(store.torch_dtype))
            assert torch.isfinite(out).all() and torch.equal(out, want), \
                "swapped output differs from the resident model of the served store"
            return store, out
        finally:
            r.close()

    first, random_out = serve()
    assert first.random_weights
    again, _ = serve()
    assert again.store_id == first.store_id, "the same parameters re-converted the store"

    checkpoint = disk_dir / "identity-checkpoint.safetensors"  # as a user trains it: the network's own keys
    network = resolve(SMALL).build()
    trained = {k: v * 0.5 if v.is_floating_point() else v.clone() for k, v in network.state_dict().items()}
    save_file(trained, str(checkpoint))
    with_weights, out = serve(weights=str(checkpoint))
    assert with_weights.store_id != first.store_id and not with_weights.random_weights
    network.load_state_dict(trained)
    with torch.no_grad():
        assert torch.equal(out, network.eval()(x)), "the served store does not compute with the checkpoint's weights"
    assert not torch.equal(out, random_out)
    same, _ = serve(weights=str(checkpoint))
    assert same.store_id == with_weights.store_id  # same checkpoint: reused, not re-hashed into a new store

    os.utime(checkpoint)  # touched, same bytes: the hash decides, still reused
    touched, _ = serve(weights=str(checkpoint))
    assert touched.store_id == with_weights.store_id

    resized, _ = serve(weights=str(checkpoint), input_size=[48, 80])
    assert resized.store_id != with_weights.store_id and resized.default_input == "random:1x3x48x80"

    half, out = serve(weights=str(checkpoint), dtype="float16")
    assert half.dtype == "float16" and out.dtype == torch.float16
    assert all(v.dtype == torch.float16 for v in load_resident(half).state_dict().values() if v.is_floating_point())

    back, _ = serve()  # random weights again: not the checkpoint's store
    assert back.random_weights


def test_one_bad_model_does_not_stop_the_others_and_joins_once_fixed(ros, disk_dir):
    """Three models, one whose network cannot even be built: configure succeeds for the two others,
    the status says ERROR and why for the third; once its reference is fixed and the coordinator
    reconfigured, it is served too."""
    store_dir = disk_dir / "degrade_stores"
    r = rig(store_dir, {"a": {"model": SMALL}, "b": {"model": "torchvision:squeezenet1_1"},
                        "bad": {"model": "toy_models:broken"}})
    x = torch.rand(1, 3, 64, 64)
    try:
        r.up()
        assert r.run("a", x) is not None and r.run("b", x) is not None
        assert r.coordinator.submit("bad", x, None) is None  # not served: the node counts the frame dropped
        st = r.status("bad")
        assert st.state == "error" and "this factory always fails" in st.last_error, (st.state, st.last_error)
        assert r.status("a").state == "serving"
        diag = r.coordinator._diagnostic(st)
        from diagnostic_msgs.msg import DiagnosticStatus

        assert diag.level == DiagnosticStatus.ERROR and "always fails" in diag.message
    finally:
        r.close()
    # the user fixes the reference (a restart with new parameters), reconfigures: all three serve
    r = rig(store_dir, {"a": {"model": SMALL}, "b": {"model": "torchvision:squeezenet1_1"},
                        "bad": {"model": "toy_models:slow?seconds=0"}})
    try:
        r.up()
        assert all(r.run(n, x) is not None for n in ("a", "b", "bad"))
        assert r.status("bad").state == "serving"
    finally:
        r.close()


def test_output_adapter_labels_and_task_are_settled_at_configure(ros, disk_dir):
    """A node's marked output_adapter and labels are used; an adapter that is not marked, or a network
    of another task than the node's, leaves that model out with the reason in one line."""
    import toy_models
    from std_msgs.msg import Header

    toy = "toy_models:slow?seconds=0"  # a segmentation network
    r = rig(disk_dir / "adapter_stores", {
        "mine": {"model": toy, "output_adapter": "toy_models:scores_of_the_first_image", "labels": ["sky", "road"]},
        "unmarked": {"model": toy, "output_adapter": "toy_models:two_images"},  # a model factory, not an adapter
        "wrong_task": {"model": toy, "task": "depth"}})
    try:
        r.up()
        node = r.nodes["mine"]
        assert node._adapter is toy_models.scores_of_the_first_image and node._labels == ["sky", "road"]
        node._publish_result(r.run("mine", torch.rand(1, 3, 64, 64)), Header(), (64, 64), (64, 64))
        for name, why in [("unmarked", "not marked as an output adapter"),
                          ("wrong_task", "is a segmentation network, and this node's task is depth")]:
            st = r.status(name)
            assert st.state == "error" and why in st.last_error and "\n" not in st.last_error, st.last_error
    finally:
        r.close()


def test_a_corrupt_store_is_reported_and_joins_after_repair_and_reconfigure(ros, disk_dir, convert_once):
    """A store folder that fails when its model is built (a corrupt unit read at start) leaves that model
    in error while the other serves; restored and reconfigured (deactivate, cleanup, configure,
    activate) it serves again."""
    from rclpy.lifecycle import TransitionCallbackReturn

    good = convert_once(SMALL, "random:1x3x64x64")
    folder = disk_dir / "coordinator-corrupt"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(good.path, folder)
    weights = BlockStore(folder).weights_path
    original = weights.read_bytes()
    unit = BlockStore(folder).units[1]
    with open(weights, "r+b") as f:
        f.seek(unit.offset)
        f.write(bytes(64))
    budget = good.total_bytes / MB + 1  # whole: every unit is read when the model is built
    r = rig(disk_dir / "unused", {"ok": {"model": "torchvision:squeezenet1_1"},
                                  "broken": {"model": str(folder), "budget_mb": budget}})
    x = torch.rand(1, 3, 64, 64)
    try:
        r.up()
        assert r.run("ok", x) is not None
        st = r.status("broken")
        assert st.state == "error" and "StoreCorruptError" in st.last_error, (st.state, st.last_error)
        weights.write_bytes(original)
        c = r.coordinator
        for step in (c.trigger_deactivate, c.trigger_cleanup, c.trigger_configure, c.trigger_activate):
            assert step() == TransitionCallbackReturn.SUCCESS, step.__name__
        assert r.run("broken", x) is not None and r.status("broken").state == "serving"
    finally:
        r.close()


def test_a_failed_configure_gives_the_arena_back(ros, disk_dir, convert_once):
    """Every model fails when it is built, after the arena was allocated: configure fails, and the
    process's memory is back where it was, as after a cleanup (not at some later garbage collection)."""
    stores = []
    for k, ref in enumerate(("torchvision:resnet18", "torchvision:resnet34")):
        good = convert_once(ref, "random:1x3x64x64")
        folder = disk_dir / f"coordinator-failed-{k}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good.path, folder)
        store = BlockStore(folder)
        with open(store.weights_path, "r+b") as f:  # the last unit: read after every other one
            f.seek(store.units[-1].offset)
            f.write(bytes(64))
        stores.append(store)
    arena = sum(s.total_bytes for s in stores)
    r = rig(disk_dir / "unused", {f"m{k}": {"model": str(s.path), "budget_mb": s.total_bytes / MB + 1}
                                  for k, s in enumerate(stores)}, total_mb=arena / MB + 8)
    proc = psutil.Process()
    try:
        r.configure() and pytest.fail("configure succeeded with every store broken")  # warm-up, same path
        before = proc.memory_info().rss
        assert not r.configure()
        after = proc.memory_info().rss
        assert r.coordinator.scheduler is None
        assert after - before < arena / 4, (f"{(after - before) / MB:.0f} MiB kept after a failed configure "
                                             f"(arena {arena / MB:.0f} MiB)")
        st = r.status("m0")
        assert st.state == "error" and "StoreCorruptError" in st.last_error
    finally:
        r.close()


def test_parameter_validation_has_no_side_effects(ros, disk_dir):
    """A budget accepted by our validation but refused by another on-set callback (all must agree) must
    not be applied: side effects run once the value is set (post-set callback)."""
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.parameter import Parameter

    r = rig(disk_dir / "param_stores", {"a": {"model": SMALL, "budget_mb": 8.0}}, total_mb=20.0)
    try:
        r.up()
        node = r.nodes["a"]
        node.add_on_set_parameters_callback(
            lambda params: SetParametersResult(successful=not any(p.name == "budget_mb" and p.value == 7.0 for p in params),
                                               reason="refused by another callback"))
        assert not node.set_parameters([Parameter("budget_mb", value=7.0)])[0].successful
        sched = r.coordinator.scheduler
        assert sched._target is None and sched.metrics()["models"]["a"]["budget_bytes"] == 8 * MB, \
            "a refused value reached the scheduler"
        assert node.set_parameters([Parameter("budget_mb", value=9.0)])[0].successful
        assert sched._target is not None and sched._target[1]["a"] == 9 * MB  # applied at the next job boundary
        assert r.run("a", torch.rand(1, 3, 64, 64)) is not None
        assert sched.metrics()["models"]["a"]["budget_bytes"] == 9 * MB
    finally:
        r.close()
