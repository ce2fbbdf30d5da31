"""Train a MambaOut detector or segmentor from an mmdet or mmseg config.

    python tools/train.py configs/mask_rcnn_mambaout_t_1x.py [--work-dir DIR] [--resume [CKPT]] [--amp]
    tools/dist_train.sh configs/upernet_mambaout_t_160k_ade20k_512.py 4

The flags are those of mmdet's and mmseg's tools/train.py; see mambaout_tools/launch.py for why this is ours.
"""
import argparse
import pickle

from mmengine.runner import find_latest_checkpoint

from mambaout_tools.data_check import check_datasets
from mambaout_tools.launch import add_common_args, build_runner, load_config
from mambaout_tools.weights_only import refused_checkpoint_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument('--resume', nargs='?', const='auto',
                        help='resume from CKPT, or from the latest checkpoint of the work dir if none is given')
    parser.add_argument('--amp', action='store_true', help='mixed precision (AmpOptimWrapper, dynamic loss scale)')
    parser.add_argument('--no-auto-scale-lr', action='store_true',
                        help='keep the config lr whatever the total batch size')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.no_auto_scale_lr and 'auto_scale_lr' in cfg:
        cfg.auto_scale_lr.enable = False
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    check_datasets(cfg, ('train', 'val'))
    try:
        build_runner(cfg).train()
    except pickle.UnpicklingError as err:
        checkpoint = cfg.load_from or (find_latest_checkpoint(cfg.work_dir) if cfg.get('resume') else None)
        if checkpoint is None:
            raise
        raise refused_checkpoint_error(checkpoint, err) from None


if __name__ == '__main__':
    main()
