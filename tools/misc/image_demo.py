"""Predict on one image with a MambaOut detector or segmentor and save a picture of the result.

    python tools/misc/image_demo.py IMAGE CONFIG CHECKPOINT --out result.png [--gt ANNOTATION] [--score-thr 0.3]
                               [--long-side 512] [--device cpu]

Works with any config of this repository (mmdet or mmseg, told apart by its default_scope) and any image.
The prediction and the picture are mambaout_tools/visualize.py's (tools/misc/web_demo.py shows the same).
Prediction and drawing are mmdet's ``DetInferencer`` and ``DetLocalVisualizer`` (boxes, masks, labels) and
mmseg's ``MMSegInferencer`` and ``SegLocalVisualizer`` (the label map over the image); with ``--gt`` their
visualizers draw the ground truth left of the prediction, and a segmentor's pixels that the ground truth
ignores (label 255: ADE20K's and the toy set's background, which mIoU does not score) are shown veiled in grey,
without prediction, as "ignored (not scored)" in the legend. Not theirs: the picture goes to ``--out`` (they
write ``OUT_DIR/vis/<image name>``); it is drawn at an integer scale with a long side of ``--long-side`` px
or more (the prediction is made on the image as given, then its boxes, masks and label maps are scaled with
the image), so that a small image's labels do not cover each other; a legend below it names each class drawn
in its colour; and the checkpoint is unpickled weights-only on every torch, as in tools/test.py
(``mambaout_tools/weights_only.py``; mmdet's and mmseg's inferencers unpickle fully on torch < 2.6).
"""
import argparse
import contextlib
import io
import os
import os.path as osp

import mmcv
import numpy as np
import torch
from mambaout_tools.visualize import (IGNORE_INDEX, LONG_SIDE, OPACITY, SCORE_THR, draw_with_legend, empty_note,
                                      load_inferencer, predict)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='where to write the picture (.png or .jpg)')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--score-thr', type=float, default=SCORE_THR, help='detection score threshold')
    parser.add_argument('--opacity', type=float, default=OPACITY,
                        help="segmentation label map opacity (mmseg's default: the colours stay close to the legend's)")
    parser.add_argument('--gt', metavar='ANNOTATION',
                        help='draw the ground truth left of the prediction: for a detector the COCO json that '
                        'lists IMAGE (by file name), for a segmentor the label map (PNG) of IMAGE')
    parser.add_argument('--long-side', type=int, default=LONG_SIDE,
                        help='draw at an integer scale that brings the long side to this many pixels or more '
                        '(nearest neighbour: small images become readable; 1 keeps the image size)')
    args = parser.parse_args(argv)
    if args.long_side < 1:
        parser.error(f'--long-side must be 1 or more, got {args.long_side}')
    return args


def ground_truth(cfg, image, annotation, classes):
    """The ground truth of ``image`` drawn as the config's dataset reads it: ``gt_instances`` from a COCO json
    (the image found by file name, categories by name) or ``gt_sem_seg`` from a label map (with the dataset's
    ``reduce_zero_label``)."""
    from mmengine.structures import InstanceData, PixelData
    if cfg.default_scope == 'mmdet':
        from mmdet.structures import DetDataSample
        from pycocotools.coco import COCO
        with contextlib.redirect_stdout(io.StringIO()):  # its "creating index..." lines
            coco = COCO(annotation)
        ids = [i for i, info in coco.imgs.items() if info['file_name'] == osp.basename(image)]
        if not ids:
            raise SystemExit(f'error: {annotation} lists no image named {osp.basename(image)}')
        boxes, labels, masks = [], [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=ids[0], iscrowd=False)):
            name = coco.cats[ann['category_id']]['name']
            if name not in classes:
                continue
            x, y, w, h = ann['bbox']
            boxes.append([x, y, x + w, y + h])
            labels.append(classes.index(name))
            masks.append(coco.annToMask(ann).astype(bool))
        height, width = coco.imgs[ids[0]]['height'], coco.imgs[ids[0]]['width']
        return DetDataSample(gt_instances=InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(labels, dtype=torch.long),
            masks=torch.from_numpy(np.stack(masks) if masks else np.zeros((0, height, width), bool))))
    from mmseg.structures import SegDataSample
    label_map = mmcv.imread(annotation, flag='unchanged').astype(np.int64)
    if cfg.test_dataloader.dataset.get('reduce_zero_label', False):
        label_map = np.where(label_map == 0, IGNORE_INDEX, label_map - 1)
    return SegDataSample(gt_sem_seg=PixelData(data=torch.from_numpy(label_map)[None]))


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.image, 'image'), (args.gt, 'ground truth')):
        if path is not None and not osp.isfile(path):
            raise SystemExit(f'error: {what} not found: {path}')
    try:
        inferencer = load_inferencer(args.config, args.checkpoint, args.device)
    except ValueError as err:  # a missing file, or not an mmdet/mmseg config
        raise SystemExit(f'error: {err}') from None
    sample = predict(inferencer, args.image, args.score_thr)
    predicted = sample.pred_instances.labels.tolist() if 'pred_instances' in sample else \
        sample.pred_sem_seg.data.unique().tolist()
    if args.gt:
        classes = list(inferencer.model.dataset_meta['classes'])
        sample.update(ground_truth(inferencer.cfg, args.image, args.gt, classes))
    picture = draw_with_legend(inferencer, args.image, sample, args.score_thr, args.opacity, args.long_side)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    mmcv.imwrite(picture[..., ::-1], args.out)
    classes = inferencer.model.dataset_meta['classes']
    names = [classes[label] for label in sorted(set(predicted)) if label < len(classes)]
    print(f'{args.out}: {", ".join(names) or empty_note(inferencer, args.score_thr)}')


if __name__ == '__main__':
    main()
