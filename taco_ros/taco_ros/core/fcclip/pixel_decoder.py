"""FC-CLIP / Mask2Former multi-scale deformable-attention pixel decoder (method.md §6.3 step 2).

res5, res4, res3 (strides 32, 16, 8) are projected to ``conv_dim`` channels, refined jointly by a
deformable-attention encoder, and one FPN step adds res2 to give the stride-4 mask features. State-dict
names follow FC-CLIP's ``MSDeformAttnPixelDecoder`` so the released checkpoint loads unchanged:
``input_proj.{0,1,2}``, ``transformer.level_embed``, ``transformer.encoder.layers.{i}``, ``mask_features``,
``adapter_1``, ``layer_1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taco_ros.core.fcclip.config import FCCLIPConfig
from taco_ros.core.fcclip.deform_attn import MSDeformAttn

# Feature maps consumed by the deformable encoder, from coarse to fine (the encoder's level order).
ENCODER_FEATURES = ('res5', 'res4', 'res3')


def sine_position_embedding(height: int, width: int, num_feats: int, device: torch.device | str,
                            temperature: float = 10000.0) -> Tensor:
    """DETR's normalised 2-D sine embedding [1, 2·num_feats, H, W] (no padding mask), fp32.

    Row index i ∈ 1..H is scaled to i/H·2π (column likewise); each axis gives num_feats channels
    sin(p/t_0), cos(p/t_0), sin(p/t_1), … with t_j = temperature^(2⌊j/2⌋/num_feats); y channels come first.
    """
    eps = 1e-6
    scale = 2.0 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / num_feats)

    def encode(p: Tensor) -> Tensor:  # [n] → [n, num_feats], sin/cos interleaved
        angles = p[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0)


class ConvNorm(nn.Conv2d):
    """detectron2's ``Conv2d``: a conv with an optional ``norm`` submodule and activation.

    Keeps the checkpoint names ``weight``, ``bias`` and ``norm.weight`` / ``norm.bias``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 norm: nn.Module | None = None, activation: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention on (src + pos), then a ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoderStack(nn.Module):
    """``transformer.encoder``: the list of encoder layers (holds only ``layers``)."""

    def __init__(self, layers: list[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class DeformableEncoder(nn.Module):
    """``transformer``: level embeddings + the encoder stack over the flattened multi-level sequence."""

    def __init__(self, d_model: int, d_ffn: int, num_layers: int, n_levels: int, n_heads: int,
                 n_points: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.encoder = DeformableEncoderStack(
            [DeformableEncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(num_layers)])
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
        """Pixel centres ((j + 0.5)/W, (i + 0.5)/H) of every level, row-major, [S, 2] as (x, y).

        With no padding mask every valid ratio is 1, so a query's reference point is the same fraction on
        all levels.
        """
        points = []
        for h, w in spatial_shapes:
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
        return torch.cat(points, 0)

    def forward(self, srcs: list[Tensor], pos_embeds: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """srcs/pos_embeds: per level [N, C, H_l, W_l] → memory [N, S, C] and the level shapes."""
        spatial_shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                         for lvl, p in enumerate(pos_embeds)], 1)
        n_levels = len(srcs)
        ref = self.reference_points(spatial_shapes, src.device).to(src.dtype)
        ref = ref[None, :, None, :].expand(src.shape[0], -1, n_levels, -1)
        for layer in self.encoder.layers:
            src = layer(src, pos, ref, spatial_shapes)
        return src, spatial_shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: (res2..res5) → mask features (stride 4) + three multi-scale maps for the decoder."""

    def __init__(self, cfg: FCCLIPConfig) -> None:
        super().__init__()
        res2_c, res3_c, res4_c, res5_c = cfg.in_channels
        self.conv_dim = cfg.conv_dim
        # Coarse to fine, the encoder's level order (res5, res4, res3).
        self.input_proj = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, cfg.conv_dim, kernel_size=1), nn.GroupNorm(32, cfg.conv_dim))
            for c in (res5_c, res4_c, res3_c)
        ])
        self.transformer = DeformableEncoder(
            cfg.conv_dim, cfg.enc_dim_feedforward, cfg.enc_layers, len(ENCODER_FEATURES), cfg.nheads,
            cfg.enc_n_points)
        self.mask_features = ConvNorm(cfg.conv_dim, cfg.mask_dim, kernel_size=1)
        # One FPN level: stride 8 (finest encoder level) → stride 4 (COMMON_STRIDE). With GN, no conv bias.
        self.adapter_1 = ConvNorm(res2_c, cfg.conv_dim, kernel_size=1, bias=False,
                                  norm=nn.GroupNorm(32, cfg.conv_dim))
        self.layer_1 = ConvNorm(cfg.conv_dim, cfg.conv_dim, kernel_size=3, bias=False,
                                norm=nn.GroupNorm(32, cfg.conv_dim), activation=F.relu)
        self._init_weights()

    def _init_weights(self) -> None:
        # Training-time initialisation (xavier / c2_xavier); only matters for random-weight runs.
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for conv in (self.mask_features, self.adapter_1, self.layer_1):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """features: 'res2'..'res5' [B, C_l, H/s, W/s] (any float dtype).

        Returns mask_features [B, mask_dim, H/4, W/4] and multi_scale [stride 32, 16, 8] maps, fp32.
        Runs in fp32 with autocast off, as FC-CLIP does (its deformable op has no half-precision path).
        """
        missing = [k for k in ('res2', *ENCODER_FEATURES) if k not in features]
        if missing:
            raise ValueError(f'pixel decoder needs backbone features {missing}')
        device_type = features['res5'].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            dtype = self.mask_features.weight.dtype
            srcs, pos = [], []
            for proj, name in zip(self.input_proj, ENCODER_FEATURES, strict=True):
                x = features[name].to(dtype)
                srcs.append(proj(x))
                pos.append(sine_position_embedding(x.shape[-2], x.shape[-1], self.conv_dim // 2, x.device)
                           .to(dtype).expand(x.shape[0], -1, -1, -1))
            memory, spatial_shapes = self.transformer(srcs, pos)
            batch = memory.shape[0]
            sizes = [h * w for h, w in spatial_shapes]
            levels = [z.transpose(1, 2).reshape(batch, -1, h, w)
                      for z, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes, strict=True)]
            lateral = self.adapter_1(features['res2'].to(dtype))
            finest = F.interpolate(levels[-1], size=lateral.shape[-2:], mode='bilinear', align_corners=False)
            fpn = self.layer_1(lateral + finest)
            return self.mask_features(fpn), levels
