"""The `perception` executable: one process hosting the SwapCoordinator and its model nodes.

Models sharing one budget must share one process (one arena; on Jetson every CUDA context costs
hundreds of MB), and rclpy has no component container, so they run on one MultiThreadedExecutor.
  perception --ros-args --params-file config/perception.yaml
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.executors import MultiThreadedExecutor

from swapnet_ros.lifecycle_util import stops_quietly_on_shutdown
from swapnet_ros.coordinator import SwapCoordinator
from swapnet_ros.model_node import SwapModelNode


def main(args=None) -> int:
    rclpy.init(args=args)
    coordinator = SwapCoordinator()
    nodes = [SwapModelNode(name, coordinator) for name in coordinator.get_parameter("models").value]
    executor = MultiThreadedExecutor(num_threads=4)
    for node in [coordinator, *nodes]:
        executor.add_node(node)
    try:
        with stops_quietly_on_shutdown():
            if coordinator.get_parameter("autostart").value:  # like nav2's lifecycle manager
                from rclpy.lifecycle import TransitionCallbackReturn

                if coordinator.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                    coordinator.get_logger().error("autostart: configure failed; staying unconfigured")
                elif coordinator.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                    coordinator.get_logger().error("autostart: activate failed")
            executor.spin()
    finally:
        coordinator.serving = False
        coordinator._release()
        executor.shutdown()
        for node in [*nodes, coordinator]:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
