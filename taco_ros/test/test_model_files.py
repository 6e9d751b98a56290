"""Model-file registry: lookup errors, verification, safe checkpoint reading, and `models fetch`
against a local HTTP server (success, resume after a cut, checksum refusal)."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from taco_ros.core import model_files as mf
from taco_ros.core.model_files import (
    ChecksumMismatch,
    DownloadInterrupted,
    ModelFile,
    ModelFileNotFound,
    UnsafeCheckpointError,
)

PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    """Serves files from ``root`` with Range support; can cut or misbehave on demand."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(('127.0.0.1', 0), _Handler)
        self.root = root
        self.cut_first_after: int | None = None  # bytes sent before dropping the 1st response
        self.ignore_range = False
        self.html = False
        self.requests: list[dict[str, str | None]] = []

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.server_address[1]}'


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append({'path': self.path, 'range': self.headers.get('Range')})
        path = srv.root / self.path.lstrip('/')
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        header = self.headers.get('Range')
        if header and not srv.ignore_range:
            start = int(header.split('=')[1].split('-')[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(data)}')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header('Content-Type', 'text/html' if srv.html else 'application/octet-stream')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if srv.cut_first_after is not None and len(srv.requests) == 1:
            self.wfile.write(body[:srv.cut_first_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / 'mirror'
    (root / 'test').mkdir(parents=True)
    (root / 'test' / 'blob.dat').write_bytes(PAYLOAD)
    srv = _Server(root)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModelFile]:
    """A private copy of the registry with test entries (the real one is left untouched)."""
    entries = dict(mf.MODEL_FILES)
    monkeypatch.setattr(mf, 'MODEL_FILES', entries)
    mf.register_model_file(ModelFile('test-blob', 'test/blob.dat', 'test payload',
                                     'https://example.invalid/blob.dat', size=len(PAYLOAD),
                                     sha256=PAYLOAD_SHA))
    mf.register_model_file(ModelFile('test-blob-badsum', 'test/blob.dat', 'wrong checksum',
                                     'https://example.invalid/blob.dat', size=len(PAYLOAD),
                                     sha256='0' * 64))
    mf.register_model_file(ModelFile('test-blob-nosum', 'test/blob.dat', 'size only',
                                     'https://example.invalid/blob.dat', size=len(PAYLOAD)))
    return entries


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mf.ENV_MODEL_DIR, raising=False)
    monkeypatch.delenv(mf.ENV_MODEL_MIRROR, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))


def _quiet(_: str) -> None:
    pass


# -- search path and lookup -------------------------------------------------------------------
def test_search_order_explicit_env_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(mf.ENV_MODEL_DIR, str(tmp_path / 'env'))
    dirs = mf.model_search_dirs(tmp_path / 'explicit')
    assert dirs == [tmp_path / 'explicit', tmp_path / 'env', tmp_path / 'xdg' / 'taco_ros' / 'models']


def test_lookup_prefers_earlier_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(mf.ENV_MODEL_DIR, str(tmp_path / 'env'))
    for root in ('env', 'explicit'):
        target = tmp_path / root / 'msclap' / 'CLAP_weights_2023.pth'
        target.parent.mkdir(parents=True)
        target.write_bytes(b'x')
    assert mf.find_model_file('clap-2023', tmp_path / 'explicit').parts[-3] == 'explicit'
    assert mf.find_model_file('clap-2023').parts[-3] == 'env'


def test_missing_file_error_names_file_dirs_and_command(tmp_path: Path):
    with pytest.raises(ModelFileNotFound) as info:
        mf.find_model_file('clap-2023', tmp_path / 'mine')
    message = str(info.value)
    assert "'clap-2023'" in message and 'msclap/CLAP_weights_2023.pth' in message
    assert str(tmp_path / 'mine') in message
    assert str(tmp_path / 'xdg' / 'taco_ros' / 'models') in message
    assert 'taco-ros models fetch clap-2023' in message
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.searched[0] == tmp_path / 'mine'


def test_unknown_ids_and_groups():
    with pytest.raises(ValueError, match='unknown model file id'):
        mf.get_model_file('nope')
    assert mf.expand_file_ids(['gpt2']) == ['gpt2-config', 'gpt2-vocab', 'gpt2-merges']
    everything = mf.expand_file_ids(['all'])
    assert 'clap-2023' in everything and 'fcclip-convnext-large-coco' in everything
    assert 'gpt2-weights' not in everything  # optional fallback
    assert not any(i.startswith('taco-tiny') for i in everything)  # local only


HOSTING = json.loads((Path(__file__).parent / 'fixtures' / 'model_hosting.json').read_text(encoding='utf-8'))


def _hosted(entry: ModelFile) -> dict:
    """The fixture's listing row of a registry entry, found from the entry's URL."""
    if entry.source == 'google-drive':
        drive_id = urllib.parse.parse_qs(urllib.parse.urlparse(entry.url).query)['id'][0]
        rows = [f for h in HOSTING['hosts'] if h['host'] == 'google-drive' for f in h['files']
                if f['drive_id'] == drive_id]
    else:
        prefix = 'https://huggingface.co/'
        assert entry.url.startswith(prefix), entry.url
        repo, name = entry.url[len(prefix):].split('/resolve/main/')
        rows = [f for h in HOSTING['hosts'] if h['repository'] == repo
                for f in h['files'] if f['name'] == name]
    assert len(rows) == 1, f'{entry.file_id}: {entry.url} is not in the recorded hosting listings'
    return rows[0]


def test_registry_matches_the_recorded_host_listings():
    """Names, sizes and sha256 as the hosts publish them (fixtures/model_hosting.json: sources, dates)."""
    real = [e for e in mf.MODEL_FILES.values() if not e.local_only]
    assert {e.file_id for e in real} >= {'clip-convnext-large-d-320', 'clap-2023', 'gpt2-config',
                                          'gpt2-vocab', 'gpt2-merges', 'fcclip-convnext-large-coco'}
    for host in HOSTING['hosts']:
        assert host['read'] == '2026-11-29' and host['listing'].startswith('https://')
    for entry in real:
        row = _hosted(entry)
        assert Path(entry.filename).name == row['name'], entry.file_id   # the host's own file name
        assert entry.size == row['size_bytes'], entry.file_id             # exact bytes only where published
        if entry.size is None:
            assert entry.published_size == row['size'], entry.file_id     # else the host's rounded figure
        assert entry.sha256 == row['sha256'], entry.file_id               # never one that is not published
        if row['sha256'] is not None:
            assert row['sha256_source'].startswith('https://')
    clip = mf.get_model_file('clip-convnext-large-d-320')
    assert clip.filename.endswith('/open_clip_pytorch_model.safetensors')
    clip_host = next(h for h in HOSTING['hosts'] if h['repository'].startswith('laion/'))
    assert 'open_clip_model.safetensors' in clip_host['absent']
    assert '1-91PIns86vyNaL3CzMmDD39zKGnPMtvj' in mf.get_model_file('fcclip-convnext-large-coco').url


def test_published_rounded_sizes_bound_the_file():
    clap = mf.get_model_file('clap-2023')
    assert clap.size_bounds() == (689_500_000, 690_500_000)           # '690 MB'
    assert mf.get_model_file('clip-convnext-large-d-320').size_bounds() == (1_405_000_000, 1_415_000_000)
    assert mf.get_model_file('gpt2-config').size_bounds() == (665, 665)
    assert mf.get_model_file('fcclip-convnext-large-coco').size_bounds() is None


def test_register_rejects_paths_outside_the_model_dir(registry):
    with pytest.raises(ValueError):
        mf.register_model_file(ModelFile('x', '../escape.bin', 'bad', None))
    with pytest.raises(ValueError):
        mf.register_model_file(ModelFile('y', '/abs.bin', 'bad', None))


# -- verification -----------------------------------------------------------------------------
def test_verify_statuses(tmp_path: Path, registry):
    target = tmp_path / 'models' / 'test' / 'blob.dat'
    assert mf.verify_model_file('test-blob', tmp_path / 'models').status == 'missing'
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    assert mf.verify_model_file('test-blob', tmp_path / 'models').status == 'ok'
    assert mf.verify_model_file('test-blob-nosum', tmp_path / 'models').status == 'size only'
    assert mf.verify_model_file('test-blob-badsum', tmp_path / 'models').status == 'sha256 mismatch'
    target.write_bytes(PAYLOAD[:-1])
    result = mf.verify_model_file('test-blob', tmp_path / 'models')
    assert result.status == 'size mismatch' and not result.good
    (tmp_path / 'models' / 'msclap').mkdir()
    (tmp_path / 'models' / 'msclap' / 'CLAP_weights_2023.pth').write_bytes(b'abc')
    result = mf.verify_model_file('clap-2023', tmp_path / 'models')
    assert result.status == 'size mismatch' and '690 MB' in result.detail   # 3 bytes is not the checkpoint
    (tmp_path / 'models' / 'taco_tiny' / 'gpt2').mkdir(parents=True)
    (tmp_path / 'models' / 'taco_tiny' / 'gpt2' / 'config.json').write_text('{"n_layer": 1}')
    assert mf.verify_model_file('taco-tiny-gpt2-config', tmp_path / 'models').status == 'exists'


# -- fetch ------------------------------------------------------------------------------------
def test_fetch_success_atomic(tmp_path: Path, server: _Server, registry):
    dest = tmp_path / 'models'
    path = mf.fetch_model_file('test-blob', dest_dir=dest, mirror=server.url, progress=False,
                               log=_quiet)
    assert path == dest / 'test' / 'blob.dat'
    assert path.read_bytes() == PAYLOAD
    assert not (dest / 'test' / 'blob.dat.part').exists()
    assert server.requests == [{'path': '/test/blob.dat', 'range': None}]
    # present and valid: no second download
    mf.fetch_model_file('test-blob', dest_dir=dest, mirror=server.url, progress=False, log=_quiet)
    assert len(server.requests) == 1


def test_fetch_resumes_after_a_cut(tmp_path: Path, server: _Server, registry):
    server.cut_first_after = 70_000
    path = mf.fetch_model_file('test-blob', dest_dir=tmp_path, mirror=server.url, progress=False,
                               retries=3, log=_quiet, chunk_size=8192)
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert server.requests[1]['range'] == 'bytes=70000-'


def test_fetch_resumes_in_a_later_call(tmp_path: Path, server: _Server, registry):
    server.cut_first_after = 50_000
    with pytest.raises(DownloadInterrupted):
        mf.fetch_model_file('test-blob', dest_dir=tmp_path, mirror=server.url, progress=False,
                            retries=1, log=_quiet)
    part = tmp_path / 'test' / 'blob.dat.part'
    assert part.stat().st_size == 50_000
    assert not (tmp_path / 'test' / 'blob.dat').exists()  # never a half file under the real name
    path = mf.fetch_model_file('test-blob', dest_dir=tmp_path, mirror=server.url, progress=False,
                               log=_quiet)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1]['range'] == 'bytes=50000-'


def test_fetch_restarts_when_server_ignores_range(tmp_path: Path, server: _Server, registry):
    part = tmp_path / 'test' / 'blob.dat.part'
    part.parent.mkdir(parents=True)
    part.write_bytes(b'garbage that must not be kept')
    server.ignore_range = True
    path = mf.fetch_model_file('test-blob', dest_dir=tmp_path, mirror=server.url, progress=False,
                               log=_quiet)
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_refused_and_partial_removed(tmp_path: Path, server: _Server, registry):
    with pytest.raises(ChecksumMismatch, match='sha256 mismatch'):
        mf.fetch_model_file('test-blob-badsum', dest_dir=tmp_path, mirror=server.url,
                            progress=False, log=_quiet)
    assert not (tmp_path / 'test' / 'blob.dat').exists()
    assert not (tmp_path / 'test' / 'blob.dat.part').exists()


def test_unreachable_source_names_the_manual_route(tmp_path: Path, server: _Server, registry):
    with pytest.raises(mf.DownloadFailed, match='HTTP 404') as info:
        mf.fetch_model_file('gpt2-config', dest_dir=tmp_path, mirror=server.url, progress=False,
                            log=_quiet)
    assert str(tmp_path / 'gpt2' / 'config.json') in str(info.value)


def test_html_answer_is_refused(tmp_path: Path, server: _Server, registry):
    server.html = True
    with pytest.raises(DownloadInterrupted, match='HTML'):
        mf.fetch_model_file('test-blob', dest_dir=tmp_path, mirror=server.url, progress=False,
                            retries=1, log=_quiet)
    assert not (tmp_path / 'test' / 'blob.dat').exists()


def test_mirror_from_environment(tmp_path: Path, server: _Server, registry,
                                 monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(mf.ENV_MODEL_MIRROR, server.url + '/')
    assert mf.source_url(mf.get_model_file('test-blob')) == server.url + '/test/blob.dat'
    assert mf.fetch_model_file('test-blob', dest_dir=tmp_path, progress=False,
                               log=_quiet).read_bytes() == PAYLOAD
    monkeypatch.delenv(mf.ENV_MODEL_MIRROR)
    assert mf.source_url(mf.get_model_file('clap-2023')).startswith('https://huggingface.co/')
    with pytest.raises(ValueError, match='no public download'):
        mf.source_url(mf.get_model_file('taco-tiny-clip'))


def test_cli_fetch_verify_list(tmp_path: Path, server: _Server, registry,
                               capsys: pytest.CaptureFixture[str]):
    from taco_ros.cli import main
    dest = tmp_path / 'models'
    assert main(['models', 'fetch', 'test-blob', '--mirror', server.url, '--dest', str(dest),
                 '--no-progress']) == 0
    assert (dest / 'test' / 'blob.dat').read_bytes() == PAYLOAD
    assert main(['models', 'verify', 'test-blob', '--model-dir', str(dest)]) == 0
    assert main(['models', 'verify', 'clap-2023', '--model-dir', str(dest)]) == 1
    assert main(['models', 'fetch', 'test-blob-badsum', '--mirror', server.url,
                 '--dest', str(tmp_path / 'other'), '--no-progress']) == 1
    assert main(['models', 'list', '--model-dir', str(dest)]) == 0
    out = capsys.readouterr().out
    assert 'sha256 mismatch' in out and 'clap-2023' in out and str(dest / 'test' / 'blob.dat') in out


# -- safe checkpoint reading ------------------------------------------------------------------
class _Payload:
    """An arbitrary class: unpickling it means importing and running project code."""

    def __init__(self) -> None:
        self.value = 1


def test_pickled_objects_are_refused(tmp_path: Path):
    path = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.zeros(2)}, 'obj': _Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match='weights_only'):
        mf.load_state_dict_file(path)
    assert issubclass(UnsafeCheckpointError, ValueError)


def test_state_dict_unwrapping(tmp_path: Path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': {'module.a': torch.ones(1), 'module.b': torch.zeros(2)},
                'args': argparse.Namespace(lr=1.0), 'epoch': 3}, path)
    state = mf.load_state_dict_file(path)
    assert sorted(state) == ['a', 'b'] and torch.equal(state['a'], torch.ones(1))
    from safetensors.torch import save_file
    save_file({'x': torch.arange(3.0)}, str(tmp_path / 'w.safetensors'))
    assert torch.equal(mf.load_state_dict_file(tmp_path / 'w.safetensors')['x'], torch.arange(3.0))
    with pytest.raises(FileNotFoundError):
        mf.load_state_dict_file(tmp_path / 'absent.pth')
    torch.save([torch.ones(1)], tmp_path / 'list.pth')
    with pytest.raises(ValueError, match='state dict'):
        mf.load_state_dict_file(tmp_path / 'list.pth')


def test_sha256_of_matches_hashlib(tmp_path: Path):
    path = tmp_path / 'f'
    path.write_bytes(os.urandom(3000))
    assert mf.sha256_of(path, chunk_size=512) == hashlib.sha256(path.read_bytes()).hexdigest()
