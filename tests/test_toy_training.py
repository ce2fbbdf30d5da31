"""The embedded default really learns, the detector here (the segmentor: tests/test_toy_segmentation.py): after
the toy schedule the metrics are far above an untrained model's, two CPU processes (gloo) reach the metrics of
one process with the same total batch, and the trained detector exported to ONNX end to end keeps its mAP.

These are the slowest tests (several minutes on 2 cores): each trains a model end to end. The helpers and
thresholds here serve the other toy trainings too."""
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import free_port, tool_env, untrained_checkpoint

from tools.misc.make_toy_data import make_toy_data

pytestmark = pytest.mark.slow  # end-to-end trainings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DET = os.path.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
SEG = os.path.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')
# Thresholds, set well below what the toy schedule reaches (docs/demo.md, "What it reaches") and far
# above an untrained model (bbox/segm mAP about 0.00, mIoU about 20 by chance on 3 classes).
DET_MIN_BBOX_MAP, DET_MIN_SEGM_MAP, UNTRAINED_MAX_MAP = 0.30, 0.30, 0.05
SEG_MIN_MIOU, UNTRAINED_MAX_MIOU = 60.0, 40.0
# 2 processes x batch 2 against 1 process x batch 4: same total batch, other data order and loss
# normalisation per process, so equal only up to training noise.
MULTI_PROCESS_MAP_TOLERANCE = 0.10


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp('toy_training')
    make_toy_data(str(work / 'data' / 'toy'))  # the demo's default set
    return work


def run(args, cwd):
    env = tool_env(PYTHON=sys.executable, PORT=str(free_port()))
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def logged_scalars(work_dir):
    """The records of a training's ``vis_data/scalars.json`` (mmengine's LoggerHook): the training ones (with
    ``loss``) every logging interval, a validation's metrics where it validated."""
    return [json.loads(line) for line in next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()]


def train_and_validate(config, work_dir, cwd, nproc=1, train_options=()):
    """Trains with tools/train.py (tools/dist_train.sh for ``nproc`` > 1) and returns the metrics of the validation
    at the end of the schedule (the toy configs' val_interval; the validation set is the test set), as mmengine
    logged them in scalars.json."""
    launch = ([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), config] if nproc == 1 else
              ['bash', os.path.join(ROOT, 'tools', 'dist_train.sh'), config, str(nproc)])
    run([*launch, '--work-dir', str(work_dir), *(['--cfg-options', *train_options] if train_options else [])], cwd)
    validations = [record for record in logged_scalars(work_dir) if 'loss' not in record]
    assert validations, f'no validation logged in {work_dir}'
    return validations[-1]


def evaluate(config, checkpoint, work_dir, cwd, *options):
    run([sys.executable, os.path.join(ROOT, 'tools', 'test.py'), config, checkpoint, '--work-dir', str(work_dir),
         *options], cwd)
    name = 'test_metrics_tta.json' if '--tta' in options else 'test_metrics.json'
    return json.loads((work_dir / name).read_text())['metrics']


@pytest.fixture(scope='module')
def detector_one_process(toy_dir):
    return train_and_validate(DET, toy_dir / 'det_1p', toy_dir)


def test_detector_learns(toy_dir, detector_one_process):
    untrained = evaluate(DET, untrained_checkpoint(DET, toy_dir / 'det_untrained.pth'), toy_dir / 'det_untrained', toy_dir)
    trained = detector_one_process
    assert untrained['coco/bbox_mAP'] <= UNTRAINED_MAX_MAP
    assert trained['coco/bbox_mAP'] >= DET_MIN_BBOX_MAP, trained
    assert trained['coco/segm_mAP'] >= DET_MIN_SEGM_MAP, trained


def test_detector_exported_end_to_end_keeps_its_map(toy_dir, detector_one_process):
    """The trained toy Mask R-CNN exported whole (tools/deployment/export_onnx.py, torch's default exporter):
    ONNX Runtime's bbox and segm mAP on the toy validation set within 0.01 of mmdet's, as the tool checks and
    prints them, next to its random-image checks."""
    checkpoint = (toy_dir / 'det_1p' / 'last_checkpoint').read_text().strip()
    result = run([sys.executable, os.path.join(ROOT, 'tools', 'deployment', 'export_onnx.py'), DET, '--checkpoint',
                  checkpoint, '--out', str(toy_dir / 'det_1p' / 'mask_rcnn.onnx'), '--shape', '128', '128',
                  '--test-set', '--runs', '1'], toy_dir)
    found = {key: (float(torch_map), float(ort_map)) for key, torch_map, ort_map in re.findall(
        r'test set +coco/(\w+_mAP): PyTorch (\d\.\d+) +ONNX Runtime (\d\.\d+)', result.stdout)}
    assert set(found) == {'bbox_mAP', 'segm_mAP'}, result.stdout[-3000:]
    for key, (torch_map, ort_map) in found.items():
        assert torch_map == pytest.approx(detector_one_process[f'coco/{key}'], abs=1e-3)  # mmdet's validation
        assert torch_map > UNTRAINED_MAX_MAP and abs(ort_map - torch_map) <= 0.01, (key, ort_map, torch_map)
    assert len(re.findall(r'random 1x3x\d+x\d+: (\d+) detections \(mmdet \1\)', result.stdout)) == 2
    assert "ok           ONNX Runtime gives mmdet's detections" in result.stdout


def test_two_processes_match_one(toy_dir, detector_one_process):
    two = train_and_validate(DET, toy_dir / 'det_2p', toy_dir, nproc=2, train_options=['train_dataloader.batch_size=2'])
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert abs(two[key] - detector_one_process[key]) <= MULTI_PROCESS_MAP_TOLERANCE, (key, two, detector_one_process)
