"""docs/custom_dataset.md, followed as a user would: a small dataset with class names of its own, laid out as
section 1 says, copies of both templates edited as section 2 says, and the commands of section 5 (train, test,
draw; read from the guide itself) run as they stand. The metrics come out, under the custom class names."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import mmcv
import pytest
import torch
from conftest import tool_env

from tools.misc.make_toy_data import make_toy_data

pytestmark = pytest.mark.slow  # two trainings and tests of the paper models, at 64-128 px

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, 'docs', 'custom_dataset.md')
# Other names than the toy set's square/circle/triangle, so that nothing passes on the toy metainfo.
CLASSES = ('tile', 'coin', 'sail')


def guide_section(number):
    """The ```bash block of section ``number`` of the guide, as a list of commands (continuations joined)."""
    text = open(GUIDE).read()
    section = re.search(rf'^## {number}\. .*?(?=^## |\Z)', text, re.S | re.M).group(0)
    block = re.search(r'```bash\n(.*?)```', section, re.S).group(1)
    return [line for line in block.replace('\\\n', ' ').splitlines() if line.strip()]


def render(work):
    """A toy set re-laid out as the guide's data/my_coco and data/my_seg, with file names 000000.jpg, ... and
    the categories renamed to CLASSES."""
    toy = make_toy_data(str(work / 'render'), num_train=6, num_val=2, size=64)
    coco, seg = work / 'data' / 'my_coco', work / 'data' / 'my_seg'
    (coco / 'annotations').mkdir(parents=True)
    for split, toy_split, ade_split in (('train', 'coco_train', 'ade_train'), ('val', 'coco_val', 'ade_val')):
        data = json.loads(open(toy[f'{toy_split}_ann']).read())
        (coco / split).mkdir()
        for index, image in enumerate(data['images']):
            new_name = f'{index:06d}.jpg'
            shutil.copy(os.path.join(toy[f'{toy_split}_img'], image['file_name']), coco / split / new_name)
            image['file_name'] = new_name
        for category in data['categories']:
            category['name'] = CLASSES[category['id'] - 1]
        (coco / 'annotations' / f'instances_{split}.json').write_text(json.dumps(data))
        (seg / 'images' / split).mkdir(parents=True)
        (seg / 'labels' / split).mkdir(parents=True)
        for index, name in enumerate(sorted(os.listdir(toy[f'{ade_split}_img']))):
            stem = os.path.splitext(name)[0]
            shutil.copy(os.path.join(toy[f'{ade_split}_img'], name), seg / 'images' / split / f'{index:06d}.jpg')
            shutil.copy(os.path.join(toy[f'{ade_split}_ann'], stem + '.png'),
                        seg / 'labels' / split / f'{index:06d}.png')


def edit_template(template, copy, **values):
    """Section 2: the template copied, its marked lines set to ``values``; the copy lives outside the repository,
    so its ``_base_`` points at the repository's configs folder."""
    text = open(os.path.join(ROOT, 'configs', 'custom', template)).read()
    for name, value in values.items():
        text, found = re.subn(rf'^{name} = .*$', f'{name} = {value!r}', text, count=1, flags=re.M)
        assert found, f'{template} has no line "{name} = ..." to change'
    text = text.replace("'../", repr(os.path.join(ROOT, 'configs', ''))[:-1])
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(text)


def run_guide_command(command, cwd):
    args = shlex.split(command)
    assert args[0] == 'python' and args[1].startswith('tools/'), command
    env = tool_env(OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, os.path.join(ROOT, args[1]), *args[2:]], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, command + '\n' + result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_guide_quick_try_trains_tests_and_draws_with_custom_classes(tmp_path):
    render(tmp_path)
    edit_template('mask_rcnn_mambaout_t_custom.py', tmp_path / 'configs' / 'custom' / 'my_det.py',
                  data_root='data/my_coco/', classes=CLASSES, fp16=False)
    edit_template('upernet_mambaout_t_custom.py', tmp_path / 'configs' / 'custom' / 'my_seg.py',
                  data_root='data/my_seg/', classes=CLASSES, reduce_zero_label=True, fp16=False)
    commands = guide_section(5)
    assert [shlex.split(c)[1] for c in commands] == ['tools/train.py', 'tools/test.py', 'tools/misc/image_demo.py'] * 2
    outputs = [run_guide_command(command, tmp_path) for command in commands]

    det, seg = tmp_path / 'work_dirs' / 'my_det_try', tmp_path / 'work_dirs' / 'my_seg_try'
    det_metrics = json.loads((det / 'test_metrics.json').read_text())['metrics']
    seg_metrics = json.loads((seg / 'test_metrics.json').read_text())['metrics']
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(det_metrics) and 'mIoU' in seg_metrics
    assert all(0 <= det_metrics[k] <= 1 for k in ('coco/bbox_mAP', 'coco/segm_mAP')) and 0 <= seg_metrics['mIoU'] <= 100
    # the heads have one output per custom class, and the checkpoints carry the custom names
    for checkpoint, head_key, outputs_per_class in (
            (det / 'epoch_1.pth', 'roi_head.bbox_head.fc_cls.weight', len(CLASSES) + 1),  # + background
            (seg / 'iter_8.pth', 'decode_head.conv_seg.weight', len(CLASSES))):
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
        assert tuple(state['meta']['dataset_meta']['classes']) == CLASSES
        assert state['state_dict'][head_key].shape[0] == outputs_per_class
    # mmseg's per-class IoU table of the test log names them
    seg_test_log = outputs[4].stdout + outputs[4].stderr
    assert all(re.search(rf'\|\s*{name}\s*\|', seg_test_log) for name in CLASSES), seg_test_log[-3000:]
    # the pictures: ground truth beside the prediction, at 512 px or more, legend names among the custom classes
    for output, picture in ((outputs[2], det / '000000.png'), (outputs[5], seg / '000000.png')):
        image = mmcv.imread(str(picture))
        assert image.shape[1] >= 2 * 512, image.shape
        named = output.stdout.strip().rsplit(': ', 1)[1]
        assert named.startswith('no ') or set(named.split(', ')) <= set(CLASSES), output.stdout
