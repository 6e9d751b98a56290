"""Benchmark evaluation of TACO (method.md §7): dataset readers, the paper's metrics, a runner and reports.

ROS-free. ``metrics`` and ``datasets`` depend only on numpy/torch/Pillow; ``runner`` drives a
:class:`taco_ros.core.pipeline.TacoPipeline`; ``report`` writes JSON, a terminal table and PNG plots.
"""
