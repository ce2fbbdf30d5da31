"""Predict on one image with a MambaOut detector or segmentor and save a picture of the result.

    python tools/image_demo.py IMAGE CONFIG CHECKPOINT --out result.png [--score-thr 0.3] [--device cpu]

Works with any config of this repository (mmdet or mmseg, told apart by its default_scope) and any image.
It calls mmdet's/mmseg's own inference APIs and visualizers.
"""
import argparse
import os
import os.path as osp

import mmcv
import torch
from mmengine.config import Config

from launch import RUNNER_STATE_GLOBALS


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


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.image, 'image'), (args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise SystemExit(f'error: {what} not found: {path}')
    cfg = Config.fromfile(args.config)
    image = mmcv.imread(args.image, channel_order='rgb')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    # training checkpoints carry the runner's state (see tools/launch.py)
    with torch.serialization.safe_globals(RUNNER_STATE_GLOBALS):
        if cfg.default_scope == 'mmdet':
            from mmdet.apis import inference_detector, init_detector
            from mmdet.registry import VISUALIZERS
            model = init_detector(cfg, args.checkpoint, device=args.device)
            result = inference_detector(model, args.image)
            visualizer = VISUALIZERS.build(dict(cfg.visualizer, name='image_demo', vis_backends=None))
            visualizer.dataset_meta = model.dataset_meta
            visualizer.add_datasample('result', image, data_sample=result, draw_gt=False,
                                      pred_score_thr=args.score_thr, out_file=args.out)
            summary = f'{int((result.pred_instances.scores >= args.score_thr).sum())} objects'
        else:
            from mmseg.apis import inference_model, init_model
            from mmseg.registry import VISUALIZERS
            model = init_model(cfg, args.checkpoint, device=args.device)
            result = inference_model(model, args.image)
            visualizer = VISUALIZERS.build(dict(cfg.visualizer, name='image_demo', vis_backends=None, alpha=args.opacity))
            visualizer.dataset_meta = model.dataset_meta
            visualizer.add_datasample('result', image, data_sample=result, draw_gt=False, out_file=args.out)
            summary = f'classes {sorted(result.pred_sem_seg.data.unique().tolist())}'
    print(f'{args.out}: {summary}')


if __name__ == '__main__':
    main()
