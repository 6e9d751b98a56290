"""Downloading registry files: the one place that touches the network (``taco-ros models fetch``).

The bytes go to ``<target>.part``; an interrupted transfer is resumed (HTTP Range, or a seek for a local
mirror) by a retry here or by the next fetch. A finished file is checked against the registry (size or the
host's rounded size, format, sha256 where published) and only then renamed, atomically, to its final name,
so a loader never finds a half-written or wrong file.

Sources: the registry URL, or a mirror replicating the model-dir layout (``--mirror`` or
``TACO_MODEL_MIRROR``): an HTTP(S) base URL, a ``file://`` URL or a local directory. Google Drive answers a
large file with an HTML "can't scan for viruses" page whose form carries the confirmed download link; for
``source='google-drive'`` entries that form is followed once, for any other entry an HTML answer is refused.
"""

from __future__ import annotations

import html.parser
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taco_ros.core import model_files as mf
from taco_ros.core import model_formats

_HTML_LIMIT = 2 * 1024 * 1024  # bytes of a confirmation page read to find its form
_DRIVE_HOSTS = ('google.com', 'googleusercontent.com')


class DownloadFailed(OSError):  # noqa: N818
    """The source could not be reached or refused the request (DNS, HTTP error...)."""


class DownloadInterrupted(OSError):  # noqa: N818
    """The transfer stopped early; the partial file is kept so that a new fetch resumes it."""


class HtmlInsteadOfFile(DownloadInterrupted):
    """The source answered with a web page (login, quota or confirmation page): retrying will not help."""


# -- where from ---------------------------------------------------------------------------------
def _local_mirror(mirror: str) -> Path | None:
    if mirror.startswith('file://'):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(mirror).path))
    return None if '://' in mirror else Path(mirror).expanduser()


def source_url(entry: mf.ModelFile, mirror: str | None = None) -> str:
    """Where a file is fetched from: ``<mirror>/<filename>`` when a mirror is set (option or
    TACO_MODEL_MIRROR; a URL or a local directory replicating the model-dir layout), else the registry URL."""
    mirror = mirror or os.environ.get(mf.ENV_MODEL_MIRROR)
    if mirror:
        local = _local_mirror(mirror)
        if local is not None:
            return str(local / entry.filename)
        return mirror.rstrip('/') + '/' + urllib.parse.quote(entry.filename)
    if entry.url is None:
        raise ValueError(f'{entry.file_id!r} has no public download ({entry.description})')
    return entry.url


# -- plan ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchStep:
    """What ``fetch`` will do for one file. action: 'present' (already there and verified), 'download',
    'resume' (a partial file of ``offset`` bytes exists), 'replace' (a file is there but fails its check),
    'unavailable' (a local-only file that is missing: nothing can fetch it)."""

    file_id: str
    action: str
    target: Path
    source: str | None
    offset: int = 0
    detail: str = ''

    def describe(self) -> str:
        entry = mf.get_model_file(self.file_id)
        checksum = f'sha256 {entry.sha256[:12]}…' if entry.sha256 else 'no published sha256'
        what = {'present': 'present', 'download': 'download', 'resume': f'resume at {self.offset:,} bytes',
                'replace': 'replace', 'unavailable': 'cannot fetch'}[self.action]
        line = f'{self.file_id}: {what} {self.target}'
        if self.source and self.action != 'present':
            line += f'\n    from {self.source} ({entry.describe_size()}, {checksum})'
        return line + (f'\n    {self.detail}' if self.detail else '')


def plan_fetch(file_ids: Iterable[str], dest_dir: str | os.PathLike | None = None,
               mirror: str | None = None, force: bool = False) -> list[FetchStep]:
    """One FetchStep per file: what a fetch into ``dest_dir`` (default: the first search directory) does."""
    root = Path(dest_dir).expanduser() if dest_dir else mf.model_search_dirs()[0]
    steps = []
    for file_id in file_ids:
        entry = mf.get_model_file(file_id)
        target = root / entry.filename
        part = target.with_name(target.name + mf.PARTIAL_SUFFIX)
        detail = ''
        if target.is_file() and not force:
            result = mf.check_file(entry, target)
            if result.good:
                steps.append(FetchStep(file_id, 'present', target, None, detail=result.status))
                continue
            detail = f'present file fails its check: {result.detail}'
        has_source = not entry.local_only or bool(mirror or os.environ.get(mf.ENV_MODEL_MIRROR))
        if not has_source:
            steps.append(FetchStep(file_id, 'unavailable', target, None,
                                   detail=f'{entry.description}; no public download'))
            continue
        source = source_url(entry, mirror)
        if detail:
            steps.append(FetchStep(file_id, 'replace', target, source, detail=detail))
        elif part.is_file() and part.stat().st_size > 0 and not force:
            steps.append(FetchStep(file_id, 'resume', target, source, part.stat().st_size))
        else:
            steps.append(FetchStep(file_id, 'download', target, source))
    return steps


# -- transfer -----------------------------------------------------------------------------------
class _FormFinder(html.parser.HTMLParser):
    """The download form (action + hidden inputs) or confirm link of a Google Drive warning page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.link: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or '' for k, v in attrs}
        if tag == 'form' and self.action is None:
            self.action = values.get('action')
        elif tag == 'input' and values.get('type') == 'hidden' and values.get('name'):
            self.fields[values['name']] = values.get('value', '')
        elif tag == 'a' and 'confirm=' in values.get('href', '') and self.link is None:
            self.link = values['href']


def drive_confirmation_url(page: bytes, url: str) -> str | None:
    """The confirmed download URL in a Google Drive warning page, or None. Only a link to the same host
    or to a Google host is followed."""
    finder = _FormFinder()
    finder.feed(page.decode('utf-8', errors='replace'))
    if finder.action and 'id' in finder.fields:
        target = urllib.parse.urljoin(url, finder.action) + '?' + urllib.parse.urlencode(finder.fields)
    elif finder.link:
        target = urllib.parse.urljoin(url, finder.link)
    else:
        return None
    host, origin = urllib.parse.urlparse(target).hostname or '', urllib.parse.urlparse(url).hostname
    allowed = host == origin or any(host == h or host.endswith('.' + h) for h in _DRIVE_HOSTS)
    return target if allowed else None


def _open(url: str, offset: int, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={'User-Agent': 'taco-ros-models/1'})
    if offset:
        request.add_header('Range', f'bytes={offset}-')
    return urllib.request.urlopen(request, timeout=timeout)


def _progress(entry: mf.ModelFile, total: int | None, offset: int, enabled: bool) -> Any:
    from tqdm import tqdm
    return tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                desc=entry.file_id, disable=not enabled, leave=True)


def _copy_local(source: Path, part: Path, entry: mf.ModelFile, progress: bool, chunk_size: int) -> None:
    """Copy from a local mirror, resuming after the bytes ``part`` already has."""
    if not source.is_file():
        raise DownloadFailed(f'{entry.file_id}: the mirror has no {source}')
    total = source.stat().st_size
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:
        offset = 0  # longer than the source: not a prefix of it, start over
    with open(source, 'rb') as stream, open(part, 'ab' if offset else 'wb') as sink, \
            _progress(entry, total, offset, progress) as bar:
        stream.seek(offset)
        while block := stream.read(chunk_size):
            sink.write(block)
            bar.update(len(block))


def _refuse_html(url: str, entry: mf.ModelFile) -> HtmlInsteadOfFile:
    return HtmlInsteadOfFile(
        f'{url} answered with an HTML page instead of {entry.filename} (a login, quota or confirmation '
        f'page?); download it by hand from {entry.page or url} and save it under that name')


def _transfer(url: str, part: Path, entry: mf.ModelFile, timeout: float, progress: bool,
              chunk_size: int, confirmed: bool = False) -> None:
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
        if 'text/html' in response.headers.get('Content-Type', '') and not entry.filename.endswith('.html'):
            next_url = None
            if entry.source == 'google-drive' and not confirmed:
                next_url = drive_confirmation_url(response.read(_HTML_LIMIT), url)
            if next_url is None:
                raise _refuse_html(url, entry)
            response.close()
            return _transfer(next_url, part, entry, timeout, progress, chunk_size, confirmed=True)
        if offset and response.status != 206:
            offset = 0  # the server ignored Range: start over
        length = response.headers.get('Content-Length')
        bounds = entry.size_bounds()
        total = offset + int(length) if length is not None else (bounds[1] if bounds else None)
        with _progress(entry, total, offset, progress) as bar, open(part, 'ab' if offset else 'wb') as sink:
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


def _download(source: str, part: Path, entry: mf.ModelFile, target: Path, timeout: float, progress: bool,
              retries: int, chunk_size: int, log: Callable[[str], None]) -> None:
    """Fill ``part`` from ``source``, resuming after interruptions up to ``retries`` times."""
    local = None if '://' in source else Path(source)
    attempts = max(1, retries)
    for attempt in range(1, attempts + 1):
        try:
            if local is not None:
                _copy_local(local, part, entry, progress, chunk_size)
            else:
                _transfer(source, part, entry, timeout, progress, chunk_size)
            return
        except urllib.error.URLError as exc:
            reason = exc.reason if not isinstance(exc, urllib.error.HTTPError) else f'HTTP {exc.code}'
            raise DownloadFailed(
                f'{entry.file_id}: cannot download {source}: {reason}. Without network access, copy the '
                f'file to {target} by hand (or serve a copy and pass --mirror).') from exc
        except HtmlInsteadOfFile:
            raise
        except DownloadInterrupted as exc:
            if attempt == attempts or not part.exists():
                raise
            log(f'{entry.file_id}: {exc}; resuming (attempt {attempt + 1}/{attempts})')
            time.sleep(min(2.0 ** (attempt - 1), 10.0) * 0.1)


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

    A partial ``.part`` file left by an earlier fetch is resumed. The finished file is checked against the
    registry (size, format, sha256): a mismatch deletes the partial file and raises ChecksumMismatch (size,
    sha256) or ModelFileFormatError (an HTML page, a truncated archive...). Only a verified file is renamed
    (atomically) to its final name.
    """
    (step,) = plan_fetch([file_id], dest_dir, mirror, force)
    entry, target = mf.get_model_file(file_id), step.target
    if step.action == 'present':
        log(f'{file_id}: already present at {target} ({step.detail})')
        return target
    if step.action == 'unavailable':
        raise ValueError(f'{file_id!r} is missing and has no public download ({entry.description})')
    if step.action == 'replace':
        log(f'{file_id}: {target} {step.detail}; downloading again')
    if step.action == 'resume':
        log(f'{file_id}: resuming a partial download at {step.offset:,} bytes')
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + mf.PARTIAL_SUFFIX)
    if force and part.exists():
        part.unlink()
    _download(step.source, part, entry, target, timeout, progress, retries, chunk_size, log)
    result = mf.check_file(entry, part)
    if not result.good:
        problem = model_formats.format_problem(part, entry.kind) if result.status == 'bad format' else None
        part.unlink(missing_ok=True)
        if problem is not None:
            raise mf.ModelFileFormatError(
                target, f'as downloaded from {step.source} {problem}', entry.kind,
                fix=f'The partial file was removed; check the source, or download '
                    f'{entry.page or step.source} by hand and save it as {target}.')
        raise mf.ChecksumMismatch(f'{file_id}: downloaded file rejected ({result.status}: {result.detail}); '
                                  'the partial file was removed')
    os.replace(part, target)
    log(f'{file_id}: saved {target} ({result.status})')
    return target
