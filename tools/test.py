"""Evaluate a MambaOut detector (COCO bbox/segm AP) or segmentor (mIoU) from an mmdet or mmseg config.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--show-dir DIR] [--work-dir DIR]
    tools/dist_test.sh configs/upernet_mambaout_t_160k_ade20k_512.py CKPT 4 --tta   # multi-scale + flip

The metrics are also written to WORK_DIR/test_metrics.json (test_metrics_tta.json with --tta), which
tools/analysis_tools/results_table.py reads. See mambaout_tools/launch.py for why this script is ours and not mmdet's/mmseg's.
"""
import argparse
import json
import os.path as osp
import pickle

from mmengine.dist import is_main_process

from mambaout_tools.data_check import check_datasets
from mambaout_tools.launch import add_common_args, build_runner, load_config
from mambaout_tools.weights_only import refused_checkpoint_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation of the config (mmseg: multi-scale 0.5-1.75 + flip)")
    parser.add_argument('--show-dir', help='write pictures of the predictions under WORK_DIR/TIMESTAMP/SHOW_DIR')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint not found: {args.checkpoint}')
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit(f'error: {args.config} defines no tta_model/tta_pipeline, so --tta cannot be used.')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.show_dir:
        visualization = cfg.default_hooks.visualization
        visualization.update(draw=True, interval=1, show=False, **(
            {'test_out_dir': args.show_dir} if cfg.default_scope == 'mmdet' else {}))
        if cfg.default_scope == 'mmseg':
            cfg.visualizer.save_dir = osp.join(cfg.work_dir, args.show_dir)
    check_datasets(cfg, ('test',))
    try:
        metrics = build_runner(cfg).test()
    except pickle.UnpicklingError as err:
        raise refused_checkpoint_error(args.checkpoint, err) from None
    if is_main_process():
        path = osp.join(cfg.work_dir, 'test_metrics_tta.json' if args.tta else 'test_metrics.json')
        with open(path, 'w') as f:
            json.dump(dict(config=osp.abspath(args.config), checkpoint=osp.abspath(args.checkpoint), tta=args.tta,
                           metrics={k: float(v) for k, v in metrics.items()}), f, indent=2)
        print(f'metrics written to {path}')


if __name__ == '__main__':
    main()
