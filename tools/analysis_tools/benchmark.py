"""Speed and memory of a config's model (or of its backbone alone) on synthetic data.

    python tools/analysis_tools/benchmark.py CONFIG [--shape H W] [--batch-size N] [--amp] [--iters N] [--warmup N]
                              [--backbone-only] [--compare [--sequential]] [--device cpu|cuda] [--compile]
                              [--threads N] [--saved-activations] [--cfg-options KEY=VALUE ...]

Builds the model of an mmdet or mmseg config (the config's ``default_scope`` says which) with random
weights (no pretrained download) and times, on random inputs of the config's input size (detection:
800x1344, the padded 1333x800 resize; segmentation: the crop size) or ``--shape H W``:

* train: one step of the train path, ``model(inputs, samples, mode='loss')``, ``parse_losses``,
  backward and an AdamW step, with synthetic targets (mmdet: a few random boxes, labels and bitmap masks
  per image; mmseg: a random ``gt_sem_seg``). ``--backbone-only``: the backbone's forward and backward.
* inference: ``mode='predict'`` (the backbone's forward with ``--backbone-only``) under ``no_grad``.

It reports the median time per iteration after the warm-up, images/s, the peak memory of one train step
above the memory held before it (activations, gradients, optimizer temporaries; CUDA:
``torch.cuda.max_memory_allocated``; CPU: the peak resident set size from ``/proc/self/status`` VmHWM,
reset through ``/proc/self/clear_refs``) and, on CPU, the process CPU time per iteration (less
sensitive than wall time to other programs on a shared machine).

``--compare`` runs, in the same process and interleaved (A, B, C, A, B, C, ...), the same model with
(a) our MambaOut, (b) timm's ``mambaout_<arch>`` (``features_only``, NHWC features made NCHW, the
same per-output LayerNorms as ours) and (c) timm's ConvNeXt of the same size class
(tiny/small/base) with the same output norms, neck/head input channels adapted, and prints the ratios.
``--sequential`` measures them one after the other instead, with one model in memory at a time.
``--amp``: float16 autocast with a gradient scaler on CUDA, bfloat16 autocast on CPU. ``--compile``: the
backbones through ``torch.compile`` (inductor); our Gated CNN blocks stay the memory-lean kernel there on
torch >= 2.4 (:mod:`backbones.gated_cnn_kernel`'s operators), the plain modules before.

``--saved-activations`` times nothing: it counts the bytes autograd keeps for backward in one training forward
of each variant, under autocast, parameters excluded (:mod:`mambaout_tools.saved_activations`), and prints them
with the ratios. On CPU it applies CUDA's autocast rules, so the count is a GPU's activation memory.
"""

import argparse
import copy
import functools
import gc
import math
import os.path as osp
import statistics
import time

import torch
from mmengine.config import DictAction
from torch import nn

from backbones import gated_cnn_kernel
from mambaout_tools.models import build_model, load_config, models_registry, num_classes_of, synthetic_batch
from mambaout_tools.peak_memory import PeakMemory
from mambaout_tools.saved_activations import saved_activation_bytes

PROG = 'benchmark.py'
DET_DEFAULT_SHAPE = (800, 1344)  # mmdet's 1333x800 resize, padded to a multiple of 32
SEG_DEFAULT_SHAPE = (512, 512)
MIN_SIDE = 32  # the backbone's total stride
TIMM_VARIANT = '_BenchmarkTimmFeatures'  # private registry name of the wrapper below


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {text}')
        return value
    return parse


def _existing_file(path):
    if not osp.isfile(path):
        raise argparse.ArgumentTypeError(f'config file not found: {path}')
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=_existing_file,
                        help='an mmdet or mmseg config, e.g. configs/mask_rcnn_mambaout_t_1x.py')
    parser.add_argument('--shape', nargs=2, type=_int_at_least(MIN_SIDE), metavar=('H', 'W'),
                        help=f'input height and width, each >= {MIN_SIDE} (the backbone stride); default: the '
                             'config\'s input size')
    parser.add_argument('--batch-size', type=_int_at_least(1), default=2, help='images per iteration (default 2)')
    parser.add_argument('--amp', action='store_true', help='mixed precision (fp16 on CUDA, bf16 on CPU)')
    parser.add_argument('--iters', type=_int_at_least(1), help='timed iterations (default: 3 on CPU, 30 on CUDA)')
    parser.add_argument('--warmup', type=_int_at_least(0),
                        help='untimed iterations first (default: 1 on CPU, 10 on CUDA)')
    parser.add_argument('--backbone-only', action='store_true', help='time the backbone alone (forward + backward)')
    parser.add_argument('--inference-only', action='store_true',
                        help='time inference alone (no train step, no train-step memory)')
    parser.add_argument('--compare', action='store_true',
                        help='also run the timm mambaout wrapper and ConvNeXt of the same size, interleaved')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='default: cuda when available, else cpu')
    parser.add_argument('--compile', action='store_true', help='torch.compile the backbone(s)')
    parser.add_argument('--threads', type=_int_at_least(1), help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--sequential', action='store_true',
                        help='with --compare, measure one variant after the other with only its model in '
                             'memory (less memory; not interleaved)')
    parser.add_argument('--saved-activations', action='store_true',
                        help='no timing: the bytes autograd keeps for backward in one training forward under '
                             'autocast (fp16 on CUDA, bf16 with CUDA\'s rules on CPU: the same bytes), parameters '
                             'excluded, per variant, and the ratios')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override settings of the config, as in mmdet\'s and mmseg\'s tools, e.g. '
                             'model.train_cfg.rcnn.sampler.num=64')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: CUDA is not available (torch.cuda.is_available() is False)')
    if args.saved_activations and (args.inference_only or args.compile):
        parser.error('--saved-activations counts what an eager training forward saves: drop '
                     f'{"--inference-only" if args.inference_only else "--compile"}')
    on_cpu = args.device == 'cpu'
    args.iters = args.iters if args.iters is not None else (3 if on_cpu else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 10)
    return args, parser


# ----------------------------------------------------------------------------------------------------
# Models

class TimmFeatures(nn.Module):
    """A timm model with ``features_only=True`` as a backbone: contiguous NCHW outputs like ours (timm's
    MambaOut gives NHWC ones; mmcv's RoIAlign needs contiguous NCHW), each after a LayerNorm over
    channels like MambaOut's ``with_output_norm``, so that the work compares."""

    def __init__(self, model_name, out_indices=(0, 1, 2, 3), with_output_norm=True, drop_path_rate=0.,
                 with_cp=False, init_cfg=None):
        super().__init__()
        import timm
        self.body = timm.create_model(model_name, pretrained=False, features_only=True,
                                      out_indices=tuple(out_indices), drop_path_rate=drop_path_rate)
        self.nhwc = str(getattr(self.body, 'output_fmt', 'NCHW')).endswith('NHWC')
        self.out_channels = tuple(self.body.feature_info.channels())
        self.norms = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for c in self.out_channels) if with_output_norm else None
        if with_cp:
            self.body.set_grad_checkpointing(True)

    def init_weights(self):
        pass

    def forward(self, x):
        outs = []
        for i, feat in enumerate(self.body(x)):
            feat = feat if self.nhwc else feat.permute(0, 2, 3, 1)
            if self.norms is not None:
                feat = self.norms[i](feat)
            outs.append(feat.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)


def size_class(arch):
    return 'base' if 'base' in arch else 'small' if 'small' in arch else 'tiny'


def variant_backbones(backbone_cfg, compare):
    """[(key, label, backbone config)]: ours, then with --compare the timm wrapper and ConvNeXt."""
    ours = copy.deepcopy(backbone_cfg)
    ours['init_cfg'] = None  # no pretrained download
    arch = ours.get('arch', 'tiny')
    label = f'MambaOut-{arch} (ours)' if isinstance(arch, str) else 'MambaOut (ours)'
    variants = [('ours', label, ours)]
    if not compare:
        return variants
    if ours.get('type') != 'MambaOut' or not isinstance(arch, str):
        raise ValueError(f'--compare needs a MambaOut backbone with a named arch, got type={ours.get("type")!r} '
                         f'arch={arch!r}')
    import timm
    timm_name = f'mambaout_{arch}'
    if timm_name not in timm.list_models('mambaout*'):
        raise ValueError(f'--compare: timm {timm.__version__} has no {timm_name}')
    common = dict(type=TIMM_VARIANT, out_indices=tuple(ours.get('out_indices', (0, 1, 2, 3))),
                  with_output_norm=ours.get('with_output_norm', True),
                  drop_path_rate=ours.get('drop_path_rate', 0.), with_cp=ours.get('with_cp', False))
    convnext = f'convnext_{size_class(arch)}'
    variants.append(('timm', f'timm {timm_name} wrapper', dict(common, model_name=timm_name)))
    variants.append(('convnext', f'ConvNeXt ({convnext})', dict(common, model_name=convnext)))
    return variants


def out_channels(backbone):
    channels = getattr(backbone, 'out_channels', None)
    if channels is None:
        raise ValueError(f'cannot tell the output channels of {type(backbone).__name__}')
    return tuple(channels)


def adapt_channels(model_cfg, channels):
    """Point the neck's / heads' ``in_channels`` at the backbone's ``channels``."""
    neck = model_cfg.get('neck')
    for part in (neck if isinstance(neck, list) else [neck])[:1]:
        if part is not None and isinstance(part.get('in_channels'), (list, tuple)):
            part['in_channels'] = list(channels)
    for key in ('decode_head', 'auxiliary_head'):
        heads = model_cfg.get(key)
        for head in heads if isinstance(heads, list) else [heads]:
            if head is None or 'in_channels' not in head:
                continue
            index = head.get('in_index', -1)
            if isinstance(head['in_channels'], (list, tuple)):
                head['in_channels'] = [channels[i] for i in index] if isinstance(index, (list, tuple)) \
                    else list(channels)
            else:
                head['in_channels'] = channels[index]


def build_variant(cfg, backbone_cfg, backbone_only):
    """The config's model (or backbone) with ``backbone_cfg`` in place of its backbone, the neck's and heads'
    input channels adapted to it."""
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone = backbone_cfg
    if not backbone_only:
        adapt_channels(cfg.model, out_channels(build_model(cfg, backbone_only=True)))
    return build_model(cfg, backbone_only=backbone_only)


def default_shape(cfg, scope):
    if scope == 'mmseg':
        size = (cfg.model.get('data_preprocessor') or {}).get('size') or cfg.get('crop_size')
        return tuple(size) if size else SEG_DEFAULT_SHAPE
    return DET_DEFAULT_SHAPE



class Variant:
    """One model under measurement: its inputs, optimizer, step functions and measurements."""

    def __init__(self, key, label, model, args, scope, shape, num_classes):
        self.key, self.label, self.model = key, label, model
        self.args, self.scope = args, scope
        self.device = torch.device(args.device)
        self.backbone = model if args.backbone_only else model.backbone
        self.params_m = sum(p.numel() for p in self.backbone.parameters()) / 1e6
        self.inputs = torch.randn(args.batch_size, 3, *shape, generator=torch.Generator().manual_seed(0))
        self.inputs = self.inputs.to(self.device)
        if not args.backbone_only:
            # Straight to the model, as after the data preprocessor (which would pad to the training crop size).
            samples = synthetic_batch(scope, [shape] * args.batch_size, num_classes)['data_samples']
            self.samples = [sample.to(self.device) for sample in samples]
            self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                               weight_decay=0.05)
        use_fp16 = args.amp and args.device == 'cuda'
        self.amp_dtype = (torch.float16 if use_fp16 else torch.bfloat16) if args.amp else None
        # torch.amp.GradScaler(device) from torch 2.3 on; torch.cuda.amp's before (deprecated since).
        grad_scaler = functools.partial(torch.amp.GradScaler, 'cuda') if hasattr(torch.amp, 'GradScaler') \
            else torch.cuda.amp.GradScaler
        self.scaler = grad_scaler() if use_fp16 and not args.backbone_only else None
        self.train_times, self.train_cpu, self.infer_times, self.peak_mib = [], [], [], float('nan')

    def release(self):
        """Drop the model and optimizer (--sequential), keeping the measurements."""
        self.model = self.backbone = self.optimizer = None
        gc.collect()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def training_forward(self):
        """The forward of a train step, in train mode: the backbone's outputs or the model's losses."""
        self.model.train()
        if self.args.backbone_only:
            return self.model(self.inputs)
        return self.model(self.inputs, self.samples, mode='loss')

    def train_step(self):
        if self.args.backbone_only:
            with self._autocast():
                loss = sum(out.float().mean() for out in self.training_forward())
            loss.backward()
            for p in self.model.parameters():
                p.grad = None
            return
        with self._autocast():
            losses = self.training_forward()
        loss, _ = self.model.parse_losses(losses)
        if not torch.isfinite(loss):
            raise RuntimeError(f'{self.label}: non-finite loss {loss.item()}')
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def infer_step(self):
        self.model.eval()
        with torch.no_grad(), self._autocast():
            if self.args.backbone_only:
                self.model(self.inputs)
            else:
                self.model(self.inputs, self.samples, mode='predict')

    def timed(self, fn):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu_start


def interleave(variants, rounds, warmup, step_name, record):
    for round_index in range(rounds):
        for variant in variants:
            wall, cpu = variant.timed(getattr(variant, step_name))
            if round_index >= warmup:
                record(variant, wall, cpu)


def median_ms(values):
    return 1e3 * statistics.median(values) if values else float('nan')


def fmt(value, digits=1):
    return 'n/a' if value is None or math.isnan(value) else f'{value:.{digits}f}'


def print_table(headers, rows):
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    print('\n| ' + ' | '.join(h.ljust(w) for h, w in zip(headers, widths)) + ' |')
    print('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    for row in rows:
        print('| ' + ' | '.join(str(x).ljust(w) for x, w in zip(row, widths)) + ' |')


def report(variants, args, memory_method):
    on_cpu = args.device == 'cpu'
    what = 'fwd+bwd' if args.backbone_only else 'train step'
    headers = ['variant', 'params (M)', f'{what} ms/iter', 'img/s', 'peak MiB (step)', 'infer ms/img']
    if on_cpu:
        headers.append(f'{what} CPU-time ms/iter')
    rows, results = [], {}
    for r in variants:
        train = median_ms(r.train_times)
        infer = median_ms(r.infer_times) / args.batch_size
        result = dict(train=train, infer=infer, mem=r.peak_mib, cpu=median_ms(r.train_cpu))
        results[r.key] = result
        row = [r.label, fmt(r.params_m), fmt(train), fmt(1e3 * args.batch_size / train, 2), fmt(r.peak_mib),
               fmt(infer)]
        if on_cpu:
            row.append(fmt(result['cpu']))
        rows.append(row)
    if args.inference_only:  # only the columns that were measured
        keep = (0, 1, 5)
        headers = [headers[i] for i in keep]
        rows = [[row[i] for i in keep] for row in rows]
    print_table(headers, rows)
    ours = results.get('ours')
    for key, name in (('timm', 'timm wrapper'), ('convnext', 'ConvNeXt')):
        other = results.get(key)
        if ours is None or other is None:
            continue
        parts = [] if args.inference_only else [f'{what} {ours["train"] / other["train"]:.3f}',
                                                f'peak memory {ours["mem"] / other["mem"]:.3f}']
        parts.append(f'inference {ours["infer"] / other["infer"]:.3f}')
        if on_cpu and not args.inference_only:
            parts.append(f'CPU time {ours["cpu"] / other["cpu"]:.3f}')
        print(f'ratio ours / {name}: ' + ', '.join(parts) + '  (< 1: ours is faster / smaller)')
    if memory_method and not args.inference_only:
        print(f'peak memory: {memory_method}')
    return results


def main(argv=None):
    args, parser = parse_args(argv)
    try:
        return run(args)
    except ValueError as err:  # what the arguments asked for cannot be done with this config
        parser.exit(2, f'{PROG}: error: {err}\n')


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options)
    scope = cfg.default_scope
    if cfg.model.get('backbone') is None:
        raise ValueError(f'{args.config}: no model.backbone in the config')
    if args.device == 'cpu' and scope == 'mmdet' and not args.backbone_only and (args.amp or args.saved_activations):
        # found before building anything: otherwise a RuntimeError from deep inside mmcv's extension
        raise ValueError(f'{"--amp" if args.amp else "--saved-activations"} of a whole detector on CPU runs it under '
                         "bfloat16 autocast, and mmcv 2.1.0's CPU NMS (in the RPN) has no bfloat16 kernel: add "
                         '--backbone-only, drop --amp, or use --device cuda')
    models_registry(scope).register_module(name=TIMM_VARIANT, module=TimmFeatures, force=True)

    shape = tuple(args.shape) if args.shape else default_shape(cfg, scope)
    num_classes = num_classes_of(cfg)
    memory = PeakMemory(args.device)
    device_name = torch.cuda.get_device_name() if args.device == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    mode = 'backbone only (forward + backward)' if args.backbone_only else 'full model (train step + predict)'
    print(f'config: {args.config} ({scope}), {mode}')
    timing = ('' if args.saved_activations else
              f', {"AMP " + ("fp16" if args.device == "cuda" else "bf16") if args.amp else "fp32"}, '
              f'warm-up {args.warmup}, iters {args.iters}{", torch.compile" if args.compile else ""}')
    print(f'torch {torch.__version__}, device: {device_name}, input {args.batch_size}x3x{shape[0]}x{shape[1]}{timing}')
    if args.compile:
        print('torch.compile: our Gated CNN blocks run ' + (
            'the memory-lean kernel (as torch.library operators)' if gated_cnn_kernel.CUSTOM_OPS else
            'the plain modules (no torch.library.custom_op before torch 2.4)'))

    def make_variant(key, label, backbone_cfg):
        torch.manual_seed(0)
        model = build_variant(cfg, backbone_cfg, args.backbone_only).to(args.device)
        if args.compile:
            if args.backbone_only:
                model = torch.compile(model)
            else:
                model.backbone = torch.compile(model.backbone)
        variant = Variant(key, label, model, args, scope, shape, num_classes)
        print(f'built {label}: backbone {variant.params_m:.1f} M parameters', flush=True)
        return variant

    if args.saved_activations:
        return report_saved_activations(args, make_variant, variant_backbones(cfg.model.backbone, args.compare))
    if args.sequential:
        variants = []
        for backbone in variant_backbones(cfg.model.backbone, args.compare):
            variant = make_variant(*backbone)
            measure([variant], args, memory)
            variant.release()
            variants.append(variant)
    else:
        variants = [make_variant(*backbone) for backbone in variant_backbones(cfg.model.backbone, args.compare)]
        measure(variants, args, memory)
    return report(variants, args, memory.method)


def report_saved_activations(args, make_variant, backbones):
    """Build the variants of ``backbones`` one at a time with ``make_variant``, count what one training
    forward of each saves for backward, print the table and the ratios; ``{key: {'saved_mib': ...}}``."""
    dtype = 'fp16' if args.device == 'cuda' else "bf16 with CUDA's fp32 rule for norms and softmax"
    what = 'backbone' if args.backbone_only else 'model (loss)'
    print(f'counting the bytes saved for backward in one training forward of the {what}, autocast {dtype}, '
          'parameters excluded...', flush=True)
    results, rows = {}, []
    for backbone in backbones:
        variant = make_variant(*backbone)
        saved_mib = saved_activation_bytes(variant.training_forward, variant.model, args.device) / 2**20
        variant.release()
        results[variant.key] = dict(saved_mib=saved_mib)
        rows.append((variant.label, fmt(variant.params_m), fmt(saved_mib)))
    print_table(('variant', 'params (M)', 'saved for backward (MiB)'), rows)
    for key, name in (('timm', 'timm wrapper'), ('convnext', 'ConvNeXt')):
        if key in results:
            ratio = results['ours']['saved_mib'] / results[key]['saved_mib']
            print(f'ratio ours / {name}: saved activations {ratio:.3f}  (< 1: ours keeps less)')
    return results


def measure(variants, args, memory):
    """Train and inference times (interleaved over ``variants``), then one train step each for memory."""
    rounds = args.warmup + args.iters
    how = 'interleaved' if len(variants) > 1 else variants[0].label

    def record_train(variant, wall, cpu):
        variant.train_times.append(wall)
        variant.train_cpu.append(cpu)

    def record_infer(variant, wall, cpu):
        variant.infer_times.append(wall)

    if not args.inference_only:
        print(f'timing train ({rounds} rounds, {how})...', flush=True)
        try:
            interleave(variants, rounds, args.warmup, 'train_step', record_train)
        except ValueError as exc:
            if 'more than 1 value per channel' not in str(exc):
                raise
            raise ValueError(f'a BatchNorm in the model (e.g. UperNet\'s pooling module) cannot train on one value '
                             f'per channel: use --batch-size 2 or more ({exc})') from None
    print(f'timing inference ({rounds} rounds, {how})...', flush=True)
    interleave(variants, rounds, args.warmup, 'infer_step', record_infer)
    if args.inference_only:
        return
    print('measuring peak memory (one more train step each)...', flush=True)
    for variant in variants:
        variant.peak_mib = memory.measure(variant.train_step)


if __name__ == '__main__':
    main()
