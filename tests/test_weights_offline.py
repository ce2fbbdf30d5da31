"""Pretrained weights by URL and by hub name, read from torch's and huggingface_hub's caches without a network.

What a user on a machine without internet meets: the caches are laid out here by hand (as a download would leave
them), with tiny random MambaOuts; nothing is downloaded. The network is blocked in-process (any connection attempt
is recorded and fails), and the hub runs in offline mode, so no test can pass by reaching the internet.
"""
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import free_port, randomize_

from backbones import MambaOut
from backbones.checkpoint import (CheckpointDamagedError, CheckpointDownloadError, CheckpointMismatchError,
                                  resolve_hub_name)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
# The key layout of timm's _rw variants; the loader checks keys and shapes, not names.
TINY_RW = dict(TINY, stem_mid_norm=False, downsample='conv_nf', ls_init_value=1e-6)
OVERRIDE = re.escape('--cfg-options model.backbone.init_cfg.checkpoint=')
COMMIT = 'a' * 40


def random_weights(arch, seed):
    return randomize_(MambaOut(arch=arch), seed=seed).state_dict()


def weights_after_loading(checkpoint, arch=TINY):
    model = MambaOut(arch=arch, init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    model.init_weights()
    return model.state_dict()


def assert_same_weights(got, expected):
    assert set(got) == set(expected)
    differing = [key for key in expected if not torch.equal(got[key], expected[key])]
    assert not differing, f'loaded values differ from the checkpoint in {differing[:5]}'


def save_safetensors(state, path):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def files_under(directory):
    """The files under ``directory``, but for the lock files in its ``.locks`` folder (left there, as
    huggingface_hub leaves its own: removing a lock file another process has open would undo the lock)."""
    return sorted(os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs
                  if os.path.basename(d) != '.locks')


@pytest.fixture
def network_attempts(monkeypatch):
    """Block every connection and name lookup of this process; the list of what was attempted."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError('network access is blocked by the test')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket.socket, 'connect_ex', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    return attempts


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    """``TORCH_HOME`` in a tmp dir; the folder torch's hub keeps downloaded checkpoints in."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    for proxy in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(proxy, raising=False)  # talk to the local test servers directly
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache in a tmp dir, in offline mode (``HF_HOME=tmp``, ``HF_HUB_OFFLINE=1``).

    huggingface_hub reads these variables once, when it is imported, into ``huggingface_hub.constants``, and
    ``hf_hub_download`` reads ``constants.HF_HUB_CACHE`` and ``constants.is_offline_mode()`` at each call: patch
    those. (:func:`test_environment_variables_reach_huggingface_hub` checks the variables themselves.)
    """
    constants = pytest.importorskip('huggingface_hub.constants')
    cache = tmp_path / 'hf' / 'hub'
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return cache


def put_in_hub_cache(cache, repo_id, files, revision='main'):
    """Lay out what ``hf_hub_download`` leaves: ``models--<org>--<name>/refs/<revision>`` holding a commit hash,
    and the files under ``snapshots/<hash>/``."""
    repo_dir = cache / ('models--' + repo_id.replace('/', '--'))
    (repo_dir / 'refs').mkdir(parents=True, exist_ok=True)
    (repo_dir / 'refs' / revision).write_text(COMMIT)
    snapshot = repo_dir / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for filename, state in files.items():
        if filename.endswith('.safetensors'):
            save_safetensors(state, snapshot / filename)
        else:
            torch.save(state, snapshot / filename)


class CheckpointServer:
    """A local HTTP server for one checkpoint file, which can answer 404 or cut the body short, each answer
    ``delay`` seconds late (so that processes loading at about the same time overlap)."""

    def __init__(self, payload: bytes, mode='full', delay=0.):
        self.payload, self.mode, self.requests = payload, mode, 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with server.lock:
                    server.requests += 1
                time.sleep(delay)
                if server.mode == 'missing':
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(server.payload)))
                self.end_headers()
                body = server.payload if server.mode == 'full' else server.payload[:len(server.payload) // 2]
                self.wfile.write(body)  # 'truncated': then the connection closes, short of Content-Length

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, filename):
        return f'http://127.0.0.1:{self.httpd.server_address[1]}/releases/{filename}'

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def checkpoint_bytes(state, tmp_path):
    torch.save(state, tmp_path / 'to_serve.pth')
    return (tmp_path / 'to_serve.pth').read_bytes()


# ---------------------------------------------------------------- URLs and torch's hub cache

def test_url_in_torch_cache_is_read_without_network(torch_cache, network_attempts):
    expected = random_weights(TINY, seed=1)
    torch_cache.mkdir(parents=True)
    torch.save(expected, torch_cache / 'mambaout_test.pth')
    got = weights_after_loading('https://example.com/weights/mambaout_test.pth?download=1')
    assert_same_weights(got, expected)
    assert network_attempts == []


def test_url_downloads_once_into_torch_cache(torch_cache, tmp_path):
    expected = random_weights(TINY, seed=2)
    with CheckpointServer(checkpoint_bytes(expected, tmp_path)) as server:
        url = server.url('mambaout_served.pth')
        assert_same_weights(weights_after_loading(url), expected)
        assert_same_weights(weights_after_loading(url), expected)
        assert server.requests == 1
    assert files_under(torch_cache) == ['mambaout_served.pth']
    assert_same_weights(weights_after_loading(url), expected)  # server gone: from the cache


def test_unreachable_url_is_one_clear_error(torch_cache):
    url = f'http://127.0.0.1:{free_port()}/mambaout_tiny.pth'
    with pytest.raises(CheckpointDownloadError,
                       match=rf"{re.escape(repr(url))} \(URLError: .*refused.*\)\.\n"
                             rf".*{re.escape(str(torch_cache / 'mambaout_tiny.pth'))}.*\n.*{OVERRIDE}") as info:
        weights_after_loading(url)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, OSError)
    assert files_under(torch_cache) == []


def test_http_404_is_one_clear_error(torch_cache, tmp_path):
    with CheckpointServer(b'', mode='missing') as server:
        url = server.url('mambaout_missing.pth')
        with pytest.raises(CheckpointDownloadError, match=rf"{re.escape(url)}.*HTTPError: HTTP Error 404.*\n.*"
                                                          rf"{re.escape(str(torch_cache / 'mambaout_missing.pth'))}"):
            weights_after_loading(url)
    assert files_under(torch_cache) == []


@pytest.mark.parametrize('filename', ['mambaout_cut.pth', 'mambaout_cut.safetensors'])
def test_download_cut_short_leaves_no_file_in_cache(filename, torch_cache, tmp_path):
    expected = random_weights(TINY, seed=3)
    save_safetensors(expected, tmp_path / 'to_serve.safetensors')
    torch.save(expected, tmp_path / 'to_serve.pth')
    payload = (tmp_path / f'to_serve{os.path.splitext(filename)[1]}').read_bytes()
    with CheckpointServer(payload, mode='truncated') as server:
        url = server.url(filename)
        with pytest.raises(CheckpointDamagedError, match=rf'{re.escape(repr(url))} is damaged.*cut short'):
            weights_after_loading(url)
        assert files_under(torch_cache) == []
        server.mode = 'full'  # the next run downloads it anew
        assert_same_weights(weights_after_loading(url), expected)
    assert files_under(torch_cache) == [filename]


class _Payload:
    def __reduce__(self):
        return (os.system, ('touch PWNED',))


# Files that are not a readable checkpoint ("damaged": what a download stopped midway leaves, an error page saved
# under the checkpoint's name), and whole ones that weights-only unpickling refuses: the two get different errors.
DAMAGED = ['zip cut short', 'legacy cut short', 'safetensors cut short', 'error page', 'empty']
REFUSED = ['zip with code', 'legacy with code']


def write_file(kind, state, path):
    """Write ``state`` to ``path`` (its suffix replaced by the kind's) as the named kind of file; the file."""
    path = path.with_suffix('.safetensors' if kind.startswith('safetensors') else '.pth')
    if kind == 'error page':
        path.write_text('<html><body>Sign in to continue</body></html>')
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind.startswith('safetensors'):
        save_safetensors(state, path)
    else:
        contents = dict(state, evil=_Payload()) if kind.endswith('with code') else state
        torch.save(contents, path, _use_new_zipfile_serialization=not kind.startswith('legacy'))
    if kind.endswith('cut short'):
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def assert_damaged_message(message, name, cache, on_disk):
    assert message.startswith(f'The MambaOut checkpoint {name!r} in {cache} is damaged: {on_disk} is truncated, or '
                              'not a readable checkpoint (')
    assert 'Delete that file so that it is downloaded again, or give another file: ' in message
    assert re.search(OVERRIDE, message)
    assert 'weights-only' not in message and 'convert_checkpoint' not in message and '\n' not in message


@pytest.mark.parametrize('kind', DAMAGED)
def test_damaged_file_in_torch_cache_is_named_with_the_fix(kind, torch_cache, tmp_path):
    expected = random_weights(TINY, seed=11)
    torch_cache.mkdir(parents=True)
    damaged = write_file(kind, expected, torch_cache / 'mambaout_x')
    whole = write_file('safetensors' if damaged.suffix == '.safetensors' else 'zip', expected, tmp_path / 'whole')
    with CheckpointServer(whole.read_bytes()) as server:
        url = server.url(damaged.name)
        with pytest.raises(CheckpointDamagedError) as info:
            weights_after_loading(url)
        assert_damaged_message(str(info.value), url, "torch's hub cache", os.path.realpath(damaged))
        assert info.value.__cause__ is None and info.value.__suppress_context__
        assert server.requests == 0  # read from the cache, not downloaded
        damaged.unlink()  # the fix the message gives: the next run downloads the file again
        assert_same_weights(weights_after_loading(url), expected)
        assert server.requests == 1


@pytest.mark.parametrize('kind', REFUSED)
def test_refused_file_in_torch_cache_is_not_called_damaged(kind, torch_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch_cache.mkdir(parents=True)
    refused = write_file(kind, random_weights(TINY, seed=12), torch_cache / 'mambaout_x')
    url = f'https://example.com/weights/{refused.name}'
    with pytest.raises(CheckpointMismatchError, match=rf"Could not read {re.escape(repr(url))} "
                                                      rf"\({re.escape(str(refused))}\) with weights-only unpickling"
                                                      rf".*weights_only=False.*{OVERRIDE}") as info:
        weights_after_loading(url)
    assert not isinstance(info.value, CheckpointDamagedError)
    assert not (tmp_path / 'PWNED').exists()


def test_refused_download_is_kept_in_cache_and_named(torch_cache, tmp_path, monkeypatch):
    """A whole download that weights-only unpickling refuses stays in the cache, where the error names it (the
    user re-saves it from there), and is not downloaded again."""
    monkeypatch.chdir(tmp_path)
    payload = write_file('zip with code', random_weights(TINY, seed=13), tmp_path / 'to_serve').read_bytes()
    with CheckpointServer(payload) as server:
        url = server.url('mambaout_refused.pth')
        for _ in range(2):
            with pytest.raises(CheckpointMismatchError, match=re.escape(str(torch_cache / 'mambaout_refused.pth'))
                               + r'\) with weights-only unpickling') as info:
                weights_after_loading(url)
            assert not isinstance(info.value, CheckpointDamagedError)
        assert server.requests == 1
    assert files_under(torch_cache) == ['mambaout_refused.pth']
    assert not (tmp_path / 'PWNED').exists()


# ---------------------------------------------------------------- hub names and huggingface_hub's cache

@pytest.mark.parametrize('name, repo_id, arch', [
    ('timm/mambaout_tiny.in1k', 'timm/mambaout_tiny.in1k', TINY),
    ('hf-hub:timm/mambaout_tiny.in1k', 'timm/mambaout_tiny.in1k', TINY),
    ('hf_hub:timm/mambaout_tiny.in1k', 'timm/mambaout_tiny.in1k', TINY),
    ('timm/mambaout_tiny', 'timm/mambaout_tiny.in1k', TINY),  # timm's default tag
    ('timm/mambaout_base_plus_rw.sw_e150_in12k_ft_in1k', 'timm/mambaout_base_plus_rw.sw_e150_in12k_ft_in1k', TINY_RW),
    ('hf-hub:timm/mambaout_base_plus_rw', 'timm/mambaout_base_plus_rw.sw_e150_in12k_ft_in1k', TINY_RW),
    ('hf-hub:someone/mambaout-coco-backbone', 'someone/mambaout-coco-backbone', TINY),  # any repo with a state dict
])
def test_hub_name_is_read_from_hub_cache_offline(name, repo_id, arch, hub_cache, network_attempts):
    expected = random_weights(arch, seed=4)
    put_in_hub_cache(hub_cache, repo_id, {'model.safetensors': expected})
    assert_same_weights(weights_after_loading(name, arch), expected)
    assert network_attempts == []


def test_hub_revision_is_honoured(hub_cache, network_attempts):
    expected = random_weights(TINY, seed=5)
    put_in_hub_cache(hub_cache, 'timm/mambaout_tiny.in1k', {'model.safetensors': expected}, revision='v2')
    assert_same_weights(weights_after_loading('timm/mambaout_tiny@v2'), expected)
    assert network_attempts == []


def test_hub_safetensors_preferred_over_bin(hub_cache, network_attempts):
    from_safetensors, from_bin = random_weights(TINY, seed=6), random_weights(TINY, seed=7)
    put_in_hub_cache(hub_cache, 'timm/mambaout_tiny.in1k',
                     {'model.safetensors': from_safetensors, 'pytorch_model.bin': from_bin})
    assert_same_weights(weights_after_loading('timm/mambaout_tiny.in1k'), from_safetensors)
    assert network_attempts == []


def test_hub_bin_only_is_read_weights_only(hub_cache, network_attempts):
    expected = random_weights(TINY, seed=8)
    put_in_hub_cache(hub_cache, 'timm/mambaout_tiny.in1k', {'pytorch_model.bin': {'state_dict': expected}})
    assert_same_weights(weights_after_loading('timm/mambaout_tiny.in1k'), expected)
    assert network_attempts == []


def test_hub_bin_with_code_is_refused(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    put_in_hub_cache(hub_cache, 'timm/mambaout_tiny.in1k', {'pytorch_model.bin': {'evil': _Payload()}})
    with pytest.raises(CheckpointMismatchError, match='weights-only'):
        weights_after_loading('timm/mambaout_tiny.in1k')
    assert not (tmp_path / 'PWNED').exists()


def put_blob_in_hub_cache(cache, repo_id, filename, source):
    """Lay the file ``source`` into the cache as ``hf_hub_download`` stores it: ``blobs/<sha256>``, and the link
    ``snapshots/<hash>/<filename>`` to it; the blob and the link."""
    put_in_hub_cache(cache, repo_id, {})
    repo_dir = cache / ('models--' + repo_id.replace('/', '--'))
    blob = repo_dir / 'blobs' / hashlib.sha256(source.read_bytes()).hexdigest()
    blob.parent.mkdir(exist_ok=True)
    shutil.copyfile(source, blob)
    link = repo_dir / 'snapshots' / COMMIT / filename
    link.symlink_to(os.path.relpath(blob, link.parent))
    return blob, link


@pytest.mark.parametrize('filename, kind', [('model.safetensors', 'safetensors cut short'),
                                            ('pytorch_model.bin', 'zip cut short'),
                                            ('pytorch_model.bin', 'error page')])
def test_damaged_file_in_hub_cache_is_named_with_the_fix(filename, kind, hub_cache, tmp_path, network_attempts):
    source = write_file(kind, random_weights(TINY, seed=14), tmp_path / 'damaged')
    blob, link = put_blob_in_hub_cache(hub_cache, 'timm/mambaout_tiny.in1k', filename, source)
    with pytest.raises(CheckpointDamagedError) as info:
        weights_after_loading('timm/mambaout_tiny')
    assert_damaged_message(str(info.value), 'timm/mambaout_tiny', "huggingface_hub's cache",
                           f'{os.path.realpath(blob)} (linked from {link})')
    blob.unlink()  # the fix the message gives: the hub then no longer finds the file in its cache
    with pytest.raises(CheckpointDownloadError, match='HF_HUB_OFFLINE=1 and not in the cache'):
        weights_after_loading('timm/mambaout_tiny')
    assert network_attempts == []


def test_empty_hub_cache_offline_is_one_clear_error(hub_cache, network_attempts, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'ENDPOINT', 'https://hf-mirror.example')  # as HF_ENDPOINT would set it
    with pytest.raises(CheckpointDownloadError) as info:
        weights_after_loading('timm/mambaout_tiny')
    message = str(info.value)
    for part in ("'timm/mambaout_tiny' (hub repo timm/mambaout_tiny.in1k)", 'HF_HUB_OFFLINE=1 and not in the cache',
                 str(hub_cache), 'models--timm--mambaout_tiny.in1k',
                 'https://hf-mirror.example/timm/mambaout_tiny.in1k', 'model.safetensors'):
        assert part in message
    assert re.search(OVERRIDE, message)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert network_attempts == []
    assert not [f for f in files_under(hub_cache) if f.endswith(('.safetensors', '.bin', '.incomplete'))]


def test_invalid_hub_name_is_one_clear_error(hub_cache):
    with pytest.raises(CheckpointDownloadError, match=r"'hf-hub:' is not a hub name"):
        weights_after_loading('hf-hub:')


def test_every_timm_mambaout_name_resolves_without_network(network_attempts):
    from timm.models import get_pretrained_cfg, list_models, list_pretrained
    tagged = list_pretrained('mambaout*')
    assert 'mambaout_base_plus_rw.sw_e150_in12k_ft_in1k' in tagged
    for name in tagged:
        for spelling in (f'timm/{name}', f'hf-hub:timm/{name}', f'hf_hub:timm/{name}'):
            assert resolve_hub_name(spelling) == get_pretrained_cfg(name).hf_hub_id == f'timm/{name}'
    for arch in list_models('mambaout*', pretrained=True):
        assert resolve_hub_name(f'timm/{arch}') in {f'timm/{name}' for name in tagged}
    assert resolve_hub_name('timm/mambaout_tiny') == 'timm/mambaout_tiny.in1k'
    assert resolve_hub_name('timm/mambaout_base_plus_rw') == 'timm/mambaout_base_plus_rw.sw_e150_in12k_ft_in1k'
    assert resolve_hub_name('hf-hub:timm/mambaout_small@abc') == 'timm/mambaout_small.in1k@abc'
    assert network_attempts == []


@pytest.mark.parametrize('local_path', ['mambaout_tiny.pth', 'timm/mambaout_tiny.pth', 'work/timm/mambaout_tiny',
                                        '/abs/timm/mambaout_tiny.in1k'])
def test_local_paths_are_not_hub_names(local_path):
    assert resolve_hub_name(local_path) is None
    with pytest.raises(FileNotFoundError, match=r'MambaOut checkpoint not found.*hub name'):
        weights_after_loading(local_path)


def test_local_file_wins_over_hub_name(tmp_path, monkeypatch, network_attempts):
    expected = random_weights(TINY, seed=9)
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'timm').mkdir()
    torch.save(expected, tmp_path / 'timm' / 'mambaout_tiny.in1k')
    assert_same_weights(weights_after_loading('timm/mambaout_tiny.in1k'), expected)
    assert network_attempts == []


_USER_RUN = '''
import json, socket, sys, torch
def refuse(*args, **kwargs):
    raise OSError('network access is blocked by the test')
socket.socket.connect = socket.create_connection = socket.getaddrinfo = refuse
from backbones import MambaOut
from backbones.checkpoint import CheckpointDownloadError
arch, out = json.loads(sys.argv[1]), sys.argv[2]
model = MambaOut(arch=arch, init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/mambaout_base_plus_rw'))
model.init_weights()
torch.save(model.state_dict(), out)
try:
    MambaOut(arch=arch, init_cfg=dict(type='Pretrained', checkpoint='timm/mambaout_small')).init_weights()
except CheckpointDownloadError as err:
    print(err)
'''


def test_environment_variables_reach_huggingface_hub(tmp_path):
    """The user's way: ``HF_HOME`` and ``HF_HUB_OFFLINE=1`` set before Python starts."""
    pytest.importorskip('huggingface_hub')
    expected = random_weights(TINY_RW, seed=10)
    put_in_hub_cache(tmp_path / 'hf' / 'hub', 'timm/mambaout_base_plus_rw.sw_e150_in12k_ft_in1k',
                     {'model.safetensors': expected})
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGINGFACE_'))}
    env.update(HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='1', TORCH_HOME=str(tmp_path / 'torch'),
               PYTHONPATH=os.pathsep.join([ROOT, env.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    result = subprocess.run([sys.executable, '-c', _USER_RUN, json.dumps(TINY_RW), str(tmp_path / 'loaded.pth')],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_same_weights(torch.load(tmp_path / 'loaded.pth', weights_only=True), expected)
    assert "'timm/mambaout_small' (hub repo timm/mambaout_small.in1k)" in result.stdout
    assert 'HF_HUB_OFFLINE=1 and not in the cache' in result.stdout
    assert str(tmp_path / 'hf' / 'hub') in result.stdout


# ---------------------------------------------------------------- one download per node

# What each process of a training does with the backbone's weights: init_weights, in a gloo process group when
# RANK/WORLD_SIZE are set (as tools/dist_train.sh's torchrun sets them), else alone. It reports its state dict, or
# its error as one line of JSON. Processes without a group first wait for each other (ready files), so that they
# load at the same time.
_RANK_RUN = '''
import datetime, glob, json, os, sys, time
import torch
import torch.distributed as dist
from backbones import MambaOut
url, arch, out, ready_dir, processes = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
if 'WORLD_SIZE' in os.environ:
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))
else:
    open(os.path.join(ready_dir, str(os.getpid())), 'w').close()
    while len(glob.glob(os.path.join(ready_dir, '*'))) < processes:
        time.sleep(0.05)
model = MambaOut(arch=arch, init_cfg=dict(type='Pretrained', checkpoint=url))
try:
    model.init_weights()
except Exception as err:
    with open(out + '.json', 'w') as f:
        json.dump(f'{type(err).__name__}: {err}', f)
    sys.exit(3)
torch.save(model.state_dict(), out)
'''
PROCESSES = 4
PROCESS_TIMEOUT_S = 240  # a rank that hangs fails the test instead of blocking it


def load_in_processes(url, tmp_path, distributed, local_rank=True):
    """Run ``_RANK_RUN`` in PROCESSES processes at once, sharing one torch cache: their exit codes and outputs
    (state dict or error line)."""
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                                            'MASTER_PORT')}
    env.update(PYTHONPATH=os.pathsep.join([ROOT, env.get('PYTHONPATH', '')]).rstrip(os.pathsep),
               TORCH_HOME=str(tmp_path / 'torch'), OMP_NUM_THREADS='1')
    if distributed:
        env.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), WORLD_SIZE=str(PROCESSES))
    (tmp_path / 'ready').mkdir()
    procs = []
    for rank in range(PROCESSES):
        rank_env = dict(env, RANK=str(rank), **({'LOCAL_RANK': str(rank)} if local_rank else {})) if distributed \
            else env
        procs.append(subprocess.Popen(
            [sys.executable, '-c', _RANK_RUN, url, json.dumps(TINY), str(tmp_path / f'rank{rank}.pth'),
             str(tmp_path / 'ready'), str(PROCESSES)], cwd=tmp_path, env=rank_env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    results = []
    try:
        for rank, proc in enumerate(procs):
            _, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            out = tmp_path / f'rank{rank}.pth'
            if proc.returncode == 0:
                results.append((0, torch.load(out, weights_only=True)))
            elif os.path.exists(f'{out}.json'):
                with open(f'{out}.json') as f:
                    results.append((proc.returncode, json.load(f)))
            else:
                results.append((proc.returncode, stderr))
    except subprocess.TimeoutExpired:
        pytest.fail(f'a process did not end within {PROCESS_TIMEOUT_S} s (a hang)')
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.slow
@pytest.mark.parametrize('distributed', [True, False], ids=['distributed', 'separate processes'])
def test_processes_loading_one_url_download_it_once(distributed, tmp_path):
    """Four ranks of one node (as ``tools/dist_train.sh CONFIG 4`` starts them), or four processes with no process
    group that share the cache: one GET; every process has the weights."""
    expected = random_weights(TINY, seed=15)
    with CheckpointServer(checkpoint_bytes(expected, tmp_path), delay=1.) as server:
        results = load_in_processes(server.url('mambaout_shared.pth'), tmp_path, distributed)
        assert [code for code, _ in results] == [0] * PROCESSES, results
        for _, state in results:
            assert_same_weights(state, expected)
        assert server.requests == 1
    assert files_under(tmp_path / 'torch' / 'hub' / 'checkpoints') == ['mambaout_shared.pth']


@pytest.mark.slow
@pytest.mark.parametrize('mode, local_rank, error', [
    ('missing', True, r"CheckpointDownloadError: Could not download the MambaOut checkpoint '{url}' \(HTTPError: "
                      r"HTTP Error 404: Not Found\)\.\n  Put the file by hand at .*mambaout_shared\.pth"),
    ('truncated', False, r"CheckpointDamagedError: The download of the MambaOut checkpoint '{url}' is damaged: "
                         r"truncated.*cut short"),
], ids=['404', 'cut short, no LOCAL_RANK'])
def test_failed_download_is_the_same_error_on_every_rank(mode, local_rank, error, tmp_path):
    """The first rank's download fails (404, or the server closes early): every rank ends, soon, with its error;
    none waits for a file that never comes, none downloads again. Without LOCAL_RANK, global rank 0 downloads."""
    with CheckpointServer(checkpoint_bytes(random_weights(TINY, seed=16), tmp_path), mode=mode) as server:
        url = server.url('mambaout_shared.pth')
        results = load_in_processes(url, tmp_path, distributed=True, local_rank=local_rank)
        assert server.requests == 1
    codes, messages = zip(*results)
    assert codes == (3,) * PROCESSES, results
    assert len(set(messages)) == 1, messages
    assert re.match(error.format(url=re.escape(url)), messages[0]), messages[0]
    assert files_under(tmp_path / 'torch' / 'hub' / 'checkpoints') == []
