"""The `perception` executable: one process hosting the SwapCoordinator and its model nodes.

Models sharing one budget must share one process (one arena; on Jetson every CUDA context costs
hundreds of MB), and rclpy has no component container, so the nodes share the process: the model
nodes' frame intake on one single-threaded executor in a thread of its own, the coordinator on a
small multi-threaded one, so that its services and status are answered while a transition (a
conversion inside configure can take minutes) runs.
  perception --ros-args --params-file config/perception.yaml
"""

from __future__ import annotations

import gc
import sys
import threading
import traceback

import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

from swapnet_ros.lifecycle_util import stops_quietly_on_shutdown
from swapnet_ros.coordinator import SwapCoordinator
from swapnet_ros.model_node import SwapModelNode


def main(args=None) -> int:
    intake_failed = _serve(args)
    # The DDS participant (and its /dev/shm segments) goes when the last rclpy handle of the context
    # does; the nodes hold cycles, so collect them now that _serve's frame is gone. Then skip Python's
    # final full collection, which spends seconds finalizing torch's objects (memory the OS takes back).
    gc.collect()
    rclpy.get_default_context().destroy()
    gc.freeze()
    return 1 if intake_failed else 0


def _serve(args) -> bool:
    """Runs until shutdown; True if frame intake failed."""
    rclpy.init(args=args)
    try:
        coordinator = SwapCoordinator()
        nodes = [SwapModelNode(name, coordinator) for name in coordinator.get_parameter("models").value]
    except Exception as e:  # noqa: BLE001 - a bad parameter (out of range, a wrong type, an unknown task)
        print(f"perception: error: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        rclpy.try_shutdown()
        raise SystemExit(2) from None
    # Two single-threaded executors, not one MultiThreadedExecutor: under the inference thread's load,
    # rclpy's MultiThreadedExecutor left frames untaken for seconds, so the subscriptions' queues
    # overwrote them uncounted (bench/soak.py --overload: half the frames lost, a third of the
    # throughput; RELIABILITY.md). Intake has its own thread so that a coordinator transition
    # (converting a store can take minutes) never stalls it.
    # The coordinator's executor has threads to spare: a transition holds one while get_state,
    # parameters and the status timer (each in a callback group of its own) use the others.
    control, intake = MultiThreadedExecutor(num_threads=3), SingleThreadedExecutor()
    control.add_node(coordinator)
    for node in nodes:
        intake.add_node(node)
    intake_failure: list[BaseException] = []
    intake_thread = threading.Thread(target=spin_intake, args=(intake, intake_failure, coordinator.get_logger()),
                                     name="frame-intake", daemon=True)
    intake_thread.start()
    if coordinator.get_parameter("autostart").value:  # like nav2's lifecycle manager, while the services spin
        threading.Thread(target=autostart, args=(coordinator,), name="autostart", daemon=True).start()
    try:
        with stops_quietly_on_shutdown():
            control.spin()
    finally:
        coordinator.serving = False
        intake.shutdown()  # no new frames; then the job in flight finishes and the arena is freed
        intake_thread.join(timeout=5.0)
        if intake_thread.is_alive():
            coordinator.get_logger().warning("frame intake did not stop within 5 s")
        coordinator._release(collect=False)
        control.shutdown()
        for node in [*nodes, coordinator]:
            node.destroy_node()
        rclpy.try_shutdown()
    return bool(intake_failure)


def autostart(coordinator) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    try:
        with stops_quietly_on_shutdown():
            if coordinator.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                coordinator.get_logger().error("autostart: configure failed; staying unconfigured")
            elif coordinator.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                coordinator.get_logger().error("autostart: activate failed")
    except Exception as e:  # noqa: BLE001 - a transition someone else started first (rclpy raises RCLError)
        coordinator.get_logger().error(f"autostart: {e}")


def spin_intake(executor, failure: list, logger) -> None:
    """Spin the model nodes' executor. An unexpected error in a callback ends the whole process (exit 1,
    which launch or a supervisor sees) instead of leaving it up with nobody taking frames."""
    try:
        with stops_quietly_on_shutdown():
            executor.spin()
    except Exception as e:  # noqa: BLE001 - anything that escaped a callback
        logger.fatal(f"frame intake failed, stopping: {e!r}\n{traceback.format_exc()}")
        failure.append(e)
        rclpy.try_shutdown(context=executor.context)


if __name__ == "__main__":
    sys.exit(main())
