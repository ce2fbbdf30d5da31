"""What tools/train.py and tools/test.py share: config loading and the runner set-up.

mmdet's and mmseg's own train/test scripts do the same with mmengine's Runner; ours serve det and seg
configs alike (mmseg 1.2.2's package ships no train.py to call) and add one thing mmengine 0.10.7
lacks: distributed runs on machines without CUDA (its init_dist calls torch.cuda.set_device and its
DDP wrapper passes device_ids), set up here with the gloo backend; and weights-only unpickling of every
checkpoint the runner reads, also on torch < 2.6 (``mambaout_tools/weights_only.py``).
"""
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mambaout_tools import models
from mambaout_tools.weights_only import load_checkpoints_weights_only


def add_common_args(parser):
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args) -> Config:
    """The config of ``args`` (see :func:`add_common_args`) set up for the Runner; a missing or non-mm* config
    file stops the tool with one ``error:`` line."""
    try:
        cfg = models.load_config(args.config, args.cfg_options)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
    cfg.launcher = args.launcher
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if args.launcher != 'none' and not torch.cuda.is_available():
        _use_gloo_on_cpu(cfg)
    return cfg


def _use_gloo_on_cpu(cfg):
    """Distributed training on CPU: a gloo process group (set up before the Runner, which then skips its
    CUDA-only init_dist) and DDP without device_ids."""
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.env_cfg = {**cfg.get('env_cfg', {}), 'dist_cfg': dict(backend='gloo')}
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def build_runner(cfg) -> Runner:
    load_checkpoints_weights_only()
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
