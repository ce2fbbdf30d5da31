"""mambaout_tools/weights_only.py: every checkpoint that mmengine reads in our tools is unpickled weights-only,
on torch < 2.6 too (where torch.load and mmengine 0.10.7 unpickle fully by default); a checkpoint whose
pickle would run code is refused before it runs, and training checkpoints our runs write still load."""
import os
import pickle

import pytest
import torch
from conftest import tool_env
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

from mambaout_tools.weights_only import load_checkpoints_weights_only, weights_only_torch_load


class _Payload:
    def __reduce__(self):
        return (os.system, ('touch PWNED',))


@pytest.fixture
def original_schemes(monkeypatch):
    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(CheckpointLoader._schemes))


def test_every_scheme_of_mmengine_is_weights_only_once(original_schemes):
    # mmengine's own loaders (a tool run earlier in this process may have wrapped them already)
    before = {prefix: getattr(loader, '__wrapped__', loader) for prefix, loader in CheckpointLoader._schemes.items()}
    load_checkpoints_weights_only()
    load_checkpoints_weights_only()  # idempotent: one wrapper each
    assert CheckpointLoader._schemes.keys() == before.keys()
    for prefix, loader in CheckpointLoader._schemes.items():
        assert loader.weights_only and loader.__wrapped__ is before[prefix], prefix
        assert loader.__name__ == before[prefix].__name__  # mmengine logs it


def test_a_checkpoint_that_runs_code_is_refused(tmp_path, monkeypatch, original_schemes):
    monkeypatch.chdir(tmp_path)
    torch.save({'state_dict': {'w': torch.ones(1)}, 'evil': _Payload()}, tmp_path / 'evil.pth')
    load_checkpoints_weights_only()
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        _load_checkpoint(str(tmp_path / 'evil.pth'), map_location='cpu')
    assert not (tmp_path / 'PWNED').exists()


def test_weights_and_plain_state_still_load(tmp_path, original_schemes):
    checkpoint = {'state_dict': {'w': torch.arange(3.)}, 'meta': {'iter': 3, 'classes': ('a', 'b')}}
    torch.save(checkpoint, tmp_path / 'plain.pth')
    load_checkpoints_weights_only()
    loaded = _load_checkpoint(str(tmp_path / 'plain.pth'), map_location='cpu')
    assert torch.equal(loaded['state_dict']['w'], checkpoint['state_dict']['w'])
    assert loaded['meta'] == checkpoint['meta']


def test_weights_only_even_where_the_caller_asks_for_full_unpickling(tmp_path):
    torch.save({'evil': _Payload()}, tmp_path / 'evil.pth')
    torch_load = torch.load
    with weights_only_torch_load(), pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'evil.pth', weights_only=False)  # as torch.hub.load_state_dict_from_url passes it
    assert torch.load is torch_load and not (tmp_path / 'PWNED').exists()


@pytest.mark.slow  # builds the toy segmentor's runner in two processes
@pytest.mark.parametrize('tool, arguments', [('test.py', ['{checkpoint}']), ('train.py', ['--resume', '{checkpoint}'])])
def test_our_train_and_test_refuse_a_checkpoint_that_runs_code(tmp_path, tool, arguments):
    import subprocess
    import sys

    from tools.misc.make_toy_data import make_toy_data
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    make_toy_data(str(tmp_path / 'data' / 'toy'), num_train=2, num_val=2, size=64)
    checkpoint = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': {}, 'evil': _Payload()}, checkpoint)
    config = os.path.join(root, 'configs', 'toy', 'upernet_mambaout_toy.py')
    result = subprocess.run(
        [sys.executable, os.path.join(root, 'tools', tool), config, *(a.format(checkpoint=checkpoint) for a in arguments),
         '--work-dir', str(tmp_path / 'work')], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=tool_env(OMP_NUM_THREADS='1'))
    assert result.returncode != 0 and not (tmp_path / 'PWNED').exists()
    assert result.stderr.strip().splitlines()[-1].startswith(
        f'error: torch.load(weights_only=True) refuses {checkpoint} (it holds {os.system.__module__}.system)'), \
        result.stderr[-3000:]
