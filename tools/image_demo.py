"""Predict on one image with a MambaOut detector or segmentor and save a picture of the result.

    python tools/image_demo.py IMAGE CONFIG CHECKPOINT --out result.png [--score-thr 0.3] [--device cpu]

Works with any config of this repository (mmdet or mmseg, told apart by its default_scope) and any image.
Prediction and drawing are mmdet's ``DetInferencer`` (boxes, masks, labels) and mmseg's ``MMSegInferencer``
(the label map over the image). Not theirs: the picture goes to ``--out`` (they write ``OUT_DIR/vis/<image
name>``), with a legend below it (each predicted class in its colour), and checkpoints written before the
plugins made training checkpoints weights-only loadable load as in tools/test.py (``RUNNER_STATE_GLOBALS``).
"""
import argparse
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
    parser.add_argument('--opacity', type=float, default=0.5, help='segmentation mask opacity')
    return parser.parse_args(argv)


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


def predict(inferencer, image, score_thr, opacity):
    """The inferencer's drawing (RGB) of its prediction on ``image``, and the predicted classes as
    ``(name, RGB colour)`` pairs in the colours it drew them with."""
    if inferencer.cfg.default_scope == 'mmdet':
        from mmdet.visualization.palette import get_palette
        result = inferencer(image, return_vis=True, pred_score_thr=score_thr)
        picture, prediction = result['visualization'][0], result['predictions'][0]
        labels = {label for label, score in zip(prediction['labels'], prediction['scores']) if score >= score_thr}
        meta, bbox_color = inferencer.model.dataset_meta, inferencer.visualizer.bbox_color
        palette = get_palette(meta['palette'] if bbox_color is None else bbox_color, len(meta['classes']))
    else:  # mmseg's inferencer unpacks the lists of a single image
        result = inferencer(image, return_vis=True, opacity=opacity)
        picture, labels = result['visualization'], np.unique(result['predictions']).tolist()
        meta = inferencer.visualizer.dataset_meta
        palette = meta['palette']
    entries = [(meta['classes'][label], tuple(int(c) for c in palette[label])) for label in sorted(labels)]
    return picture, entries


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
    for path, what in ((args.image, 'image'), (args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise SystemExit(f'error: {what} not found: {path}')
    try:
        cfg = load_config(args.config)
    except ValueError as err:  # not an mmdet/mmseg config
        raise SystemExit(f'error: {err}') from None
    inferencer = build_inferencer(cfg, args.checkpoint, args.device)
    picture, entries = predict(inferencer, args.image, args.score_thr, args.opacity)
    empty_note = (f'no object scores {args.score_thr} or more' if inferencer.cfg.default_scope == 'mmdet'
                  else 'no class predicted')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    mmcv.imwrite(with_legend(picture, entries, empty_note)[..., ::-1], args.out)
    print(f'{args.out}: {", ".join(name for name, _ in entries) or empty_note}')


if __name__ == '__main__':
    main()
