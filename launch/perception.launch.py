"""ros2 launch swapnet_ros perception.launch.py [params_file:=...] [device:=auto|cpu|cuda|cuda:N]
                                              [use_replay:=true] [replay_source:=...]

Starts the `perception` process (the SwapCoordinator and its model nodes, sharing one weight budget)
and, with use_replay:=true, `camera_replay` feeding it. Uses the FastDDS profile shipped in config/.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("swapnet_ros")
    params_file = LaunchConfiguration("params_file")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "perception.yaml"),
                              description="parameters of swap_coordinator, the model nodes and camera_replay"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="where the models run: auto (a CUDA device if there is one), cpu, "
                                          "cuda or cuda:N; refused at configure with the reason if absent"),
        DeclareLaunchArgument("use_replay", default_value="false", description="also start camera_replay"),
        DeclareLaunchArgument("replay_source", default_value="",
                              description="folder, video or MCAP for camera_replay; empty = bundled photos"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds.xml")),
        # no name= here: a name remap would apply to every node in the process
        Node(package="swapnet_ros", executable="perception", output="screen",
             parameters=[params_file, {"device": LaunchConfiguration("device")}], emulate_tty=True),
        Node(package="swapnet_ros", executable="camera_replay", name="camera_replay", output="screen",
             parameters=[params_file, {"source": LaunchConfiguration("replay_source")}],
             condition=IfCondition(LaunchConfiguration("use_replay"))),
    ])
