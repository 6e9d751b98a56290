"""The one model factory: :func:`create_models` turns a PipelineConfig into the models of a pipeline.

Models are configuration data with one loader (in the spirit of open_clip's factory).

A model configuration is a JSON file in ``taco_ros/model_configs/`` (or any path) with sections

* ``files``: registry ids (core/model_files.py) of the weights: ``clip``, ``clap``, ``gpt2``
  (a group: config + vocabulary + merges), ``fcclip``;
* ``clip``: the OpenCLIP architecture (``embed_dim``, ``vision_cfg``, ``text_cfg`` as in
  open_clip's own model configs), the frame policy (``input_size``, ``size_divisibility``,
  ``resize``), the anchor prompt and a ``model_id`` naming the weights;
* ``clap``: HTS-AT architecture (``htsat``), its mel front end (``frontend``: msclap's module
  config values, see core/audio_encoder.py), ``d_proj``, ``text_len``, prompt and ``model_id``;
* ``fcclip``: passed untouched to the segmenter's ``FCCLIPConfig.from_dict``.

``taco_convnext_large`` is the paper setting; ``taco_tiny`` has the same structure at toy size.

Every file is found through the one registry (core/model_files.py). Loading never downloads and
never runs pickled code. Random weights are used only when the caller says
``allow_random_weights=True`` and gives no file; the resulting modules carry a ``model_id`` ending
in ``+random-init`` so that nothing built from them (an anchor bank) passes for the real model.

One CLIP in memory. TACO runs FC-CLIP on the FC-CLIP checkpoint's own copy of CLIP
(``backbone.clip_model.*``) and takes X_I from the hub CLIP's per-token head. Here one
:class:`~taco_ros.core.clip_backbone.ClipBackbone`, loaded from the hub CLIP file (``files.clip``),
serves both: that file is needed anyway for the per-token head and the text tower (anchor banks),
and FC-CLIP freezes CLIP while training, so its copy should equal the hub weights. The FC-CLIP
checkpoint's ``backbone.*`` part is therefore not loaded; when both files are present the two
copies are compared tensor by tensor at load time (:func:`compare_clip_copies`) and the outcome is
logged (a difference also becomes a pipeline note, because FC-CLIP's head then sees a trunk other
than the one it was trained on).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from taco_ros.core.contract import PipelineConfig
from taco_ros.core.model_files import (
    ModelFileNotFound,
    find_model_dir,
    find_model_file,
    load_state_dict_file,
    model_search_dirs,
)

if TYPE_CHECKING:
    from taco_ros.core.audio_encoder import AudioEncoder
    from taco_ros.core.clip_backbone import ClipBackbone
    from taco_ros.core.fcclip import FCCLIP
    from taco_ros.core.vocabulary import TextEncoders

_LOG = logging.getLogger(__name__)
DEFAULT_MODEL_CONFIG = 'taco_convnext_large'
RANDOM_SUFFIX = '+random-init'
_REQUIRED_SECTIONS = {
    'files': ('clip', 'clap', 'gpt2'),
    'clip': ('model_id', 'embed_dim', 'vision_cfg', 'text_cfg', 'prompt'),
    'clap': ('model_id', 'd_proj', 'htsat', 'frontend', 'prompt'),
    'fcclip': (),
}


# -- configurations ---------------------------------------------------------------------------
def _packaged_configs() -> Any:
    """The package's model_configs directory (an importlib.resources Traversable)."""
    return resources.files('taco_ros').joinpath('model_configs')


def list_model_configs() -> list[str]:
    """Names of the packaged model configurations."""
    return sorted(p.name[:-len('.json')] for p in _packaged_configs().iterdir()
                  if p.name.endswith('.json'))


def load_model_config(name_or_path: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A model configuration by packaged name (``taco_tiny``), JSON path, or an existing dict
    (validated and deep-copied)."""
    if isinstance(name_or_path, Mapping):
        cfg = copy.deepcopy(dict(name_or_path))
    else:
        text = str(name_or_path)
        path: Any = Path(text).expanduser()
        name = path.stem
        if not (text.endswith('.json') or path.is_file()):
            path, name = _packaged_configs().joinpath(f'{text}.json'), text
        if not path.is_file():
            raise ValueError(f'unknown model config {text!r}: not a file, and not one of '
                             f'{", ".join(list_model_configs())}')
        cfg = json.loads(path.read_text(encoding='utf-8'))
        cfg.setdefault('name', name)
    _validate(cfg)
    return cfg


def _validate(cfg: Mapping[str, Any]) -> None:
    name = cfg.get('name', '<unnamed>')
    for section, keys in _REQUIRED_SECTIONS.items():
        if not isinstance(cfg.get(section), Mapping):
            raise ValueError(f'model config {name!r} lacks the {section!r} section')
        missing = [k for k in keys if k not in cfg[section]]
        if missing:
            raise ValueError(f'model config {name!r}: section {section!r} lacks {missing}')
    for key in ('clip', 'clap'):
        if '{}' not in cfg[key]['prompt']:
            raise ValueError(f'model config {name!r}: {key}.prompt must contain "{{}}"')
    resize = cfg['clip'].get('resize', 'squash')
    if resize not in ('squash', 'letterbox'):
        raise ValueError(f'model config {name!r}: clip.resize must be squash or letterbox')


def model_ids(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The ids an anchor bank is keyed by (before any '+random-init' marking)."""
    return {'clip': str(cfg['clip']['model_id']), 'clap': str(cfg['clap']['model_id'])}


# -- state-dict plumbing ----------------------------------------------------------------------
def _strip_prefix(state: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The sub-dict under the first prefix that any key carries (or ``state`` itself)."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _show_keys(keys: list[str]) -> str:
    more = f' (+{len(keys) - 8} more)' if len(keys) > 8 else ''
    return ', '.join(keys[:8]) + more


def load_weights(module: nn.Module, state: Mapping[str, Any], source: str,
                 may_be_missing: Callable[[str], bool] = lambda _: False,
                 assign: bool = False, ignore_unexpected: bool = False) -> None:
    """Load ``state`` into ``module`` with a readable error on any mismatch.

    Keys the module has but ``state`` lacks are an error unless ``may_be_missing(key)`` (buffers
    that are recomputed from the config); so is any shape mismatch. Keys ``state`` has but the
    module lacks are an error, or with ``ignore_unexpected`` logged and skipped (msclap loads its
    checkpoints non-strictly). Floating tensors are cast to float32.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not may_be_missing(k)]
    unexpected = [k for k in state if k not in expected]
    if unexpected and ignore_unexpected:
        _LOG.warning('%s: %d unexpected keys ignored: %s', source, len(unexpected),
                     _show_keys(unexpected))
        state = {k: v for k, v in state.items() if k in expected}
        unexpected = []
    mismatched = [f'{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}'
                  for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        problems = [f'{label}: {_show_keys(keys)}' for label, keys in (
            ('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)) if keys]
        raise ValueError(f'{source} does not match the model configuration; ' + '; '.join(problems))
    cleaned = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}
    module.load_state_dict(cleaned, strict=False, assign=assign)


def _resolve(explicit: str | os.PathLike | None, file_id: str,
             model_dir: str | os.PathLike | None, allow_random_weights: bool) -> Path | None:
    """An explicit path, else the registry lookup; None means 'random weights'."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f'weights file {path} does not exist')
        return path
    if allow_random_weights:
        return None
    return find_model_file(file_id, model_dir)  # raises ModelFileNotFound with the fetch command


# -- CLIP -------------------------------------------------------------------------------------
def build_clip_model(cfg: Mapping[str, Any]) -> nn.Module:
    """An ``open_clip.CLIP`` with the configured architecture and random initial weights."""
    from open_clip.model import CLIP
    clip_cfg = cfg['clip']
    return CLIP(int(clip_cfg['embed_dim']), dict(clip_cfg['vision_cfg']),
                dict(clip_cfg['text_cfg']))


def _causal_mask(size: int) -> torch.Tensor:
    return torch.full((size, size), float('-inf')).triu_(1)


def create_clip(cfg: Mapping[str, Any] | str, weights: str | os.PathLike | None = None, *,
                model_dir: str | os.PathLike | None = None, allow_random_weights: bool = False,
                with_text: bool = True, device: str | torch.device = 'cpu',
                resize: str | None = None, input_size: int | None = None) -> Any:
    """The shared CLIP as a :class:`~taco_ros.core.clip_backbone.ClipBackbone`.

    weights: an open_clip state dict file (.safetensors, or a weights-only torch file). A
        FC-CLIP checkpoint works too: its ``backbone.clip_model.*`` part is used. None: the
        registry file ``files.clip`` from the search dirs (or random weights if allowed).
    with_text: False skips the text tower entirely (no memory spent on it; build banks first).
    resize / input_size: override the config's frame policy.
    """
    from taco_ros.core.clip_backbone import TEXT_TOWER_ATTRIBUTES, ClipBackbone
    cfg = load_model_config(cfg)
    path = _resolve(weights, cfg['files']['clip'], model_dir, allow_random_weights)
    if path is None:
        model = build_clip_model(cfg)
        model_id = cfg['clip']['model_id'] + RANDOM_SUFFIX
    else:
        # Build on the meta device and adopt the checkpoint tensors: no time or memory is spent
        # on a random initialisation that is overwritten at once.
        with torch.device('meta'):
            model = build_clip_model(cfg)
        if not with_text:
            _drop_text(model, TEXT_TOWER_ATTRIBUTES)
        state = _strip_prefix(load_state_dict_file(path), ('backbone.clip_model.', 'clip_model.'))
        if not with_text:
            state = {k: v for k, v in state.items()
                     if k.split('.')[0] not in TEXT_TOWER_ATTRIBUTES}
        # logit_bias: absent in CLIP (non-SigLIP) checkpoints; None in the model as well.
        load_weights(model, state, str(path), assign=True)
        if with_text:
            model.attn_mask = _causal_mask(int(cfg['clip']['text_cfg']['context_length']))
        leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if leftover:
            raise ValueError(f'{path} left tensors uninitialised: {leftover[:8]}')
        model_id = cfg['clip']['model_id']
    backbone = ClipBackbone(
        model,
        input_size=int(input_size or cfg['clip'].get('input_size', 764)),
        size_divisibility=int(cfg['clip'].get('size_divisibility', 32)),
        resize=resize or cfg['clip'].get('resize', 'squash'))
    if path is None and not with_text:
        backbone.drop_text_tower()
    backbone.model_id = model_id
    backbone.prompt = cfg['clip']['prompt']
    return backbone.to(device)


def _drop_text(model: nn.Module, names: tuple[str, ...]) -> None:
    for name in (*names, 'attn_mask'):
        if hasattr(model, name):
            delattr(model, name)
            setattr(model, name, None)


# -- CLAP -------------------------------------------------------------------------------------
# Buffers that the HTS-AT constructor computes from the config: tolerated if a checkpoint lacks
# them (the frozen STFT / mel matrices, Swin's index tables and shift masks, a BN counter).
_RECOMPUTED_AUDIO_KEYS = ('relative_position_index', 'attn_mask', 'num_batches_tracked',
                          'spectrogram_extractor.', 'logmel_extractor.')


def _recomputed_audio_key(key: str) -> bool:
    return any(part in key for part in _RECOMPUTED_AUDIO_KEYS)


def read_clap_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The msclap checkpoint's state dict (``torch.load(path)['model']``, weights only)."""
    return load_state_dict_file(path, container_keys=('model', 'state_dict'))


def create_clap(cfg: Mapping[str, Any] | str, checkpoint: str | os.PathLike | None = None, *,
                model_dir: str | os.PathLike | None = None, allow_random_weights: bool = False,
                device: str | torch.device = 'cpu') -> Any:
    """The CLAP audio side (:class:`~taco_ros.core.audio_encoder.AudioEncoder`) from a local
    msclap checkpoint: ``audio_encoder.*`` weights and the top-level ``logit_scale``."""
    from taco_ros.core.audio_encoder import AudioEncoder
    cfg = load_model_config(cfg)
    clap_cfg = cfg['clap']
    encoder = AudioEncoder(
        htsat=clap_cfg['htsat'], frontend=clap_cfg['frontend'], d_proj=int(clap_cfg['d_proj']),
        sample_rate=int(clap_cfg.get('sample_rate', 44100)),
        duration_sec=float(clap_cfg.get('duration_sec', 7)))
    path = _resolve(checkpoint, cfg['files']['clap'], model_dir, allow_random_weights)
    if path is None:
        encoder.model_id = clap_cfg['model_id'] + RANDOM_SUFFIX
    else:
        state = read_clap_checkpoint(path)
        audio = {k[len('audio_encoder.'):]: v for k, v in state.items()
                 if k.startswith('audio_encoder.')}
        if 'logit_scale' not in state:
            raise ValueError(f'{path} has no logit_scale: not a CLAP checkpoint?')
        foreign = [k for k in state if k != 'logit_scale'
                   and not k.startswith(('audio_encoder.', 'caption_encoder.'))]
        if foreign:
            _LOG.warning('%s: %d keys of no CLAP part ignored: %s', path, len(foreign),
                         _show_keys(foreign))
        audio['clap_logit_scale'] = state['logit_scale'].reshape(())
        load_weights(encoder, audio, str(path), may_be_missing=_recomputed_audio_key,
                     ignore_unexpected=True)
        encoder.model_id = clap_cfg['model_id']
    encoder.prompt = clap_cfg['prompt']
    return encoder.to(device)


def create_clap_text(cfg: Mapping[str, Any] | str, checkpoint: str | os.PathLike | None = None,
                     *, gpt2_dir: str | os.PathLike | None = None,
                     model_dir: str | os.PathLike | None = None,
                     allow_random_weights: bool = False,
                     device: str | torch.device = 'cpu') -> Any:
    """The CLAP caption encoder (:class:`~taco_ros.core.audio_encoder.ClapTextEncoder`): GPT-2
    built from the local config dir (``files.gpt2``), weights from the CLAP checkpoint's
    ``caption_encoder.*``. If the checkpoint carries no GPT-2 body, the registry file
    ``gpt2-weights`` (model.safetensors in the same dir) is used for it."""
    from taco_ros.core.audio_encoder import ClapTextEncoder
    cfg = load_model_config(cfg)
    clap_cfg = cfg['clap']
    text_dir = Path(gpt2_dir) if gpt2_dir else find_model_dir(cfg['files']['gpt2'], model_dir)
    encoder = ClapTextEncoder(str(text_dir), d_proj=int(clap_cfg['d_proj']),
                              text_len=int(clap_cfg.get('text_len', 77)))
    path = _resolve(checkpoint, cfg['files']['clap'], model_dir, allow_random_weights)
    if path is None:
        encoder.model_id = clap_cfg['model_id'] + RANDOM_SUFFIX
        return encoder.to(device)
    state = read_clap_checkpoint(path)
    text = {k[len('caption_encoder.'):]: v for k, v in state.items()
            if k.startswith('caption_encoder.')}
    if not any(k.startswith('base.') for k in text):
        text.update(_gpt2_base_weights(text_dir, model_dir))
    # GPT-2 checkpoints from older transformers carry the causal-mask buffers 'attn.bias' /
    # 'attn.masked_bias', which current GPT2Attention computes on the fly.
    text = {k: v for k, v in text.items()
            if not k.endswith(('.attn.bias', '.attn.masked_bias'))}
    load_weights(encoder, text, str(path), ignore_unexpected=True)
    encoder.model_id = clap_cfg['model_id']
    return encoder.to(device)


def _gpt2_base_weights(text_dir: Path, model_dir: str | os.PathLike | None) -> dict[str, Any]:
    local = text_dir / 'model.safetensors'
    path = local if local.is_file() else find_model_file('gpt2-weights', model_dir)
    state = _strip_prefix(load_state_dict_file(path), ('transformer.',))
    return {f'base.{k}': v for k, v in state.items()}


def describe_search(model_dir: str | os.PathLike | None = None) -> str:
    """One line naming the model directories, for log messages."""
    return ', '.join(str(d) for d in model_search_dirs(model_dir))


# -- FC-CLIP head -----------------------------------------------------------------------------
@dataclass
class ClipCopyCheck:
    """How the FC-CLIP checkpoint's CLIP copy compares with the CLIP in use, over the keys both
    hold. differing: keys whose tensors are not bit-identical (or differ in shape)."""

    source: str
    compared: int = 0
    differing: list[str] = field(default_factory=list)
    largest_difference: float = 0.0

    @property
    def identical(self) -> bool:
        return self.compared > 0 and not self.differing

    def summary(self) -> str:
        if self.compared == 0:
            return f'{self.source} holds no copy of the CLIP weights in use: nothing compared'
        if self.identical:
            return (f'{self.source}: its CLIP copy equals the CLIP file on all {self.compared} '
                    'shared tensors')
        return (f'{self.source}: its CLIP copy differs from the CLIP file in '
                f'{len(self.differing)} of {self.compared} shared tensors (largest |difference| '
                f'{self.largest_difference:.3g}: {_show_keys(self.differing)}); FC-CLIP masks are '
                'computed on the CLIP file\'s trunk')


def compare_clip_copies(backbone: nn.Module, checkpoint: Mapping[str, torch.Tensor],
                        source: str = 'FC-CLIP checkpoint') -> ClipCopyCheck:
    """Compare ``backbone``'s weights (``clip_model.*``) with the checkpoint's ``backbone.*`` copy,
    tensor by tensor (exact equality after casting to the backbone's dtype)."""
    check = ClipCopyCheck(source)
    for key, ours in backbone.state_dict().items():
        theirs = checkpoint.get('backbone.' + key)
        if theirs is None:
            continue  # e.g. a text tower dropped on one side
        check.compared += 1
        if tuple(theirs.shape) != tuple(ours.shape):
            check.differing.append(key)
            check.largest_difference = float('inf')
            continue
        theirs = theirs.to(device=ours.device, dtype=ours.dtype)
        if not torch.equal(ours, theirs):
            check.differing.append(key)
            gap = float((ours.double() - theirs.double()).abs().max())
            check.largest_difference = max(check.largest_difference, gap)
    return check


def load_segmenter(cfg: Mapping[str, Any], config: PipelineConfig, backbone: Any,
                   notes: list[str]) -> Any:
    """The FC-CLIP head on the shared ``backbone`` (None when its file is missing and the mode can
    fall back to the coarse map; ``notes`` then says so). Only ``sem_seg_head.*`` and
    ``void_embedding.*`` are loaded (``criterion.*`` is training state, ``backbone.*`` the CLIP
    copy, see the module docstring)."""
    from taco_ros.core.fcclip import FCCLIPConfig, build_fcclip, load_state_into, read_checkpoint

    file_id = cfg['files'].get('fcclip')
    if file_id is None:
        raise ValueError(f'model config {cfg.get("name")!r} names no FC-CLIP file')
    try:
        path = find_model_file(file_id, config.model_dir)
    except ModelFileNotFound as missing:
        if config.allow_random_weights:
            path = None
        elif config.mode == 'baseline':
            raise  # A-FC-CLIP is FC-CLIP itself: nothing to fall back to
        else:
            # CLIP + CLAP still give the co-NMF's coarse token map: degrade rather than refuse.
            if config.mode == 'full':
                notes.append(f'FC-CLIP checkpoint missing, masks are the coarse co-NMF map '
                             f'(mode full runs as coarse). {missing}')
                _LOG.warning(notes[-1])
            return None
    segmenter = build_fcclip(backbone, FCCLIPConfig.from_dict(dict(cfg['fcclip'])))
    if path is None:
        segmenter.model_id = 'fcclip' + RANDOM_SUFFIX
        return segmenter
    state = read_checkpoint(path)
    if not str(backbone.model_id).endswith(RANDOM_SUFFIX):
        check = compare_clip_copies(backbone, state, str(path))
        if check.identical:
            _LOG.info(check.summary())
        else:
            notes.append(check.summary())
            _LOG.warning(notes[-1])
    problems = []
    for part in ('sem_seg_head', 'void_embedding'):
        prefix = part + '.'
        report = load_state_into(
            getattr(segmenter, part),
            {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
            f'{path} [{part}]')
        if not report.ok:
            problems.append(report.summary())
    if problems:
        raise ValueError('FC-CLIP checkpoint does not fit the model config:\n'
                         + '\n'.join(problems))
    segmenter.model_id = str(file_id)
    return segmenter


# -- the factory ------------------------------------------------------------------------------
@dataclass
class Models:
    """Everything a pipeline loads once.

    backbone: the shared CLIP; audio: the CLAP audio side;
    segmenter: the FC-CLIP head, or None (file missing: coarse maps only);
    text: the CLIP and CLAP text encoders, or None when a bank file serves the vocabulary and
        they are not kept;
    notes: what a user should know about how these models run (e.g. a fallback);
    random_weights: some model has random weights (its output means nothing).
    """

    backbone: ClipBackbone
    audio: AudioEncoder
    segmenter: FCCLIP | None
    text: TextEncoders | None
    notes: list[str]
    random_weights: bool

    def place(self, device: torch.device) -> None:
        """Move the per-window models to ``device``; the text encoders stay on the CPU (they
        only run when the vocabulary changes, and would cost GPU memory for nothing)."""
        self.backbone.to(device)
        self.audio.to(device)
        if self.segmenter is not None:
            self.segmenter.to(device)
        self.backbone.text_tower_to('cpu')

    def drop_text_encoders(self) -> None:
        """Free the CLIP text tower and the CLAP caption encoder."""
        if self.text is not None:
            self.text.drop()
        elif self.backbone.has_text_tower:
            self.backbone.drop_text_tower()
        self.text = None

    def close(self) -> None:
        """Let go of every model."""
        self.backbone = self.audio = self.segmenter = self.text = None


def create_models(config: PipelineConfig, *, segmenter: bool = True) -> Models:
    """The models of a pipeline configuration, on the CPU.

    The text encoders are loaded when the vocabulary must be encoded (no ``anchors`` file) or kept
    (``keep_text_encoders``). ``segmenter=False`` skips FC-CLIP (``taco-ros anchors``).
    ``config.seed`` seeds random initialisations, so random-weight models are reproducible.
    """
    from taco_ros.core.vocabulary import TextEncoders

    cfg = load_model_config(config.model_config)
    needs_text = config.anchors is None or config.keep_text_encoders
    torch.manual_seed(config.seed)
    random = config.allow_random_weights
    backbone = create_clip(cfg, model_dir=config.model_dir, allow_random_weights=random,
                           with_text=needs_text, resize=config.resize)
    audio = create_clap(cfg, model_dir=config.model_dir, allow_random_weights=random)
    notes: list[str] = []
    head = load_segmenter(cfg, config, backbone, notes) if segmenter else None
    text = None
    if needs_text:
        try:
            clap_text = create_clap_text(cfg, model_dir=config.model_dir,
                                         allow_random_weights=random)
        except ModelFileNotFound:
            if not random:
                raise
            clap_text = None  # random run without tokenizer files: random CLAP word vectors
        text = TextEncoders(backbone, clap_text, audio)
    random_weights = any(str(getattr(m, 'model_id', '')).endswith(RANDOM_SUFFIX)
                         for m in (backbone, audio, head) if m is not None)
    return Models(backbone=backbone, audio=audio, segmenter=head, text=text, notes=notes,
                  random_weights=random_weights)
