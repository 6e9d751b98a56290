"""A standalone rclpy node in its own context, for the command-line player and recorder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def standalone_node(name: str, use_sim_time: bool = False) -> Iterator[tuple[Any, Any]]:
    """(node, executor) in a fresh rclpy context, shut down on exit."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context, parameter_overrides=[
        Parameter('use_sim_time', Parameter.Type.BOOL, use_sim_time)])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()
