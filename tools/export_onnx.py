"""Export a MambaOut segmentor, detector or backbone to ONNX and check the file against PyTorch with ONNX Runtime.

    python tools/export_onnx.py CONFIG [--checkpoint CKPT] --out FILE [--shape H W] [--backbone-only]
                                [--exporter dynamo|torchscript] [--opset N] [--atol 1e-4] [--runs N]

What is exported (``mambaout_tools/onnx_export.py``): for an mmseg config the segmentor end to end, its class
logits at the input's resolution (``logits``, ``(N, classes, H, W)``: backbone, neck, decode head and the
bilinear resize of mmseg's inference); for an mmdet config the backbone + neck (``neck0``...: the FPN feature
maps), since mmdeploy 1.3.1, which would export the detector with its RoI heads and post-processing, does not
run with torch 2.14 (README, "Deployment: ONNX"); with ``--backbone-only`` the backbone's stage outputs
(``stage0``...). The input ``input`` is the image after the config's data preprocessor (mean/std, RGB, padding),
as with mmdeploy; batch, height and width are dynamic.

The check: ONNX Runtime (CPU) and PyTorch run the same random image of ``--shape`` (default 512x512), batch 1,
and then a batch of two images of another size with the same file; the tool prints the largest absolute
difference of each output, and the median time per image of each (``--runs`` runs after one warm-up). It exits
1 when a difference exceeds ``--atol`` (1e-4, for fp32), 2 on a bad argument. Random weights unless
``--checkpoint`` (a checkpoint of this config's model, as training writes them).

Why ours: mmdet 3 and mmseg 1 ship no ONNX export (it moved to mmdeploy, whose 1.3.1 release does not run
with torch 2.14), and neither checks a file against ONNX Runtime at a second size.
"""
import argparse
import os
import os.path as osp
import pickle
import sys

import torch
from mmengine.config import DictAction
from mmengine.runner import load_checkpoint

from mambaout_tools import onnx_export
from mambaout_tools.launch import RUNNER_STATE_GLOBALS
from mambaout_tools.models import build_model, load_config

PROG = 'export_onnx.py'
DEFAULT_SHAPE = (512, 512)
MIN_SIDE = 32  # the backbone's total stride: every stage output at least 1x1
DEFAULT_ATOL = 1e-4


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f'must be a number >= 0, got {text}')
    return value


def parse_args(argv=None):
    """Arguments, and the loaded config as ``args.cfg``; every bad one is an argparse error (exit 2)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='an mmdet or mmseg config, e.g. configs/upernet_mambaout_t_160k_ade20k_512.py')
    parser.add_argument('--checkpoint', help='weights of the config\'s model (default: random weights)')
    parser.add_argument('--out', required=True, help='the ONNX file to write, e.g. work_dirs/upernet.onnx')
    parser.add_argument('--shape', nargs=2, type=_positive_int, metavar=('H', 'W'), default=DEFAULT_SHAPE,
                        help=f'input height and width of the check, each >= {MIN_SIDE} and a multiple of the data '
                             'preprocessor\'s padding divisor (32 for mmdet); the file takes any size '
                             f'(default: {DEFAULT_SHAPE[0]} {DEFAULT_SHAPE[1]})')
    parser.add_argument('--backbone-only', action='store_true', help='export the backbone alone')
    parser.add_argument('--exporter', choices=onnx_export.EXPORTERS, default='dynamo',
                        help='torch.onnx.export(dynamo=True) (torch.export, the default) or the TorchScript tracer '
                             '(dynamo=False; faster to export, deprecated by torch)')
    parser.add_argument('--opset', type=int, default=onnx_export.DEFAULT_OPSET,
                        choices=range(onnx_export.MIN_OPSET, onnx_export.MAX_OPSET + 1), metavar='N',
                        help=f'ONNX opset, {onnx_export.MIN_OPSET} (LayerNormalization) to {onnx_export.MAX_OPSET} '
                             f'(default {onnx_export.DEFAULT_OPSET})')
    parser.add_argument('--atol', type=_non_negative_float, default=DEFAULT_ATOL,
                        help=f'largest absolute difference to PyTorch accepted (default {DEFAULT_ATOL:g})')
    parser.add_argument('--runs', type=_positive_int, default=5, help='timed runs of each (default 5)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.arch=small')
    args = parser.parse_args(argv)
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        parser.error(f'--checkpoint: file not found: {args.checkpoint}')
    if osp.isdir(args.out):
        parser.error(f'--out names a folder: {args.out} (give a file name, e.g. {osp.join(args.out, "model.onnx")})')
    try:
        args.cfg = load_config(args.config, args.cfg_options)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    preprocessor = args.cfg.model.get('data_preprocessor') or {}
    divisor = preprocessor.get('pad_size_divisor') or preprocessor.get('size_divisor') or 1
    args.shape = tuple(args.shape)
    if min(args.shape) < MIN_SIDE or any(side % divisor for side in args.shape):
        needs = f'each >= {MIN_SIDE}' + (f' and a multiple of {divisor} (the data preprocessor pads to it)'
                                         if divisor > 1 else '')
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: height and width must be {needs}')
    # A second size for the check, that the data preprocessor would not pad: the graph must not have
    # kept the first one.
    step = divisor * -(-MIN_SIDE // divisor)
    args.second_shape = (args.shape[0] + step, args.shape[1] + 2 * step)
    return args


def load_weights(model, checkpoint):
    """``checkpoint``'s weights into ``model`` (strict: a key missing or left over is an error); checkpoints
    written before training checkpoints became weights-only loadable load as in tools/test.py."""
    try:
        with torch.serialization.safe_globals(RUNNER_STATE_GLOBALS):
            load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
    except pickle.UnpicklingError as err:
        raise SystemExit(f'error: torch.load(weights_only=True) refuses {checkpoint}: '
                         f'{str(err).splitlines()[0]}') from None
    except RuntimeError as err:  # mmengine lists the keys that do not match
        raise SystemExit(f'error: {checkpoint} does not fit the config\'s model: '
                         f'{" ".join(str(err).split())[:400]}') from None


def main(argv=None):
    args = parse_args(argv)
    cfg, scope = args.cfg, args.cfg.default_scope
    model = build_model(cfg).eval()
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    example = onnx_export.normalized_inputs(model, scope, args.shape)
    module, names, description = onnx_export.exportable_part(model, scope, example, args.backbone_only)

    if osp.dirname(args.out):
        os.makedirs(osp.dirname(args.out), exist_ok=True)
    onnx_export.export_onnx(module, example, args.out, names, exporter=args.exporter, opset=args.opset)
    session = onnx_export.onnxruntime_session(args.out)

    checks = [(example, args.shape),
              (onnx_export.normalized_inputs(model, scope, args.second_shape, batch_size=2), args.second_shape)]
    differences = {}
    print('=' * 72)
    print(f'exported     {args.out} ({osp.getsize(args.out) / 2 ** 20:.1f} MiB), opset '
          f'{onnx_export.file_opset(args.out)}, '
          f'exporter {args.exporter} (torch {torch.__version__})')
    print(f'model        {description}')
    print(f'input        {onnx_export.INPUT_NAME}: (N, 3, H, W) float32, the image after the data preprocessor '
          f'(mean/std, RGB); N, H, W dynamic')
    print(f'outputs      {", ".join(names)}')
    for inputs, shape in checks:
        try:
            found = onnx_export.max_abs_differences(module, session, inputs, names)
        except (RuntimeError, ValueError) as err:
            raise SystemExit(f'error: {err}') from None
        differences.update({(name, shape, len(inputs)): value for name, value in found.items()})
        listed = ', '.join(f'{name} {value:.2e}' for name, value in found.items())
        print(f'max abs diff {len(inputs)}x3x{shape[0]}x{shape[1]}: {listed}')
    torch_ms = onnx_export.median_ms(lambda: onnx_export.run_pytorch(module, example), runs=args.runs)
    ort_ms = onnx_export.median_ms(lambda: onnx_export.run_onnxruntime(session, example), runs=args.runs)
    print(f'PyTorch      {torch_ms:.1f} ms/img   ONNX Runtime {ort_ms:.1f} ms/img   (1x3x{args.shape[0]}x'
          f'{args.shape[1]}, median of {args.runs} after 1 warm-up, CPU, {torch.get_num_threads()} torch threads)')
    (worst_name, worst_shape, worst_batch), worst = max(differences.items(), key=lambda item: item[1])
    print('=' * 72)
    sys.stdout.flush()
    if worst > args.atol:
        raise SystemExit(f'error: ONNX Runtime differs from PyTorch by {worst:.2e} > --atol {args.atol:g} '
                         f'(output {worst_name}, input {worst_batch}x3x{worst_shape[0]}x{worst_shape[1]})')
    print(f'ok           max abs diff {worst:.2e} <= --atol {args.atol:g}')
    return dict(differences=differences, torch_ms=torch_ms, ort_ms=ort_ms, output_names=names)


if __name__ == '__main__':
    main()
