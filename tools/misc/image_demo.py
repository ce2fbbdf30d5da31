"""Predict on one image with a MambaOut detector or segmentor and save a picture of the result.

    python tools/misc/image_demo.py IMAGE CONFIG CHECKPOINT --out result.png [--gt ANNOTATION] [--score-thr 0.3]
                               [--long-side 512] [--device cpu]

Works with any config of this repository (mmdet or mmseg, told apart by its default_scope) and any image.
Prediction and drawing are mmdet's ``DetInferencer`` and ``DetLocalVisualizer`` (boxes, masks, labels) and
mmseg's ``MMSegInferencer`` and ``SegLocalVisualizer`` (the label map over the image); with ``--gt`` their
visualizers draw the ground truth left of the prediction. Not theirs: the picture goes to ``--out`` (they
write ``OUT_DIR/vis/<image name>``); it is drawn at an integer scale with a long side of ``--long-side`` px
or more (the prediction is made on the image as given, then its boxes, masks and label maps are scaled with
the image), so that a small image's labels do not cover each other; a legend below it names each class drawn
in its colour; and checkpoints written before the plugins made training checkpoints weights-only loadable
load as in tools/test.py (``RUNNER_STATE_GLOBALS``).
"""
import argparse
import contextlib
import io
import os
import os.path as osp
import pickle
import re

import cv2
import mmcv
import numpy as np
import torch
from mambaout_tools.launch import RUNNER_STATE_GLOBALS
from mambaout_tools.models import load_config

LEGEND_ROW, SWATCH, MARGIN = 22, 16, 8  # pixels
FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='where to write the picture (.png or .jpg)')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detection score threshold')
    parser.add_argument('--opacity', type=float, default=0.8,
                        help="segmentation label map opacity (mmseg's default: the colours stay close to the legend's)")
    parser.add_argument('--gt', metavar='ANNOTATION',
                        help='draw the ground truth left of the prediction: for a detector the COCO json that '
                        'lists IMAGE (by file name), for a segmentor the label map (PNG) of IMAGE')
    parser.add_argument('--long-side', type=int, default=512,
                        help='draw at an integer scale that brings the long side to this many pixels or more '
                        '(nearest neighbour: small images become readable; 1 keeps the image size)')
    args = parser.parse_args(argv)
    if args.long_side < 1:
        parser.error(f'--long-side must be 1 or more, got {args.long_side}')
    return args


def build_inferencer(cfg, checkpoint, device):
    """mmdet's or mmseg's inferencer; a checkpoint that weights-only unpickling still refuses is one error."""
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import DetInferencer as Inferencer
    else:
        from mmseg.apis import MMSegInferencer as Inferencer
    try:
        with torch.serialization.safe_globals(RUNNER_STATE_GLOBALS):
            return Inferencer(cfg, checkpoint, device=device)
    except pickle.UnpicklingError as err:
        refused = re.search(r'GLOBAL (\S+)', str(err))  # what torch refused; its message is a page long
        cause = f' (it holds {refused.group(1)})' if refused else ''
        converted = osp.splitext(checkpoint)[0] + '_weights.pth'
        raise SystemExit(
            f'error: torch.load(weights_only=True) refuses {checkpoint}{cause}. If you trust '
            f'the file, keep only its weights and class names: python -c "import torch; c = torch.load({checkpoint!r}, '
            "weights_only=False); torch.save(dict(state_dict=c['state_dict'], meta=dict(dataset_meta=c.get('meta', "
            f"{{}}).get('dataset_meta', {{}}))), {converted!r})\"") from None


def predict(inferencer, image, score_thr):
    """The inferencer's prediction on ``image`` as a data sample (a ``DetDataSample`` whose ``pred_instances``
    keep the boxes scoring ``score_thr`` or more, or a ``SegDataSample``)."""
    if inferencer.cfg.default_scope == 'mmdet':
        sample = inferencer(image, return_datasamples=True)['predictions'][0]
        sample.pred_instances = sample.pred_instances[sample.pred_instances.scores >= score_thr]
        return sample
    return inferencer(image, return_datasamples=True)  # mmseg's inferencer unpacks the list of one image


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
        label_map = np.where(label_map == 0, 255, label_map - 1)
    return SegDataSample(gt_sem_seg=PixelData(data=torch.from_numpy(label_map)[None]))


def upscale(sample, factor, size):
    """``sample``'s boxes, masks and label maps ``factor`` times larger (nearest: the pixels stay visible);
    ``size`` is the upscaled image's (H, W)."""
    from mmengine.structures import PixelData
    for field in ('gt_instances', 'pred_instances'):
        if field in sample:
            instances = sample.get(field)
            instances.bboxes = instances.bboxes * factor
            if 'masks' in instances:
                masks = torch.as_tensor(instances.masks)
                # no instance: mmdet may hand an empty 1-D tensor; the visualizer wants (0, H, W) of the picture
                instances.masks = (masks.repeat_interleave(factor, 1).repeat_interleave(factor, 2) if len(masks)
                                   else torch.zeros((0, *size), dtype=torch.bool))
    for field in ('gt_sem_seg', 'pred_sem_seg'):
        if field in sample:  # a PixelData keeps its first size: a new one
            label_map = sample.get(field).data.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
            sample.set_field(PixelData(data=label_map), field)
    return sample


def draw(inferencer, image, sample, score_thr, opacity, long_side):
    """The picture (RGB) of ``sample`` on ``image`` by the inferencer's visualizer -- ground truth left of the
    prediction when ``sample`` holds one -- at an integer scale that brings its long side to ``long_side`` px
    or more, and the drawn classes as ``(name, RGB colour)`` pairs in their colours."""
    rgb = mmcv.imread(image, channel_order='rgb')
    factor = max(1, -(-long_side // max(rgb.shape[:2])))
    rgb = rgb.repeat(factor, 0).repeat(factor, 1)
    sample = upscale(sample, factor, rgb.shape[:2])
    visualizer, meta = inferencer.visualizer, inferencer.model.dataset_meta  # the checkpoint's class names
    detector = inferencer.cfg.default_scope == 'mmdet'
    if detector:
        from mmdet.visualization.palette import get_palette
        fields = [('gt_instances', 'ground truth'), ('pred_instances', f'prediction (score >= {score_thr})')]
        palette = get_palette(meta['palette'] if visualizer.bbox_color is None else visualizer.bbox_color,
                              len(meta['classes']))
    else:
        fields = [('gt_sem_seg', 'ground truth'), ('pred_sem_seg', 'prediction')]
        visualizer.set_dataset_meta(meta['classes'], meta['palette'])  # as mmseg's own drawing does
        visualizer.alpha = opacity
        palette = meta['palette']
    titled = fields[0][0] in sample  # titles tell the ground truth from the prediction; alone, none
    panels, labels = [], set()
    for field, title in fields:
        if field not in sample:
            continue
        # one panel per call: mmseg's visualizer keeps only its last panel as the image
        gt = field.startswith('gt_')
        options = dict(pred_score_thr=score_thr) if detector else {}
        visualizer.add_datasample(title, rgb, sample, draw_gt=gt, draw_pred=not gt, **options)
        panels.append(with_title(visualizer.get_image(), title if titled else None))
        values = sample.get(field).labels if detector else sample.get(field).data.unique()
        labels.update(int(label) for label in values if label < len(meta['classes']))
    entries = [(meta['classes'][label], tuple(int(c) for c in palette[label])) for label in sorted(labels)]
    return np.concatenate(panels, axis=1), entries


def with_title(panel, title):
    """``panel`` below a white strip with ``title``, or as it is if ``title`` is None."""
    if title is None:
        return panel
    strip = np.full((LEGEND_ROW + MARGIN, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (MARGIN, LEGEND_ROW), FONT, FONT_SCALE * 1.2, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel])


def with_legend(picture, entries, empty_note):
    """``picture`` (RGB) above a white strip with one row per ``(name, colour)``: a swatch and the name."""
    rows = entries or [(empty_note, None)]
    text_width = max(cv2.getTextSize(name, FONT, FONT_SCALE, 1)[0][0] for name, _ in rows)
    height, width = picture.shape[:2]
    canvas = np.full((height + LEGEND_ROW * len(rows) + MARGIN, max(width, text_width + SWATCH + 3 * MARGIN), 3),
                     255, np.uint8)
    canvas[:height, :width] = picture
    for row, (name, colour) in enumerate(rows):
        top = height + MARGIN // 2 + row * LEGEND_ROW
        if colour is not None:
            cv2.rectangle(canvas, (MARGIN, top + 2), (MARGIN + SWATCH - 1, top + SWATCH + 1), colour, cv2.FILLED)
        cv2.putText(canvas, name, (SWATCH + 2 * MARGIN, top + SWATCH - 2), FONT, FONT_SCALE, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.image, 'image'), (args.config, 'config'), (args.checkpoint, 'checkpoint'),
                       (args.gt, 'ground truth')):
        if path is None:
            continue
        if not osp.isfile(path):
            raise SystemExit(f'error: {what} not found: {path}')
    try:
        cfg = load_config(args.config)
    except ValueError as err:  # not an mmdet/mmseg config
        raise SystemExit(f'error: {err}') from None
    inferencer = build_inferencer(cfg, args.checkpoint, args.device)
    sample = predict(inferencer, args.image, args.score_thr)
    predicted = sample.pred_instances.labels.tolist() if 'pred_instances' in sample else \
        sample.pred_sem_seg.data.unique().tolist()
    if args.gt:
        classes = list(inferencer.model.dataset_meta['classes'])
        sample.update(ground_truth(inferencer.cfg, args.image, args.gt, classes))
    picture, entries = draw(inferencer, args.image, sample, args.score_thr, args.opacity, args.long_side)
    empty_note = (f'no object scores {args.score_thr} or more' if inferencer.cfg.default_scope == 'mmdet'
                  else 'no class predicted')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    mmcv.imwrite(with_legend(picture, entries, empty_note)[..., ::-1], args.out)
    classes = inferencer.model.dataset_meta['classes']
    names = [classes[label] for label in sorted(set(predicted)) if label < len(classes)]
    print(f'{args.out}: {", ".join(names) or empty_note}')


if __name__ == '__main__':
    main()
