"""Loading FC-CLIP checkpoints the way detectron2's DetectionCheckpointer does, without detectron2.

What detectron2 (with fvcore's Checkpointer) accepts, and so what is accepted here, no more:
* the file's "model" entry, or the whole file when it has none (a bare state dict); every other top-level
  entry (optimizer, scheduler, iteration, ...) is training bookkeeping and is ignored;
* numpy arrays in the model dict are converted to tensors; any other non-tensor value is refused;
* a "module." prefix (DataParallel) is stripped when every key carries it (fvcore strips it only then);
* keys whose shapes disagree with the model are dropped with a warning; unexpected keys are logged.
Differences, on purpose: the file is read through the project's one safe loader
(:func:`taco_ros.core.model_files.read_weights_file`: format check, ``weights_only=True``, no pickled code
runs), and a missing or wrongly shaped key that the inference path needs is an error listing them
(detectron2 only warns), while training-only keys may be absent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from taco_ros.core.fcclip.config import FCCLIPConfig
from taco_ros.core.fcclip.segmenter import FCCLIP, TRAINING_ONLY_PREFIXES, build_fcclip
from taco_ros.core.model_files import read_weights_file

LOG = logging.getLogger(__name__)

# DataParallel / DistributedDataParallel wrap every key in this prefix.
PARALLEL_PREFIX = 'module.'


@dataclass
class LoadReport:
    """What a checkpoint load did.

    missing: model keys absent from the file that inference needs (must be empty for a usable model).
    missing_training_only: absent keys that inference never reads (e.g. ``criterion.empty_weight``).
    unexpected: file keys the model does not have (ignored).
    shape_mismatch: (key, file shape, model shape) of keys dropped because the shapes disagree.
    skipped: number of distinct keys (file or model) left alone on purpose (``skip_prefixes``).
    loaded: number of tensors copied into the model.
    """

    source: str
    loaded: int = 0
    skipped: int = 0
    missing: list[str] = field(default_factory=list)
    missing_training_only: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every inference key was loaded with the right shape."""
        return not self.missing and not self.shape_mismatch

    def summary(self, max_keys: int = 10) -> str:
        def show(keys: list) -> str:
            head = ', '.join(str(k) for k in keys[:max_keys])
            return head + (f', … (+{len(keys) - max_keys})' if len(keys) > max_keys else '')

        lines = [f'{self.source}: loaded {self.loaded} tensors'
                 + (f', skipped {self.skipped} on purpose' if self.skipped else '')]
        if self.missing:
            lines.append(f'  missing inference keys ({len(self.missing)}): {show(self.missing)}')
        if self.shape_mismatch:
            lines.append(f'  shape-mismatched keys dropped ({len(self.shape_mismatch)}): '
                         f'{show(self.shape_mismatch)}')
        if self.missing_training_only:
            lines.append(f'  missing training-only keys ({len(self.missing_training_only)}): '
                         f'{show(self.missing_training_only)}')
        if self.unexpected:
            lines.append(f'  unexpected keys ignored ({len(self.unexpected)}): {show(self.unexpected)}')
        return '\n'.join(lines)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Model state dict of a detectron2-style .pth file ("model" wrapper or bare dict, "module." stripped).

    FileNotFoundError for a missing file; one ValueError naming the file for anything else (an HTML page, a
    truncated download, pickled code, a value that is neither a tensor nor a numpy array).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'FC-CLIP checkpoint not found: {path}')
    return unwrap_state_dict(read_weights_file(path), str(path))


def unwrap_state_dict(data: object, source: str = '<checkpoint>') -> dict[str, Tensor]:
    """detectron2's unwrapping: data["model"] if present (else data itself), numpy arrays as tensors, a
    "module." prefix shared by every key stripped. Other top-level entries are ignored."""
    if isinstance(data, Mapping) and 'model' in data:
        data = data['model']
    if not isinstance(data, Mapping):
        raise ValueError(f'{source}: expected a dict of tensors (optionally under "model"), '
                         f'got {type(data).__name__}')
    state = {k: _as_tensor(v) for k, v in data.items()}
    not_tensors = [f'{k} ({type(data[k]).__name__})' for k, v in state.items() if v is None]
    if not_tensors:
        raise ValueError(f'{source}: model entries that are neither tensors nor numpy arrays: '
                         f'{not_tensors[:10]}')
    keys = list(state)
    if keys and all(k.startswith(PARALLEL_PREFIX) for k in keys):
        return {k[len(PARALLEL_PREFIX):]: v for k, v in state.items()}
    return state


def _as_tensor(value: object) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(value)
    return None


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], source: str = '<state dict>',
                    skip_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Non-strict load: drop shape mismatches (with a warning), copy the rest, report the differences.

    skip_prefixes: keys to leave untouched on both sides, e.g. ``('backbone.',)`` when the shared CLIP was
    already loaded from its own file.
    """
    own = model.state_dict()
    report = LoadReport(source=source)
    skipped = {k for k in (*state, *own) if skip_prefixes and k.startswith(skip_prefixes)}
    report.skipped = len(skipped)
    usable: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in skipped:
            continue
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.shape_mismatch.append((key, tuple(value.shape), tuple(own[key].shape)))
            LOG.warning('%s: skip %s, shape %s in the file vs %s in the model',
                        source, key, tuple(value.shape), tuple(own[key].shape))
        else:
            usable[key] = value
    mismatched = {key for key, _, _ in report.shape_mismatch}
    for key in own:
        if key not in usable and key not in mismatched and key not in skipped:
            training_only = key.startswith(TRAINING_ONLY_PREFIXES)
            (report.missing_training_only if training_only else report.missing).append(key)
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if report.missing:
        LOG.warning('%s: %d inference keys missing, e.g. %s', source, len(report.missing), report.missing[:5])
    if report.unexpected:
        LOG.warning('%s: %d keys the model does not have, ignored: %s', source, len(report.unexpected),
                    ', '.join(report.unexpected[:10]) + (' ...' if len(report.unexpected) > 10 else ''))
    return report


def load_fcclip_checkpoint(model: nn.Module, path: str | os.PathLike,
                           skip_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Load a detectron2-layout FC-CLIP .pth into ``model`` (an FCCLIP); see :class:`LoadReport`."""
    return load_state_into(model, read_checkpoint(path), str(path), skip_prefixes)


def load_fcclip(backbone: nn.Module, path: str | os.PathLike, cfg: FCCLIPConfig | None = None,
                load_backbone: bool = True) -> tuple[FCCLIP, LoadReport]:
    """FC-CLIP around ``backbone`` with the weights of ``path``; ValueError if inference keys are missing.

    The checkpoint also holds the frozen CLIP (``backbone.clip_model.*``). With load_backbone=True those
    weights replace the shared backbone's (the model FC-CLIP was trained with); with False the backbone
    keeps the weights it was given and only the head is loaded.
    """
    model = build_fcclip(backbone, cfg)
    report = load_fcclip_checkpoint(model, path, () if load_backbone else ('backbone.',))
    if not report.ok:
        raise ValueError(f'FC-CLIP checkpoint does not fit the model:\n{report.summary()}')
    return model, report


