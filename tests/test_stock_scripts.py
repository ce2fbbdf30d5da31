"""The user's own OpenMMLab workflow: the scripts shipped inside the installed mmdet and mmseg packages
(``<site-packages>/mmdet/.mim/tools/{train,test}.py``, what ``mim`` runs) train, test and resume with
our configs, on checkpoints that torch's weights-only ``torch.load`` reads, on a small generated toy set.

The plugins are found as users find them, through the editable install of this repository (no
PYTHONPATH). Every result is compared with what our own tools compute on the same checkpoint.
"""
import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from backbones.training_checkpoint import LOG_SCALARS_KEY
from tools.misc.make_toy_data import make_toy_data

pytestmark = pytest.mark.slow  # trainings through mmdet's/mmseg's installed scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET = os.path.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
SEG = os.path.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')
# Deterministic training, as tests/test_launch.py's resume test: no drop path, no dropout.
DETERMINISTIC_SEG = ['randomness.deterministic=True', 'randomness.seed=3', 'model.backbone.drop_path_rate=0.0',
                     'model.decode_head.dropout_ratio=0.0', 'model.auxiliary_head.dropout_ratio=0.0',
                     'default_hooks.checkpoint.interval=3', 'train_cfg.val_interval=3',
                     'default_hooks.checkpoint.save_best=mIoU']


def stock_script(library, name):
    """The script as installed with the package (what ``mim train/test LIBRARY`` runs)."""
    return os.path.join(os.path.dirname(importlib.import_module(library).__file__), '.mim', 'tools', name)


def run(args, cwd):
    # This repository off PYTHONPATH (the plugins are found through its editable install); any other entry stays.
    path = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p and os.path.abspath(p) != ROOT]
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    if path:
        env['PYTHONPATH'] = os.pathsep.join(path)
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=dict(env, OMP_NUM_THREADS='1'),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def logged_test_metrics(log):
    """The metrics of mmengine's last ``(test)`` log line, e.g. ``mIoU: 17.2200``."""
    line = [line for line in log.splitlines() if '(test)' in line and 'data_time' in line][-1]
    return {key: float(value) for key, value in re.findall(r'(\S+): (-?\d+\.\d+)', line)
            if 'time' not in key}


def our_test_metrics(config, checkpoint, work_dir, cwd, *options):
    run([os.path.join(ROOT, 'tools', 'test.py'), config, str(checkpoint), '--work-dir', str(work_dir), *options], cwd)
    name = 'test_metrics_tta.json' if '--tta' in options else 'test_metrics.json'
    return json.loads((work_dir / name).read_text())['metrics']


def trained_weights(path):
    return {k: v for k, v in torch.load(path, weights_only=True)['state_dict'].items() if v.is_floating_point()}


def assert_same_weights(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp('stock')
    make_toy_data(str(work / 'data' / 'toy'), num_train=16, num_val=8, size=96)
    return work


@pytest.fixture(scope='module')
def stock_segmentor(toy_dir):
    """3 iterations with mmseg's own train.py, then resumed by it to 6; the same 3 iterations resumed to 6 by
    our tools/train.py; and 6 straight with ours."""
    stock, ours_resumed = toy_dir / 'seg_stock', toy_dir / 'seg_ours_resumed'
    common = ['--cfg-options', *DETERMINISTIC_SEG]
    run([stock_script('mmseg', 'train.py'), SEG, '--work-dir', str(stock), *common, 'train_cfg.max_iters=3'], toy_dir)
    shutil.copytree(stock, ours_resumed)  # its last_checkpoint names iter_3.pth
    resumed_log = run([stock_script('mmseg', 'train.py'), SEG, '--work-dir', str(stock), '--resume', *common,
                       'train_cfg.max_iters=6'], toy_dir)
    ours_resumed_log = run([os.path.join(ROOT, 'tools', 'train.py'), SEG, '--work-dir', str(ours_resumed), '--resume',
                            *common, 'train_cfg.max_iters=6'], toy_dir)
    ours = toy_dir / 'seg_ours'
    run([os.path.join(ROOT, 'tools', 'train.py'), SEG, '--work-dir', str(ours), *common, 'train_cfg.max_iters=6'],
        toy_dir)
    return dict(stock=stock, ours=ours, resumed_log=resumed_log, ours_resumed=ours_resumed,
                ours_resumed_log=ours_resumed_log)


@pytest.fixture(scope='module')
def our_segmentor_metrics(stock_segmentor, toy_dir):
    """Our tools/test.py on mmseg's resumed checkpoint, single-scale and with TTA: what mmseg's and mim's test
    scripts must print."""
    checkpoint = stock_segmentor['stock'] / 'iter_6.pth'
    return {options: our_test_metrics(SEG, checkpoint, toy_dir / 'seg_test_ours', toy_dir, *options)
            for options in ((), ('--tta',))}


def test_training_checkpoints_load_weights_only(stock_segmentor):
    stock = stock_segmentor['stock']
    checkpoint = torch.load(stock / 'iter_3.pth', weights_only=True)  # torch's default from 2.6 on
    assert isinstance(checkpoint['message_hub']['runtime_info']['best_score'], float)  # was a numpy float32
    assert len(checkpoint[LOG_SCALARS_KEY]['train/loss']['log_history']) == 3


def test_stock_mmseg_resume_continues_exactly_as_a_straight_run(stock_segmentor):
    stock, ours, resumed_log = stock_segmentor['stock'], stock_segmentor['ours'], stock_segmentor['resumed_log']
    assert 'resumed epoch: 0, iter: 3' in resumed_log
    assert_same_weights(trained_weights(stock / 'iter_6.pth'), trained_weights(ours / 'iter_6.pth'))
    # The runner state too: the resumed run's loss and lr history holds the 3 restored iterations.
    resumed, straight = (torch.load(path, weights_only=True)[LOG_SCALARS_KEY] for path in (stock / 'iter_6.pth', ours / 'iter_6.pth'))
    for key in ('train/loss', 'train/lr'):
        assert len(resumed[key]['log_history']) == 6
        torch.testing.assert_close(resumed[key]['log_history'], straight[key]['log_history'], rtol=0, atol=1e-6)


def test_our_train_resumes_a_stock_training_exactly_as_a_straight_run(stock_segmentor):
    """tools/train.py --resume from the checkpoint mmseg's train.py wrote after 3 iterations: the 6 iterations
    of a straight run, to the weight."""
    resumed, straight = stock_segmentor['ours_resumed'], stock_segmentor['ours']
    assert 'resumed epoch: 0, iter: 3' in stock_segmentor['ours_resumed_log']
    got, expected = trained_weights(resumed / 'iter_6.pth'), trained_weights(straight / 'iter_6.pth')
    assert not torch.equal(trained_weights(resumed / 'iter_3.pth')['backbone.stem.conv1.weight'],
                           got['backbone.stem.conv1.weight'])  # it did train after resuming
    assert_same_weights(got, expected)


def test_stock_mmseg_test_single_and_multi_scale_match_ours(stock_segmentor, our_segmentor_metrics, toy_dir):
    checkpoint = stock_segmentor['stock'] / 'iter_6.pth'
    for options, expected in our_segmentor_metrics.items():
        log = run([stock_script('mmseg', 'test.py'), SEG, str(checkpoint), '--work-dir', str(toy_dir / 'seg_test'),
                   *options], toy_dir)
        assert logged_test_metrics(log)['mIoU'] == pytest.approx(expected['mIoU'], abs=0.01), options


def test_stock_mmseg_load_from_starts_from_the_checkpoint(stock_segmentor, toy_dir):
    stock = stock_segmentor['stock']
    work_dir = toy_dir / 'seg_load_from'
    # lr 0: the weights written after one iteration are the loaded ones (backbone: LayerNorms only, no
    # running statistics that a step would change).
    run([stock_script('mmseg', 'train.py'), SEG, '--work-dir', str(work_dir), '--cfg-options',
         f'load_from={stock / "iter_6.pth"}', 'optim_wrapper.optimizer.lr=0.0', 'train_cfg.max_iters=1',
         'default_hooks.checkpoint.interval=1'], toy_dir)
    loaded, saved = trained_weights(stock / 'iter_6.pth'), trained_weights(work_dir / 'iter_1.pth')
    assert_same_weights({k: v for k, v in saved.items() if k.startswith('backbone.')},
                        {k: v for k, v in loaded.items() if k.startswith('backbone.')})


def test_stock_mmdet_train_test_and_resume(toy_dir):
    work_dir = toy_dir / 'det_stock'
    common = ['--work-dir', str(work_dir), '--cfg-options', 'train_cfg.val_interval=100']
    run([stock_script('mmdet', 'train.py'), DET, *common, 'train_cfg.max_epochs=1'], toy_dir)
    log = run([stock_script('mmdet', 'train.py'), DET, '--resume', *common, 'train_cfg.max_epochs=2'], toy_dir)
    assert 'resumed epoch: 1, iter: 4' in log
    checkpoint = work_dir / 'epoch_2.pth'
    log = run([stock_script('mmdet', 'test.py'), DET, str(checkpoint), '--work-dir', str(toy_dir / 'det_test')],
              toy_dir)
    stock = logged_test_metrics(log)
    ours = our_test_metrics(DET, checkpoint, toy_dir / 'det_test_ours', toy_dir)
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert stock[key] == pytest.approx(ours[key], abs=1e-3), key


def test_mim_trains_and_tests_with_our_configs(stock_segmentor, our_segmentor_metrics, toy_dir):
    """The mim commands of docs/train_test.md, with the toy config: mim train writes a checkpoint that torch
    reads weights-only, mim test --tta prints our multi-scale mIoU."""
    work_dir = toy_dir / 'seg_mim'
    run(['-m', 'mim', 'train', 'mmseg', SEG, '--work-dir', str(work_dir), '--cfg-options', 'train_cfg.max_iters=2',
         'default_hooks.checkpoint.interval=2', 'train_cfg.val_interval=100'], toy_dir)
    assert torch.load(work_dir / 'iter_2.pth', weights_only=True)['meta']['iter'] == 2
    log = run(['-m', 'mim', 'test', 'mmseg', SEG, '--checkpoint', str(stock_segmentor['stock'] / 'iter_6.pth'),
               '--work-dir', str(work_dir), '--tta'], toy_dir)
    assert logged_test_metrics(log)['mIoU'] == pytest.approx(our_segmentor_metrics[('--tta',)]['mIoU'], abs=0.01)
