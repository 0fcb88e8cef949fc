"""ROS 2 nodes of swapnet_ros (the generated messages live in swapnet_ros.msg)."""
