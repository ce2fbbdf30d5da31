"""The pieces of `make demo`'s short output, without training: the progress line read from mmengine's log lines,
a failing step (its log's last lines and path, then an error), the warnings filter for the tools it launches, and
the training curves drawn from mmengine's scalars.json (epoch-based validation placed at the epoch's last
iteration)."""
import io
import json
import subprocess
import sys

import cv2
import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from mambaout_tools.progress import ProgressLine, StepFailed, quiet_warnings_env, run_step
from tools.analysis_tools import plot_curves
from tools.misc import demo

TRAIN_LINE = ('11/25 22:35:24 - mmengine - INFO - Epoch(train)  [3][10/24]  base_lr: 1.0e-03 lr: 1.0e-03  '
              'eta: 0:01:05  time: 0.5304  data_time: 0.0122  loss: 1.2917  loss_rpn_cls: 0.2040')
VAL_LINE = ('11/25 22:35:30 - mmengine - INFO - Epoch(val) [4][8/8]    coco/bbox_mAP: 0.4120  '
            'coco/bbox_mAP_50: 0.6000  data_time: 0.0013  time: 0.1')
TEST_LINE = '11/25 22:35:31 - mmengine - INFO - Iter(test) [20/32]    eta: 0:00:01  time: 0.0358  data_time: 0.0013'


def test_progress_line_follows_training_and_keeps_validation_metrics():
    progress = ProgressLine('train', total_epochs=12, show=('loss', 'bbox_mAP'))
    assert not progress.update('11/25 22:35:18 - mmengine - INFO - Checkpoints will be saved to /tmp')
    assert progress.update(TRAIN_LINE)
    assert progress.fraction == pytest.approx((2 * 24 + 10) / (12 * 24))
    assert progress.values == {'loss': pytest.approx(1.2917)}
    progress.update(VAL_LINE)  # a validation during training: its metric, not its progress
    assert progress.fraction == pytest.approx((2 * 24 + 10) / (12 * 24))
    assert progress.values['bbox_mAP'] == pytest.approx(0.412)
    text = progress.text(12.0)
    assert 'epoch 3/12' in text and 'loss 1.29' in text and 'bbox_mAP 0.412' in text and '\n' not in text


def test_progress_line_of_an_evaluation():
    progress = ProgressLine('test', mode='test', show=('mIoU',))
    assert progress.update(TEST_LINE) and progress.fraction == pytest.approx(20 / 32)
    progress.update('11/25 - mmengine - INFO - Iter(test) [32/32]    aAcc: 83.97  mIoU: 71.37  mAcc: 84.80')
    assert progress.fraction == 1 and progress.values == {'mIoU': pytest.approx(71.37)}


def test_step_output_goes_to_its_log_and_a_failure_shows_the_log_tail(tmp_path):
    script = "import sys; [print('line', i) for i in range(100)]; print('" + TEST_LINE + "'); sys.exit(3)"
    log, stream = tmp_path / 'logs' / 'step.log', io.StringIO()
    with pytest.raises(StepFailed, match=str(log)):
        run_step([sys.executable, '-c', script], str(log), ProgressLine('step', mode='test'), stream=stream)
    assert log.read_text().count('\n') == 101
    shown = stream.getvalue()
    assert 'exit status 3' in shown and str(log) in shown
    assert 'line 99' in shown and 'line 10\n' not in shown  # the last lines only
    stream = io.StringIO()
    run_step([sys.executable, '-c', "print('" + TEST_LINE + "')"], str(log), ProgressLine('step', mode='test'),
             stream=stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) <= 4 and '100%' in lines[-1]  # off a terminal: a line per quarter at most, then the end


def test_known_warnings_are_ignored_in_the_launched_tools_only():
    warn = "import warnings; warnings.warn('pkg_resources is deprecated as an API. See ...', UserWarning)"
    quiet = subprocess.run([sys.executable, '-c', warn], env=quiet_warnings_env(), capture_output=True, text=True)
    loud = subprocess.run([sys.executable, '-c', warn], capture_output=True, text=True,
                          env={k: v for k, v in quiet_warnings_env().items() if k != 'PYTHONWARNINGS'})
    assert quiet.stderr == '' and 'pkg_resources is deprecated' in loud.stderr
    other = "import warnings; warnings.warn('something else', UserWarning)"
    assert 'something else' in subprocess.run([sys.executable, '-c', other], env=quiet_warnings_env(),
                                              capture_output=True, text=True).stderr


def write_run(work_dir, records, timestamp='20261125_120000'):
    path = work_dir / timestamp / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    path.write_text('\n'.join(json.dumps(r) for r in records) + '\n{"cut sho')
    return path


def test_curves_read_from_scalars_json_and_drawn(tmp_path):
    det, seg = tmp_path / 'det', tmp_path / 'seg'
    write_run(det, [{'loss': 2.0, 'epoch': 1, 'iter': 10, 'step': 10},
                    {'loss': 1.5, 'epoch': 1, 'iter': 24, 'step': 24},
                    {'coco/bbox_mAP': 0.2, 'coco/segm_mAP': 0.1, 'step': 1},
                    {'loss': 1.0, 'epoch': 2, 'iter': 48, 'step': 48},
                    {'coco/bbox_mAP': 0.4, 'coco/segm_mAP': 0.3, 'step': 2}])
    write_run(det, [{'coco/bbox_mAP': 0.5, 'step': 0}], timestamp='20261125_130000')  # a later tools/test.py run
    write_run(seg, [{'loss': 0.3, 'iter': 10, 'step': 10}, {'mIoU': 60.0, 'aAcc': 80.0, 'step': 10}])
    loss, validation = plot_curves.read_curves(str(det))
    assert loss == [(10, 2.0), (24, 1.5), (48, 1.0)]
    assert validation == {'coco/bbox_mAP': [(24, 0.2), (48, 0.4)], 'coco/segm_mAP': [(24, 0.1), (48, 0.3)]}
    assert plot_curves.read_curves(str(seg))[1] == {'mIoU': [(10, 60.0)]}

    out = tmp_path / 'curves.png'
    assert plot_curves.main([str(det), str(seg), '--out', str(out), '--titles', 'det', 'seg']) == 0
    height, width = matplotlib.image.imread(str(out)).shape[:2]
    assert width > height  # one column per work dir
    assert plot_curves.main([str(tmp_path), '--out', str(out)]) == 1  # no training records there
    with pytest.raises(SystemExit) as exit_info:
        plot_curves.parse_args([str(det), '--out', str(out), '--titles', 'a', 'b'])
    assert exit_info.value.code == 2


def test_overview_puts_the_pictures_in_two_titled_columns_as_a_small_palette_png(tmp_path):
    pictures = []
    for index, (height, colour) in enumerate(((600, (0, 0, 255)), (500, (0, 255, 0)), (550, (255, 0, 0)))):
        path = str(tmp_path / f'{index}.png')
        cv2.imwrite(path, np.full((height, 1100, 3), colour, np.uint8))
        pictures.append(path)
    out = tmp_path / 'docs' / 'overview.png'
    demo.overview(pictures + pictures[:1], ['a', 'b', 'c', 'd'], str(out))
    overview = Image.open(out)
    assert overview.mode == 'P' and overview.width == 2 * (demo.OVERVIEW_WIDTH + 8)
    rgb = np.asarray(overview.convert('RGB'))
    assert (rgb[40, 100] == (255, 0, 0)).all() and (rgb[40, demo.OVERVIEW_WIDTH + 100] == (0, 255, 0)).all()
