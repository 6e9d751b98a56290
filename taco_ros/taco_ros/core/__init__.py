"""ROS-free core of taco_ros: audio windows, encoders, co-NMF solver, segmenter, pipeline.

Nothing in this package imports rclpy, so it can be used (and tested) without ROS.
"""
