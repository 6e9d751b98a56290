"""Builders of random-weight model files in the real formats, for tests and benchmarks.

The real weights cannot be downloaded here, so tests write files with the same layout the loaders
read, at the paths the registry names, and load them through the normal code path:

* :func:`write_clip_weights`: an open_clip state dict as ``.safetensors`` (the HF
  ``open_clip_model.safetensors`` layout: keys ``visual.*``, ``transformer.*``, ``logit_scale``...).
* :func:`write_clap_checkpoint`: an msclap ``CLAP_weights_*.pth``: ``{'model': state_dict}`` with
  ``audio_encoder.*``, ``caption_encoder.*`` and ``logit_scale`` (msclap's CLAPWrapper reads
  ``torch.load(path)['model']``).
* :func:`write_tiny_gpt2_dir`: a GPT-2 config dir (config.json, vocab.json, merges.txt) with a
  byte-level vocabulary: ids 0..255 are the 256 byte symbols in GPT-2's own order ('!' is id 0,
  as in the real vocabulary, so msclap's pad-token logic holds) and <|endoftext|> is 256.
* :func:`write_tiny_model_files`: every ``taco_tiny`` file (CLIP, CLAP, GPT-2 dir) under a model
  dir, at the registry file names, so ``create_clip('taco_tiny', model_dir=...)`` etc. work.

Outputs are random: never present them as results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from taco_ros.core.model_files import get_model_file
from taco_ros.core.models import build_clip_model, load_model_config

TINY = 'taco_tiny'
TINY_LOGIT_SCALE = math.log(20.0)  # a recognisable CLAP logit scale: exp() == 20


def _place(model_dir: str | Path, file_id: str) -> Path:
    path = Path(model_dir) / get_model_file(file_id).filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_clip_weights(path: str | Path, config: Any = TINY, seed: int = 0,
                       vision_only: bool = False) -> Path:
    """Random open_clip weights for ``config`` saved as safetensors at ``path``."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = build_clip_model(load_model_config(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not vision_only or k.startswith('visual.') or k == 'logit_scale'}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def gpt2_byte_symbols() -> list[str]:
    """GPT-2's 256 byte-level symbols in vocabulary order (printable bytes first)."""
    printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
                 + list(range(ord('®'), ord('ÿ') + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_gpt2_dir(directory: str | Path, n_embd: int = 32, n_layer: int = 1,
                        n_head: int = 2) -> Path:
    """A GPT-2 config dir with a 257-symbol byte-level vocabulary and no merges."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: i for i, symbol in enumerate(gpt2_byte_symbols())}
    vocab['<|endoftext|>'] = len(vocab)
    (directory / 'vocab.json').write_text(json.dumps(vocab), encoding='utf-8')
    (directory / 'merges.txt').write_text('#version: 0.2\n', encoding='utf-8')
    config = {
        'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'], 'vocab_size': len(vocab),
        'n_positions': 128, 'n_ctx': 128, 'n_embd': n_embd, 'n_layer': n_layer,
        'n_head': n_head, 'bos_token_id': len(vocab) - 1, 'eos_token_id': len(vocab) - 1,
        'activation_function': 'gelu_new', 'resid_pdrop': 0.1, 'embd_pdrop': 0.1,
        'attn_pdrop': 0.1, 'layer_norm_epsilon': 1e-5, 'initializer_range': 0.02,
    }
    (directory / 'config.json').write_text(json.dumps(config, indent=2), encoding='utf-8')
    return directory


def clap_state_dict(config: Any = TINY, gpt2_dir: str | Path | None = None, seed: int = 0,
                    logit_scale: float = TINY_LOGIT_SCALE,
                    legacy_gpt2_buffers: bool = True) -> dict[str, torch.Tensor]:
    """A random CLAP state dict in msclap's key layout.

    Without ``gpt2_dir`` only the audio side and the caption projection are present (enough for
    the audio loader). ``legacy_gpt2_buffers`` adds the ``attn.bias`` / ``attn.masked_bias``
    buffers that GPT-2 checkpoints saved by older transformers carry.
    """
    from taco_ros.core.audio_encoder import AudioEncoder, ClapTextEncoder, import_msclap_modules
    cfg = load_model_config(config)
    clap = cfg['clap']
    torch.manual_seed(seed)
    audio = AudioEncoder(clap['htsat'], clap['frontend'], int(clap['d_proj']))
    state = {f'audio_encoder.{k}': v for k, v in audio.state_dict().items()
             if k != 'clap_logit_scale'}
    state['logit_scale'] = torch.tensor(float(logit_scale))
    if gpt2_dir is not None:
        text = ClapTextEncoder(str(gpt2_dir), int(clap['d_proj']))
        state.update({f'caption_encoder.{k}': v for k, v in text.state_dict().items()})
        if legacy_gpt2_buffers:
            n_pos = text.base.config.n_positions
            for i in range(text.base.config.n_layer):
                state[f'caption_encoder.base.h.{i}.attn.bias'] = torch.tril(
                    torch.ones(n_pos, n_pos, dtype=torch.bool)).view(1, 1, n_pos, n_pos)
                state[f'caption_encoder.base.h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    else:
        _, Projection = import_msclap_modules()
        width = 768  # GPT-2 width of the real checkpoint's caption projection
        projection = Projection(width, int(clap['d_proj']))
        state.update({f'caption_encoder.projection.{k}': v
                      for k, v in projection.state_dict().items()})
    return state


def write_clap_checkpoint(path: str | Path, config: Any = TINY,
                          gpt2_dir: str | Path | None = None, seed: int = 0,
                          logit_scale: float = TINY_LOGIT_SCALE,
                          extra: dict[str, Any] | None = None) -> Path:
    """An msclap-style checkpoint ``{'model': state_dict, **extra}`` at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {'model': clap_state_dict(config, gpt2_dir, seed, logit_scale)}
    payload.update(extra or {})
    torch.save(payload, path)
    return path


def write_tiny_model_files(model_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Every taco_tiny encoder file at its registry path under ``model_dir``."""
    gpt2_dir = write_tiny_gpt2_dir(_place(model_dir, 'taco-tiny-gpt2-config').parent)
    return {
        'clip': write_clip_weights(_place(model_dir, 'taco-tiny-clip'), TINY, seed),
        'clap': write_clap_checkpoint(_place(model_dir, 'taco-tiny-clap'), TINY, gpt2_dir, seed),
        'gpt2': gpt2_dir,
    }
