"""tools/misc/image_demo.py as tools/misc/demo.py runs it: a detector's and a segmentor's prediction drawn on a toy image,
with a legend of the predicted classes in their colours, from untrained checkpoints made here (no training), and
beside the ground truth at a readable size (--gt, --long-side); and one clear error, the payload not run, for a
checkpoint that weights-only unpickling refuses (on every torch: mmdet's and mmseg's inferencers alone unpickle
fully before torch 2.6)."""
import os
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch
from conftest import tool_env, untrained_checkpoint
from mmengine.config import Config

from tools.misc.make_toy_data import make_toy_data

pytestmark = pytest.mark.slow  # mmdet/mmseg inferencers on toy checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET = os.path.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
SEG = os.path.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')
IMAGES = {DET: os.path.join('data', 'toy', 'coco', 'val', 'toy_val_00000.jpg'),
          SEG: os.path.join('data', 'toy', 'ade', 'images', 'validation', 'toy_val_00000.jpg')}
GROUND_TRUTH = {DET: os.path.join('data', 'toy', 'coco', 'annotations', 'instances_val.json'),
                SEG: os.path.join('data', 'toy', 'ade', 'annotations', 'validation', 'toy_val_00000.png')}
SWATCH_PIXELS = 16 * 16  # a legend row's colour swatch


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp('image_demo')
    make_toy_data(str(work / 'data' / 'toy'), num_train=4, num_val=2, size=96)
    return work


def image_demo(cwd, config, checkpoint, out, *options):
    env = tool_env(OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'misc', 'image_demo.py'), IMAGES[config], config,
                           str(checkpoint), '--out', str(out), '--device', 'cpu', *options],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize('config, options', [(DET, ['--score-thr', '0.05']), (SEG, [])],
                         ids=['detector', 'segmentor'])
def test_picture_with_drawing_and_legend(toy_dir, config, options):
    name = os.path.basename(config)[:-3]
    checkpoint = untrained_checkpoint(config, toy_dir / f'{name}.pth')
    out = toy_dir / 'pictures' / f'{name}.png'
    result = image_demo(toy_dir, config, checkpoint, out, '--long-side', '1', *options)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    image = mmcv.imread(str(toy_dir / IMAGES[config]))
    picture = mmcv.imread(str(out))
    height, width = image.shape[:2]
    # one panel, the prediction (no empty ground truth beside it), above the legend
    assert picture.shape[0] > height and width <= picture.shape[1] < 2 * width, picture.shape
    # the prediction is drawn on the image (boxes and masks; the label map)
    changed = np.abs(picture[:height, :width].astype(int) - image.astype(int)).max(axis=2) > 30
    assert changed.mean() > 0.02, changed.mean()
    # the legend names at least one class, each with a swatch of the class's palette colour (BGR on disk)
    named = result.stdout.strip().rsplit(': ', 1)[1].split(', ')
    metainfo = Config.fromfile(config).metainfo
    assert named and set(named) <= set(metainfo['classes']), result.stdout
    legend = picture[height:]
    for class_name in named:
        rgb = metainfo['palette'][metainfo['classes'].index(class_name)]
        assert (legend == rgb[::-1]).all(axis=2).sum() >= SWATCH_PIXELS, (class_name, rgb)


def ground_truth_classes(config, toy_dir):
    """The class index of each pixel of the toy image's ground truth (-1: no object): from the instance masks
    (category ids 1..3), or the label map (1..3; 0 is the background, ignored)."""
    if config == SEG:
        return mmcv.imread(str(toy_dir / GROUND_TRUTH[SEG]), flag='unchanged').astype(int) - 1
    from pycocotools.coco import COCO
    coco = COCO(str(toy_dir / GROUND_TRUTH[DET]))
    image_id = next(i for i, info in coco.imgs.items() if info['file_name'] == os.path.basename(IMAGES[DET]))
    classes = np.full((coco.imgs[image_id]['height'], coco.imgs[image_id]['width']), -1)
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
        classes[coco.annToMask(annotation) > 0] = annotation['category_id'] - 1
    return classes


@pytest.mark.parametrize('config', [DET, SEG], ids=['detector', 'segmentor'])
def test_ground_truth_drawn_beside_the_prediction_at_readable_size(toy_dir, config):
    from mambaout_tools.visualize import LEGEND_ROW, MARGIN
    checkpoint = untrained_checkpoint(config, toy_dir / f'{os.path.basename(config)[:-3]}_gt.pth')
    out = toy_dir / 'pictures' / f'{os.path.basename(config)[:-3]}_gt.png'
    result = image_demo(toy_dir, config, checkpoint, out, '--gt', str(toy_dir / GROUND_TRUTH[config]))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    image, picture = mmcv.imread(str(toy_dir / IMAGES[config])), mmcv.imread(str(out), channel_order='rgb')
    factor = -(-512 // image.shape[0])  # the smallest integer scale reaching 512 px: 6 for the 96 px toy images
    side, title = factor * image.shape[0], LEGEND_ROW + MARGIN
    assert picture.shape[1] == 2 * side and picture.shape[0] > title + side, picture.shape
    # the left panel is the ground truth: each object's pixels are painted over, in its class's palette colour
    # (mostly: nearer to it than to the other classes' colours)
    panel = picture[title:title + side, :side].astype(float)
    upscaled = mmcv.bgr2rgb(image).repeat(factor, 0).repeat(factor, 1)
    palette = np.array(Config.fromfile(config).metainfo['palette'], float)
    nearest = np.linalg.norm(panel[:, :, None] - palette, axis=3).argmin(axis=2)
    classes = ground_truth_classes(config, toy_dir).repeat(factor, 0).repeat(factor, 1)
    assert (classes >= 0).any()
    assert (np.abs(panel - upscaled).max(axis=2) > 3)[classes >= 0].mean() > 0.9
    for label in np.unique(classes[classes >= 0]):
        assert (nearest[classes == label] == label).mean() > 0.6, label
    if config == SEG:
        assert_ignored_pixels_veiled(picture, upscaled, classes < 0, side, title)


def assert_ignored_pixels_veiled(picture, upscaled, ignored, side, title):
    """The pixels that the ground truth ignores (the toy set's background, label 255 after reduce_zero_label) show
    the image under the grey veil in both panels -- no class drawn there, prediction included -- and the legend
    has the grey swatch."""
    from mambaout_tools.visualize import IGNORED_GREY, IGNORED_VEIL
    assert ignored.mean() > 0.3
    veiled = (upscaled * (1 - IGNORED_VEIL) + np.array(IGNORED_GREY) * IGNORED_VEIL).round()
    for panel in (picture[title:title + side, :side], picture[title:title + side, side:]):
        assert np.abs(panel.astype(float) - veiled)[ignored].max() <= 1
        assert np.abs(panel.astype(float) - veiled)[~ignored].max(axis=1).mean() > 3  # the rest is not veiled
    legend = picture[title + side:]
    assert (legend == IGNORED_GREY).all(axis=2).sum() >= SWATCH_PIXELS


class _Payload:
    def __reduce__(self):
        return (os.system, ('touch PWNED',))


def test_checkpoint_refused_by_weights_only_loading_is_one_clear_error(toy_dir):
    checkpoint = toy_dir / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': {}, 'evil': _Payload()}, checkpoint)
    result = image_demo(toy_dir, SEG, checkpoint, toy_dir / 'evil.png')
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    refused = f'{os.system.__module__}.system'  # posix.system on Linux
    assert error.startswith(f'error: torch.load(weights_only=True) refuses {checkpoint} (it holds {refused})'), \
        result.stderr[-3000:]
    assert f"torch.load('{checkpoint}', weights_only=False)" in error and not (toy_dir / 'PWNED').exists()
    assert not (toy_dir / 'evil.png').exists()


@pytest.mark.parametrize('empty_masks', [torch.zeros(0, 16, 24).bool(), torch.zeros(0)], ids=['0xHxW', '1-D'])
def test_upscale_gives_an_empty_prediction_the_pictures_size(empty_masks):
    """A detector that finds nothing (an untrained one, often) still has masks, (0, H, W) or an empty 1-D tensor:
    they must take the picture's size, or mmengine's draw_binary_masks refuses them."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from mambaout_tools.visualize import upscale
    sample = DetDataSample(pred_instances=InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0).long(),
                                                       scores=torch.zeros(0), masks=empty_masks))
    assert upscale(sample, 3, (48, 72)).pred_instances.masks.shape == (0, 48, 72)
