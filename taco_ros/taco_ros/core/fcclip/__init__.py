"""FC-CLIP (ConvNeXt-L, COCO panoptic) inference in plain PyTorch, prompted by co-NMF image factors.

No detectron2 and no compiled ops: deformable attention uses ``grid_sample`` (CPU and CUDA).
Entry points: :class:`FCCLIPConfig`; :class:`FCCLIP` (``prepare`` → :class:`PreparedFrame` →
``semantic_map``) built by :func:`build_fcclip` or, with weights, :func:`load_fcclip`;
:func:`load_fcclip_checkpoint`. The file itself is found through :mod:`taco_ros.core.model_files`
(id ``fcclip-convnext-large-coco``); without it the pipeline falls back to the coarse map.
"""

from taco_ros.core.fcclip.checkpoint import (
    LoadReport,
    load_fcclip,
    load_fcclip_checkpoint,
    load_state_into,
    read_checkpoint,
)
from taco_ros.core.fcclip.config import FCCLIPConfig
from taco_ros.core.fcclip.segmenter import FCCLIP, PreparedFrame, build_fcclip

__all__ = [
    'FCCLIP',
    'FCCLIPConfig',
    'LoadReport',
    'PreparedFrame',
    'build_fcclip',
    'load_fcclip',
    'load_fcclip_checkpoint',
    'load_state_into',
    'read_checkpoint',
]
