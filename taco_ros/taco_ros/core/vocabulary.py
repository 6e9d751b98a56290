"""Anchor word banks (docs/method.md, anchor bank): CLIP and CLAP text vectors of a word list.

Building and encoding banks happens here and only here:

* :class:`TextEncoders` encodes words with the CLIP text tower and the CLAP caption encoder (used by
  ``taco-ros anchors build`` through :func:`build_anchor_bank`, and by the pipeline);
* :class:`Vocabulary` is the pipeline's word list and its co-NMF ``AnchorBank`` on the device, built
  from the text encoders or a bank file, with the rule for which word lists are usable.

A bank file holds, for J words,

* ``clip_text`` [J, D_I]: CLIP ``encode_text`` of "A photo of a {word}" (unnormalised, float32),
* ``clap_text`` [J, D_P]: CLAP caption vectors of "This is a sound of {word}" (unnormalised),
* ``audio_projection.*``: the CLAP audio projection (768→1024 Projection) weights, which the
  co-NMF applies to audio semantic components,
* ``clap_logit_scale``: exp(CLAP logit_scale),

and a JSON header (format, words, prompts, model ids, word-list hash). It is a safetensors file:
reading it runs no pickled code. The node loads the bank at start-up and never holds the CLIP or
CLAP text towers in memory. A bank built for other model ids (or from random weights) is
refused, because its vectors live in another embedding space.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

BANK_FORMAT = 'taco_ros.anchor_bank/1'
AUDIOSET_LABELS_FILE = 'audioset_labels.txt'


class AnchorBankMismatch(ValueError):  # noqa: N818
    """The bank was built for other models than the ones in use."""


# -- word lists -------------------------------------------------------------------------------
def parse_word_list(lines: Iterable[str]) -> list[str]:
    """Words from text lines: one per line, blank lines and '#' comments skipped.

    Duplicates are an error: they would silently give one word two rows.
    """
    words = [line.strip() for line in lines]
    words = [w for w in words if w and not w.startswith('#')]
    seen: set[str] = set()
    duplicates = sorted({w for w in words if w in seen or seen.add(w)})
    if duplicates:
        raise ValueError(f'word list has duplicates: {duplicates[:10]}')
    if not words:
        raise ValueError('word list is empty')
    return words


def read_word_list(path: str | os.PathLike) -> list[str]:
    with open(path, encoding='utf-8') as stream:
        return parse_word_list(stream)


def audioset_labels() -> list[str]:
    """The 527 AudioSet class names in TACO's order (see taco_ros/taco_ros/data/README.md)."""
    text = resources.files('taco_ros').joinpath('data', AUDIOSET_LABELS_FILE).read_text('utf-8')
    return parse_word_list(text.splitlines())


def words_hash(words: Sequence[str]) -> str:
    """sha256 of the words joined by newlines (order matters: it is the row order)."""
    return hashlib.sha256('\n'.join(words).encode('utf-8')).hexdigest()


# -- bank data --------------------------------------------------------------------------------
@dataclass
class AnchorBankData:
    """Everything a bank file holds (tensors on CPU, float32)."""

    words: list[str]
    clip_text: Tensor
    clap_text: Tensor
    projection_state: dict[str, Tensor]
    logit_scale: float
    model_ids: dict[str, str]
    prompts: dict[str, str]
    words_sha256: str = ''
    format: str = BANK_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.words_sha256:
            self.words_sha256 = words_hash(self.words)
        rows = len(self.words)
        if self.clip_text.shape[0] != rows or self.clap_text.shape[0] != rows:
            raise ValueError(f'{rows} words but {self.clip_text.shape[0]} CLIP and '
                             f'{self.clap_text.shape[0]} CLAP vectors')


# -- encoding words ---------------------------------------------------------------------------
def random_word_vector(word: str, dim: int) -> Tensor:
    """A vector seeded by the word (random-weight runs without the GPT-2 tokenizer files)."""
    generator = torch.Generator().manual_seed(zlib.crc32(word.encode('utf-8')))
    return torch.randn(dim, generator=generator)


class TextEncoders:
    """The CLIP text tower (inside the shared ClipBackbone) and the CLAP caption encoder, with a
    cache of the vectors of every word encoded so far.

    clap_text None: a random-weight run without tokenizer files; CLAP word vectors are then
    seeded random vectors (:func:`random_word_vector`). The audio side (AudioEncoder) supplies the
    CLAP prompt, projection width and model id.
    """

    def __init__(self, clip: Any, clap_text: Any, audio: Any, clip_prompt: str | None = None,
                 clap_prompt: str | None = None) -> None:
        self.clip = clip
        self.clap_text = clap_text
        self.audio = audio
        self.clip_prompt = clip_prompt or getattr(clip, 'prompt', 'A photo of a {}')
        self.clap_prompt = clap_prompt or getattr(audio, 'prompt', 'This is a sound of {}')
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}

    def encode(self, words: Sequence[str], batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """[J, D_I] CLIP and [J, D_P] CLAP text vectors of ``words`` (CPU, float32, unnormalised).

        batch_size: CLIP prompts per forward pass (None: all new words in one pass).
        """
        new = [w for w in dict.fromkeys(words) if w not in self.cache]
        if new:
            image, audio = self._encode_new(new, batch_size)
            self.remember(new, image, audio)
        return (torch.stack([self.cache[w][0] for w in words]),
                torch.stack([self.cache[w][1] for w in words]))

    def remember(self, words: Sequence[str], image: Tensor, audio: Tensor) -> None:
        """Cache known vectors (e.g. a bank file's) so that these words are never re-encoded."""
        for i, word in enumerate(words):
            self.cache[word] = (image[i].float().cpu(), audio[i].float().cpu())

    def _encode_new(self, words: list[str], batch_size: int | None) -> tuple[Tensor, Tensor]:
        if self.clap_text is None:
            width = self.audio.projection.linear1.out_features
            audio = torch.stack([random_word_vector(w, width) for w in words])
        else:
            audio = self._clap_vectors(words)
        return self._clip_vectors(words, batch_size), audio

    @torch.no_grad()
    def _clip_vectors(self, words: list[str], batch_size: int | None) -> Tensor:
        import open_clip
        step = batch_size or len(words)
        device = self.clip.text_device
        chunks = []
        for first in range(0, len(words), step):
            prompts = [self.clip_prompt.format(w) for w in words[first:first + step]]
            tokens = open_clip.tokenizer.tokenize(prompts).to(device)
            chunks.append(self.clip.encode_text(tokens).float().cpu())
        return torch.cat(chunks)

    def _clap_vectors(self, words: list[str], batch_size: int = 64) -> Tensor:
        return self.clap_text([self.clap_prompt.format(w) for w in words], batch_size).float().cpu()

    def to(self, device: str | torch.device) -> TextEncoders:
        """Move both text encoders (the image tower of the backbone stays where it is)."""
        self.clip.text_tower_to(device)
        if self.clap_text is not None:
            self.clap_text.to(device)
        return self

    def drop(self) -> None:
        """Free the CLIP text tower and the CLAP caption encoder (the cache stays)."""
        if self.clip.has_text_tower:
            self.clip.drop_text_tower()
        self.clap_text = None

    def bank_data(self, words: Sequence[str], batch_size: int = 64) -> AnchorBankData:
        """The bank file contents for ``words`` (a checked word list)."""
        words = parse_word_list(words)
        if self.clap_text is None:
            raise ValueError('building a bank file needs the CLAP caption encoder')
        if getattr(self.clap_text, 'model_id', None) != getattr(self.audio, 'model_id', None):
            raise ValueError(f'CLAP text ({self.clap_text.model_id}) and audio '
                             f'({self.audio.model_id}) come from different checkpoints')
        image, audio = self._clip_vectors(words, batch_size), self._clap_vectors(words, batch_size)
        projection = {k: v.detach().float().cpu().clone()
                      for k, v in self.audio.projection.state_dict().items()}
        return AnchorBankData(
            words=list(words), clip_text=image, clap_text=audio, projection_state=projection,
            logit_scale=self.audio.logit_scale,
            model_ids={'clip': str(self.clip.model_id), 'clap': str(self.audio.model_id)},
            prompts={'clip': self.clip_prompt, 'clap': self.clap_prompt})


def build_anchor_bank(words: Sequence[str], clip: Any, clap_text: Any, audio: Any,
                      clip_prompt: str | None = None, clap_prompt: str | None = None,
                      batch_size: int = 64) -> AnchorBankData:
    """Encode ``words`` with the CLIP text tower of ``clip`` (a ClipBackbone) and the CLAP
    caption encoder ``clap_text``; take the audio projection and logit scale from ``audio``
    (the AudioEncoder of the same CLAP checkpoint)."""
    encoders = TextEncoders(clip, clap_text, audio, clip_prompt, clap_prompt)
    return encoders.bank_data(words, batch_size)


def save_anchor_bank(bank: AnchorBankData, path: str | os.PathLike) -> Path:
    """Write the bank as safetensors with a JSON header (atomic rename)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        'clip_text': bank.clip_text.float().contiguous(),
        'clap_text': bank.clap_text.float().contiguous(),
        'clap_logit_scale': torch.tensor(float(bank.logit_scale)),
    }
    tensors.update({f'audio_projection.{k}': v.float().contiguous()
                    for k, v in bank.projection_state.items()})
    header = {
        'format': bank.format, 'words': bank.words, 'words_sha256': bank.words_sha256,
        'model_ids': bank.model_ids, 'prompts': bank.prompts,
        'clap_logit_scale': float(bank.logit_scale), **bank.extra,
    }
    partial = path.with_name(path.name + '.part')
    save_file(tensors, str(partial), metadata={'taco_ros': json.dumps(header)})
    os.replace(partial, path)
    return path


def read_anchor_bank(path: str | os.PathLike) -> AnchorBankData:
    """Read a bank file back (no model needed)."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'anchor bank {path} does not exist; build it with: '
                                f'taco-ros anchors build --audioset --out {path}')
    try:
        with safe_open(str(path), framework='pt', device='cpu') as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for foreign files
        raise ValueError(f'{path} is not an anchor bank file ({exc})') from exc
    if 'taco_ros' not in metadata:
        raise ValueError(f'{path} is a safetensors file without a taco_ros anchor bank header')
    header = json.loads(metadata['taco_ros'])
    if header.get('format') != BANK_FORMAT:
        raise ValueError(f'{path}: unsupported bank format {header.get("format")!r} '
                         f'(expected {BANK_FORMAT}); rebuild it')
    words = list(header['words'])
    if words_hash(words) != header.get('words_sha256'):
        raise ValueError(f'{path}: word list does not match its recorded hash (corrupt file?)')
    known = {'format', 'words', 'words_sha256', 'model_ids', 'prompts', 'clap_logit_scale'}
    return AnchorBankData(
        words=words, clip_text=tensors['clip_text'], clap_text=tensors['clap_text'],
        projection_state={k[len('audio_projection.'):]: v for k, v in tensors.items()
                          if k.startswith('audio_projection.')},
        logit_scale=float(tensors['clap_logit_scale']),
        model_ids=dict(header['model_ids']), prompts=dict(header['prompts']),
        words_sha256=header['words_sha256'],
        extra={k: v for k, v in header.items() if k not in known})


def check_model_ids(bank: AnchorBankData, expected: Mapping[str, str], source: str = '') -> None:
    """Refuse a bank whose model ids differ from ``expected`` (keys 'clip', 'clap')."""
    wrong = {k: (bank.model_ids.get(k), v) for k, v in expected.items()
             if bank.model_ids.get(k) != v}
    if wrong:
        details = '; '.join(f'{k}: bank has {have!r}, models are {want!r}'
                            for k, (have, want) in wrong.items())
        raise AnchorBankMismatch(
            f'anchor bank {source} was built for other models ({details}); rebuild it with '
            '`taco-ros anchors build` for the model config in use')


def projection_from_state(state: Mapping[str, Tensor]) -> torch.nn.Module:
    """The CLAP audio Projection rebuilt from its weights, in eval mode and frozen."""
    from taco_ros.core.audio_encoder import import_msclap_modules
    _, Projection = import_msclap_modules()
    d_out, d_in = state['linear1.weight'].shape
    module = Projection(int(d_in), int(d_out))
    module.load_state_dict(dict(state), strict=True)
    module.requires_grad_(False)
    return module.eval()


def load_anchor_bank(path: str | os.PathLike, expected_model_ids: Mapping[str, str] | None,
                     device: str | torch.device = 'cpu', exclude: Sequence[str] = ()) -> Any:
    """A bank file as the co-NMF's ``AnchorBank`` (taco_ros.core.conmf).

    expected_model_ids: the ``model_id`` of the CLIP and CLAP in use ({'clip': ..., 'clap': ...},
        e.g. ``{'clip': backbone.model_id, 'clap': audio.model_id}``); a mismatch raises
        AnchorBankMismatch. None skips the check (offline inspection only).
    exclude: words to drop (TACO's MS3 setting drops "Music"); unknown words are an error.
    """
    from taco_ros.core.conmf import AnchorBank
    data = read_anchor_bank(path)
    if expected_model_ids is not None:
        check_model_ids(data, expected_model_ids, str(path))
    unknown = [w for w in exclude if w not in data.words]
    if unknown:
        raise ValueError(f'cannot exclude {unknown}: not in the bank {path}')
    keep = [i for i, w in enumerate(data.words) if w not in set(exclude)]
    rows = torch.tensor(keep, dtype=torch.long)
    return AnchorBank(
        words=[data.words[i] for i in keep],
        image=data.clip_text[rows].to(device),
        audio=data.clap_text[rows].to(device),
        audio_projection=projection_from_state(data.projection_state).to(device),
        audio_logit_scale=float(data.logit_scale),
    )


# -- the pipeline's vocabulary ----------------------------------------------------------------
class Vocabulary:
    """The words in use and their co-NMF ``AnchorBank`` on the pipeline's device.

    Words are encoded by the text encoders of ``models`` (core.models.Models) when it has them,
    else taken from the bank file ``anchors``. With both, the file's vectors are cached so that
    only new words are encoded. :attr:`bank` is replaced, never mutated: a window in progress
    keeps the bank it started with.
    """

    def __init__(self, models: Any, device: torch.device, anchors: str | None = None,
                 words: Sequence[str] | None = None) -> None:
        self.models = models
        self.device = device
        self.file_bank = self._read_file(anchors) if anchors is not None else None
        self.bank: Any = None
        self.set(words)

    def _read_file(self, path: str) -> Any:
        models = self.models
        expected = {'clip': models.backbone.model_id, 'clap': models.audio.model_id}
        if models.random_weights:
            expected = None  # random models match no bank; any bank's shapes will do
        full = load_anchor_bank(path, expected)
        if expected is None:
            d_image = models.backbone.embed_dim
            d_proj = models.audio.projection.linear1.out_features
            if full.image.shape[1] != d_image or full.audio.shape[1] != d_proj:
                raise ValueError(f'anchor bank vectors ({full.image.shape[1]}, '
                                 f'{full.audio.shape[1]}) do not fit the models '
                                 f'({d_image}, {d_proj})')
        if models.text is not None:
            models.text.remember(full.words, full.image, full.audio)
        return full

    @property
    def words(self) -> list[str]:
        return list(self.bank.words)

    def default_words(self) -> list[str]:
        """Every word of the bank file, else the 527 AudioSet names."""
        return list(self.file_bank.words) if self.file_bank is not None else audioset_labels()

    def problem(self, words: Sequence[str]) -> str | None:
        """Why ``words`` cannot become the vocabulary (None when they can)."""
        words = list(words)
        if len(words) < 2:
            return 'the vocabulary needs at least 2 words'
        bad = [w for w in words if not isinstance(w, str) or not w.strip()]
        if bad:
            return f'vocabulary words must be non-empty strings, got {bad[:5]!r}'
        if len(set(words)) != len(words):
            return 'the vocabulary has duplicate words'
        if self.models.text is None:
            if self.file_bank is None:
                return 'the text encoders were freed and there is no anchor bank file'
            missing = [w for w in words if w not in self.file_bank.words]
            if missing:
                return (f'words not in the anchor bank file and no text encoders loaded: '
                        f'{missing[:10]}')
        return None

    def set(self, words: Sequence[str] | None) -> None:
        """Use ``words`` (None: :meth:`default_words`); ValueError if unusable."""
        words = self.default_words() if words is None else list(words)
        problem = self.problem(words)
        if problem:
            raise ValueError(problem)
        self.bank = self._make_bank(words)  # one assignment: a reader sees the old or the new

    def _make_bank(self, words: list[str]) -> Any:
        from taco_ros.core.conmf import AnchorBank

        if self.models.text is not None:
            image, audio = self.models.text.encode(words)
        else:
            subset = self.file_bank.subset(words)
            image, audio = subset.image, subset.audio
        return AnchorBank(words, image.to(self.device), audio.to(self.device),
                          self.models.audio.projection, self.models.audio.logit_scale)

    def to(self, device: torch.device) -> None:
        """Move the bank (the pipeline's suspend/resume)."""
        if self.bank is not None:
            self.bank = self.bank.to(device)
