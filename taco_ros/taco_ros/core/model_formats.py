"""Cheap checks that a model file on disk is what its name says, before any library reads it.

Each check reads a few bytes (or, for the small JSON / text files, the whole file) and returns None for a
plausible file or one sentence saying what the file is instead: an HTML page saved under a checkpoint's
name, a pickled PyTorch file under a ``.safetensors`` name, a truncated download, an empty file. The caller
turns that sentence into one error that names the file and the fix
(:class:`taco_ros.core.model_files.ModelFileFormatError`).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

# Kinds of file, from the name: what a loader of that name expects.
SAFETENSORS = 'safetensors'
TORCH = 'torch'
JSON = 'json'
BPE_MERGES = 'bpe-merges'
ANY = 'any'

DESCRIPTIONS = {
    SAFETENSORS: 'a safetensors file',
    TORCH: 'a PyTorch checkpoint (torch.save)',
    JSON: 'a JSON file',
    BPE_MERGES: 'a BPE merges list (first line "#version: ...")',
    ANY: 'a data file',
}

_ZIP_MAGIC = b'PK\x03\x04'
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def expected_kind(filename: str | os.PathLike) -> str:
    """The kind of file a name promises (by suffix; ``merges.txt`` is a BPE merges list)."""
    name = Path(filename).name
    suffix = Path(name).suffix.lower()
    if suffix == '.safetensors':
        return SAFETENSORS
    if suffix in ('.pth', '.pt', '.bin', '.ckpt'):
        return TORCH
    if suffix == '.json':
        return JSON
    if name == 'merges.txt':
        return BPE_MERGES
    return ANY


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith(b'<') and (text.startswith((b'<!doctype html', b'<html', b'<head'))
                                      or b'<html' in text[:512])


def _what_it_is(head: bytes) -> str:
    """A short guess of what a file with these first bytes is."""
    if _looks_like_html(head):
        return 'an HTML page (an error, login or download-confirmation page saved instead of the file)'
    if head.startswith(_ZIP_MAGIC):
        return 'a zip archive (the format of torch.save: a pickled PyTorch checkpoint)'
    if head[:1] == b'\x80':
        return 'a pickle (a legacy PyTorch checkpoint)'
    if len(head) >= 10 and head[8:10] in (b'{"', b'{ ') and _safetensors_header_length(head) is not None:
        return 'a safetensors file'
    if head.lstrip()[:1] in (b'{', b'['):
        return 'JSON text'
    return 'something else (first bytes ' + head[:16].hex(' ') + ')'


def _safetensors_header_length(head: bytes) -> int | None:
    if len(head) < 8:
        return None
    (length,) = struct.unpack('<Q', head[:8])
    return length if 0 < length <= _MAX_SAFETENSORS_HEADER else None


def _safetensors_problem(path: Path, size: int, head: bytes) -> str | None:
    length = _safetensors_header_length(head)
    if length is None or length > size - 8 or head[8:9] != b'{':
        return f'is {_what_it_is(head)}, not a safetensors file'
    with open(path, 'rb') as stream:
        stream.seek(8)
        try:
            header = json.loads(stream.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return 'has a safetensors length prefix but no valid JSON header (corrupt or not safetensors)'
    ends = [int(t['data_offsets'][1]) for k, t in header.items()
            if k != '__metadata__' and isinstance(t, dict) and 'data_offsets' in t]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f'is truncated: {size} bytes where its header describes {expected} (an interrupted download?)'
    if size > expected:
        return f'has {size - expected} bytes after the tensor data its header describes (corrupt)'
    return None


def _torch_problem(path: Path, head: bytes) -> str | None:
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return ('is truncated: a zip archive without its closing directory (an interrupted download?)')
        return None
    if head[:1] == b'\x80':
        return None  # legacy (non-zip) torch.save format; the reader checks the rest
    return f'is {_what_it_is(head)}, not a PyTorch checkpoint'


def _text_problem(path: Path, kind: str, head: bytes) -> str | None:
    if _looks_like_html(head):
        return f'is {_what_it_is(head)}'
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:
        return f'is {_what_it_is(head)}, not UTF-8 text'
    if kind == JSON:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return f'is not valid JSON ({exc.msg} at line {exc.lineno}; truncated?)'
        return None
    first = text.split('\n', 1)[0]
    if not (first.startswith('#version') or len(first.split(' ')) == 2):
        return f'does not start like a BPE merges list (first line {first[:40]!r})'
    return None


def format_problem(path: str | os.PathLike, kind: str | None = None) -> str | None:
    """None when ``path`` plausibly is a file of ``kind`` (default: the kind its name promises), else what
    is wrong with it, as a sentence fragment ("is an HTML page ...", "is truncated: ...")."""
    path = Path(path)
    kind = kind or expected_kind(path)
    size = path.stat().st_size
    if size == 0:
        return 'is empty (0 bytes)'
    with open(path, 'rb') as stream:
        head = stream.read(1024)
    if kind == SAFETENSORS:
        return _safetensors_problem(path, size, head)
    if kind == TORCH:
        return _torch_problem(path, head)
    if kind in (JSON, BPE_MERGES):
        return _text_problem(path, kind, head)
    return f'is {_what_it_is(head)}' if _looks_like_html(head) else None
