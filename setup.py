"""pip install -e . : the pure-Python core and the `swapnet` command.

The ROS 2 package (messages, nodes, launch, config) is built by colcon from CMakeLists.txt,
which ignores this file. No setup.cfg on purpose: it would leak into ament's install.
"""

from setuptools import find_packages, setup

setup(
    name="swapnet-core",
    version="0.1.0",
    description="Run DNNs larger than the memory budget by swapping execution-ordered blocks",
    packages=find_packages(include=["swapnet_core", "swapnet_core.*"]),
    python_requires=">=3.10",
    entry_points={"console_scripts": ["swapnet=swapnet_core.cli:main"]},
)
