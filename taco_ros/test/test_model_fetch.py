"""`taco-ros models fetch` without ids (the files of a model configuration), local mirrors, Google Drive's
confirmation page, `models list`, and every bad-file case: one error naming the file, what was expected and
the fix, never a library traceback."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from taco_ros.core import model_fetch
from taco_ros.core import model_files as mf
from taco_ros.core.model_files import ChecksumMismatch, ModelFile, ModelFileFormatError

CONFIG_DIR = Path(mf.__file__).resolve().parent.parent / 'model_configs'
HTML_PAGE = ('<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in to continue'
             '</body></html>\n')


def _quiet(_: str) -> None:
    pass


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mf.ENV_MODEL_DIR, raising=False)
    monkeypatch.delenv(mf.ENV_MODEL_MIRROR, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))


def _single_clear_error(error: BaseException, path: Path, expected: str, fix: str) -> str:
    message = str(error)
    assert str(path) in message and expected in message and fix in message, message
    assert 'Traceback' not in message and error.__cause__ is None
    return message


# -- a model configuration's files from a local mirror ----------------------------------------------
def _safetensors_bytes(tmp_path: Path, seed: int) -> bytes:
    path = tmp_path / f'st{seed}.safetensors'
    save_file({'w': torch.arange(4000.0) * seed, 'b': torch.ones(3)}, str(path))
    return path.read_bytes()


def _torch_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': {'audio_encoder.x': torch.arange(6000.0)}}, path)
    return path.read_bytes()


@pytest.fixture
def mirror_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A private registry of five small files in the real formats, a model config naming them, and a local
    mirror directory holding them in the model-dir layout."""
    files = {
        'cfg-clip': ('cfg/clip.safetensors', _safetensors_bytes(tmp_path, 1)),
        'cfg-clap': ('cfg/clap.pth', _torch_bytes(tmp_path)),
        'cfg-gpt2-config': ('cfg/gpt2/config.json', json.dumps({'n_layer': 1, 'n_embd': 8}).encode()),
        'cfg-gpt2-merges': ('cfg/gpt2/merges.txt', b'#version: 0.2\n' + b'a b\n' * 300),
        'cfg-fcclip': ('cfg/fcclip.pth', _torch_bytes(tmp_path)),
    }
    mirror = tmp_path / 'mirror'
    entries = dict(mf.MODEL_FILES)
    monkeypatch.setattr(mf, 'MODEL_FILES', entries)
    monkeypatch.setattr(mf, 'MODEL_FILE_GROUPS', {**mf.MODEL_FILE_GROUPS,
                                                  'cfg-gpt2': ('cfg-gpt2-config', 'cfg-gpt2-merges')})
    for file_id, (name, data) in files.items():
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        (mirror / name).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        if file_id == 'cfg-fcclip':
            sha = hashlib.sha256(b'another file').hexdigest()  # the host's checksum disagrees
        size = len(data) if file_id != 'cfg-gpt2-merges' else None
        published = None if size is not None else f'{len(data) / 1000:.2f} kB'
        mf.register_model_file(ModelFile(file_id, name, f'test file {file_id}', f'https://example.invalid/{name}',
                                         size=size, sha256=sha if file_id != 'cfg-gpt2-config' else None,
                                         published_size=published))
    config = json.loads((CONFIG_DIR / 'taco_tiny.json').read_text(encoding='utf-8'))
    config['name'] = 'cfg_test'
    config['files'] = {'clip': 'cfg-clip', 'clap': 'cfg-clap', 'gpt2': 'cfg-gpt2', 'fcclip': 'cfg-fcclip'}
    config_path = tmp_path / 'cfg_test.json'
    config_path.write_text(json.dumps(config), encoding='utf-8')
    return {'files': files, 'mirror': mirror, 'config': config_path, 'dest': tmp_path / 'models'}


def test_fetch_without_ids_plans_the_files_of_the_paper_configuration(tmp_path: Path, capsys) -> None:
    from taco_ros.cli import main
    from taco_ros.commands.models import config_file_ids
    expected = ['clip-convnext-large-d-320', 'clap-2023', 'gpt2-config', 'gpt2-vocab', 'gpt2-merges',
                'fcclip-convnext-large-coco']
    assert config_file_ids('taco_convnext_large') == expected      # gpt2-weights is only a fallback
    assert main(['models', 'fetch', '--dry-run', '--dest', str(tmp_path / 'models')]) == 0
    out = capsys.readouterr().out
    assert 'model configuration taco_convnext_large' in out and '6 file(s)' in out
    for file_id in expected:
        entry = mf.get_model_file(file_id)
        assert f'{file_id}: download {tmp_path / "models" / entry.filename}' in out
        assert f'from {entry.url} ({entry.describe_size()}' in out
    assert 'gpt2-weights' not in out and '/resolve/main/open_clip_pytorch_model.safetensors' in out
    assert 'sha256 1a8e47bdefd6' in out
    assert not (tmp_path / 'models').exists()                      # a dry run writes nothing
    mirror = tmp_path / 'mirror'
    steps = model_fetch.plan_fetch(expected, tmp_path / 'models', str(mirror))
    assert [s.source for s in steps] == [str(mirror / mf.get_model_file(i).filename) for i in expected]


def test_fetch_without_ids_from_a_local_mirror_resumes_and_refuses_a_checksum_mismatch(
        mirror_setup: dict, capsys) -> None:
    from taco_ros.cli import main
    files, dest = mirror_setup['files'], mirror_setup['dest']
    clap_name, clap_bytes = files['cfg-clap']
    part = dest / (clap_name + mf.PARTIAL_SUFFIX)
    part.parent.mkdir(parents=True)
    part.write_bytes(clap_bytes[:3000])                             # an earlier, interrupted fetch
    args = ['models', 'fetch', '--model-config', str(mirror_setup['config']), '--mirror',
            str(mirror_setup['mirror']), '--dest', str(dest), '--no-progress']
    assert main(args) == 1                                          # one file failed
    out = capsys.readouterr().out
    assert 'cfg-clap: resume at 3,000 bytes' in out and 'resuming a partial download at 3,000 bytes' in out
    for file_id in ('cfg-clip', 'cfg-clap', 'cfg-gpt2-config', 'cfg-gpt2-merges'):
        name, data = files[file_id]
        assert (dest / name).read_bytes() == data, file_id
        assert not (dest / (name + mf.PARTIAL_SUFFIX)).exists()
    assert 'cfg-fcclip: FAILED' in out and 'sha256 mismatch' in out and 'partial file was removed' in out
    fcclip_name = files['cfg-fcclip'][0]
    assert not (dest / fcclip_name).exists() and not (dest / (fcclip_name + mf.PARTIAL_SUFFIX)).exists()

    assert main([*args, '--dry-run']) == 0                         # a second run only needs the bad one
    out = capsys.readouterr().out
    assert out.count(': present ') == 4 and 'cfg-fcclip: download' in out


def test_file_url_mirror_and_checksum_refusal(mirror_setup: dict) -> None:
    dest = mirror_setup['dest']
    url = mirror_setup['mirror'].as_uri()
    path = model_fetch.fetch_model_file('cfg-clip', dest, url, progress=False, log=_quiet)
    assert path.read_bytes() == mirror_setup['files']['cfg-clip'][1]
    with pytest.raises(ChecksumMismatch, match='sha256 mismatch'):
        model_fetch.fetch_model_file('cfg-fcclip', dest, url, progress=False, log=_quiet)


def test_models_list_shows_the_real_names_sizes_and_checksums(capsys) -> None:
    from taco_ros.cli import main
    assert main(['models', 'list']) == 0
    out = capsys.readouterr().out
    assert 'open_clip_pytorch_model.safetensors' in out and 'open_clip_model.safetensors' not in out
    assert 'size: 1.41 GB as listed by the host (exact size not published)' in out
    assert 'sha256: 1a8e47bdefd6d36202ec66a8975edda9e3c89560bcd1ecefe6f676311637a671' in out
    assert 'size: 690 MB as listed by the host' in out and 'size: 665 bytes' in out
    assert 'sha256: not published by the host' in out and 'size unknown' not in out
    assert 'source: https://drive.usercontent.google.com/download?id=1-91PIns86vyNaL3CzMmDD39zKGnPMtvj' in out


# -- Google Drive's confirmation page -----------------------------------------------------------------
PAYLOAD = bytes(range(256)) * 300


class _DriveHandler(http.server.BaseHTTPRequestHandler):
    """Answers /download?id=X like Google Drive does for a large file: a warning page whose form carries
    the confirmed link; the file itself only with the form's uuid."""

    form = True

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        if query.get('uuid') == ['5f2c']:
            self._reply(PAYLOAD, 'application/octet-stream')
        elif self.form:
            page = ('<!DOCTYPE html><html><body><p>Google Drive can\'t scan this file for viruses.</p>'
                    '<form id="download-form" action="/download" method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    '<input type="hidden" name="id" value="XYZ"><input type="hidden" name="export" '
                    'value="download"><input type="hidden" name="confirm" value="t">'
                    '<input type="hidden" name="uuid" value="5f2c"></form></body></html>')
            self._reply(page.encode(), 'text/html; charset=utf-8')
        else:
            self._reply(b'<html><body>Too many users have viewed or downloaded this file.</body></html>',
                        'text/html')

    def _reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def drive(monkeypatch: pytest.MonkeyPatch) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _DriveHandler)
    server.requests = []  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(mf, 'MODEL_FILES', dict(mf.MODEL_FILES))
    url = f'http://127.0.0.1:{server.server_address[1]}/download?id=XYZ&export=download&confirm=t'
    mf.register_model_file(ModelFile('drive-file', 'drive/file.dat', 'drive test', url,
                                     size=len(PAYLOAD), source='google-drive'))
    mf.register_model_file(ModelFile('plain-file', 'plain/file.dat', 'direct test', url, size=len(PAYLOAD)))
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_google_drive_confirmation_page_is_followed(drive, tmp_path: Path) -> None:
    path = model_fetch.fetch_model_file('drive-file', tmp_path, progress=False, log=_quiet)
    assert path.read_bytes() == PAYLOAD
    assert len(drive.requests) == 2 and 'uuid=5f2c' in drive.requests[1]
    # The same page for a file that is not on Drive is refused, and so is a Drive page without a form.
    with pytest.raises(model_fetch.HtmlInsteadOfFile, match=r'HTML page instead of plain/file\.dat'):
        model_fetch.fetch_model_file('plain-file', tmp_path, progress=False, log=_quiet)
    _DriveHandler.form = False
    try:
        with pytest.raises(model_fetch.HtmlInsteadOfFile, match='download it by hand'):
            model_fetch.fetch_model_file('drive-file', tmp_path / 'again', progress=False, log=_quiet)
    finally:
        _DriveHandler.form = True
    assert not (tmp_path / 'again' / 'drive' / 'file.dat.part').exists()


def test_drive_links_to_other_hosts_are_not_followed() -> None:
    page = (b'<form action="https://evil.example/download"><input type="hidden" name="id" value="1">'
            b'</form>')
    origin = 'https://drive.usercontent.google.com/download?id=1'
    assert model_fetch.drive_confirmation_url(page, origin) is None
    page = b'<a id="uc-download-link" href="/uc?export=download&amp;confirm=AbC&amp;id=1">Download</a>'
    assert model_fetch.drive_confirmation_url(page, 'https://drive.google.com/uc?id=1') == \
        'https://drive.google.com/uc?export=download&confirm=AbC&id=1'


# -- bad files ----------------------------------------------------------------------------------------
def _registry_path(root: Path, file_id: str) -> Path:
    path = root / mf.get_model_file(file_id).filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_pickle_bin_saved_under_the_safetensors_name(tmp_path: Path) -> None:
    """The hub's open_clip_pytorch_model.bin (a torch.save pickle) saved as the .safetensors file."""
    from taco_ros.core.models import create_clip
    path = _registry_path(tmp_path, 'clip-convnext-large-d-320')
    torch.save({'visual.trunk.stem.0.weight': torch.zeros(2)}, path)
    fix = 'taco-ros models fetch clip-convnext-large-d-320'
    for load in (mf.load_state_dict_file, lambda p: create_clip('taco_tiny', weights=p, with_text=False)):
        with pytest.raises(ModelFileFormatError) as info:
            load(path)
        message = _single_clear_error(info.value, path, 'expected a safetensors file', fix)
        assert 'zip archive (the format of torch.save' in message
        assert 'open_clip_pytorch_model.bin is a pickle' in message


def test_html_page_saved_as_the_clap_checkpoint(tmp_path: Path) -> None:
    from taco_ros.core.models import create_clap
    path = _registry_path(tmp_path, 'clap-2023')
    path.write_text(HTML_PAGE, encoding='utf-8')
    with pytest.raises(ModelFileFormatError) as info:
        create_clap('taco_tiny', checkpoint=path)
    message = _single_clear_error(info.value, path, 'expected a PyTorch checkpoint',
                                  'taco-ros models fetch clap-2023')
    assert 'is an HTML page' in message


def test_truncated_downloads(tmp_path: Path) -> None:
    clip = _registry_path(tmp_path, 'clip-convnext-large-d-320')
    clip.write_bytes(_safetensors_bytes(tmp_path, 2)[:-1000])
    with pytest.raises(ModelFileFormatError) as info:
        mf.load_state_dict_file(clip)
    message = _single_clear_error(info.value, clip, 'expected a safetensors file', 'models fetch clip-')
    assert 'is truncated' in message and 'its header describes' in message
    clap = _registry_path(tmp_path, 'clap-2023')
    clap.write_bytes(_torch_bytes(tmp_path)[:5000])
    with pytest.raises(ModelFileFormatError) as info:
        mf.load_state_dict_file(clap)
    assert 'is truncated: a zip archive without its closing directory' in \
        _single_clear_error(info.value, clap, 'expected a PyTorch checkpoint', 'models fetch clap-2023')
    config = _registry_path(tmp_path, 'gpt2-config')
    config.write_text('{"n_layer": 12, "n_embd"', encoding='utf-8')
    with pytest.raises(ModelFileFormatError) as info:
        mf.require_format(config)
    assert 'is not valid JSON' in _single_clear_error(info.value, config, 'expected a JSON file',
                                                      'models fetch gpt2-config')
    clap.write_bytes(b'')
    with pytest.raises(ModelFileFormatError, match='is empty'):
        mf.load_state_dict_file(clap)


def test_verify_reports_a_bad_format(mirror_setup: dict) -> None:
    dest, (name, data) = mirror_setup['dest'], mirror_setup['files']['cfg-gpt2-merges']
    (dest / name).parent.mkdir(parents=True)
    html = HTML_PAGE.encode() * (len(data) // len(HTML_PAGE) + 1)
    (dest / name).write_bytes(html[:len(data)])                    # same size as the real file
    result = mf.verify_model_file('cfg-gpt2-merges', dest)
    assert result.status == 'bad format' and not result.good and 'is an HTML page' in result.detail


def test_downloaded_html_body_is_refused_after_the_transfer(mirror_setup: dict) -> None:
    """A server that labels an error page as binary data: the format check catches it, nothing is kept."""
    mirror, dest = mirror_setup['mirror'], mirror_setup['dest']
    name = mirror_setup['files']['cfg-gpt2-merges'][0]
    (mirror / name).write_bytes(HTML_PAGE.encode() * 8)
    mf.register_model_file(ModelFile('cfg-page', name, 'a merges list', 'https://example.invalid/x'))
    with pytest.raises(ModelFileFormatError) as info:
        model_fetch.fetch_model_file('cfg-page', dest, str(mirror), progress=False, log=_quiet)
    _single_clear_error(info.value, dest / name, 'expected a BPE merges list', 'The partial file was removed')
    assert not (dest / name).exists() and not (dest / (name + mf.PARTIAL_SUFFIX)).exists()
