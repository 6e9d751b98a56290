"""taco_ros: sound-prompted segmentation (TACO) for ROS 2.

Data path, left to right:

    camera Image ─┐
                  ├─ core.audio_buffer (1 s windows) ─ core.pipeline ─┬─ core.image_encoder (CLIP tokens X_I)
    mic AudioChunk┘                                                   ├─ core.audio_encoder (CLAP tokens X_A)
                                                                      ├─ core.conmf (co-NMF → factor k*)
                                                                      └─ core.fcclip (mask for k*)
                                                     → taco_node publishes mask / objects / audio_activation

Everything under ``taco_ros.core`` is ROS-free (no rclpy import); the ROS layer is ``taco_node``,
``mic_node``, ``conversions`` and ``params``.
"""

__version__ = '0.1.0'
