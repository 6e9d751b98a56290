"""FC-CLIP segmenter prompted by co-NMF image factors (method.md §5.1, §6.3), no detectron2.

TACO replaces FC-CLIP's text classifier by the K image factors H_I of the current window (each row
L2-normalised) plus FC-CLIP's void embedding, and keeps only the "unseen" branch of the geometric ensemble:

    p_in(k|q)  = softmax_k( s_dec  · cos(e_q, h_k) )                 decoder (in-vocabulary) head
    p_out(k|q) = softmax_k( s_clip · cos(c_q, h_k) )                 mask-pooled CLIP (out-of-vocabulary)
    cls_q      = (1 − β) log p_in + β log p_out                       (α instead of β for "seen" factors)
    v_q        = softmax( s_dec · cos(e_q, [h_1..h_K, void]) )[void]  void probability
    sem[k](x)  = Σ_q w_qk σ(m_q(x)),  w_qk = (1 − v_q) softmax_k(cls_q)  (through FC-CLIP's log(p + 1e-8))

with e_q the decoder class embedding, c_q = CLIP visual head(MaskPool(clip_vis_dense, m_q)), m_q the mask
logits and s_dec / s_clip the learned logit scales (exp, clamped at 100).
TACO: α = 0.4, β = 1.0, so cls = log p_out.

Everything except the final products is independent of the factors: :meth:`FCCLIP.prepare` runs the pixel
decoder, the transformer decoder and the CLIP mask pooling once per frame and returns a
:class:`PreparedFrame`; :meth:`FCCLIP.semantic_map` re-scores it for any factor set. The backbone is the
shared :class:`~taco_ros.core.clip_backbone.ClipBackbone` (one CLIP for X_I and the segmenter), and the
segmenter runs from the backbone features the pipeline already computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taco_ros.core.fcclip.config import FCCLIPConfig
from taco_ros.core.fcclip.pixel_decoder import MSDeformAttnPixelDecoder
from taco_ros.core.fcclip.transformer_decoder import (
    MaskedTransformerDecoder,
    mask_pooling,
)

# Queries upsampled at once when building full-resolution mask probabilities: bounds the transient
# memory to B·chunk·H·W floats (32 queries at 764² ≈ 75 MB) instead of B·Q·H·W (584 MB for Q = 250).
DEFAULT_QUERY_CHUNK = 32
# FC-CLIP stores class probabilities as log(p + 1e-8) and softmaxes them again in semantic inference.
PROB_EPS = 1e-8
# State-dict entries of training-only modules (SetCriterion's class weights): never needed at inference.
TRAINING_ONLY_PREFIXES = ('criterion.',)


@dataclass
class PreparedFrame:
    """Classifier-independent FC-CLIP outputs for a batch of frames (the cache re-scored per factor set).

    mask_logits: [B, Q, H_pad/4, W_pad/4] last-layer mask logits m_q (fp32).
    class_embed: [B, Q, E] decoder class embeddings e_q, L2-normalised (fp32).
    clip_embed: [B, Q, E] mask-pooled CLIP embeddings c_q through the CLIP visual head, L2-normalised.
    in_scale / clip_scale: min(exp(logit_scale), 100) of the decoder and of CLIP (Python floats).
    padded_size: (H_pad, W_pad) of the network input; valid_size: (h, w) of the image inside it.
    mask_probs: optional cache {out_size: σ(m_q) resized to out_size, [B, Q, H, W]}.
    """

    mask_logits: Tensor
    class_embed: Tensor
    clip_embed: Tensor
    in_scale: float
    clip_scale: float
    padded_size: tuple[int, int]
    valid_size: tuple[int, int]
    mask_probs: dict[tuple[int, int], Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.mask_logits.shape[0])

    @property
    def num_queries(self) -> int:
        return int(self.mask_logits.shape[1])


class SemSegHead(nn.Module):
    """``sem_seg_head``: FC-CLIP's FCCLIPHead, a pixel decoder followed by the transformer decoder."""

    def __init__(self, cfg: FCCLIPConfig) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(cfg)
        self.predictor = MaskedTransformerDecoder(cfg)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.predictor(multi_scale, mask_features)


class CriterionState(nn.Module):
    """SetCriterion's ``empty_weight`` buffer (class weights, no-object = 0.1).

    Training-only, but a persistent buffer of FC-CLIP's model, so the released checkpoint carries
    ``criterion.empty_weight``; holding it keeps this module's state_dict identical to the checkpoint's.
    """

    def __init__(self, num_classes: int, no_object_weight: float) -> None:
        super().__init__()
        weight = torch.ones(num_classes + 1)
        weight[-1] = no_object_weight
        self.register_buffer('empty_weight', weight)


class FCCLIP(nn.Module):
    """FC-CLIP inference model around a shared CLIP backbone.

    Submodules (checkpoint layout): ``backbone`` (ClipBackbone → ``backbone.clip_model.*``),
    ``sem_seg_head.pixel_decoder``, ``sem_seg_head.predictor``, ``void_embedding``, ``criterion``.

    backbone must provide ``forward(padded) -> features``, ``project_dense(x)`` and ``clip_model.logit_scale``
    (see :class:`taco_ros.core.clip_backbone.ClipBackbone`).
    """

    def __init__(self, cfg: FCCLIPConfig | None, backbone: nn.Module) -> None:
        super().__init__()
        cfg = cfg or FCCLIPConfig()
        for attr in ('project_dense', 'clip_model'):
            if not hasattr(backbone, attr):
                raise ValueError(f'backbone lacks {attr!r}; pass a ClipBackbone')
        self.cfg = cfg
        self.backbone = backbone
        self.sem_seg_head = SemSegHead(cfg)
        # Registration order as in FC-CLIP, so state_dict() lists keys in the checkpoint's order.
        self.criterion = CriterionState(cfg.num_classes, cfg.no_object_weight)
        self.void_embedding = nn.Embedding(1, cfg.embed_dim)
        self.query_chunk = DEFAULT_QUERY_CHUNK
        # Inference only: FC-CLIP has no training-mode inference path (the CLIP trunk's drop_path must stay
        # off) and no gradients are ever needed.
        self.requires_grad_(False)
        self.eval()

    # -- classifier-independent part ----------------------------------------------------------------
    @torch.no_grad()
    def prepare(
        self,
        features: dict[str, Tensor],
        valid_size: tuple[int, int] | None = None,
        cache_size: tuple[int, int] | None = None,
    ) -> PreparedFrame:
        """Run the head on backbone features and cache all factor-independent results.

        features: the ClipBackbone outputs ('res2'..'res5', 'clip_vis_dense') of a padded batch.
        valid_size: (h, w) of the image inside the padded input (default: the whole padded input).
        cache_size: if given, also cache σ(m_q) resized to this output size, so that
            :meth:`semantic_map` at that size costs only one product (memory B·Q·H·W floats).
        """
        missing = [k for k in ('res2', 'res3', 'res4', 'res5', 'clip_vis_dense') if k not in features]
        if missing:
            raise ValueError(f'features lack {missing}; pass the ClipBackbone forward() output')
        res2 = features['res2']
        padded_size = (int(res2.shape[-2]) * 4, int(res2.shape[-1]) * 4)
        valid = _check_valid_size(valid_size, padded_size)
        outputs = self.sem_seg_head(features)
        mask_logits = outputs['pred_masks'].float()
        class_embed = F.normalize(outputs['class_embed'].float(), dim=-1)
        clip_embed = self._pooled_clip_embeddings(features['clip_vis_dense'], mask_logits)
        clip_embed = F.normalize(clip_embed, dim=-1)
        prepared = PreparedFrame(
            mask_logits=mask_logits,
            class_embed=class_embed,
            clip_embed=clip_embed,
            in_scale=_clamped_scale(self.sem_seg_head.predictor.logit_scale),
            clip_scale=_clamped_scale(self.backbone.clip_model.logit_scale),
            padded_size=padded_size,
            valid_size=valid,
        )
        if cache_size is not None:
            self.cache_mask_probs(prepared, cache_size)
        return prepared

    def _pooled_clip_embeddings(self, dense: Tensor, mask_logits: Tensor) -> Tensor:
        """Out-of-vocabulary branch: masks resized to the CLIP grid, binarised, mean-pooled over the dense
        CLIP features of the SAME backbone pass, then the per-token CLIP visual head → [B, Q, E] fp32."""
        masks = F.interpolate(mask_logits, size=dense.shape[-2:], mode='bilinear', align_corners=False)
        pooled = mask_pooling(dense, masks.to(dense.dtype))
        return self.backbone.project_dense(pooled).float()

    @torch.no_grad()
    def cache_mask_probs(self, prepared: PreparedFrame, out_size: tuple[int, int]) -> Tensor:
        """σ(m_q) on the output grid [B, Q, H, W], stored in ``prepared.mask_probs[out_size]``."""
        out_size = _check_size(out_size, 'out_size')
        if out_size not in prepared.mask_probs:
            # Filled chunk by chunk: peak memory is the cache plus one chunk, not twice the cache.
            probs = prepared.mask_logits.new_empty(prepared.batch_size, prepared.num_queries, *out_size)
            for start in range(0, prepared.num_queries, self.query_chunk):
                probs[:, start:start + self.query_chunk] = self._mask_probs_chunk(prepared, start, out_size)
            prepared.mask_probs[out_size] = probs
        return prepared.mask_probs[out_size]

    def _mask_probs_chunk(self, prepared: PreparedFrame, start: int, out_size: tuple[int, int]) -> Tensor:
        """σ of a chunk of masks after FC-CLIP's post-processing: bilinear to the padded size, crop to the
        valid image, bilinear to the output size (skipped when it equals the valid size: an identity)."""
        logits = prepared.mask_logits[:, start:start + self.query_chunk]
        logits = F.interpolate(logits, size=prepared.padded_size, mode='bilinear', align_corners=False)
        h, w = prepared.valid_size
        logits = logits[:, :, :h, :w]
        if out_size != (h, w):
            logits = F.interpolate(logits, size=out_size, mode='bilinear', align_corners=False)
        return logits.sigmoid()

    # -- classifier-dependent part ------------------------------------------------------------------
    def classifier(self, factors: Tensor, batch_size: int) -> Tensor:
        """[B, K+1, E]: L2-normalised factor rows per image, then the normalised void embedding.

        factors: [K, E] (shared by the batch) or [B, K, E] (TACO's per-image classifier).
        """
        if factors.ndim == 2:
            factors = factors.unsqueeze(0).expand(batch_size, -1, -1)
        if factors.ndim != 3 or factors.shape[0] != batch_size or factors.shape[-1] != self.cfg.embed_dim:
            raise ValueError(f'factors must be [K, {self.cfg.embed_dim}] or [{batch_size}, K, '
                             f'{self.cfg.embed_dim}], got shape {tuple(factors.shape)}')
        if factors.shape[1] < 1:
            raise ValueError('factors must hold at least one factor (K ≥ 1)')
        if not torch.isfinite(factors).all():
            raise ValueError('factors contain NaN or inf')
        device = self.void_embedding.weight.device
        rows = F.normalize(factors.to(device=device, dtype=torch.float32), dim=-1)
        void = F.normalize(self.void_embedding.weight.float(), dim=-1).expand(batch_size, 1, -1)
        return torch.cat([rows, void], dim=1)

    @torch.no_grad()
    def query_weights(self, prepared: PreparedFrame, factors: Tensor, seen: Tensor | None = None) -> Tensor:
        """w_qk = (1 − v_q)·p(k|q) [B, Q, K]: how much query q votes for factor k (method.md §5.1).

        seen: optional [K] or [B, K] bool, factors to treat as training ("seen") classes (ensemble weight α);
            default none — TACO marks every factor unseen (β).
        """
        classifier = self.classifier(factors, prepared.batch_size).to(prepared.class_embed.device)
        k = classifier.shape[1] - 1
        in_logits = prepared.in_scale * torch.bmm(prepared.class_embed, classifier.transpose(1, 2))
        clip_logits = prepared.clip_scale * torch.bmm(prepared.clip_embed, classifier.transpose(1, 2))
        log_p_in = in_logits[..., :k].log_softmax(-1)
        log_p_out = clip_logits[..., :k].log_softmax(-1)
        beta = torch.full((prepared.batch_size, 1, k), self.cfg.ensemble_beta, device=log_p_in.device)
        if seen is not None:
            seen = torch.as_tensor(seen, dtype=torch.bool, device=log_p_in.device)
            if seen.shape not in ((k,), (prepared.batch_size, k)):
                raise ValueError(
                    f'seen must be [{k}] or [{prepared.batch_size}, {k}], got {tuple(seen.shape)}')
            beta = torch.where(seen.reshape(-1, 1, k), self.cfg.ensemble_alpha, beta)
        # log(p_in^(1-β) p_out^β), computed in log space (no underflow to log 0).
        cls = (1.0 - beta) * log_p_in + beta * log_p_out
        void_prob = in_logits.softmax(-1)[..., k:]
        probs = torch.cat([cls.softmax(-1) * (1.0 - void_prob), void_prob], dim=-1)
        # FC-CLIP's semantic inference softmaxes log(p + 1e-8): reproduce it exactly, then drop void.
        return torch.log(probs + PROB_EPS).softmax(-1)[..., :k]

    @torch.no_grad()
    def semantic_map(
        self,
        prepared: PreparedFrame,
        factors: Tensor,
        out_size: tuple[int, int] | None = None,
        channels: Sequence[int] | None = None,
        seen: Tensor | None = None,
    ) -> Tensor:
        """sem[k](x) = Σ_q (1 − v_q) p(k|q) σ(m_q(x)) → [B, K, H, W] (or [B, len(channels), H, W]).

        out_size: (H, W) of the map (default: the valid image size, 764² in the paper setting).
        channels: factor indices to compute (e.g. [k*]); the classifier still holds all K factors.
        Uses the cached σ(m_q) of ``prepared`` when it holds out_size, else recomputes them chunk by chunk.
        """
        out_size = _check_size(out_size or prepared.valid_size, 'out_size')
        weights = self.query_weights(prepared, factors, seen)
        if channels is not None:
            index = torch.as_tensor(list(channels), dtype=torch.long, device=weights.device)
            if index.numel() == 0 or index.min() < 0 or index.max() >= weights.shape[-1]:
                raise ValueError(f'channels {list(channels)} out of range for K={weights.shape[-1]}')
            weights = weights[..., index]
        cached = prepared.mask_probs.get(out_size)
        sem = weights.new_zeros(prepared.batch_size, weights.shape[-1], out_size[0] * out_size[1])
        for start in range(0, prepared.num_queries, self.query_chunk):
            stop = start + self.query_chunk
            if cached is not None:
                probs = cached[:, start:stop]
            else:
                probs = self._mask_probs_chunk(prepared, start, out_size)
            sem += torch.bmm(weights[:, start:stop].transpose(1, 2), probs.flatten(2))
        return sem.view(prepared.batch_size, -1, *out_size)

    @torch.no_grad()
    def forward(
        self,
        features: dict[str, Tensor],
        factors: Tensor,
        valid_size: tuple[int, int] | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """prepare + semantic_map in one call (no cache kept)."""
        return self.semantic_map(self.prepare(features, valid_size), factors, out_size)

    @torch.no_grad()
    def segment_images(self, images: Tensor, factors: Tensor,
                       out_size: tuple[int, int] | None = None) -> Tensor:
        """RGB frames [B, 3, H, W] (0..255) → semantic maps [B, K, h, w] on the resized image grid."""
        padded, valid = self.backbone.preprocess(images)
        return self.forward(self.backbone(padded), factors, valid, out_size)

    def inference_keys(self) -> list[str]:
        """State-dict keys needed at inference (all but training-only buffers)."""
        return [k for k in self.state_dict() if not k.startswith(TRAINING_ONLY_PREFIXES)]


def build_fcclip(backbone: nn.Module, cfg: FCCLIPConfig | None = None) -> FCCLIP:
    """FC-CLIP head around an existing ClipBackbone, on the backbone's device, in eval mode."""
    model = FCCLIP(cfg, backbone)
    device = next(backbone.parameters()).device
    return model.to(device).eval()


def _clamped_scale(logit_scale: Tensor) -> float:
    return float(torch.clamp(logit_scale.detach().float().exp(), max=100.0))


def _check_size(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f'{name} must be a positive (height, width), got {size}')
    return int(size[0]), int(size[1])


def _check_valid_size(valid_size: Sequence[int] | None, padded_size: tuple[int, int]) -> tuple[int, int]:
    if valid_size is None:
        return padded_size
    valid = _check_size(valid_size, 'valid_size')
    if valid[0] > padded_size[0] or valid[1] > padded_size[1]:
        raise ValueError(f'valid_size {valid} exceeds the padded input {padded_size}')
    return valid
