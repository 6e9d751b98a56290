"""The one registry of model files: what each file is, where it is looked for, how it is fetched.

Search order (first hit wins): an explicit directory (node parameter ``model_dir`` or the
``--model-dir`` option), the ``TACO_MODEL_DIR`` environment variable, then
``~/.cache/taco_ros/models`` (``$XDG_CACHE_HOME/taco_ros/models`` when XDG_CACHE_HOME is set).
Each file lives at ``<dir>/<ModelFile.filename>``.

Loading never downloads: a missing file raises :class:`ModelFileNotFound`, whose message names the
file, the directories searched and the exact ``taco-ros models fetch <id>`` command. Fetching is an
explicit step (``taco-ros models fetch``): HTTP(S) with Range resume, sha256 check where the
checksum is known, and an atomic rename so that a half-written file is never found by a loader.

Checkpoints are read with :func:`load_state_dict_file`: safetensors, or ``torch.load`` with
``weights_only=True`` (no pickled code runs; a file that needs more is refused).
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_MODEL_DIR = 'TACO_MODEL_DIR'
ENV_MODEL_MIRROR = 'TACO_MODEL_MIRROR'
PARTIAL_SUFFIX = '.part'


@dataclass(frozen=True)
class ModelFile:
    """One file a model needs.

    file_id: stable name used by model configs and the CLI (``taco-ros models fetch <file_id>``).
    filename: path relative to a model directory.
    url: public download address; None for files that are produced locally (test models).
    size: expected size in bytes, None where it is not known to us.
    sha256: expected checksum, None where it is not known to us (verification is then by size
        only, or existence only when the size is unknown too).
    page: a human-readable page for manual download.
    optional: not needed by the default pipeline (only as a fallback).
    """

    file_id: str
    filename: str
    description: str
    url: str | None
    size: int | None = None
    sha256: str | None = None
    page: str | None = None
    optional: bool = False

    @property
    def local_only(self) -> bool:
        return self.url is None


_HF = 'https://huggingface.co'
_CLIP_REPO = 'laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup'
_GPT2_REPO = 'openai-community/gpt2'
_FCCLIP_DRIVE_ID = '1-91PIns86vyNaL3CzMmDD39zKGnPMtvj'  # fc-clip README, "FC-CLIP (ConvNeXt-Large)" row

# Checksums: none of the real files' sha256 values is known to us (they could not be downloaded
# here), so every sha256 is None and `verify` reports "size only" / "exists" for them. Sizes are
# given only where the public file listing states them to the byte.
MODEL_FILES: dict[str, ModelFile] = {}


def register_model_file(entry: ModelFile) -> ModelFile:
    """Add (or replace) a registry entry; returns it."""
    if not entry.file_id or '/' in entry.file_id:
        raise ValueError(f'invalid model file id {entry.file_id!r}')
    if Path(entry.filename).is_absolute() or '..' in Path(entry.filename).parts:
        raise ValueError(f'model file name must be relative to a model dir: {entry.filename!r}')
    MODEL_FILES[entry.file_id] = entry
    return entry


for _entry in (
    ModelFile(
        'clip-convnext-large-d-320',
        'clip-convnext_large_d_320-laion2b_s29b_b131k_ft_soup/open_clip_model.safetensors',
        'OpenCLIP convnext_large_d_320 laion2b_s29b_b131k_ft_soup (X_I and the FC-CLIP backbone); '
        'safetensors, so loading it cannot execute code',
        f'{_HF}/{_CLIP_REPO}/resolve/main/open_clip_model.safetensors',
        page=f'{_HF}/{_CLIP_REPO}'),
    ModelFile(
        'clap-2023', 'msclap/CLAP_weights_2023.pth',
        'msclap CLAP 2023 checkpoint: HTS-AT audio encoder, GPT-2 caption encoder, projections',
        f'{_HF}/microsoft/msclap/resolve/main/CLAP_weights_2023.pth',
        page=f'{_HF}/microsoft/msclap'),
    ModelFile(
        'gpt2-config', 'gpt2/config.json', 'GPT-2 model configuration (CLAP text encoder)',
        f'{_HF}/{_GPT2_REPO}/resolve/main/config.json', page=f'{_HF}/{_GPT2_REPO}'),
    ModelFile(
        'gpt2-vocab', 'gpt2/vocab.json', 'GPT-2 BPE vocabulary (CLAP text tokenizer)',
        f'{_HF}/{_GPT2_REPO}/resolve/main/vocab.json', size=1042301, page=f'{_HF}/{_GPT2_REPO}'),
    ModelFile(
        'gpt2-merges', 'gpt2/merges.txt', 'GPT-2 BPE merges (CLAP text tokenizer)',
        f'{_HF}/{_GPT2_REPO}/resolve/main/merges.txt', size=456318, page=f'{_HF}/{_GPT2_REPO}'),
    ModelFile(
        'gpt2-weights', 'gpt2/model.safetensors',
        'GPT-2 base weights; only used if the CLAP checkpoint lacks caption_encoder.base.*',
        f'{_HF}/{_GPT2_REPO}/resolve/main/model.safetensors', page=f'{_HF}/{_GPT2_REPO}',
        optional=True),
    ModelFile(
        'fcclip-convnext-large-coco', 'fcclip/fcclip_cocopan.pth',
        'FC-CLIP ConvNeXt-L trained on COCO panoptic (fcclip_cocopan.pth), the TACO segmenter',
        f'https://drive.usercontent.google.com/download?id={_FCCLIP_DRIVE_ID}'
        '&export=download&confirm=t',
        page=f'https://drive.google.com/file/d/{_FCCLIP_DRIVE_ID}/view'),
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

# Names that stand for several files (a GPT-2 directory is config + vocabulary + merges).
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
    """Outcome of checking one file. status: 'ok' (sha256 matched), 'size only' (size matched,
    no known checksum), 'exists' (neither is known), 'missing', 'size mismatch',
    'sha256 mismatch'."""

    file_id: str
    status: str
    path: Path | None
    detail: str = ''

    @property
    def good(self) -> bool:
        return self.status in ('ok', 'size only', 'exists')


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        while block := stream.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def check_file(entry: ModelFile, path: Path) -> VerifyResult:
    """Compare a file on disk with the registry entry (size first: cheap)."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return VerifyResult(entry.file_id, 'size mismatch', path,
                            f'{size} bytes, expected {entry.size}')
    if entry.sha256 is not None:
        actual = sha256_of(path)
        if actual != entry.sha256.lower():
            return VerifyResult(entry.file_id, 'sha256 mismatch', path,
                                f'sha256 {actual}, expected {entry.sha256}')
        return VerifyResult(entry.file_id, 'ok', path, f'{size} bytes, sha256 matches')
    if entry.size is not None:
        return VerifyResult(entry.file_id, 'size only', path,
                            f'{size} bytes as expected; no known sha256')
    return VerifyResult(entry.file_id, 'exists', path,
                        f'{size} bytes; neither size nor sha256 is known')


def verify_model_file(file_id: str, model_dir: str | os.PathLike | None = None) -> VerifyResult:
    entry = get_model_file(file_id)
    try:
        path = find_model_file(file_id, model_dir)
    except ModelFileNotFound:
        return VerifyResult(file_id, 'missing', None, f'run: {fetch_command(file_id)}')
    return check_file(entry, path)


# -- download ---------------------------------------------------------------------------------
def source_url(entry: ModelFile, mirror: str | None = None) -> str:
    """Where a file is fetched from: ``<mirror>/<filename>`` when a mirror is set (option or
    TACO_MODEL_MIRROR; the mirror replicates the model-dir layout), else the registry URL."""
    mirror = mirror or os.environ.get(ENV_MODEL_MIRROR)
    if mirror:
        return mirror.rstrip('/') + '/' + urllib.parse.quote(entry.filename)
    if entry.url is None:
        raise ValueError(f'{entry.file_id!r} has no public download ({entry.description})')
    return entry.url


class DownloadFailed(OSError):  # noqa: N818
    """The source could not be reached or refused the request (DNS, HTTP error...)."""


class DownloadInterrupted(OSError):  # noqa: N818
    """The transfer stopped early; the partial file is kept so that a new fetch resumes it."""


def _open(url: str, offset: int, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={'User-Agent': 'taco-ros-models/1'})
    if offset:
        request.add_header('Range', f'bytes={offset}-')
    return urllib.request.urlopen(request, timeout=timeout)


def _transfer(url: str, part: Path, entry: ModelFile, timeout: float, progress: bool,
              chunk_size: int) -> None:
    """One HTTP request appending to ``part`` (resuming from its size when the server agrees)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the partial file is already complete (or longer than the
            # file); the checksum step decides which.
            return
        raise
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored Range: start over
        content_type = response.headers.get('Content-Type', '')
        if 'text/html' in content_type and not entry.filename.endswith('.html'):
            raise DownloadInterrupted(
                f'{url} answered with an HTML page instead of {entry.filename} (a login or '
                f'confirmation page?); download it by hand from {entry.page or url}')
        length = response.headers.get('Content-Length')
        total = offset + int(length) if length is not None else entry.size
        from tqdm import tqdm
        bar = tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                   desc=entry.file_id, disable=not progress, leave=True)
        with bar, open(part, 'ab' if offset else 'wb') as sink:
            while True:
                try:
                    block = response.read(chunk_size)
                except (OSError, ValueError) as exc:  # IncompleteRead, reset, timeout
                    raise DownloadInterrupted(f'transfer of {entry.file_id} stopped: {exc}') from exc
                if not block:
                    break
                sink.write(block)
                bar.update(len(block))
    if length is not None and part.stat().st_size < offset + int(length):
        raise DownloadInterrupted(
            f'transfer of {entry.file_id} stopped at {part.stat().st_size} bytes')


def fetch_model_file(
    file_id: str,
    dest_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    force: bool = False,
    chunk_size: int = 1 << 20,
    log: Callable[[str], None] = print,
) -> Path:
    """Download one registered file into ``dest_dir`` (default: the first search directory).

    The bytes go to ``<target>.part``; an interrupted transfer is resumed with an HTTP Range
    request (``retries`` times here, or by the next fetch). The finished file is checked against
    the registry size/sha256: a mismatch deletes the partial file and raises ChecksumMismatch.
    Only a verified file is renamed (atomically) to its final name.
    """
    entry = get_model_file(file_id)
    root = Path(dest_dir).expanduser() if dest_dir else model_search_dirs()[0]
    target = root / entry.filename
    if target.is_file() and not force:
        result = check_file(entry, target)
        if result.good:
            log(f'{file_id}: already present at {target} ({result.status})')
            return target
        log(f'{file_id}: {target} failed verification ({result.detail}); downloading again')
    url = source_url(entry, mirror)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PARTIAL_SUFFIX)
    if force and part.exists():
        part.unlink()
    attempts = max(1, retries)
    for attempt in range(1, attempts + 1):
        try:
            _transfer(url, part, entry, timeout, progress, chunk_size)
            break
        except urllib.error.URLError as exc:
            reason = exc.reason if not isinstance(exc, urllib.error.HTTPError) else f'HTTP {exc.code}'
            raise DownloadFailed(
                f'{file_id}: cannot download {url}: {reason}. Without network access, copy the '
                f'file to {target} by hand (or serve a copy and pass --mirror).') from exc
        except DownloadInterrupted as exc:
            if attempt == attempts or not part.exists():
                raise
            log(f'{file_id}: {exc}; resuming (attempt {attempt + 1}/{attempts})')
            time.sleep(min(2.0 ** (attempt - 1), 10.0) * 0.1)
    result = check_file(entry, part)
    if not result.good:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f'{file_id}: downloaded file rejected ({result.status}: '
                               f'{result.detail}); the partial file was removed')
    os.replace(part, target)
    log(f'{file_id}: saved {target} ({result.status})')
    return target


# -- safe checkpoint reading ------------------------------------------------------------------
def _extra_safe_globals() -> list[Any]:
    """Harmless non-tensor types that training checkpoints often carry next to the weights
    (an argparse.Namespace of hyper-parameters, numpy scalars): plain data, no code."""
    import argparse

    import numpy as np
    safe: list[Any] = [argparse.Namespace, np.dtype]
    core = np._core if hasattr(np, '_core') else np.core
    safe.append(core.multiarray.scalar)
    safe.extend(type(np.dtype(name)) for name in (
        'float64', 'float32', 'int64', 'int32', 'bool'))
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


def load_state_dict_file(path: str | os.PathLike,
                         container_keys: tuple[str, ...] = ('state_dict', 'model')
                         ) -> dict[str, Any]:
    """A flat ``{name: tensor}`` dict from a .safetensors file or a weights-only torch file.

    Unwraps one level of ``{'state_dict': ...}`` / ``{'model': ...}`` (open_clip, msclap and
    detectron2 layouts) and strips a DataParallel ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        state: Any = load_file(str(path), device='cpu')
    else:
        state = safe_torch_load(path)
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
