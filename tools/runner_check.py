"""A few real training iterations of an mmdet or mmseg config through its own Runner, on synthetic full-size
batches, checking that every loss stays finite and that the FP16 loss scale does not collapse.

    python tools/runner_check.py CONFIG [--iters 30] [--batch-size N] [--shape H W] [--work-dir DIR]
                                 [--cfg-options KEY=VALUE ...]

Runs on CUDA when there is a GPU (the config's AmpOptimWrapper: float16 with a dynamic loss scale), else on
CPU in fp32 (mmengine 0.10.7's AmpOptimWrapper needs CUDA). Defaults: the config's batch size, and its
training input size (detection: 800x1333, padded to 800x1344; segmentation: the crop size). What else
differs from a real training (random weights, no dataset, no validation or checkpoints) is listed in
``mambaout_tools/runner_check.py``. Prints a table (iterations, first and last loss, loss scale, skipped
steps, s/iter, peak memory) and exits 1 when a loss is not finite or the loss scale fell below 1. Why not
mmdet's/mmseg's train.py: they need a dataset and record neither the loss scale nor per-iteration losses.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

from mambaout_tools.runner_check import run_check

PROG = 'runner_check.py'
MIN_SIDE = 32  # the backbone's total stride


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='an mmdet or mmseg config, e.g. configs/mask_rcnn_mambaout_t_1x.py')
    parser.add_argument('--iters', type=int, default=30, help='training iterations (default 30)')
    parser.add_argument('--batch-size', type=int, help='images per iteration (default: the config\'s)')
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        help=f'training input height and width, each >= {MIN_SIDE} (default: the config\'s)')
    parser.add_argument('--work-dir', help='logs of the Runner (default: work_dirs/runner_check/CONFIG_NAME)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. optim_wrapper.optimizer.lr=1e-3')
    args = parser.parse_args(argv)
    for option, value, minimum in (('--iters', [args.iters], 1), ('--batch-size', [args.batch_size], 1),
                                   ('--shape', args.shape or [], MIN_SIDE)):
        if any(v is not None and v < minimum for v in value):
            parser.error(f'{option} must be >= {minimum}, got {" ".join(map(str, value))}')
    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config}')
    args.work_dir = args.work_dir or osp.join('work_dirs', 'runner_check',
                                              osp.splitext(osp.basename(args.config))[0])
    return args, parser


def main(argv=None):
    args, parser = parse_args(argv)
    try:
        result = run_check(args.config, args.iters, args.work_dir, args.batch_size, args.shape, args.cfg_options)
    except ValueError as err:  # e.g. a config that is not an mmdet or mmseg one
        parser.exit(2, f'{PROG}: error: {err}\n')
    print(result.table())
    print(f'\nRunner logs: {args.work_dir}')
    return 1 if result.problems() else 0


if __name__ == '__main__':
    sys.exit(main())
