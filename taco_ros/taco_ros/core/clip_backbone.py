"""One frozen OpenCLIP ConvNeXt shared by the image tokens X_I and the FC-CLIP segmenter.

TACO (docs/method.md, image tokens) keeps two ConvNeXt-L copies: its own CLIP for X_I and
FC-CLIP's backbone. Both compute the same trunk on the same 768×768 padded frame, so here a single
``ClipBackbone`` runs the trunk once per frame and hands

* ``res2..res5`` and ``clip_vis_dense`` to the segmenter (FC-CLIP's ``CLIP`` backbone outputs), and
* X_I = relu(visual.head(LN_head(clip_vis_dense))) (576×768 for a 764² frame) to the co-NMF.

State-dict layout: the only registered submodule is ``clip_model`` (an ``open_clip.CLIP``), so
keys are ``clip_model.*``; an FC-CLIP module holding this as ``self.backbone`` gets
``backbone.clip_model.*`` keys, the layout of the real FC-CLIP checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# FC-CLIP's PIXEL_MEAN / PIXEL_STD: the OpenAI CLIP mean/std on the 0..255 scale.
PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)

RESIZE_POLICIES = ('squash', 'letterbox')
TEXT_TOWER_ATTRIBUTES = (
    'transformer', 'token_embedding', 'positional_embedding', 'ln_final', 'text_projection')


@dataclass
class ImageTokens:
    """Result of :meth:`ClipBackbone.encode`.

    tokens: X_I [B, N_I, D_I] clamped at 0, row-major over ``grid``.
    grid: (rows, cols) of the token grid (24×24 for the paper's 764² squash).
    valid_size: (h, w) of the resized image inside the padded tensor.
    features: the backbone outputs (res2..res5, clip_vis_dense) for the segmenter.
    """

    tokens: Tensor
    grid: tuple[int, int]
    valid_size: tuple[int, int]
    features: dict[str, Tensor]


class ClipBackbone(nn.Module):
    """Frozen OpenCLIP timm-ConvNeXt image tower in FC-CLIP's backbone role.

    Args:
        clip_model: an ``open_clip.CLIP`` whose ``visual`` is a ``TimmModel`` around a timm
            ConvNeXt with an MLP projection head (``convnext_large_d_320`` in the paper setting).
        input_size: side the frame is resized to before padding (TACO: 764).
        size_divisibility: padding multiple (FC-CLIP: 32, the trunk's total stride).
        resize: ``'squash'`` resizes to input_size × input_size ignoring the aspect ratio (the
            paper); ``'letterbox'`` scales the long side to input_size and keeps the aspect ratio,
            so a wide camera gives fewer token rows instead of distorted objects.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        input_size: int = 764,
        size_divisibility: int = 32,
        resize: Literal['squash', 'letterbox'] = 'squash',
    ) -> None:
        super().__init__()
        if resize not in RESIZE_POLICIES:
            raise ValueError(f'resize must be one of {RESIZE_POLICIES}, got {resize!r}')
        if input_size <= 0 or size_divisibility <= 0:
            raise ValueError(
                'input_size and size_divisibility must be positive, '
                f'got {input_size}, {size_divisibility}')
        _check_convnext_tower(clip_model)
        self.clip_model = clip_model
        self.input_size = int(input_size)
        self.size_divisibility = int(size_divisibility)
        self.resize = resize
        # Non-persistent: the state dict stays exactly 'clip_model.*'.
        mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
        self.register_buffer('pixel_mean', mean, persistent=False)
        self.register_buffer('pixel_std', std, persistent=False)
        # Frozen and always in eval mode: timm's drop_path (0.1 in the CLIP config) is active in
        # train mode.
        self.clip_model.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClipBackbone:
        # FC-CLIP forces its CLIP backbone to eval on every forward; refusing train mode is the
        # same guarantee.
        return super().train(False)

    @property
    def trunk(self) -> nn.Module:
        return self.clip_model.visual.trunk

    @property
    def embed_dim(self) -> int:
        """D_I, the CLIP joint-space width (768 for ConvNeXt-L)."""
        return int(self.clip_model.visual.head.mlp.fc2.out_features)

    @property
    def channels(self) -> dict[str, int]:
        """Channel count of each backbone output (192/384/768/1536/1536 for ConvNeXt-L)."""
        stage_info = self.trunk.feature_info[-len(self.trunk.stages):]
        widths = [int(info['num_chs']) for info in stage_info]
        names = {f'res{i + 2}': c for i, c in enumerate(widths)}
        names['clip_vis_dense'] = widths[-1]
        return names

    @property
    def has_text_tower(self) -> bool:
        return getattr(self.clip_model, 'transformer', None) is not None

    # -- image side ------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of a height×width frame after the resize policy."""
        if self.resize == 'squash':
            return self.input_size, self.input_size
        scale = self.input_size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the padded network input for a height×width frame (768×768 for the paper)."""
        h, w = self.resized_size(height, width)
        d = self.size_divisibility
        return -(-h // d) * d, -(-w // d) * d

    def preprocess(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """RGB frames → normalised, zero-padded network input.

        images: [B, 3, H, W] RGB, uint8 or float on the 0..255 scale.
        Returns the padded tensor [B, 3, H_pad, W_pad] (float32, on the module's device) and the
        valid (h, w) region at its top-left.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be [B, 3, H, W] RGB, got shape {tuple(images.shape)}')
        if images.shape[-1] < 1 or images.shape[-2] < 1 or images.shape[0] < 1:
            raise ValueError(f'images must be non-empty, got shape {tuple(images.shape)}')
        x = images.to(device=self.pixel_mean.device, dtype=torch.float32)
        h, w = self.resized_size(images.shape[-2], images.shape[-1])
        if (h, w) != tuple(images.shape[-2:]):
            # TACO's loader: bilinear, align_corners=True, no antialias (docs/method.md).
            x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=True)
        x = (x - self.pixel_mean) / self.pixel_std
        pad_h, pad_w = self.padded_size(images.shape[-2], images.shape[-1])
        # Zero padding AFTER normalisation, as detectron2's ImageList.from_tensors does.
        x = F.pad(x, (0, pad_w - w, 0, pad_h - h), value=0.0)
        return x, (h, w)

    def forward(self, padded: Tensor) -> dict[str, Tensor]:
        """ConvNeXt trunk on a preprocessed batch: FC-CLIP's ``extract_features_convnext`` outputs.

        Returns 'res2' [B,C2,H/4,W/4], 'res3' [B,C3,H/8,W/8], 'res4' [B,C4,H/16,W/16],
        'res5' [B,C5,H/32,W/32] and 'clip_vis_dense' = trunk.norm_pre(res5).
        """
        if padded.ndim != 4 or padded.shape[1] != 3:
            raise ValueError(f'padded must be [B, 3, H, W], got shape {tuple(padded.shape)}')
        d = self.size_divisibility
        if padded.shape[-1] % d or padded.shape[-2] % d:
            raise ValueError(
                f'padded spatial size {tuple(padded.shape[-2:])} is not a multiple of {d}; '
                'use preprocess()')
        trunk = self.trunk
        x = trunk.stem(padded)
        out: dict[str, Tensor] = {}
        for i, stage in enumerate(trunk.stages):
            x = stage(x)
            out[f'res{i + 2}'] = x.contiguous()
        out['clip_vis_dense'] = trunk.norm_pre(x).contiguous()
        return out

    def project_dense(self, x: Tensor) -> Tensor:
        """Per-token CLIP visual head: [..., C5] → [..., D_I] (no clamp).

        Equals TACO's ``feats2shared`` / FC-CLIP's ``visual_prediction_forward_convnext``: each
        token as a 1×1 map through ``trunk.head`` (avg-pool over 1×1 is a no-op, so a channel
        LayerNorm) then ``visual.head`` (MLP into the joint space).
        """
        norm = self.trunk.head.norm
        x = F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)
        return self.clip_model.visual.head(x)

    def image_tokens(self, features: dict[str, Tensor]) -> Tensor:
        """X_I [B, N_I, D_I]: projected ``clip_vis_dense`` tokens, row-major, clamped ≥ 0."""
        dense = features['clip_vis_dense']
        tokens = dense.flatten(2).transpose(1, 2)  # [B, h·w, C5], row-major over (row, col)
        return self.project_dense(tokens).clamp_min(0.0)

    @torch.no_grad()
    def encode(self, images: Tensor) -> ImageTokens:
        """preprocess + forward + image_tokens in one call (the node's per-frame path)."""
        padded, valid = self.preprocess(images)
        features = self(padded)
        dense = features['clip_vis_dense']
        return ImageTokens(
            tokens=self.image_tokens(features),
            grid=(int(dense.shape[-2]), int(dense.shape[-1])),
            valid_size=valid,
            features=features,
        )

    # -- text side -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, token_ids: Tensor) -> Tensor:
        """CLIP text embeddings (unnormalised, as TACO stores its bank) for tokenised prompts."""
        if not self.has_text_tower:
            raise RuntimeError(
                'the CLIP text tower was dropped; build anchor banks before drop_text_tower()')
        return self.clip_model.encode_text(token_ids).float()

    def text_tower_to(self, device: str | torch.device) -> None:
        """Move only the text tower (it runs when a vocabulary is encoded, not per window)."""
        if not self.has_text_tower:
            return
        model = self.clip_model
        for name in ('transformer', 'token_embedding', 'ln_final'):
            getattr(model, name).to(device)
        for name in ('positional_embedding', 'text_projection'):
            tensor = getattr(model, name)
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.to(device)
        if getattr(model, 'attn_mask', None) is not None:
            model.attn_mask = model.attn_mask.to(device)

    @property
    def text_device(self) -> torch.device:
        """Where the text tower's weights are (tokens must go there)."""
        if not self.has_text_tower:
            raise RuntimeError('the CLIP text tower was dropped')
        return self.clip_model.token_embedding.weight.device

    def drop_text_tower(self) -> None:
        """Free the CLIP text transformer (~120M parameters for ConvNeXt-L) once the bank is built.

        ``logit_scale`` is kept: FC-CLIP's out-of-vocabulary head uses it.
        """
        for name in TEXT_TOWER_ATTRIBUTES:
            if hasattr(self.clip_model, name):
                delattr(self.clip_model, name)
                setattr(self.clip_model, name, None)
        if hasattr(self.clip_model, 'attn_mask'):
            delattr(self.clip_model, 'attn_mask')
            self.clip_model.attn_mask = None


def _check_convnext_tower(clip_model: nn.Module) -> None:
    """Refuse visual towers that are not the timm-ConvNeXt + MLP-head layout assumed here."""
    visual = getattr(clip_model, 'visual', None)
    trunk = getattr(visual, 'trunk', None)
    missing = [
        name for name, obj in (
            ('visual.trunk.stem', getattr(trunk, 'stem', None)),
            ('visual.trunk.stages', getattr(trunk, 'stages', None)),
            ('visual.trunk.norm_pre', getattr(trunk, 'norm_pre', None)),
            ('visual.trunk.head.norm', getattr(getattr(trunk, 'head', None), 'norm', None)),
            ('visual.head.mlp', getattr(getattr(visual, 'head', None), 'mlp', None)),
        ) if obj is None
    ]
    if missing:
        raise ValueError(
            'clip_model must be an open_clip CLIP with a timm ConvNeXt trunk and an MLP head '
            f'(timm_proj="mlp"); missing: {", ".join(missing)}')
    pre_logits = getattr(trunk.head, 'pre_logits', nn.Identity())
    if not isinstance(pre_logits, nn.Identity):
        # A hidden head layer would sit between the norm and the CLIP head; project_dense skips it.
        raise ValueError('timm ConvNeXt heads with a hidden pre-logits layer are not supported')
