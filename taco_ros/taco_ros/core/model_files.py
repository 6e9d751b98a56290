"""The one registry of model files: what each file is, where it is looked for, how it is checked and read.

Search order (first hit wins): an explicit directory (node parameter ``model_dir`` or the
``--model-dir`` option), the ``TACO_MODEL_DIR`` environment variable, then
``~/.cache/taco_ros/models`` (``$XDG_CACHE_HOME/taco_ros/models`` when XDG_CACHE_HOME is set).
Each file lives at ``<dir>/<ModelFile.filename>``.

Loading never downloads: a missing file raises :class:`ModelFileNotFound`, whose message names the
file, the directories searched and the exact ``taco-ros models fetch <id>`` command. Fetching is an
explicit step (``taco-ros models fetch``, :mod:`taco_ros.core.model_fetch`).

The registry's names, sizes and checksums are the ones the hosts publish; ``taco_ros/test/fixtures/
model_hosting.json`` records where and when each was read, and a test holds the registry to it. Where a host
publishes only a rounded size ("1.41 GB") the entry keeps that figure and a file outside its rounding interval
is refused; where no sha256 is published the entry says so (``sha256=None``) and nothing is made up.

Checkpoints are read with :func:`load_state_dict_file` / :func:`read_weights_file`: first a format check (an
HTML page, a pickle under a ``.safetensors`` name or a truncated download is one :class:`ModelFileFormatError`
naming the file, what was expected and the fix), then safetensors, or ``torch.load`` with
``weights_only=True`` (no pickled code runs; a file that needs more is refused).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taco_ros.core import model_formats

ENV_MODEL_DIR = 'TACO_MODEL_DIR'
ENV_MODEL_MIRROR = 'TACO_MODEL_MIRROR'
PARTIAL_SUFFIX = '.part'
_UNITS = {'Bytes': 1, 'kB': 10 ** 3, 'MB': 10 ** 6, 'GB': 10 ** 9, 'TB': 10 ** 12}


@dataclass(frozen=True)
class ModelFile:
    """One file a model needs.

    file_id: stable name used by model configs and the CLI (``taco-ros models fetch <file_id>``).
    filename: path relative to a model directory; its last part is the host's own file name.
    url: public download address; None for files that are produced locally (test models).
    size: exact size in bytes as the host publishes it; None where it publishes none.
    sha256: checksum as the host publishes it (a Git LFS pointer); None where it publishes none.
    page: a human-readable page for manual download.
    optional: not needed by the default pipeline (only as a fallback).
    published_size: the host's rounded size ("1.41 GB", decimal units) when the exact one is not published;
        a file outside its rounding interval is refused.
    source: 'direct' (plain HTTP(S)) or 'google-drive' (may answer a large file with a confirmation page).
    """

    file_id: str
    filename: str
    description: str
    url: str | None
    size: int | None = None
    sha256: str | None = None
    page: str | None = None
    optional: bool = False
    published_size: str | None = None
    source: str = 'direct'

    @property
    def local_only(self) -> bool:
        return self.url is None

    @property
    def kind(self) -> str:
        """What the file must be (model_formats kinds: safetensors, torch, json, bpe-merges, any)."""
        return model_formats.expected_kind(self.filename)

    def size_bounds(self) -> tuple[int, int] | None:
        """Smallest and largest size in bytes the registry allows; None when nothing is known."""
        if self.size is not None:
            return self.size, self.size
        if self.published_size is None:
            return None
        number, unit = self.published_size.split()
        decimals = len(number.split('.')[1]) if '.' in number else 0
        half_step = 0.5 * 10 ** -decimals * _UNITS[unit]
        value = float(number) * _UNITS[unit]
        return int(value - half_step), int(value + half_step)

    def describe_size(self) -> str:
        if self.size is not None:
            return f'{self.size:,} bytes'
        if self.published_size is not None:
            return f'{self.published_size} as listed by the host (exact size not published)'
        return 'size not published'


_HF = 'https://huggingface.co'
_CLIP_REPO = 'laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup'
_GPT2_REPO = 'openai-community/gpt2'
_FCCLIP_DRIVE_ID = '1-91PIns86vyNaL3CzMmDD39zKGnPMtvj'  # fc-clip README, "FC-CLIP (ConvNeXt-Large)" row

MODEL_FILES: dict[str, ModelFile] = {}


def register_model_file(entry: ModelFile) -> ModelFile:
    """Add (or replace) a registry entry; returns it."""
    if not entry.file_id or '/' in entry.file_id:
        raise ValueError(f'invalid model file id {entry.file_id!r}')
    if Path(entry.filename).is_absolute() or '..' in Path(entry.filename).parts:
        raise ValueError(f'model file name must be relative to a model dir: {entry.filename!r}')
    if entry.source not in ('direct', 'google-drive'):
        raise ValueError(f'unknown source kind {entry.source!r} for {entry.file_id!r}')
    MODEL_FILES[entry.file_id] = entry
    return entry


# Values as published by the hosts, read 2026-11-29 (sources in test/fixtures/model_hosting.json).
for _entry in (
    ModelFile(
        'clip-convnext-large-d-320',
        'clip-convnext_large_d_320-laion2b_s29b_b131k_ft_soup/open_clip_pytorch_model.safetensors',
        'OpenCLIP convnext_large_d_320 laion2b_s29b_b131k_ft_soup (X_I and the FC-CLIP backbone); '
        'safetensors, so loading it cannot execute code',
        f'{_HF}/{_CLIP_REPO}/resolve/main/open_clip_pytorch_model.safetensors',
        sha256='1a8e47bdefd6d36202ec66a8975edda9e3c89560bcd1ecefe6f676311637a671',
        published_size='1.41 GB', page=f'{_HF}/{_CLIP_REPO}'),
    ModelFile(
        'clap-2023', 'msclap/CLAP_weights_2023.pth',
        'msclap CLAP 2023 checkpoint: HTS-AT audio encoder, GPT-2 caption encoder, projections',
        f'{_HF}/microsoft/msclap/resolve/main/CLAP_weights_2023.pth',
        published_size='690 MB', page=f'{_HF}/microsoft/msclap'),
    ModelFile(
        'gpt2-config', 'gpt2/config.json', 'GPT-2 model configuration (CLAP text encoder)',
        f'{_HF}/{_GPT2_REPO}/resolve/main/config.json', size=665, page=f'{_HF}/{_GPT2_REPO}'),
    ModelFile(
        'gpt2-vocab', 'gpt2/vocab.json', 'GPT-2 BPE vocabulary (CLAP text tokenizer)',
        f'{_HF}/{_GPT2_REPO}/resolve/main/vocab.json', published_size='1.04 MB',
        page=f'{_HF}/{_GPT2_REPO}'),
    ModelFile(
        'gpt2-merges', 'gpt2/merges.txt', 'GPT-2 BPE merges (CLAP text tokenizer)',
        f'{_HF}/{_GPT2_REPO}/resolve/main/merges.txt', published_size='456 kB',
        page=f'{_HF}/{_GPT2_REPO}'),
    ModelFile(
        'gpt2-weights', 'gpt2/model.safetensors',
        'GPT-2 base weights; only used if the CLAP checkpoint lacks caption_encoder.base.*',
        f'{_HF}/{_GPT2_REPO}/resolve/main/model.safetensors',
        sha256='248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707',
        published_size='548 MB', page=f'{_HF}/{_GPT2_REPO}', optional=True),
    ModelFile(
        'fcclip-convnext-large-coco', 'fcclip/fcclip_cocopan.pth',
        'FC-CLIP ConvNeXt-L trained on COCO panoptic (fcclip_cocopan.pth), the TACO segmenter',
        f'https://drive.usercontent.google.com/download?id={_FCCLIP_DRIVE_ID}'
        '&export=download&confirm=t',
        page=f'https://drive.google.com/file/d/{_FCCLIP_DRIVE_ID}/view', source='google-drive'),
    # Random-weight tiny models (model config taco_tiny): no public source, written by
    # taco_ros/test/encoder_fixtures.py for tests and quick pipeline runs.
    ModelFile('taco-tiny-clip', 'taco_tiny/clip.safetensors',
              'tiny random-weight OpenCLIP ConvNeXt (tests only)', None),
    ModelFile('taco-tiny-clap', 'taco_tiny/clap.pth',
              'tiny random-weight CLAP checkpoint in the msclap layout (tests only)', None),
    ModelFile('taco-tiny-gpt2-config', 'taco_tiny/gpt2/config.json',
              'tiny GPT-2 configuration (tests only)', None),
    ModelFile('taco-tiny-gpt2-vocab', 'taco_tiny/gpt2/vocab.json',
              'byte-level vocabulary for the tiny GPT-2 (tests only)', None),
    ModelFile('taco-tiny-gpt2-merges', 'taco_tiny/gpt2/merges.txt',
              'empty merges for the tiny GPT-2 (tests only)', None),
    ModelFile('taco-tiny-fcclip', 'taco_tiny/fcclip.pth',
              'tiny random-weight FC-CLIP checkpoint (tests only)', None),
):
    register_model_file(_entry)

# Names that stand for several files. A GPT-2 directory is config + vocabulary + merges: the loader builds
# GPT2Model from config.json and GPT2TokenizerFast from vocab.json + merges.txt (it always passes
# max_length, so tokenizer.json / tokenizer_config.json add nothing).
MODEL_FILE_GROUPS: dict[str, tuple[str, ...]] = {
    'gpt2': ('gpt2-config', 'gpt2-vocab', 'gpt2-merges'),
    'taco-tiny-gpt2': ('taco-tiny-gpt2-config', 'taco-tiny-gpt2-vocab', 'taco-tiny-gpt2-merges'),
}


# -- errors -----------------------------------------------------------------------------------
class ModelFileNotFound(FileNotFoundError):  # noqa: N818 (the name the rest of the code expects)
    """A model file is not in any search directory. The message says how to get it."""

    def __init__(self, file_id: str, filename: str, searched: list[Path], hint: str) -> None:
        self.file_id = file_id
        self.relative_path = filename
        self.searched = list(searched)
        dirs = ''.join(f'\n  {d}' for d in self.searched)
        self.message = f'model file {file_id!r} ({filename}) not found; looked in:{dirs}\n{hint}'
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class ChecksumMismatch(ValueError):  # noqa: N818
    """A downloaded file's size or sha256 differs from the registry."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint needs more than plain tensors to load (pickled code); it is refused."""


class ModelFileFormatError(ValueError):
    """A model file is not what its name says (HTML page, wrong format, truncated). One sentence names the
    file, what it is, what was expected and the fix."""

    def __init__(self, path: str | os.PathLike, problem: str, kind: str | None = None,
                 fix: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        kind = kind or model_formats.expected_kind(self.path)
        self.message = (f'{self.path} {problem}; expected {model_formats.DESCRIPTIONS[kind]}. '
                        f'{fix or _format_fix(self.path, kind)}')
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def _format_fix(path: Path, kind: str) -> str:
    entry = registry_entry_for(path)
    if entry is None:
        return 'Replace it with an intact copy of the right file.'
    fix = f'Delete it and run: {fetch_command(entry.file_id)}'
    if entry.local_only:
        fix = 'Write it again with taco_ros/test/encoder_fixtures.py'
    if kind == model_formats.SAFETENSORS and entry.file_id == 'clip-convnext-large-d-320':
        fix += (' (taco_ros reads only open_clip_pytorch_model.safetensors; the hub\'s '
                'open_clip_pytorch_model.bin is a pickle and is not accepted under this name)')
    return fix + '.'


def registry_entry_for(path: str | os.PathLike) -> ModelFile | None:
    """The registry entry whose relative file name ``path`` ends with (None: not a registry file)."""
    parts = Path(path).parts
    for entry in MODEL_FILES.values():
        wanted = Path(entry.filename).parts
        if parts[-len(wanted):] == wanted:
            return entry
    return None


def require_format(path: str | os.PathLike, kind: str | None = None) -> None:
    """Raise ModelFileFormatError when ``path`` is not plausibly a file of ``kind`` (default: by name)."""
    problem = model_formats.format_problem(path, kind)
    if problem is not None:
        raise ModelFileFormatError(path, problem, kind)


# -- search path ------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'taco_ros' / 'models'


def model_search_dirs(model_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for model files, in priority order, without duplicates."""
    candidates: list[Path] = []
    if model_dir:
        candidates.append(Path(model_dir).expanduser())
    if os.environ.get(ENV_MODEL_DIR):
        candidates.append(Path(os.environ[ENV_MODEL_DIR]).expanduser())
    candidates.append(default_cache_dir())
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def get_model_file(file_id: str) -> ModelFile:
    try:
        return MODEL_FILES[file_id]
    except KeyError:
        known = ', '.join(sorted(MODEL_FILES))
        raise ValueError(f'unknown model file id {file_id!r}; known ids: {known}') from None


def expand_file_ids(names: Iterable[str], include_optional: bool = False) -> list[str]:
    """Resolve ids, group names ('gpt2') and 'all' (every downloadable, non-optional file)."""
    ids: list[str] = []
    for name in names:
        if name == 'all':
            members = [f.file_id for f in MODEL_FILES.values()
                       if not f.local_only and (include_optional or not f.optional)]
        elif name in MODEL_FILE_GROUPS:
            members = list(MODEL_FILE_GROUPS[name])
        else:
            members = [get_model_file(name).file_id]
        ids.extend(m for m in members if m not in ids)
    return ids


def fetch_command(file_id: str) -> str:
    return f'taco-ros models fetch {file_id}'


def _missing_hint(entry: ModelFile, searched: list[Path]) -> str:
    target = searched[-1] / entry.filename
    if entry.local_only:
        return (f'{entry.description}; it has no public download. Write it with '
                'taco_ros/test/encoder_fixtures.py or point the loader at an explicit path.')
    manual = f' (or download {entry.page or entry.url} and save it as {target})'
    return f'fetch it with: {fetch_command(entry.file_id)}{manual}'


def find_model_file(file_id: str, model_dir: str | os.PathLike | None = None) -> Path:
    """Path of a registered file in the first search directory that has it.

    Raises ModelFileNotFound (naming the file, every directory searched and the fetch command).
    """
    entry = get_model_file(file_id)
    searched = model_search_dirs(model_dir)
    for directory in searched:
        candidate = directory / entry.filename
        if candidate.is_file():
            return candidate
    raise ModelFileNotFound(entry.file_id, entry.filename, searched, _missing_hint(entry, searched))


def find_model_dir(group: str, model_dir: str | os.PathLike | None = None) -> Path:
    """Directory holding every file of a group (e.g. the GPT-2 config dir), all in one place."""
    members = expand_file_ids([group])
    first = find_model_file(members[0], model_dir)
    root = first.parent
    for member in members[1:]:
        entry = get_model_file(member)
        if not (root / Path(entry.filename).name).is_file():
            # Report against the same directory so the user sees which file is missing where.
            raise ModelFileNotFound(
                entry.file_id, entry.filename, [root],
                f'the other {group} files are in {root}; {_missing_hint(entry, [root.parent])}')
    return root


# -- verification -----------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one file. status: 'ok' (sha256 matched), 'size only' (exact size matched, no
    published sha256), 'format only' (the format and the host's rounded size fit; neither exact size nor
    sha256 is published), 'exists' (nothing is known: local files), 'missing', 'size mismatch',
    'bad format', 'sha256 mismatch'."""

    file_id: str
    status: str
    path: Path | None
    detail: str = ''

    @property
    def good(self) -> bool:
        return self.status in ('ok', 'size only', 'format only', 'exists')


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        while block := stream.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def check_file(entry: ModelFile, path: Path) -> VerifyResult:
    """Compare a file on disk with the registry entry: size (cheap), then format, then sha256."""
    size = path.stat().st_size
    bounds = entry.size_bounds()
    if bounds is not None and not bounds[0] <= size <= bounds[1]:
        return VerifyResult(entry.file_id, 'size mismatch', path,
                            f'{size:,} bytes, expected {entry.describe_size()}')
    problem = model_formats.format_problem(path, entry.kind)
    if problem is not None:
        detail = str(ModelFileFormatError(path, problem, entry.kind))
        return VerifyResult(entry.file_id, 'bad format', path, detail)
    if entry.sha256 is not None:
        actual = sha256_of(path)
        if actual != entry.sha256.lower():
            return VerifyResult(entry.file_id, 'sha256 mismatch', path,
                                f'sha256 {actual}, expected {entry.sha256}')
        return VerifyResult(entry.file_id, 'ok', path, f'{size:,} bytes, sha256 matches')
    if entry.size is not None:
        return VerifyResult(entry.file_id, 'size only', path,
                            f'{size:,} bytes as published; no published sha256')
    if entry.published_size is not None:
        return VerifyResult(entry.file_id, 'format only', path,
                            f'{size:,} bytes, fits the listed {entry.published_size}; the format checks out; '
                            'no published exact size or sha256')
    return VerifyResult(entry.file_id, 'exists', path,
                        f'{size:,} bytes; the format checks out; neither size nor sha256 is published')


def verify_model_file(file_id: str, model_dir: str | os.PathLike | None = None) -> VerifyResult:
    entry = get_model_file(file_id)
    try:
        path = find_model_file(file_id, model_dir)
    except ModelFileNotFound:
        return VerifyResult(file_id, 'missing', None, f'run: {fetch_command(file_id)}')
    return check_file(entry, path)


# -- safe checkpoint reading ------------------------------------------------------------------
def _extra_safe_globals() -> list[Any]:
    """Harmless non-tensor types that training checkpoints often carry next to the weights
    (an argparse.Namespace of hyper-parameters, numpy scalars and arrays of plain dtypes): plain data,
    no code. numpy 1 pickles name the same functions under ``numpy.core``."""
    import argparse
    import importlib

    import numpy as np
    # numpy 2 moved numpy.core to numpy._core; numpy 1.26 has a numpy._core package without multiarray.
    try:
        multiarray = importlib.import_module('numpy._core.multiarray')
    except ImportError:
        multiarray = importlib.import_module('numpy.core.multiarray')
    safe: list[Any] = [argparse.Namespace, np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct,
                       (multiarray.scalar, 'numpy.core.multiarray.scalar'),
                       (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct')]
    safe.extend(type(np.dtype(name)) for name in (
        'float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool'))
    return safe


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` that runs no pickled code (weights_only=True, memory-mapped when possible).

    Raises UnsafeCheckpointError when the file needs anything beyond tensors and plain data.
    """
    import pickle

    import torch
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_extra_safe_globals()):
            try:
                return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            except RuntimeError as exc:
                # Legacy (non-zip) files cannot be memory-mapped; read them normally.
                if 'mmap' not in str(exc) and 'zipfile' not in str(exc):
                    raise
                return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f'{path} needs more than tensors and plain data to load, and executing pickled code '
            f'is refused (torch.load weights_only=True). Convert it to safetensors with a '
            f'trusted tool first. Loader said: {str(exc).splitlines()[0]}') from exc


def read_weights_file(path: str | os.PathLike) -> Any:
    """The object stored in a .safetensors file or a weights-only torch file, after the format check.

    Every failure is one ValueError naming the file (ModelFileFormatError, UnsafeCheckpointError), never the
    reading library's traceback; a missing file is FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    kind = model_formats.expected_kind(path)
    kind = kind if kind in (model_formats.SAFETENSORS, model_formats.TORCH) else model_formats.TORCH
    require_format(path, kind)
    try:
        if kind == model_formats.SAFETENSORS:
            from safetensors.torch import load_file
            return load_file(str(path), device='cpu')
        return safe_torch_load(path)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # torch and safetensors raise many types for a corrupt file
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileFormatError(path, f'could not be read ({first_line[:200]}): corrupt or truncated',
                                   kind) from None


def load_state_dict_file(path: str | os.PathLike,
                         container_keys: tuple[str, ...] = ('state_dict', 'model')
                         ) -> dict[str, Any]:
    """A flat ``{name: tensor}`` dict from a .safetensors file or a weights-only torch file.

    Unwraps one level of ``{'state_dict': ...}`` / ``{'model': ...}`` (open_clip, msclap and
    detectron2 layouts) and strips a DataParallel ``module.`` prefix shared by every key.
    """
    path = Path(path)
    state = read_weights_file(path)
    if isinstance(state, Mapping):
        for key in container_keys:
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise ValueError(f'{path} does not hold a state dict (got {type(state).__name__})')
    if state and all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    return dict(state)


_FETCH_NAMES = ('DownloadFailed', 'DownloadInterrupted', 'FetchStep', 'fetch_model_file', 'plan_fetch',
                'source_url')


def __getattr__(name: str) -> Any:
    """The download API lives in model_fetch; its names stay reachable from here."""
    if name in _FETCH_NAMES:
        from taco_ros.core import model_fetch
        return getattr(model_fetch, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
