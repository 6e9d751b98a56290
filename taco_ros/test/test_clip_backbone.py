"""ClipBackbone: FC-CLIP preprocessing, trunk outputs, X_I, text-tower handling, loading through
the real file path (tiny configuration) and the full ConvNeXt-L shapes (random weights)."""

from __future__ import annotations

import logging
from pathlib import Path

import encoder_fixtures as ef
import pytest
import torch
from torch import nn

from taco_ros.core.clip_backbone import PIXEL_MEAN, ClipBackbone
from taco_ros.core.model_files import ModelFileNotFound
from taco_ros.core.models import RANDOM_SUFFIX, create_clip, load_model_config


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('models')
    ef.write_clip_weights(root / 'taco_tiny' / 'clip.safetensors', seed=3)
    return root


@pytest.fixture(scope='module')
def backbone(model_dir: Path) -> ClipBackbone:
    return create_clip('taco_tiny', model_dir=model_dir)


def _frame(h: int = 480, w: int = 640, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)


def test_weights_come_from_the_file(backbone: ClipBackbone, model_dir: Path):
    from safetensors.torch import load_file
    state = load_file(str(model_dir / 'taco_tiny' / 'clip.safetensors'))
    ours = backbone.state_dict()
    assert set(ours) == {f'clip_model.{k}' for k in state}
    for key in ('visual.trunk.stem.0.weight', 'visual.head.mlp.fc1.weight', 'token_embedding.weight',
                'logit_scale'):
        assert torch.equal(ours[f'clip_model.{key}'], state[key])
    assert backbone.model_id == 'taco_tiny:clip'
    assert not any(p.is_meta for p in backbone.parameters())


def test_preprocess_squash_matches_fcclip_input(backbone: ClipBackbone):
    frame = _frame()
    padded, valid = backbone.preprocess(frame)
    assert padded.shape == (1, 3, 768, 768) and padded.dtype == torch.float32
    assert valid == (764, 764)
    # Reference: TACO's loader (bilinear, align_corners) then FC-CLIP normalise + zero pad.
    resized = nn.functional.interpolate(frame.float(), size=(764, 764), mode='bilinear',
                                        align_corners=True)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor((68.5005327, 66.6321579, 70.32316305)).view(1, 3, 1, 1)
    assert torch.allclose(padded[..., :764, :764], (resized - mean) / std, atol=1e-5)
    assert padded[..., 764:, :].abs().max() == 0 and padded[..., :, 764:].abs().max() == 0
    # float input on the 0..255 scale gives the same tensor as uint8
    assert torch.allclose(backbone.preprocess(frame.float())[0], padded)


def test_preprocess_letterbox_keeps_aspect(model_dir: Path):
    wide = create_clip('taco_tiny', model_dir=model_dir, resize='letterbox', with_text=False)
    padded, valid = wide.preprocess(_frame(480, 640))
    assert valid == (573, 764) and padded.shape == (1, 3, 576, 768)
    out = wide.encode(_frame(480, 640))
    assert out.grid == (18, 24) and out.tokens.shape == (1, 18 * 24, 64)


def test_forward_outputs_and_image_tokens(backbone: ClipBackbone):
    out = backbone.encode(_frame())
    f = out.features
    assert set(f) == {'res2', 'res3', 'res4', 'res5', 'clip_vis_dense'}
    assert f['res2'].shape == (1, 40, 192, 192) and f['res3'].shape == (1, 80, 96, 96)
    assert f['res4'].shape == (1, 160, 48, 48) and f['res5'].shape == (1, 320, 24, 24)
    assert torch.equal(f['clip_vis_dense'], f['res5'])  # norm_pre is Identity for ConvNeXt
    assert backbone.channels == {'res2': 40, 'res3': 80, 'res4': 160, 'res5': 320,
                                 'clip_vis_dense': 320}
    assert out.grid == (24, 24) and out.valid_size == (764, 764)
    assert out.tokens.shape == (1, 576, backbone.embed_dim) and out.tokens.min() >= 0
    # TACO's feats2shared: every token as a 1x1 map through trunk.head then visual.head.
    dense = f['clip_vis_dense']
    one_by_one = dense.permute(0, 2, 3, 1).reshape(-1, 320, 1, 1)
    visual = backbone.clip_model.visual
    with torch.no_grad():
        reference = visual.head(visual.trunk.head(one_by_one)).view(1, 576, -1).clamp_min(0)
    assert torch.allclose(out.tokens, reference, atol=1e-5)
    # row-major: token r*24+c is grid cell (r, c)
    cell = backbone.project_dense(dense[0, :, 5, 7]).clamp_min(0)
    assert torch.allclose(out.tokens[0, 5 * 24 + 7], cell, atol=1e-5)


def test_state_dict_layout_for_fcclip(backbone: ClipBackbone):
    holder = nn.Module()
    holder.backbone = backbone
    keys = list(holder.state_dict())
    assert keys and all(k.startswith('backbone.clip_model.') for k in keys)
    assert 'backbone.clip_model.visual.trunk.stages.3.blocks.1.conv_dw.weight' in keys


def test_clip_weights_from_an_fcclip_checkpoint(backbone: ClipBackbone, tmp_path: Path):
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['sem_seg_head.predictor.query_feat.weight'] = torch.zeros(10, 32)
    torch.save({'model': state}, tmp_path / 'fcclip.pth')
    loaded = create_clip('taco_tiny', weights=tmp_path / 'fcclip.pth')
    key = 'clip_model.visual.trunk.stages.2.blocks.0.mlp.fc1.weight'
    assert torch.equal(loaded.state_dict()[key], backbone.state_dict()[key])


def test_compare_clip_copies_names_the_differing_tensors(backbone: ClipBackbone):
    from taco_ros.core.models import compare_clip_copies

    state = {f'backbone.{k}': v.clone() for k, v in backbone.state_dict().items()}
    check = compare_clip_copies(backbone, state, 'copy')
    assert check.identical and check.compared == len(state) and 'equals' in check.summary()
    key = 'clip_model.visual.head.mlp.fc1.weight'
    state[f'backbone.{key}'] += 1e-3
    check = compare_clip_copies(backbone, state, 'copy')
    assert not check.identical and check.differing == [key]
    assert check.largest_difference == pytest.approx(1e-3, rel=1e-2)
    assert key in check.summary()
    nothing = compare_clip_copies(backbone, {'sem_seg_head.x': torch.zeros(1)}, 'head only')
    assert nothing.compared == 0 and not nothing.identical and 'nothing compared' in nothing.summary()


def test_one_clip_in_memory_and_fcclip_copy_checked_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """create_models loads the CLIP file once for X_I and FC-CLIP, and compares the FC-CLIP
    checkpoint's own CLIP copy with it: equal copies are logged, a differing copy is logged with
    its keys and becomes a pipeline note."""
    from node_fixtures import isolate_model_search, write_tiny_fcclip
    from safetensors.torch import load_file

    from taco_ros.core.contract import PipelineConfig
    from taco_ros.core.models import create_models

    isolate_model_search(monkeypatch, tmp_path)
    same = tmp_path / 'same'
    files = ef.write_tiny_model_files(same, seed=0)
    write_tiny_fcclip(same, seed=0)            # FC-CLIP trained on (a copy of) this CLIP
    config = PipelineConfig(model_config='taco_tiny', model_dir=str(same), device='cpu',
                            keep_text_encoders=False, anchors=None)
    with caplog.at_level(logging.INFO, logger='taco_ros.core.models'):
        models = create_models(config)
    assert models.notes == [] and 'its CLIP copy equals the CLIP file on all' in caplog.text
    assert models.segmenter.backbone is models.backbone
    caplog.clear()
    other = tmp_path / 'other'
    ef.write_tiny_model_files(other, seed=0)
    write_tiny_fcclip(other, seed=1)           # another CLIP inside the FC-CLIP file
    with caplog.at_level(logging.INFO, logger='taco_ros.core.models'):
        models = create_models(config.copy(model_dir=str(other)))
    assert len(models.notes) == 1 and 'differs from the CLIP file' in models.notes[0]
    assert 'visual.trunk.stem.0.weight' in caplog.text
    # The CLIP in memory is the CLIP file's, whatever FC-CLIP's copy holds.
    clip_file = load_file(str(files['clip']))
    key = 'visual.trunk.stem.0.weight'
    assert torch.equal(models.backbone.state_dict()[f'clip_model.{key}'], clip_file[key])


def test_text_tower_matches_a_plainly_loaded_open_clip(backbone: ClipBackbone, model_dir: Path):
    """The meta-device build + rebuilt causal mask equals open_clip loaded the ordinary way."""
    import open_clip
    from safetensors.torch import load_file

    from taco_ros.core.models import build_clip_model
    reference = build_clip_model(load_model_config('taco_tiny')).eval()
    reference.load_state_dict(load_file(str(model_dir / 'taco_tiny' / 'clip.safetensors')))
    tokens = open_clip.tokenizer.tokenize(['A photo of a dog', 'A photo of a door bell'])
    with torch.no_grad():
        assert torch.allclose(backbone.encode_text(tokens), reference.encode_text(tokens), atol=1e-5)


def test_text_tower_skip_and_drop(backbone: ClipBackbone, model_dir: Path):
    import open_clip
    tokens = open_clip.tokenizer.tokenize(['A photo of a dog'])
    assert backbone.encode_text(tokens).shape == (1, 64)
    lean = create_clip('taco_tiny', model_dir=model_dir, with_text=False)
    assert not lean.has_text_tower
    assert not any('transformer' in k or 'token_embedding' in k for k in lean.state_dict())
    assert 'clip_model.logit_scale' in lean.state_dict()  # FC-CLIP's OOV head needs it
    with pytest.raises(RuntimeError, match='text tower was dropped'):
        lean.encode_text(tokens)
    full = create_clip('taco_tiny', model_dir=model_dir)
    before = sum(p.numel() for p in full.parameters())
    full.drop_text_tower()
    after = sum(p.numel() for p in full.parameters())
    assert after == sum(p.numel() for p in lean.parameters()) < before
    assert torch.equal(full.encode(_frame()).tokens, lean.encode(_frame()).tokens)


def test_stays_in_eval_mode(backbone: ClipBackbone):
    backbone.train()
    assert not backbone.training and not backbone.clip_model.visual.trunk.training
    assert not any(p.requires_grad for p in backbone.parameters())


def test_missing_weights_and_random_opt_in(tmp_path: Path):
    with pytest.raises(ModelFileNotFound, match='no public download'):
        create_clip('taco_tiny', model_dir=tmp_path)
    with pytest.raises(ModelFileNotFound, match='taco-ros models fetch clip-convnext-large-d-320'):
        create_clip('taco_convnext_large', model_dir=tmp_path)
    random = create_clip('taco_tiny', model_dir=tmp_path, allow_random_weights=True)
    assert random.model_id == 'taco_tiny:clip' + RANDOM_SUFFIX


def test_checkpoint_for_another_architecture_is_refused(model_dir: Path):
    with pytest.raises(ValueError, match='does not match the model configuration'):
        create_clip('taco_convnext_large', weights=model_dir / 'taco_tiny' / 'clip.safetensors')


def test_bad_inputs(backbone: ClipBackbone):
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        backbone.preprocess(torch.zeros(3, 10, 10))
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        backbone.preprocess(torch.zeros(1, 4, 10, 10))
    with pytest.raises(ValueError, match='multiple of 32'):
        backbone(torch.zeros(1, 3, 100, 100))
    with pytest.raises(ValueError, match='resize'):
        ClipBackbone(backbone.clip_model, resize='crop')
    with pytest.raises(ValueError, match='timm ConvNeXt'):
        ClipBackbone(nn.Linear(2, 2))


def test_model_configs_are_consistent():
    large = load_model_config('taco_convnext_large')
    assert large['clip']['embed_dim'] == large['fcclip']['embed_dim'] == 768
    assert large['fcclip']['in_channels'] == [192, 384, 768, 1536]
    assert large['clip']['input_size'] == 764 and large['clip']['resize'] == 'squash'
    tiny = load_model_config('taco_tiny')
    assert tiny['fcclip']['embed_dim'] == tiny['clip']['embed_dim']
    assert tiny['fcclip']['in_channels'] == [40, 80, 160, 320]
    assert set(tiny) == set(large)
    with pytest.raises(ValueError, match='unknown model config'):
        load_model_config('nope')


@pytest.mark.slow
def test_full_convnext_large_shapes():
    """The paper architecture (random weights): X_I is 576 x 768 for a 764^2 squash input."""
    clip = create_clip('taco_convnext_large', allow_random_weights=True, with_text=False)
    assert sum(p.numel() for p in clip.parameters()) > 190e6  # ConvNeXt-L trunk + head
    out = clip.encode(_frame(480, 640))
    assert out.tokens.shape == (1, 576, 768) and out.tokens.min() >= 0
    assert {k: tuple(v.shape[1:]) for k, v in out.features.items()} == {
        'res2': (192, 192, 192), 'res3': (384, 96, 96), 'res4': (768, 48, 48),
        'res5': (1536, 24, 24), 'clip_vis_dense': (1536, 24, 24)}
