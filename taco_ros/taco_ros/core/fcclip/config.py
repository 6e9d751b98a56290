"""FC-CLIP head constants (method.md §6.1), defaults = the ConvNeXt-L COCO-panoptic model.

detectron2's yaml tree (defaults ← maskformer2_R50_bs16_50ep.yaml ← fcclip_convnext_large_eval_ade20k.yaml)
is replaced by this one dataclass. Two names differ from the yaml on purpose:

* ``dec_layers`` is the number of masked-attention decoder layers (9). The yaml's DEC_LAYERS is 10 because it
  also counts the prediction made from the raw learnable queries.
* ``enc_dim_feedforward`` is the deformable encoder's FFN width (1024). FC-CLIP hard-codes it in
  ``MSDeformAttnPixelDecoder.from_config`` and ignores DIM_FEEDFORWARD (2048, decoder only) there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FCCLIPConfig:
    """Architecture and inference constants of the FC-CLIP head.

    Architecture (must match the checkpoint): num_queries, hidden_dim, dec_layers, enc_layers, nheads,
    dim_feedforward, enc_dim_feedforward, enc_n_points, conv_dim, mask_dim, embed_dim, in_channels,
    num_classes.
    Inference (free to change): ensemble_alpha, ensemble_beta, size_divisibility.
    """

    num_queries: int = 250
    hidden_dim: int = 256
    dec_layers: int = 9
    enc_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 2048
    enc_dim_feedforward: int = 1024
    enc_n_points: int = 4
    conv_dim: int = 256
    mask_dim: int = 256
    # CLIP joint-space width: the class-embedding output and the void embedding.
    embed_dim: int = 768
    # res2..res5 channels of the CLIP ConvNeXt trunk; res5 is also clip_vis_dense.
    in_channels: tuple[int, ...] = field(default=(192, 384, 768, 1536))
    # COCO panoptic training classes: only sizes criterion.empty_weight [num_classes + 1], a training
    # buffer that is nevertheless in the checkpoint.
    num_classes: int = 133
    no_object_weight: float = 0.1
    # Geometric ensemble of in-vocab (decoder) and out-of-vocab (CLIP) class probabilities:
    # alpha for classes seen in training, beta for unseen ones. TACO: 0.4 / 1.0 (upstream FC-CLIP 0.4 / 0.8).
    ensemble_alpha: float = 0.4
    ensemble_beta: float = 1.0
    size_divisibility: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, 'in_channels', tuple(int(c) for c in self.in_channels))
        self.validate()

    def validate(self) -> None:
        positive = (
            'num_queries', 'hidden_dim', 'dec_layers', 'enc_layers', 'nheads', 'dim_feedforward',
            'enc_dim_feedforward', 'enc_n_points', 'conv_dim', 'mask_dim', 'embed_dim', 'num_classes',
            'size_divisibility')
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f'FCCLIPConfig.{name} must be positive, got {getattr(self, name)}')
        if len(self.in_channels) != 4 or min(self.in_channels) <= 0:
            raise ValueError(f'FCCLIPConfig.in_channels must be 4 positive res2..res5 widths, '
                             f'got {self.in_channels}')
        for name in ('hidden_dim', 'conv_dim'):
            if getattr(self, name) % self.nheads:
                raise ValueError(f'FCCLIPConfig.{name}={getattr(self, name)} is not divisible by '
                                 f'nheads={self.nheads}')
        if self.conv_dim % 32:
            raise ValueError(
                f'FCCLIPConfig.conv_dim={self.conv_dim} must be a multiple of 32 (GroupNorm(32))')
        if self.conv_dim != self.hidden_dim:
            # FC-CLIP feeds the pixel decoder's maps to the decoder without projection (input_proj empty).
            raise ValueError(f'FCCLIPConfig.conv_dim ({self.conv_dim}) must equal hidden_dim '
                             f'({self.hidden_dim})')
        for name in ('ensemble_alpha', 'ensemble_beta'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'FCCLIPConfig.{name} must lie in [0, 1], got {value}')

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FCCLIPConfig:
        """Build from a plain dict (e.g. a YAML section); unknown keys are an error, missing keys default."""
        if not isinstance(d, dict):
            raise ValueError(f'FCCLIPConfig.from_dict expects a dict, got {type(d).__name__}')
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f'unknown FCCLIPConfig keys: {unknown}; known: {sorted(known)}')
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['in_channels'] = list(self.in_channels)
        return d
