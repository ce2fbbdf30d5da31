"""A few real training iterations of an mmdet or mmseg config through its own Runner, on synthetic full-size
batches, checking that every loss stays finite and that the FP16 loss scale does not collapse.

    python tools/maintainers/runner_check.py CONFIG [--iters 30] [--batch-size N] [--shape H W] [--work-dir DIR]
                                             [--cfg-options KEY=VALUE ...]

Runs on CUDA when there is a GPU (the config's AmpOptimWrapper: float16 with a dynamic loss scale), else on
CPU in fp32 (mmengine 0.10.7's AmpOptimWrapper needs CUDA). Defaults: the config's batch size, and its
training input size (detection: 800x1333, padded to 800x1344; segmentation: the crop size). What else
differs from a real training (random weights, no dataset, no validation or checkpoints) is listed
below. Prints a table (iterations, first and last loss, loss scale, skipped
steps, s/iter, peak memory) and exits 1 when a loss is not finite or the loss scale fell below 1. Why not
mmdet's/mmseg's train.py: they need a dataset and record neither the loss scale nor per-iteration losses.

The Runner runs the config's model, optimizer wrapper (FP16 ``AmpOptimWrapper`` with its
dynamic loss scale on CUDA), parameter schedulers and hooks, with every loss and the loss scale of every
iteration recorded, so that FP16 trouble (a loss that turns inf/NaN, a loss scale that keeps halving) shows
in a minute instead of hours into a training.

What differs from a real training, and why:

* the data: the samples of :func:`mambaout_tools.models.synthetic_batch` (random images of the training input
  size with random boxes and masks, or label maps), already packed as the config's pipeline packs them, so
  that no dataset is needed; image decoding and augmentation are not exercised (the toy trainings of the
  tests are);
* random weights (the backbone's pretrained ``init_cfg`` dropped: nothing is downloaded);
* no validation, no checkpoints; one epoch of ``iters`` batches for epoch-based loops, ``max_iters=iters``
  for iteration-based ones; ``randomness.seed=0``;
* without CUDA, mmengine 0.10.7's ``AmpOptimWrapper`` refuses to start: it is replaced by a plain
  ``OptimWrapper`` in fp32 (same optimizer and parameter-wise settings) and the result says so.
"""
import argparse
import contextlib
import copy
import math
import os.path as osp
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.utils import mkdir_or_exist
from mmengine.config import DictAction

from mambaout_tools import models
from mambaout_tools.peak_memory import PeakMemory

SYNTHETIC_DATASET = 'MambaOutSyntheticSamples'  # registry name of the dataset below
DET_IMAGE_SHAPE = (800, 1333)  # what mmdet's 1333x800 resize makes of a 4:3 or wider image
MIN_LOSS_SCALE = 1.0  # below this, (nearly) every step overflowed: 65536 halved 16 times


class SyntheticSamples(torch.utils.data.Dataset):
    """``length`` samples as a pipeline's ``Pack*Inputs`` gives them (``inputs``: uint8 ``(3, H, W)``,
    ``data_samples``: annotations), cycling through ``distinct`` seeded random ones."""

    def __init__(self, scope: str, shape: Tuple[int, int], num_classes: int, length: int, distinct: int = 4):
        batch = models.synthetic_batch(scope, [tuple(shape)] * distinct, num_classes)
        self.samples = list(zip(batch['inputs'], batch['data_samples']))
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        inputs, data_sample = self.samples[index % len(self.samples)]
        # A copy: the data preprocessor writes the batch's shapes into the sample's metainfo.
        return dict(inputs=inputs, data_samples=copy.deepcopy(data_sample))


@dataclass
class RunnerCheckResult:
    """What :func:`run_check` recorded, one entry per training iteration."""
    config: str
    device: str
    precision: str
    batch_size: int
    shape: Tuple[int, int]
    losses: List[dict] = field(default_factory=list)  # the logged losses of each iteration, as floats
    loss_scales: List[float] = field(default_factory=list)  # AMP loss scale after each iteration
    skipped_steps: int = 0  # iterations whose gradients overflowed (the scaler lowered the scale)
    iter_seconds: List[float] = field(default_factory=list)
    peak_mib: float = float('nan')
    memory_method: Optional[str] = None

    def problems(self) -> List[str]:
        """What went wrong, one line each; empty when the check passed."""
        found = []
        if not self.losses:
            found.append('no training iteration ran')
        for index, losses in enumerate(self.losses):
            bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
            if bad:
                found.append(f'iteration {index + 1}: non-finite loss ' +
                             ', '.join(f'{name}={value}' for name, value in bad.items()))
                break
        if self.loss_scales and min(self.loss_scales) < MIN_LOSS_SCALE:
            found.append(f'the AMP loss scale collapsed to {min(self.loss_scales):g} (< {MIN_LOSS_SCALE:g}): '
                         f'{self.skipped_steps} of {len(self.loss_scales)} steps overflowed and were skipped')
        return found

    def table(self) -> str:
        """A markdown table of the run and its verdict."""
        timed = self.iter_seconds[1:] or self.iter_seconds  # the first iteration includes the warm-up
        first, last = (self.losses[0].get('loss', math.nan), self.losses[-1].get('loss', math.nan)) \
            if self.losses else (math.nan, math.nan)
        scale = (f'{self.loss_scales[0]:g} -> {self.loss_scales[-1]:g} (min {min(self.loss_scales):g})'
                 if self.loss_scales else 'n/a (no loss scaling)')
        problems = self.problems()
        rows = [
            ('config', self.config),
            ('device, precision', f'{self.device}, {self.precision}'),
            ('batch', f'{self.batch_size} x 3 x {self.shape[0]} x {self.shape[1]}'),
            ('iterations', str(len(self.losses))),
            ('loss first -> last', f'{first:.4f} -> {last:.4f}'),
            ('AMP loss scale', scale),
            ('skipped (overflowing) steps', str(self.skipped_steps)),
            ('s/iter (median, after the first)', f'{statistics.median(timed):.3f}' if timed else 'n/a'),
            ('peak memory (MiB)', 'n/a' if math.isnan(self.peak_mib) else f'{self.peak_mib:.0f}'),
            ('result', 'PASS' if not problems else 'FAIL: ' + '; '.join(problems)),
        ]
        lines = ['| runner check | value |', '|---|---|'] + [f'| {key} | {value} |' for key, value in rows]
        if self.memory_method:
            lines.append(f'\npeak memory: {self.memory_method}')
        return '\n'.join(lines)


class _Recorder(Hook):
    """Records each iteration's losses, loss scale and time into a :class:`RunnerCheckResult`."""
    priority = 'LOWEST'

    def __init__(self, result: RunnerCheckResult):
        self.result = result
        self._start = 0.
        self._scale_before = None

    def _sync(self):
        if self.result.device == 'cuda':
            torch.cuda.synchronize()

    def _loss_scale(self, runner):
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        return float(scaler.get_scale()) if scaler is not None else None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._scale_before = self._loss_scale(runner)
        self._sync()
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._sync()
        self.result.iter_seconds.append(time.perf_counter() - self._start)
        self.result.losses.append({name: float(value.detach() if torch.is_tensor(value) else value)
                                   for name, value in (outputs or {}).items() if 'loss' in name})
        scale = self._loss_scale(runner)
        if scale is not None:
            self.result.loss_scales.append(scale)
            self.result.skipped_steps += int(scale < self._scale_before)


def input_shape(cfg) -> Tuple[int, int]:
    """The training input size of a config: detection, a 1333x800-class image (the data preprocessor pads it to a
    multiple of 32); segmentation, the crop size of its data preprocessor."""
    if cfg.default_scope == 'mmseg':
        size = (cfg.model.get('data_preprocessor') or {}).get('size') or cfg.get('crop_size')
        if size:
            return tuple(size)
    return DET_IMAGE_SHAPE


def prepare_config(cfg, iters: int, work_dir: str, batch_size: Optional[int] = None,
                   shape: Optional[Tuple[int, int]] = None) -> Tuple[object, str]:
    """The config set up for the check (see the module's docstring), and its precision."""
    from mmengine.registry import DATASETS
    DATASETS.register_module(name=SYNTHETIC_DATASET, module=SyntheticSamples, force=True)
    cfg = copy.deepcopy(cfg)
    shape = tuple(shape) if shape else input_shape(cfg)
    batch_size = batch_size or cfg.train_dataloader.get('batch_size', 2)
    if cfg.default_scope == 'mmseg' and (cfg.model.get('data_preprocessor') or {}).get('size'):
        cfg.model.data_preprocessor.size = shape  # the crop the preprocessor pads to
    models.drop_pretrained(cfg.model)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=0)
    cfg.train_dataloader = dict(
        batch_size=batch_size, num_workers=0, persistent_workers=False,
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(type=SYNTHETIC_DATASET, scope=cfg.default_scope, shape=shape,
                     num_classes=models.num_classes_of(cfg), length=iters * batch_size))
    train_cfg = dict(cfg.train_cfg)
    if 'max_epochs' in train_cfg:
        train_cfg.update(max_epochs=1, val_interval=2)
    else:
        train_cfg.update(max_iters=iters, val_interval=iters + 1)
    cfg.train_cfg = train_cfg
    for split in ('val', 'test'):
        cfg[f'{split}_dataloader'] = cfg[f'{split}_cfg'] = cfg[f'{split}_evaluator'] = None
    cfg.default_hooks = dict(cfg.get('default_hooks') or {}, checkpoint=None)
    precision = 'fp32'
    wrapper = cfg.optim_wrapper
    if wrapper.get('type') == 'AmpOptimWrapper':
        if torch.cuda.is_available():
            precision = f'AMP {wrapper.get("dtype") or "float16"}, loss scale {wrapper.get("loss_scale", "dynamic")}'
        else:
            cfg.optim_wrapper = {key: value for key, value in wrapper.items()
                                 if key not in ('type', 'loss_scale', 'dtype', 'use_fsdp')}
            cfg.optim_wrapper['type'] = 'OptimWrapper'
            precision = 'fp32 (no CUDA: mmengine 0.10.7\'s AmpOptimWrapper needs it; plain OptimWrapper instead)'
    return cfg, precision


def run_check(config: str, iters: int, work_dir: str, batch_size: Optional[int] = None,
              shape: Optional[Tuple[int, int]] = None, cfg_options: Optional[dict] = None) -> RunnerCheckResult:
    """Train ``config`` for ``iters`` iterations through its Runner (see the module's docstring). The Runner's
    console output goes to ``WORK_DIR/runner_console.log`` (its own log file is in ``WORK_DIR/<timestamp>/``)."""
    from mambaout_tools.launch import build_runner
    cfg, precision = prepare_config(models.load_config(config, cfg_options), iters, work_dir, batch_size, shape)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    result = RunnerCheckResult(config=config, device=device, precision=precision,
                               batch_size=cfg.train_dataloader['batch_size'],
                               shape=tuple(cfg.train_dataloader['dataset']['shape']))
    memory = PeakMemory(device)
    result.memory_method = memory.method
    mkdir_or_exist(work_dir)
    with open(osp.join(work_dir, 'runner_console.log'), 'w') as console, \
            contextlib.redirect_stdout(console):
        runner = build_runner(cfg)
        runner.register_hook(_Recorder(result))
        result.peak_mib = memory.measure(runner.train)
    return result


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
