"""The embedded default run (`make demo`): the whole pipeline on a generated dataset, on a CPU, in minutes.

1. generates the toy dataset under data/toy if it is not there (tools/misc/make_toy_data.py);
2. trains Mask R-CNN-MambaOut and UperNet-MambaOut on it (configs/toy/, which inherit the paper configs),
   validating three times along the way;
3. evaluates them: COCO bbox/segm mAP, mIoU single-scale and multi-scale + flip (--tta);
4. evaluates the same models untrained (random weights): the baseline that shows what training brought;
5. draws predictions beside the ground truth on validation images (tools/misc/image_demo.py), one overview
   picture of them, and the training curves (tools/analysis_tools/plot_curves.py) -- docs/demo_overview.png and
   docs/demo_curves.png, which the README shows;
6. prints the metrics, trained beside untrained.

Every step is one of the repository's tools, run as a user would run it: the command is printed, its full
output (mmengine's config dump, logs, warnings) goes to a log file in the work dir, and the terminal shows
one progress line per step (mambaout_tools/progress.py).
"""
import argparse
import json
import os
import os.path as osp
import shlex
import sys
import time

import cv2
import numpy as np
from PIL import Image

from mambaout_tools.progress import ProgressLine, StepFailed, quiet_warnings_env, run_step, silence_known_warnings

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools')
DET = osp.join('configs', 'toy', 'mask_rcnn_mambaout_toy.py')
SEG = osp.join('configs', 'toy', 'upernet_mambaout_toy.py')
DET_NAME, SEG_NAME = 'Mask R-CNN-MambaOut', 'UperNet-MambaOut'
TOY = osp.join('data', 'toy')
PICTURE_IMAGES = 3  # validation images drawn per model
OVERVIEW_WIDTH = 560  # px per picture in docs/demo_overview.png (2 columns)
OVERVIEW_COLOURS = 96  # a palette PNG: the overview stays a small file to commit


class Story:
    """Prints the demo's steps: a header each, the command, one progress line."""

    def __init__(self, work_dir, total_steps):
        self.work_dir, self.total_steps, self.step = work_dir, total_steps, 0
        self.env = quiet_warnings_env()

    def header(self, text):
        self.step += 1
        print(f'\n[{self.step}/{self.total_steps}] {text}', flush=True)

    def run(self, tool, *args, log, progress=None):
        """Run ``python tools/TOOL ARGS`` (TOOL relative to tools/) with its output in ``WORK_DIR/logs/LOG.log``; without ``progress``
        (a tool with no training or evaluation loop) show its last line when it is done."""
        command = [sys.executable, osp.join(TOOLS, tool), *args]
        print(f'  $ python {shlex.join([osp.join("tools", tool), *args])}', flush=True)
        last_line = run_step(command, osp.join(self.work_dir, 'logs', log + '.log'), progress, cwd=ROOT,
                             env=self.env)
        if progress is None:
            print(f'    {last_line}', flush=True)


def in_repo(path):
    """``path`` as the tools see it (they run in the repository; an absolute path stays as it is)."""
    return osp.join(ROOT, path)


def last_checkpoint(work_dir):
    """The work dir's newest checkpoint, relative to the repository when inside it (shorter commands)."""
    with open(in_repo(osp.join(work_dir, 'last_checkpoint'))) as f:
        path = f.read().strip()
    return osp.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def read_metrics(work_dir, tta=False):
    with open(in_repo(osp.join(work_dir, 'test_metrics_tta.json' if tta else 'test_metrics.json'))) as f:
        return json.load(f)['metrics']


def overview(pictures, titles, out):
    """One picture of ``pictures`` (paths) in a grid of two columns, each under its title, as a palette PNG."""
    tiles = []
    for path, title in zip(pictures, titles):
        picture = cv2.imread(path)
        height = round(picture.shape[0] * OVERVIEW_WIDTH / picture.shape[1])
        picture = cv2.resize(picture, (OVERVIEW_WIDTH, height), interpolation=cv2.INTER_AREA)
        strip = np.full((26, OVERVIEW_WIDTH, 3), 255, np.uint8)
        cv2.putText(strip, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([strip, picture]))
    rows = []
    for left, right in zip(tiles[0::2], tiles[1::2]):
        height = max(left.shape[0], right.shape[0])
        rows.append(np.concatenate([np.pad(tile, ((0, height - tile.shape[0]), (0, 8), (0, 0)), constant_values=255)
                                    for tile in (left, right)], axis=1))
    grid = np.concatenate(rows)[..., ::-1]
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(grid)).quantize(OVERVIEW_COLOURS).save(out, optimize=True)


def metrics_table(rows):
    """Plain-text table of ``(model, metric, untrained, trained, format)`` rows (a value None is ``-``)."""
    header = ('model', 'metric', 'untrained', 'trained')
    cells = [header] + [(model, metric, *('-' if v is None else format(v, fmt) for v in values))
                        for model, metric, *values, fmt in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = ['  ' + '  '.join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, '  ' + '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'demo'),
                        help='where checkpoints, logs and pictures go (relative to the repository)')
    parser.add_argument('--docs-dir', default='docs',
                        help='where demo_overview.png and demo_curves.png go (the README shows them)')
    args = parser.parse_args(argv)
    silence_known_warnings()
    from mmengine.config import Config  # after the filters: it imports pkg_resources

    start = time.time()
    work_dir = args.work_dir
    det_dir, seg_dir = osp.join(work_dir, 'mask_rcnn'), osp.join(work_dir, 'upernet')
    pictures = osp.join(work_dir, 'pictures')
    det_cfg = Config.fromfile(osp.join(ROOT, DET), import_custom_modules=False)
    seg_cfg = Config.fromfile(osp.join(ROOT, SEG), import_custom_modules=False)
    epochs, iters = det_cfg.train_cfg.max_epochs, seg_cfg.train_cfg.max_iters
    story = Story(in_repo(work_dir), total_steps=7)
    print('MambaOut in mmdet and mmseg, on the embedded toy dataset: train, evaluate and draw two models on '
          'this CPU\n(about 6-12 minutes on 2 cores; nothing is downloaded). Each step prints the command it '
          f'runs; its full output\ngoes to {osp.join(work_dir, "logs")}/, the runs\' own mmengine logs to their '
          'work dirs.')
    try:
        story.header(f'The dataset: coloured {", ".join(det_cfg.metainfo.classes)} on noisy backgrounds '
                     '(COCO instances + ADE20K-layout label maps)')
        story.run('misc/make_toy_data.py', '--out', TOY, log='make_toy_data')

        story.header(f'Train {DET_NAME} (femto backbone from scratch, {epochs} epochs, 128 px; validation '
                     f'every {epochs // 3} epochs)')
        story.run('train.py', DET, '--work-dir', det_dir, '--cfg-options', f'train_cfg.val_interval={epochs // 3}',
                  log='train_mask_rcnn', progress=ProgressLine(f'train {DET_NAME}', total_epochs=epochs,
                                                               show=('loss', 'bbox_mAP')))
        story.header(f'Train {SEG_NAME} (femto backbone from scratch, {iters} iterations, 128 px crops; '
                     f'validation every {iters // 3})')
        story.run('train.py', SEG, '--work-dir', seg_dir, '--cfg-options', f'train_cfg.val_interval={iters // 3}',
                  log='train_upernet', progress=ProgressLine(f'train {SEG_NAME}', show=('loss', 'mIoU')))

        story.header('Evaluate the trained models on the validation images (COCO mAP; mIoU single-scale and '
                     'multi-scale + flip)')
        det_ckpt, seg_ckpt = last_checkpoint(det_dir), last_checkpoint(seg_dir)
        for config, checkpoint, directory, options, log, label, metric in (
                (DET, det_ckpt, det_dir, [], 'test_mask_rcnn', f'test {DET_NAME}', 'bbox_mAP'),
                (SEG, seg_ckpt, seg_dir, [], 'test_upernet', f'test {SEG_NAME}', 'mIoU'),
                (SEG, seg_ckpt, seg_dir, ['--tta'], 'test_upernet_tta', f'test {SEG_NAME} + TTA', 'mIoU')):
            story.run('test.py', config, checkpoint, '--work-dir', directory, *options, log=log,
                      progress=ProgressLine(label, mode='test', show=(metric,)))

        story.header('Evaluate the same models untrained (random weights), the baseline')
        untrained = {}
        for config, name, model, metric in ((DET, 'mask_rcnn', DET_NAME, 'bbox_mAP'),
                                            (SEG, 'upernet', SEG_NAME, 'mIoU')):
            directory = osp.join(work_dir, f'{name}_untrained')
            checkpoint = osp.join(directory, 'untrained.pth')
            os.makedirs(in_repo(directory), exist_ok=True)
            run_step([sys.executable, '-c', 'import sys; from mambaout_tools.models import save_untrained_checkpoint;'
                      ' save_untrained_checkpoint(*sys.argv[1:])', config, in_repo(checkpoint)],
                     osp.join(story.work_dir, 'logs', f'untrained_{name}.log'), cwd=ROOT, env=story.env)
            print(f'  random weights saved as {checkpoint} (mambaout_tools.models.save_untrained_checkpoint)')
            story.run('test.py', config, checkpoint, '--work-dir', directory, log=f'test_{name}_untrained',
                      progress=ProgressLine(f'test {model} untrained', mode='test', show=(metric,)))
            untrained[name] = read_metrics(directory)

        story.header(f'Draw predictions beside the ground truth on {PICTURE_IMAGES} validation images per model')
        drawn, titles = [], []
        for index in range(PICTURE_IMAGES):
            image = f'toy_val_{index:05d}'
            for config, checkpoint, source, truth, kind, model in (
                    (DET, det_ckpt, osp.join(TOY, 'coco', 'val', image + '.jpg'),
                     osp.join(TOY, 'coco', 'annotations', 'instances_val.json'), 'det', DET_NAME),
                    (SEG, seg_ckpt, osp.join(TOY, 'ade', 'images', 'validation', image + '.jpg'),
                     osp.join(TOY, 'ade', 'annotations', 'validation', image + '.png'), 'seg', SEG_NAME)):
                out = osp.join(pictures, f'{kind}_{image}.png')
                story.run('misc/image_demo.py', source, config, checkpoint, '--gt', truth, '--out', out,
                          log=f'image_demo_{kind}_{image}')
                drawn.append(in_repo(out))
                titles.append(f'{model}: {image}')

        story.header('Training curves and the overview picture (shown in the README)')
        curves = osp.join(args.docs_dir, 'demo_curves.png')
        story.run('analysis_tools/plot_curves.py', det_dir, seg_dir, '--out', curves, '--titles', DET_NAME, SEG_NAME,
                  log='plot_curves')
        overview_path = osp.join(args.docs_dir, 'demo_overview.png')
        overview(drawn, titles, in_repo(overview_path))
        print(f'  overview of the pictures: {overview_path}')
    except StepFailed as err:
        print(f'\nmake demo: FAILED - {err}', file=sys.stderr)
        return 1

    trained_det, trained_seg = read_metrics(det_dir), read_metrics(seg_dir)
    trained_tta = read_metrics(seg_dir, tta=True)
    print(f'\nResults on the {len(os.listdir(in_repo(osp.join(TOY, "coco", "val"))))} validation images '
          '(untrained: the same model with random weights)')
    print(metrics_table([
        (DET_NAME, 'COCO bbox mAP', untrained['mask_rcnn']['coco/bbox_mAP'], trained_det['coco/bbox_mAP'], '.3f'),
        ('', 'COCO segm mAP', untrained['mask_rcnn']['coco/segm_mAP'], trained_det['coco/segm_mAP'], '.3f'),
        (SEG_NAME, 'mIoU single-scale', untrained['upernet']['mIoU'], trained_seg['mIoU'], '.1f'),
        ('', 'mIoU multi-scale + flip', None, trained_tta['mIoU'], '.1f'),
    ]))
    print(f'\nDemo finished in {(time.time() - start) / 60:.1f} min.')
    print(f'  pictures:         {pictures}/ (overview: {overview_path})')
    print(f'  training curves:  {curves}')
    print(f'  logs, checkpoints: {det_dir}/, {seg_dir}/ (mmengine logs), {osp.join(work_dir, "logs")}/ (each step)')
    print('  your own data:    docs/custom_dataset.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
