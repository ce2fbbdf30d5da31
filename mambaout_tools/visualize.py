"""Predict with a MambaOut detector or segmentor and draw the result: what tools/misc/image_demo.py and
tools/misc/web_demo.py share, so that both show the same picture of the same image and checkpoint.

Prediction and drawing are mmdet's ``DetInferencer`` and ``DetLocalVisualizer`` (boxes, masks, labels) and
mmseg's ``MMSegInferencer`` and ``SegLocalVisualizer`` (the label map over the image); a sample holding the
ground truth is drawn with it left of the prediction, and a segmentor's pixels that the ground truth ignores are
veiled in grey. Not theirs: the picture is drawn at an integer scale with a long side of ``long_side`` px or more
(the prediction is made on the image as given, then its boxes, masks and label maps are scaled with the image),
so that a small image's labels do not cover each other; a legend below it names each class drawn in its colour;
and the mask colours mmdet's visualizer jitters are seeded, so that the same prediction gives the same picture
on every run.
"""
import contextlib
import os.path as osp
import pickle

import cv2
import mmcv
import numpy as np
import torch

from mambaout_tools.models import load_config
from mambaout_tools.weights_only import load_checkpoints_weights_only, refused_checkpoint_error

SCORE_THR = 0.3  # detection score threshold
OPACITY = 0.8  # segmentation label map opacity (mmseg's default: the colours stay close to the legend's)
LONG_SIDE = 512  # pixels: the picture's long side reaches it at an integer scale
LEGEND_ROW, SWATCH, MARGIN = 22, 16, 8  # pixels
IGNORE_INDEX = 255  # mmseg's label of pixels that training and mIoU skip (BaseSegDataset, IoUMetric)
# Ignored pixels (with --gt, a segmentor's): the image under a grey veil in both panels, no prediction there,
# so that what mIoU does not score (ADE20K's and the toy set's background) does not look like a wrong class.
IGNORED_NAME, IGNORED_GREY, IGNORED_VEIL = 'ignored (not scored)', (170, 170, 170), 0.7
FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.5


def load_inferencer(config, checkpoint, device):
    """The inferencer of the mmdet or mmseg ``config`` file with the weights of ``checkpoint`` on ``device``.

    Raises:
        ValueError: a file is missing or the config is not an mmdet or mmseg one; the message says which.
        SystemExit: weights-only unpickling refuses the checkpoint (its ``error:`` line says how to convert it).
    """
    for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise ValueError(f'{what} not found: {path}')
    return build_inferencer(load_config(config), checkpoint, device)


def build_inferencer(cfg, checkpoint, device):
    """mmdet's or mmseg's inferencer of ``cfg`` with the weights of ``checkpoint`` on ``device``, unpickled
    weights-only on every torch (mmdet's and mmseg's inferencers unpickle fully on torch < 2.6); a checkpoint
    that weights-only unpickling refuses is one ``error:`` line (``SystemExit``)."""
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import DetInferencer as Inferencer
    else:
        from mmseg.apis import MMSegInferencer as Inferencer
    load_checkpoints_weights_only()
    try:
        return Inferencer(cfg, checkpoint, device=device)
    except pickle.UnpicklingError as err:
        raise refused_checkpoint_error(checkpoint, err) from None


def predict(inferencer, image, score_thr):
    """The inferencer's prediction on ``image`` as a data sample (a ``DetDataSample`` whose ``pred_instances``
    keep the boxes scoring ``score_thr`` or more, or a ``SegDataSample``)."""
    if inferencer.cfg.default_scope == 'mmdet':
        sample = inferencer(image, return_datasamples=True)['predictions'][0]
        # the inferencer's pipeline packs an empty ground truth: drawn, it would be an empty panel
        for field in ('gt_instances', 'ignored_instances'):
            if field in sample:
                delattr(sample, field)
        sample.pred_instances = sample.pred_instances[sample.pred_instances.scores >= score_thr]
        return sample
    return inferencer(image, return_datasamples=True)  # mmseg's inferencer unpacks the list of one image


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
    or more, and the drawn classes as ``(name, RGB colour)`` pairs in their colours. A segmentor's pixels that
    the ground truth ignores are veiled in grey in both panels, the prediction is not drawn there, and the
    legend names them (:data:`IGNORED_NAME`)."""
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
    ignored = None
    if not detector and 'gt_sem_seg' in sample:
        from mmengine.structures import PixelData
        truth = sample.gt_sem_seg.data
        ignored = (truth[0] == IGNORE_INDEX).cpu().numpy()
        if 'pred_sem_seg' in sample:  # an index the visualizer does not paint (>= the number of classes)
            prediction = sample.pred_sem_seg.data
            sample.pred_sem_seg = PixelData(data=torch.where(truth.to(prediction.device) == IGNORE_INDEX,
                                                             IGNORE_INDEX, prediction))
    panels, labels = [], set()
    for field, title in fields:
        if field not in sample:
            continue
        # one panel per call: mmseg's visualizer keeps only its last panel as the image
        gt = field.startswith('gt_')
        options = dict(pred_score_thr=score_thr) if detector else {}
        with numpy_seeded(0):
            visualizer.add_datasample(title, rgb, sample, draw_gt=gt, draw_pred=not gt, **options)
        panel = visualizer.get_image()
        if ignored is not None:
            panel = panel.copy()
            panel[ignored] = (rgb[ignored] * (1 - IGNORED_VEIL) + np.array(IGNORED_GREY) * IGNORED_VEIL).round()
        panels.append(with_title(panel, title if titled else None))
        values = sample.get(field).labels if detector else sample.get(field).data.unique()
        labels.update(int(label) for label in values if label < len(meta['classes']))
    entries = [(meta['classes'][label], tuple(int(c) for c in palette[label])) for label in sorted(labels)]
    if ignored is not None and ignored.any():
        entries.append((IGNORED_NAME, IGNORED_GREY))
    return np.concatenate(panels, axis=1), entries


@contextlib.contextmanager
def numpy_seeded(seed):
    """numpy's global generator seeded within, as it was after: mmdet's visualizer jitters each mask's colour with
    it (``jitter_color``), and the same prediction should give the same picture on every run."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


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


def empty_note(inferencer, score_thr):
    """What the legend says when nothing is drawn."""
    if inferencer.cfg.default_scope == 'mmdet':
        return f'no object scores {score_thr} or more'
    return 'no class predicted'


def draw_with_legend(inferencer, image, sample, score_thr=SCORE_THR, opacity=OPACITY, long_side=LONG_SIDE):
    """The picture (RGB) of ``sample`` on ``image`` (see :func:`draw`) above the legend of the drawn classes."""
    drawn, entries = draw(inferencer, image, sample, score_thr, opacity, long_side)
    return with_legend(drawn, entries, empty_note(inferencer, score_thr))
