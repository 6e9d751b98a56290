"""FC-CLIP in plain PyTorch: deformable attention, key layout, checkpoint loading, caching, semantic maps.

Random weights everywhere: these tests check structure and arithmetic, never segmentation quality.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from taco_ros.core.clip_backbone import ClipBackbone
from taco_ros.core.fcclip import (
    FCCLIP,
    FCCLIPConfig,
    build_fcclip,
    load_fcclip,
    load_fcclip_checkpoint,
    read_checkpoint,
)
from taco_ros.core.fcclip.deform_attn import MSDeformAttn, multi_scale_deformable_attention
from taco_ros.core.fcclip.pixel_decoder import sine_position_embedding
from taco_ros.core.fcclip.transformer_decoder import mask_pooling

FIXTURE = Path(__file__).parent / 'fixtures' / 'fcclip_convnext_large_keys.txt'
TINY_EMBED = 32


# --------------------------------------------------------------------------------------------------
# builders
def tiny_clip_backbone(input_size: int = 120) -> ClipBackbone:
    """A real ClipBackbone around a tiny open_clip CLIP (timm convnext_atto trunk, MLP head)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    vision = CLIPVisionCfg(timm_model_name='convnext_atto', timm_model_pretrained=False, timm_pool='',
                           timm_proj='mlp', image_size=64)
    text = CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return ClipBackbone(CLIP(embed_dim=TINY_EMBED, vision_cfg=vision, text_cfg=text), input_size=input_size)


def tiny_config(**overrides: object) -> FCCLIPConfig:
    base = dict(num_queries=12, hidden_dim=64, conv_dim=64, mask_dim=64, dim_feedforward=96,
                enc_dim_feedforward=80, dec_layers=4, enc_layers=2, nheads=4, embed_dim=TINY_EMBED,
                in_channels=[40, 80, 160, 320], num_classes=7)
    base.update(overrides)
    return FCCLIPConfig.from_dict(base)


def build_tiny(seed: int = 0, **overrides: object) -> FCCLIP:
    torch.manual_seed(seed)
    model = build_fcclip(tiny_clip_backbone(), tiny_config(**overrides))
    # Random queries all start near zero mask logits; spread them so masks, voids and classes vary.
    with torch.no_grad():
        for p in model.sem_seg_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope='module')
def tiny_model() -> FCCLIP:
    return build_tiny()


@pytest.fixture(scope='module')
def tiny_inputs(tiny_model: FCCLIP) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    torch.manual_seed(1)
    images = torch.rand(2, 3, 90, 150) * 255
    padded, valid = tiny_model.backbone.preprocess(images)
    with torch.no_grad():
        features = tiny_model.backbone(padded)
    return features, valid


def random_factors(batch: int, k: int, dim: int = TINY_EMBED, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, k, dim, generator=g)  # non-negative, like co-NMF factors


# --------------------------------------------------------------------------------------------------
# deformable attention
def naive_bilinear_zero_pad(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Bilinear sample of image [D, H, W] at fractional location (x, y) ∈ [0, 1]² with pixel centres at
    (j + 0.5)/W (align_corners=False); corners outside the map read 0."""
    d, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(d, dtype=image.dtype)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            r, c = y0 + dy, x0 + dx
            if 0 <= r < h and 0 <= c < w:
                out += wy * wx * image[:, r, c]
    return out


def naive_msda(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
               weights: torch.Tensor) -> torch.Tensor:
    n, _, m, d = value.shape
    lq, points = locations.shape[1], locations.shape[4]
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    image = value[b, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for p in range(points):
                        x, y = locations[b, q, head, lvl, p].tolist()
                        out[b, q, head] += weights[b, q, head, lvl, p] * naive_bilinear_zero_pad(image, x, y)
    return out.reshape(n, lq, m * d)


def border_locations(n: int, lq: int, m: int, levels: int, points: int, g: torch.Generator) -> torch.Tensor:
    loc = torch.rand(n, lq, m, levels, points, 2, generator=g) * 1.3 - 0.15  # some outside [0, 1]
    specials = torch.tensor([0.0, 1.0, -0.5, 1.5, 0.999, 0.001, 0.5])
    loc.view(-1, 2)[: specials.numel(), 0] = specials
    loc.view(-1, 2)[specials.numel(): 2 * specials.numel(), 1] = specials
    return loc


@pytest.mark.parametrize('shapes', [[(5, 7), (3, 4), (1, 1)], [(6, 6), (2, 9)], [(4, 3)]])
def test_deformable_attention_matches_naive_loop(shapes: list[tuple[int, int]]) -> None:
    g = torch.Generator().manual_seed(0)
    n, lq, m, d, points = 2, 5, 2, 3, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g)
    locations = border_locations(n, lq, m, len(shapes), points, g)
    weights = torch.rand(n, lq, m, len(shapes), points, generator=g)
    got = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = naive_msda(value, shapes, locations, weights)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_deformable_attention_module_matches_naive_loop() -> None:
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3), (1, 2)]
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2)
    with torch.no_grad():  # large offsets: many samples land outside the maps
        attn.sampling_offsets.weight.normal_(0, 2.0)
        attn.attention_weights.weight.normal_(0, 1.0)
    n, lq = 1, 7
    query = torch.randn(n, lq, 16)
    memory = torch.randn(n, sum(h * w for h, w in shapes), 16)
    ref = torch.rand(n, lq, 1, 2).expand(n, lq, 3, 2)
    with torch.no_grad():
        got = attn(query, ref, memory, shapes)
        value = attn.value_proj(memory).view(n, -1, 4, 4)
        offsets = attn.sampling_offsets(query).view(n, lq, 4, 3, 2, 2)
        weights = attn.attention_weights(query).view(n, lq, 4, 6).softmax(-1).view(n, lq, 4, 3, 2)
        scale = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)  # offsets are pixels of (W, H)
        locations = ref[:, :, None, :, None, :] + offsets / scale[None, None, None, :, None, :]
        expected = attn.output_proj(naive_msda(value, shapes, locations, weights))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_deformable_attention_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(24, 24), (12, 12), (6, 6)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 8, 32, generator=g)
    locations = border_locations(2, 300, 8, 3, 4, g)
    weights = torch.rand(2, 300, 8, 3, 4, generator=g)
    cpu = multi_scale_deformable_attention(value, shapes, locations, weights)
    gpu = multi_scale_deformable_attention(value.cuda(), shapes, locations.cuda(), weights.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_deformable_attention_rejects_inconsistent_shapes() -> None:
    value = torch.zeros(1, 10, 2, 4)
    with pytest.raises(ValueError, match='spatial_shapes'):
        multi_scale_deformable_attention(value, [(3, 3)], torch.zeros(1, 2, 2, 1, 1, 2),
                                         torch.zeros(1, 2, 2, 1, 1))


def test_sine_position_embedding_formula() -> None:
    h, w, feats = 3, 5, 6
    pe = sine_position_embedding(h, w, feats, 'cpu')
    assert pe.shape == (1, 2 * feats, h, w)
    for c in range(2 * feats):
        axis, j = divmod(c, feats)  # y channels first, then x
        t = 10000 ** (2 * (j // 2) / feats)
        for i in range(h):
            for k in range(w):
                p = (i + 1) / (h + 1e-6) if axis == 0 else (k + 1) / (w + 1e-6)
                angle = p * 2 * math.pi / t
                expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
                assert pe[0, c, i, k].item() == pytest.approx(expected, abs=1e-6)


def test_mask_pooling_averages_inside_mask_and_empty_mask_pools_to_zero() -> None:
    feats = torch.arange(2 * 16, dtype=torch.float32).view(1, 2, 4, 4)
    masks = torch.full((1, 2, 4, 4), -1.0)
    masks[0, 0, :2, :2] = 3.0
    pooled = mask_pooling(feats, masks)
    torch.testing.assert_close(pooled[0, 0], feats[0, :, :2, :2].mean(dim=(1, 2)))
    assert torch.all(pooled[0, 1] == 0)


def upstream_decoder_masks(decoder, multi_scale: list[torch.Tensor],
                           mask_features: torch.Tensor) -> torch.Tensor:
    """Mask2Former's loop as written upstream: stride-4 masks after every layer, then resized to the next
    memory level for the attention mask (the module computes them at the level size directly)."""
    batch = mask_features.shape[0]
    sizes = [tuple(x.shape[-2:]) for x in multi_scale]
    srcs = [x.flatten(2).transpose(1, 2) + decoder.level_embed.weight[i] for i, x in enumerate(multi_scale)]
    pos = [sine_position_embedding(h, w, x.shape[1] // 2, 'cpu').flatten(2).transpose(1, 2)
           for (h, w), x in zip(sizes, multi_scale, strict=True)]
    query_pos = decoder.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
    output = decoder.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)

    def masks_of(out: torch.Tensor) -> torch.Tensor:
        return torch.einsum('bqc,bchw->bqhw', decoder.mask_embed(decoder.decoder_norm(out)), mask_features)

    masks = masks_of(output)
    for i in range(decoder.num_layers):
        level = i % 3
        resized = F.interpolate(masks, size=sizes[level], mode='bilinear', align_corners=False)
        attn = resized.sigmoid().flatten(2) < 0.5
        attn = attn.unsqueeze(1).repeat(1, decoder.num_heads, 1, 1).flatten(0, 1)
        attn[torch.where(attn.sum(-1) == attn.shape[-1])] = False
        cross = decoder.transformer_cross_attention_layers[i]
        output = cross(output, srcs[level], attn, pos[level], query_pos)
        output = decoder.transformer_self_attention_layers[i](output, query_pos)
        output = decoder.transformer_ffn_layers[i](output)
        masks = masks_of(output)
    return masks


def test_decoder_level_size_attention_masks_match_upstream_stride4_masks(tiny_model, tiny_inputs) -> None:
    features, _ = tiny_inputs
    with torch.no_grad():
        mask_features, multi_scale = tiny_model.sem_seg_head.pixel_decoder(features)
        # Centred features put the random masks near 50 % blocked, so the attention masks matter.
        mask_features = mask_features - mask_features.mean(dim=(2, 3), keepdim=True)
        got = tiny_model.sem_seg_head.predictor(multi_scale, mask_features)['pred_masks']
        expected = upstream_decoder_masks(tiny_model.sem_seg_head.predictor, multi_scale, mask_features)
    assert got.shape == expected.shape == (2, 12, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# configuration
def test_config_defaults_are_convnext_large_coco_and_from_dict_checks_keys() -> None:
    cfg = FCCLIPConfig()
    assert (cfg.num_queries, cfg.dec_layers, cfg.enc_layers, cfg.hidden_dim, cfg.dim_feedforward) == (
        250, 9, 6, 256, 2048)
    assert cfg.in_channels == (192, 384, 768, 1536) and cfg.embed_dim == 768
    assert (cfg.ensemble_alpha, cfg.ensemble_beta) == (0.4, 1.0)
    assert FCCLIPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match='unknown FCCLIPConfig keys'):
        FCCLIPConfig.from_dict({'num_querys': 100})
    with pytest.raises(ValueError, match='ensemble_beta'):
        FCCLIPConfig.from_dict({'ensemble_beta': 1.5})
    with pytest.raises(ValueError, match='in_channels'):
        FCCLIPConfig.from_dict({'in_channels': [1, 2, 3]})


# --------------------------------------------------------------------------------------------------
# tiny model: semantic maps, caching, batching, checkpoints
def reference_semantic_map(model: FCCLIP, prepared, factors: torch.Tensor, out_size) -> torch.Tensor:
    """Upstream FC-CLIP arithmetic written out directly (powers then log, all masks at once)."""
    b = prepared.batch_size
    classifier = torch.cat([F.normalize(factors, dim=-1),
                            F.normalize(model.void_embedding.weight, dim=-1).expand(b, 1, -1)], 1)
    k = factors.shape[1]
    in_logits = prepared.in_scale * prepared.class_embed @ classifier.transpose(1, 2)
    out_logits = prepared.clip_scale * prepared.clip_embed @ classifier.transpose(1, 2)
    p_in, p_out = in_logits[..., :k].softmax(-1), out_logits[..., :k].softmax(-1)
    beta = model.cfg.ensemble_beta
    cls = (p_in ** (1 - beta) * p_out ** beta).log()
    void = in_logits.softmax(-1)[..., -1:]
    mask_cls = torch.log(torch.cat([cls.softmax(-1) * (1 - void), void], -1) + 1e-8)
    masks = F.interpolate(prepared.mask_logits, size=prepared.padded_size, mode='bilinear',
                          align_corners=False)
    h, w = prepared.valid_size
    masks = F.interpolate(masks[:, :, :h, :w], size=out_size, mode='bilinear', align_corners=False)
    return torch.einsum('bqc,bqhw->bchw', mask_cls.softmax(-1)[..., :-1], masks.sigmoid())


def test_prepare_shapes_and_semantic_map_matches_upstream_arithmetic(tiny_model, tiny_inputs) -> None:
    features, valid = tiny_inputs
    prepared = tiny_model.prepare(features, valid)
    assert prepared.padded_size == (128, 128) and valid == (120, 120)
    assert prepared.mask_logits.shape == (2, 12, 32, 32)
    assert prepared.class_embed.shape == prepared.clip_embed.shape == (2, 12, TINY_EMBED)
    torch.testing.assert_close(prepared.clip_embed.norm(dim=-1), torch.ones(2, 12))
    factors = random_factors(2, 5)
    for out_size in (valid, (90, 150)):
        sem = tiny_model.semantic_map(prepared, factors, out_size)
        assert sem.shape == (2, 5, *out_size)
        torch.testing.assert_close(sem, reference_semantic_map(tiny_model, prepared, factors, out_size),
                                   atol=1e-5, rtol=1e-5)
    assert sem.min() >= 0 and sem.std() > 0


def test_classifier_cache_gives_identical_maps_to_full_recompute(tiny_model, tiny_inputs) -> None:
    features, valid = tiny_inputs
    first, second = random_factors(2, 4, seed=3), random_factors(2, 6, seed=4)
    prepared = tiny_model.prepare(features, valid)
    tiny_model.semantic_map(prepared, first)  # re-scoring must not depend on earlier factor sets
    rescored = tiny_model.semantic_map(prepared, second)
    recomputed = tiny_model(features, second, valid)
    assert torch.equal(rescored, recomputed)
    tiny_model.cache_mask_probs(prepared, valid)
    assert torch.equal(tiny_model.semantic_map(prepared, second), recomputed)
    one = tiny_model.semantic_map(prepared, second, channels=[2])
    torch.testing.assert_close(one, recomputed[:, 2:3], atol=1e-6, rtol=1e-6)


def test_batch_uses_per_image_classifier(tiny_model, tiny_inputs) -> None:
    features, valid = tiny_inputs
    factors = random_factors(2, 3, seed=5)
    both = tiny_model(features, factors, valid)
    for b in range(2):
        single = {k: v[b:b + 1] for k, v in features.items()}
        alone = tiny_model(single, factors[b:b + 1], valid)
        torch.testing.assert_close(both[b:b + 1], alone, atol=1e-5, rtol=1e-5)
    shared = tiny_model(features, factors[0], valid)  # [K, E] broadcast to the batch
    torch.testing.assert_close(shared[0], both[0], atol=1e-6, rtol=1e-6)


def variant_of(model: FCCLIP, **overrides: object) -> FCCLIP:
    """Same weights (and the same backbone object), other inference constants."""
    variant = FCCLIP(tiny_config(**overrides), model.backbone)
    variant.load_state_dict(model.state_dict())
    return variant


def test_factor_scale_is_irrelevant_and_beta_changes_the_ensemble(tiny_model, tiny_inputs) -> None:
    features, valid = tiny_inputs
    factors = random_factors(2, 4, seed=6)
    prepared = tiny_model.prepare(features, valid)
    base = tiny_model.semantic_map(prepared, factors)
    torch.testing.assert_close(tiny_model.semantic_map(prepared, 7.0 * factors), base, atol=1e-5, rtol=1e-5)
    in_vocab_only = variant_of(tiny_model, ensemble_beta=0.0)
    assert not torch.allclose(in_vocab_only.semantic_map(prepared, factors), base, atol=1e-4)
    # A factor marked "seen" uses alpha; with alpha == beta that is the same map.
    same = variant_of(tiny_model, ensemble_alpha=1.0)
    all_seen = torch.ones(4, dtype=torch.bool)
    seen_map = same.semantic_map(prepared, factors, seen=all_seen)
    torch.testing.assert_close(seen_map, base, atol=1e-6, rtol=1e-6)
    half = variant_of(tiny_model, ensemble_alpha=0.0)
    mixed = half.semantic_map(prepared, factors, seen=torch.tensor([True, False, False, False]))
    assert not torch.allclose(mixed, base, atol=1e-4)


def test_segment_images_runs_backbone_then_head(tiny_model) -> None:
    images = torch.rand(1, 3, 60, 80) * 255
    sem = tiny_model.segment_images(images, random_factors(1, 3), out_size=(60, 80))
    assert sem.shape == (1, 3, 60, 80)


def test_bad_inputs_raise(tiny_model, tiny_inputs) -> None:
    features, valid = tiny_inputs
    with pytest.raises(ValueError, match='valid_size'):
        tiny_model.prepare(features, (200, 120))
    with pytest.raises(ValueError, match='features lack'):
        tiny_model.prepare({'res5': features['res5']}, valid)
    prepared = tiny_model.prepare(features, valid)
    with pytest.raises(ValueError, match='factors must be'):
        tiny_model.semantic_map(prepared, torch.rand(2, 3, TINY_EMBED + 1))
    with pytest.raises(ValueError, match='factors must be'):
        tiny_model.semantic_map(prepared, torch.rand(3, 3, TINY_EMBED))
    with pytest.raises(ValueError, match='NaN'):
        tiny_model.semantic_map(prepared, torch.full((2, 3, TINY_EMBED), float('nan')))
    with pytest.raises(ValueError, match='channels'):
        tiny_model.semantic_map(prepared, torch.rand(2, 3, TINY_EMBED), channels=[3])


def test_detectron2_checkpoint_round_trip(tmp_path: Path, tiny_inputs, caplog) -> None:
    features, valid = tiny_inputs
    source = build_tiny(seed=10)
    state = {f'module.{k}': v for k, v in source.state_dict().items()}
    state['module.sem_seg_head.predictor.class_embed_legacy.weight'] = torch.zeros(3)  # unexpected
    path = tmp_path / 'fcclip_tiny.pth'
    torch.save({'model': state, 'iteration': 368749}, path)

    target = build_tiny(seed=11)
    report = load_fcclip_checkpoint(target, path)
    assert report.ok and report.missing == [] and report.missing_training_only == []
    assert report.unexpected == ['sem_seg_head.predictor.class_embed_legacy.weight']
    assert report.loaded == len(source.state_dict())
    factors = random_factors(2, 3)
    assert torch.equal(target(features, factors, valid), source(features, factors, valid))

    # Bare dict (no "model" wrapper, no prefix), one shape mismatch, one inference key and the
    # training-only buffer absent.
    bare = dict(source.state_dict())
    bare['void_embedding.weight'] = torch.zeros(1, TINY_EMBED + 1)
    del bare['sem_seg_head.predictor.logit_scale']
    del bare['criterion.empty_weight']
    torch.save(bare, tmp_path / 'bare.pth')
    with caplog.at_level('WARNING'):
        report = load_fcclip_checkpoint(build_tiny(seed=12), tmp_path / 'bare.pth')
    assert not report.ok
    assert report.shape_mismatch == [('void_embedding.weight', (1, TINY_EMBED + 1), (1, TINY_EMBED))]
    assert report.missing == ['sem_seg_head.predictor.logit_scale']
    assert report.missing_training_only == ['criterion.empty_weight']
    assert 'void_embedding.weight' in caplog.text
    assert 'missing inference keys (1)' in report.summary()


def test_load_fcclip_head_only_keeps_backbone_and_refuses_incomplete_files(tmp_path: Path) -> None:
    source = build_tiny(seed=20)
    torch.save({'model': source.state_dict()}, tmp_path / 'full.pth')
    backbone = tiny_clip_backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model, report = load_fcclip(backbone, tmp_path / 'full.pth', tiny_config(), load_backbone=False)
    assert report.ok and report.skipped == len(before)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert torch.equal(model.void_embedding.weight, source.void_embedding.weight)
    model, report = load_fcclip(tiny_clip_backbone(), tmp_path / 'full.pth', tiny_config())
    stem = 'backbone.clip_model.visual.trunk.stem.0.weight'
    assert report.skipped == 0 and torch.equal(model.state_dict()[stem], source.state_dict()[stem])
    head_only = {k: v for k, v in source.state_dict().items()
                 if not k.startswith('sem_seg_head.pixel_decoder')}
    torch.save(head_only, tmp_path / 'partial.pth')
    with pytest.raises(ValueError, match='missing inference keys'):
        load_fcclip(tiny_clip_backbone(), tmp_path / 'partial.pth', tiny_config())


def test_read_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / 'absent.pth')
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
        read_checkpoint(tmp_path / 'junk.pth')
    torch.save({'model': {'a': torch.zeros(1), 'b': 3}}, tmp_path / 'mixed.pth')
    with pytest.raises(ValueError, match=r'neither tensors nor numpy arrays: \[.b \(int\).\]'):
        read_checkpoint(tmp_path / 'mixed.pth')


def test_detectron2_layouts_numpy_arrays_and_bookkeeping(tmp_path: Path, tiny_inputs, caplog) -> None:
    """What detectron2's checkpointer accepts: numpy arrays, a 'module.' prefix on every key, optimizer /
    scheduler / iteration entries next to 'model' (ignored); an unexpected key is logged."""
    features, valid = tiny_inputs
    source = build_tiny(seed=30)
    state = {f'module.{k}': v.numpy() for k, v in source.state_dict().items()}
    state['module.sem_seg_head.old_head.weight'] = torch.zeros(2).numpy()
    optimizer = {'state': {0: {'momentum_buffer': torch.ones(3)}},
                 'param_groups': [{'lr': 1e-4, 'params': [0]}]}
    torch.save({'model': state, 'optimizer': optimizer, 'scheduler': {'last_epoch': 9, 'base_lrs': [1e-4]},
                'iteration': 368749}, tmp_path / 'numpy.pth')
    target = build_tiny(seed=31)
    with caplog.at_level('WARNING'):
        report = load_fcclip_checkpoint(target, tmp_path / 'numpy.pth')
    assert report.ok and report.loaded == len(source.state_dict())
    assert report.unexpected == ['sem_seg_head.old_head.weight']
    assert 'sem_seg_head.old_head.weight' in caplog.text
    factors = random_factors(2, 3)
    assert torch.equal(target(features, factors, valid), source(features, factors, valid))


def test_module_prefix_on_some_keys_only_is_not_stripped(tmp_path: Path) -> None:
    """fvcore strips 'module.' only when every key carries it; otherwise the keys do not match and the
    loader refuses, listing the inference keys it misses."""
    state = dict(build_tiny(seed=32).state_dict())
    renamed = {(f'module.{k}' if k.startswith('sem_seg_head.predictor.') else k): v for k, v in state.items()}
    torch.save({'model': renamed}, tmp_path / 'mixed_prefix.pth')
    with pytest.raises(ValueError, match='missing inference keys') as info:
        load_fcclip(tiny_clip_backbone(), tmp_path / 'mixed_prefix.pth', tiny_config())
    assert 'sem_seg_head.predictor.' in str(info.value)


def test_bad_checkpoint_files_give_one_clear_error(tmp_path: Path) -> None:
    from taco_ros.core.model_files import ModelFileFormatError, UnsafeCheckpointError
    model_dir = tmp_path / 'models' / 'fcclip'
    model_dir.mkdir(parents=True)
    path = model_dir / 'fcclip_cocopan.pth'
    path.write_text('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>'
                    '</html>')
    with pytest.raises(ModelFileFormatError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and 'HTML page' in message and 'expected a PyTorch checkpoint' in message
    assert 'taco-ros models fetch fcclip-convnext-large-coco' in message
    torch.save({'model': build_tiny(seed=33).state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])      # an interrupted download
    with pytest.raises(ModelFileFormatError, match='is truncated') as info:
        read_checkpoint(path)
    assert info.value.__cause__ is None  # one message, not a chained library traceback
    torch.save({'model': {'a': torch.zeros(1)}, 'trainer': torch.nn.Linear(1, 1)}, path)  # pickled code
    with pytest.raises(UnsafeCheckpointError, match='weights_only'):
        read_checkpoint(path)


# --------------------------------------------------------------------------------------------------
# full-size ConvNeXt-L model (random weights)
def read_expected_keys() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in FIXTURE.read_text(encoding='utf-8').splitlines():
        if line.startswith('#') or not line.strip():
            continue
        key, shape = line.split('\t')
        dims = shape.strip('[]').replace(' ', '')
        rows.append((key, tuple(int(d) for d in dims.split(',')) if dims else ()))
    return rows


@pytest.fixture(scope='module')
def full_model() -> FCCLIP:
    import open_clip
    torch.manual_seed(0)
    clip = open_clip.create_model('convnext_large_d_320', pretrained=None)
    return build_fcclip(ClipBackbone(clip), FCCLIPConfig())


@pytest.mark.slow
def test_state_dict_matches_expected_keys(full_model: FCCLIP) -> None:
    expected = read_expected_keys()
    got = [(k, tuple(v.shape)) for k, v in full_model.state_dict().items()]
    assert len(expected) == 846
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, (missing[:5], extra[:5])
    assert got == expected  # same order too
    assert 'criterion.empty_weight' not in full_model.inference_keys()


@pytest.mark.slow
def test_full_size_forward_768(full_model: FCCLIP) -> None:
    torch.manual_seed(0)
    model = full_model
    images = torch.rand(1, 3, 480, 640) * 255
    padded, valid = model.backbone.preprocess(images)
    assert padded.shape == (1, 3, 768, 768) and valid == (764, 764)
    with torch.no_grad():
        features = model.backbone(padded)
    prepared = model.prepare(features, valid)
    assert prepared.mask_logits.shape == (1, 250, 192, 192)
    assert prepared.class_embed.shape == prepared.clip_embed.shape == (1, 250, 768)
    factors = model.backbone.image_tokens(features)[:, :8]  # any 8 non-negative CLIP-space vectors
    sem = model.semantic_map(prepared, factors)
    assert sem.shape == (1, 8, 764, 764) and torch.isfinite(sem).all() and sem.std() > 0
    small = model.semantic_map(prepared, factors, out_size=(480, 640), channels=[5])
    assert small.shape == (1, 1, 480, 640)


@pytest.mark.slow
def test_full_size_detectron2_checkpoint_loads_with_zero_missing_keys(full_model: FCCLIP,
                                                                      tmp_path: Path) -> None:
    # A file in the released layout built from the fixture: every tensor a stride-0 view of one value,
    # so 352M "parameters" take a few bytes on disk. Runs last: it overwrites full_model's weights.
    state = {f'module.{k}': torch.full((1,), 0.01).expand(shape) if shape else torch.tensor(0.01)
             for k, shape in read_expected_keys()}
    torch.save({'model': state, 'iteration': 368749}, tmp_path / 'fcclip_cocopan.pth')
    report = load_fcclip_checkpoint(full_model, tmp_path / 'fcclip_cocopan.pth')
    assert report.ok and not report.missing and not report.unexpected and not report.missing_training_only
    assert report.loaded == 846
    assert float(full_model.sem_seg_head.predictor.query_feat.weight[3, 7]) == pytest.approx(0.01)
