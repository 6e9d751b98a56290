"""taco_ros: sound-prompted segmentation (TACO) for ROS 2.

Data path, left to right:

    camera Image ──┐
                   ├─ core.windows ─ core.pipeline ─┬─ core.clip_backbone  (CLIP tokens X_I)
    mic AudioChunk ┘   (1 s windows)                     ├─ core.audio_encoder  (CLAP tokens X_A)
                                                         ├─ core.conmf          (co-NMF → factor k*)
                                                         └─ core.fcclip         (mask for k*)
              → taco_node publishes mask / objects / audio_activation / debug_image

Everything under ``taco_ros.core`` is ROS-free (no rclpy import); the ROS layer is ``taco_node``,
``mic_node``, ``conversions`` and ``params``.
"""

__version__ = '0.1.0'
