"""FC-CLIP's multi-scale masked-attention transformer decoder (Mask2Former decoder + FC-CLIP class head).

method.md §6.3 step 4. ``num_queries`` learned queries attend, layer by layer, to one of the three
pixel-decoder scales (1/32 → 1/16 → 1/8 → …), each cross-attention restricted to the foreground of the
mask predicted by the previous layer. Every prediction head gives per-query mask logits
m_q = mask_embed(q) · mask_features; the last one also gives FC-CLIP's in-vocabulary class embedding
    e_q = class_embed(pool_proj(MaskPool(mask_features, m_q)) + q)   (embed_dim, the CLIP joint space).

Only the last prediction is used at inference, and class embeddings never feed back into the masks, so the
intermediate heads here compute masks only (upstream also computes class logits there for its auxiliary
losses). Intermediate masks only serve as attention masks, bilinearly resized to one memory level; bilinear
resizing is linear per channel, so resize(mask_embed·F) = mask_embed·resize(F) and they are computed at the
level size from resized mask features (equal up to float rounding; 576, 2304 or 9216 pixels per query
instead of 36864 at 768², and no per-layer resize of 250 masks).
Nothing here depends on the classifier: the in-vocabulary logits are formed later by
:meth:`MaskedTransformerDecoder.class_logits`, which is what lets the segmenter re-score cached queries.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taco_ros.core.fcclip.config import FCCLIPConfig
from taco_ros.core.fcclip.pixel_decoder import sine_position_embedding

NUM_SCALES = 3
LOGIT_SCALE_MAX = 100.0


class CrossAttentionLayer(nn.Module):
    """Post-norm masked cross-attention: queries (+ query_pos) attend to memory (+ pos)."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, memory: Tensor, attn_mask: Tensor | None, pos: Tensor,
                query_pos: Tensor) -> Tensor:
        out = self.multihead_attn(tgt + query_pos, memory + pos, memory, attn_mask=attn_mask,
                                  need_weights=False)[0]
        return self.norm(tgt + out)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention among queries, q = k = tgt + query_pos."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])


class FFNLayer(nn.Module):
    """Post-norm ReLU feed-forward block."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (state-dict names ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def mask_pooling(features: Tensor, mask_logits: Tensor) -> Tensor:
    """FC-CLIP's MaskPooling: mean of ``features`` [B, C, H, W] inside each mask (logit > 0) → [B, Q, C].

    Masks are bilinearly resized to the feature size first; an empty mask pools to 0 (area + 1e-8).
    """
    if mask_logits.shape[-2:] != features.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=features.shape[-2:], mode='bilinear',
                                    align_corners=False)
    binary = (mask_logits > 0).to(features.dtype)
    weights = binary / (binary.sum(dim=(-1, -2), keepdim=True) + 1e-8)
    return torch.einsum('bchw,bqhw->bqc', features, weights)


def scaled_cosine_logits(embeddings: Tensor, classifier: Tensor, logit_scale: Tensor) -> Tensor:
    """min(exp(logit_scale), 100) · cos(embeddings, classifier rows).

    embeddings [B, Q, E]; classifier [B, C, E] (rows already L2-normalised) → [B, Q, C].
    """
    scale = torch.clamp(logit_scale.exp(), max=LOGIT_SCALE_MAX)
    return scale * torch.bmm(F.normalize(embeddings, dim=-1), classifier.transpose(1, 2))


class MaskedTransformerDecoder(nn.Module):
    """``sem_seg_head.predictor`` of FC-CLIP (MultiScaleMaskedTransformerDecoder, FC-CLIP variant)."""

    def __init__(self, cfg: FCCLIPConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.num_heads = cfg.nheads
        self.num_layers = cfg.dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d, cfg.nheads) for _ in range(cfg.dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d, cfg.nheads) for _ in range(cfg.dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d, cfg.dim_feedforward) for _ in range(cfg.dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.num_queries = cfg.num_queries
        self.query_feat = nn.Embedding(cfg.num_queries, d)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.level_embed = nn.Embedding(NUM_SCALES, d)
        # Pixel-decoder maps already have hidden_dim channels: FC-CLIP's input projections are empty
        # Sequentials (no state-dict keys); kept as identities for the same module tree.
        self.input_proj = nn.ModuleList(nn.Sequential() for _ in range(NUM_SCALES))
        self.mask_embed = MLP(d, d, cfg.mask_dim, 3)
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.class_embed = MLP(d, d, cfg.embed_dim, 3)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._init_weights()

    def _init_weights(self) -> None:
        # Mask2Former initialises the attention/FFN matrices with xavier; only matters for random weights.
        for layers in (self.transformer_self_attention_layers, self.transformer_cross_attention_layers,
                       self.transformer_ffn_layers):
            for p in layers.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def _predict_masks(self, output: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Prediction head without the classifier: (normed queries [B,Q,C], mask logits [B,Q,H,W])."""
        decoded = self.decoder_norm(output)
        masks = torch.einsum('bqc,bchw->bqhw', self.mask_embed(decoded), mask_features)
        return decoded, masks

    def _attention_mask(self, mask_logits: Tensor) -> Tensor:
        """Block (True) memory positions where the mask at the level's size has sigmoid < 0.5; a query whose
        mask blocks everything attends everywhere instead. [B·heads, Q, h·w] bool."""
        blocked = (mask_logits.sigmoid().flatten(2) < 0.5)
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        return blocked.repeat_interleave(self.num_heads, dim=0)

    def forward(self, multi_scale: list[Tensor], mask_features: Tensor) -> dict[str, Tensor]:
        """multi_scale: 3 maps [B, C, h_l, w_l] (strides 32/16/8); mask_features [B, mask_dim, H/4, W/4].

        Returns 'pred_masks' [B, Q, H/4, W/4] (logits of the last layer) and 'class_embed' [B, Q, embed_dim]
        (FC-CLIP's in-vocabulary embedding, unnormalised).
        """
        if len(multi_scale) != NUM_SCALES:
            raise ValueError(f'decoder expects {NUM_SCALES} multi-scale maps, got {len(multi_scale)}')
        batch = mask_features.shape[0]
        dtype = self.query_feat.weight.dtype
        mask_features = mask_features.to(dtype)
        sizes, srcs, pos = [], [], []
        for lvl, (x, proj) in enumerate(zip(multi_scale, self.input_proj, strict=True)):
            x = x.to(dtype)
            h, w = int(x.shape[-2]), int(x.shape[-1])
            sizes.append((h, w))
            pe = sine_position_embedding(h, w, x.shape[1] // 2, x.device).to(dtype)
            pos.append(pe.flatten(2).transpose(1, 2).expand(batch, -1, -1))
            srcs.append(proj(x).flatten(2).transpose(1, 2) + self.level_embed.weight[lvl])
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        # Mask features at each memory level's size: intermediate masks are needed only there.
        level_features = [F.interpolate(mask_features, size=size, mode='bilinear', align_corners=False)
                          for size in sizes]

        for i in range(self.num_layers):
            level = i % NUM_SCALES
            _, level_masks = self._predict_masks(output, level_features[level])
            attn_mask = self._attention_mask(level_masks)
            output = self.transformer_cross_attention_layers[i](output, srcs[level], attn_mask, pos[level],
                                                                query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
        decoded, masks = self._predict_masks(output, mask_features)

        pooled = self._mask_pooling_proj(mask_pooling(mask_features, masks))
        class_embed = self.class_embed(pooled + decoded)
        return {'pred_masks': masks, 'class_embed': class_embed}

    def class_logits(self, class_embed: Tensor, classifier: Tensor) -> Tensor:
        """In-vocabulary logits: the decoder's own learned scale × cosine with [factors; void] rows."""
        return scaled_cosine_logits(class_embed, classifier, self.logit_scale)
