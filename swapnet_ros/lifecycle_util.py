"""What every swapnet_ros executable does around its spin loop."""

import contextlib

import rclpy
from rclpy.executors import ExternalShutdownException


@contextlib.contextmanager
def stops_quietly_on_shutdown():
    """Ctrl-C and SIGTERM end a spin in several ways: KeyboardInterrupt, ExternalShutdownException, or an
    RCLError from a wait on a context that is already gone. All of them are a normal stop."""
    try:
        yield
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - re-raised unless the context was shut down under us
        if rclpy.ok():
            raise
