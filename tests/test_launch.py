"""The launch path for real: tools/dist_train.sh and tools/dist_test.sh with 2 processes on CPU (gloo), the
Slurm scripts' srun commands, and clear errors for broken datasets. All on a small generated toy set (resuming:
tests/test_stock_scripts.py)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image
from conftest import free_port, tool_env

from tools.misc.make_toy_data import make_toy_data

pytestmark = pytest.mark.slow  # trainings and 2-process launches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DET = os.path.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
SEG = os.path.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    """A working directory holding a small toy set at data/toy, where the toy configs look."""
    work = tmp_path_factory.mktemp('toy')
    make_toy_data(str(work / 'data' / 'toy'), num_train=16, num_val=8, size=96)
    return work


def run(args, cwd, nproc=None, timeout=600):
    env = tool_env(PYTHON=sys.executable, OMP_NUM_THREADS='1',
               PORT=str(free_port()))
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return result


def tool(name):
    return os.path.join(ROOT, 'tools', name)


def test_dist_train_and_dist_test_with_two_cpu_processes(toy_dir):
    work_dir = toy_dir / 'dist_det'
    result = run(['bash', tool('dist_train.sh'), DET, '2', '--work-dir', str(work_dir), '--cfg-options',
                  'train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'train_dataloader.batch_size=2',
                  'default_hooks.checkpoint.interval=1'], cwd=toy_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'Distributed launcher: pytorch' in log and 'GPU number: 2' in log  # mmengine's runtime env: world size
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.is_file()

    result = run(['bash', tool('dist_test.sh'), DET, str(checkpoint), '2', '--work-dir', str(work_dir)],
                 cwd=toy_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'GPU number: 2' in result.stdout + result.stderr
    two = json.loads((work_dir / 'test_metrics.json').read_text())['metrics']
    # The two processes each evaluate half of the images and gather the results: the metrics of one process.
    result = run([sys.executable, tool('test.py'), DET, str(checkpoint), '--work-dir', str(toy_dir / 'one')],
                 cwd=toy_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = json.loads((toy_dir / 'one' / 'test_metrics.json').read_text())['metrics']
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert two[key] == pytest.approx(one[key], abs=1e-3), (key, two, one)


@pytest.fixture
def broken_copy(toy_dir, tmp_path):
    shutil.copytree(toy_dir / 'data', tmp_path / 'data')
    return tmp_path


@pytest.mark.parametrize('breakage, config, match', [
    ('missing_image', DET, r'images listed in .*instances_train.json are missing: .*toy_train_00003.jpg'),
    ('invalid_json', DET, r'instances_train.json is not valid JSON'),
    ('label_size', SEG, r'label maps differ in size from their image: .*toy_train_00002.png \(64x64, image 96x96\)'),
    ('missing_label', SEG, r'label maps are missing: .*toy_train_00001.png'),
])
def test_broken_dataset_gives_one_clear_error(broken_copy, breakage, config, match):
    import re
    data = broken_copy / 'data' / 'toy'
    if breakage == 'missing_image':
        (data / 'coco' / 'train' / 'toy_train_00003.jpg').unlink()
    elif breakage == 'invalid_json':
        path = data / 'coco' / 'annotations' / 'instances_train.json'
        path.write_text(path.read_text()[:-20])
    elif breakage == 'label_size':
        Image.new('L', (64, 64)).save(data / 'ade' / 'annotations' / 'training' / 'toy_train_00002.png')
    else:
        (data / 'ade' / 'annotations' / 'training' / 'toy_train_00001.png').unlink()
    result = run([sys.executable, tool('train.py'), config, '--work-dir', str(broken_copy / 'wd')], cwd=broken_copy)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and re.search(match, last), last


@pytest.mark.parametrize('script, args, expected', [
    ('slurm_train.sh', ['part', 'job', 'cfg.py', 'wd', '--resume'],
     ['-p part', '--job-name=job', '--ntasks=8', '--gres=gpu:8', 'tools/train.py cfg.py --work-dir=wd --resume --launcher=slurm']),
    ('slurm_test.sh', ['part', 'job', 'cfg.py', 'ckpt.pth', '--tta'],
     ['-p part', '--ntasks=8', 'tools/test.py cfg.py ckpt.pth --tta --launcher=slurm']),
])
def test_slurm_scripts_compose_the_srun_command(tmp_path, script, args, expected):
    fake = tmp_path / 'srun'
    fake.write_text('#!/bin/sh\necho "srun $*"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', GPUS='8')
    result = subprocess.run(['bash', tool(script), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith('srun '))
    for part in expected:
        assert part in line, (part, line)
