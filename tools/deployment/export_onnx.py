"""Export a MambaOut segmentor, detector or backbone to ONNX and check the file against PyTorch with ONNX Runtime.

    python tools/deployment/export_onnx.py CONFIG [--checkpoint CKPT] --out FILE [--shape H W] [--backbone-only]
                                           [--exporter dynamo|torchscript] [--opset N] [--atol 1e-4] [--runs N]

What is exported: for an mmseg config the segmentor end to end, its class
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

The exported graph starts after the data preprocessor, as mmdeploy's do: its input ``input`` is the
normalized image ``(N, 3, H, W)`` (mean/std applied, RGB order, padded as the preprocessor pads), with
batch, height and width dynamic. MambaOut itself is convolutions, linears, LayerNorm and GELU/SiLU: the
memory-lean kernel of the Gated CNN block (``backbones/gated_cnn_kernel.py``) steps aside while tracing
(``torch.jit.is_tracing`` for the TorchScript exporter, ``torch.compiler.is_compiling`` under
``torch.export``), so both of torch's exporters record the plain modules.

One module needs replacing: UperNet's pyramid pooling uses ``nn.AdaptiveAvgPool2d`` with 2, 3 and 6 bins,
which has no ONNX operator. torch's TorchScript exporter refuses it when the input size is dynamic
("input size not accessible"), and the dynamo exporter bakes the bin boundaries of the example input
into the graph (a file that fails or is wrong at any other size). :class:`AdaptiveAvgPool2dAsMatmul`
computes the same average as two matrix products whose averaging matrices are built from the input's
size inside the graph; :func:`export_onnx` swaps it in on a copy of the model, so the PyTorch model that
the export is checked against is the one as built.
"""
import argparse
import copy
import os
import os.path as osp
import pickle
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import DictAction
from mmengine.runner import load_checkpoint
from torch import nn

from mambaout_tools.launch import RUNNER_STATE_GLOBALS
from mambaout_tools.models import build_model, load_config, synthetic_batch

INPUT_NAME = 'input'
EXPORTERS = ('dynamo', 'torchscript')
# LayerNormalization is an ONNX operator from opset 17 on; 20 is the newest the TorchScript exporter writes.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 17, 20, 18
# One protobuf file holds at most 2 GiB; larger models keep their weights in FILE.data beside it.
PROTOBUF_LIMIT_BYTES = 2 ** 31 - 2 ** 26


def _averaging_matrix(size, bins: int, dtype: torch.dtype) -> torch.Tensor:
    """``(bins, size)``: row i averages the positions ``[floor(i * size / bins), ceil((i + 1) * size / bins))``,
    adaptive average pooling's bins. ``size`` may be a traced value: the matrix is built in the graph."""
    index = torch.arange(bins)
    start = torch.div(index * size, bins, rounding_mode='floor')
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode='floor')
    positions = torch.arange(size)
    inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
    return inside.to(dtype) / (end - start)[:, None].to(dtype)


class AdaptiveAvgPool2dAsMatmul(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as ``A_h @ x @ A_w^T`` with averaging matrices built from x's
    size: the same numbers (up to float rounding), exportable to ONNX with dynamic height and width."""

    def __init__(self, output_size: Tuple[int, int]):
        super().__init__()
        self.output_size = tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _averaging_matrix(x.shape[-2], self.output_size[0], x.dtype)
        cols = _averaging_matrix(x.shape[-1], self.output_size[1], x.dtype)
        return rows @ x @ cols.t()


def replace_adaptive_avg_pools(module: nn.Module) -> int:
    """Replace, in place, every ``nn.AdaptiveAvgPool2d`` in ``module`` whose output is larger than 1x1 (ONNX's
    GlobalAveragePool covers 1x1) by :class:`AdaptiveAvgPool2dAsMatmul`; returns how many were replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.AdaptiveAvgPool2d):
                continue
            size = child.output_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            if None in size or size == (1, 1):
                continue
            setattr(parent, name, AdaptiveAvgPool2dAsMatmul(size))
            replaced += 1
    return replaced


class SegmentorLogits(nn.Module):
    """An mmseg ``EncoderDecoder``'s class logits at the input's resolution: backbone, neck, decode head and
    the bilinear resize that mmseg's ``predict`` applies (``decode_head.predict_by_feat``). The auxiliary
    head does not run at inference and is left out."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        head = self.segmentor.decode_head
        logits = head(self.segmentor.extract_feat(inputs))
        return F.interpolate(logits, size=inputs.shape[2:], mode='bilinear', align_corners=head.align_corners)


class FeatureMaps(nn.Module):
    """The feature maps of an mmdet/mmseg model as a tuple: its backbone's stage outputs (``backbone_only``) or
    its ``extract_feat`` (a detector's backbone + neck)."""

    def __init__(self, model: nn.Module, backbone_only: bool = False):
        super().__init__()
        self.model = model
        self.backbone_only = backbone_only

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.model.backbone(inputs) if self.backbone_only else self.model.extract_feat(inputs))


def exportable_part(model: nn.Module, scope: str, example: torch.Tensor,
                    backbone_only: bool = False) -> Tuple[nn.Module, List[str], str]:
    """What gets exported from an mmdet/mmseg ``model``: ``(module, output names, description)``; the names
    count the outputs of one run on ``example``.

    Segmentors: the logits at input resolution (:class:`SegmentorLogits`). Detectors: backbone + neck (mmdeploy
    1.3.1, which exports whole detectors with their post-processing, does not work with torch 2.14: see the
    README's deployment section). ``backbone_only``: the backbone's stage outputs.
    """
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f'scope must be mmdet or mmseg, got {scope!r}')
    with_neck = getattr(model, 'with_neck', False)
    if scope == 'mmseg' and not backbone_only:
        module = SegmentorLogits(model).eval()
        return module, ['logits'], (f'{type(model).__name__} with {type(model.decode_head).__name__}: class logits '
                                    'at input resolution')
    backbone_only = backbone_only or not with_neck
    module = FeatureMaps(model, backbone_only=backbone_only).eval()
    count = len(run_pytorch(module, example))
    if backbone_only:
        indices = getattr(model.backbone, 'out_indices', range(count))
        indices = indices if len(indices) == count else range(count)
        return module, [f'stage{i}' for i in indices], f'backbone {type(model.backbone).__name__} ({count} stages)'
    return (module, [f'neck{i}' for i in range(count)],
            f'{type(model).__name__}: backbone + {type(model.neck).__name__} ({count} feature maps)')


def normalized_inputs(model: nn.Module, scope: str, shape: Tuple[int, int], batch_size: int = 1) -> torch.Tensor:
    """A batch of random images of ``shape`` as the exported graph takes them: through the model's data
    preprocessor (mean/std, RGB, padding). Seeded."""
    batch = synthetic_batch(scope, [shape] * batch_size)
    return model.data_preprocessor(batch, False)['inputs']


def export_onnx(module: nn.Module, example: torch.Tensor, path: str, output_names: Sequence[str],
                exporter: str = 'dynamo', opset: int = DEFAULT_OPSET) -> None:
    """Write ``module`` (in eval mode) to the ONNX file ``path`` with one input, :data:`INPUT_NAME`, of dynamic
    batch, height and width, traced on ``example``. ``module`` itself is not changed (a copy with its adaptive
    pools replaced, :func:`replace_adaptive_avg_pools`, is exported)."""
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    exportable = copy.deepcopy(module).eval()
    replace_adaptive_avg_pools(exportable)
    weight_bytes = sum(p.numel() * p.element_size() for p in exportable.parameters())
    options = dict(input_names=[INPUT_NAME], output_names=list(output_names), opset_version=opset,
                   external_data=weight_bytes > PROTOBUF_LIMIT_BYTES)
    with torch.no_grad():
        if exporter == 'dynamo':
            dynamic = torch.export.Dim.DYNAMIC
            torch.onnx.export(exportable, (example, ), path, dynamo=True, verbose=False,
                              dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic}, ), **options)
        else:
            axes = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}}
            axes.update({name: {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} for name in output_names})
            torch.onnx.export(exportable, (example, ), path, dynamo=False, dynamic_axes=axes, **options)


def file_opset(path: str) -> int:
    """The default-domain opset that the ONNX file ``path`` declares (what a runtime must support)."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx'))


def onnxruntime_session(path: str):
    """An ONNX Runtime CPU session on the file ``path``."""
    import onnxruntime
    return onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])


def run_onnxruntime(session, inputs: torch.Tensor) -> List[np.ndarray]:
    return session.run(None, {INPUT_NAME: inputs.numpy()})


def run_pytorch(module: nn.Module, inputs: torch.Tensor) -> List[torch.Tensor]:
    with torch.no_grad():
        outputs = module(inputs)
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def max_abs_differences(module: nn.Module, session, inputs: torch.Tensor,
                        output_names: Sequence[str]) -> Dict[str, float]:
    """The largest absolute difference between ONNX Runtime's and PyTorch's outputs on ``inputs``, per output.

    Raises:
        RuntimeError: ONNX Runtime fails on ``inputs`` (e.g. a graph that kept a size of the example input).
        ValueError: an output of another shape (or count) than PyTorch's.
    """
    expected = run_pytorch(module, inputs)
    try:
        got = run_onnxruntime(session, inputs)
    except Exception as err:  # onnxruntime's errors share no base class but Exception
        raise RuntimeError(f'ONNX Runtime fails on an input of shape {tuple(inputs.shape)}: '
                           f'{" ".join(str(err).split())[:300]}') from err
    if len(got) != len(expected):
        raise ValueError(f'ONNX Runtime gave {len(got)} outputs, PyTorch {len(expected)}')
    differences = {}
    for name, ours, reference in zip(output_names, got, expected):
        if tuple(ours.shape) != tuple(reference.shape):
            raise ValueError(f'output {name}: ONNX Runtime shape {tuple(ours.shape)} != PyTorch shape '
                             f'{tuple(reference.shape)} for input {tuple(inputs.shape)}')
        differences[name] = float(np.abs(ours - reference.numpy()).max())
    return differences


def median_ms(run: Callable[[], object], runs: int = 5, warmup: int = 1) -> float:
    """The median wall time of ``run()`` in milliseconds, over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


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
    parser.add_argument('--exporter', choices=EXPORTERS, default='dynamo',
                        help='torch.onnx.export(dynamo=True) (torch.export, the default) or the TorchScript tracer '
                             '(dynamo=False; faster to export, deprecated by torch)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        choices=range(MIN_OPSET, MAX_OPSET + 1), metavar='N',
                        help=f'ONNX opset, {MIN_OPSET} (LayerNormalization) to {MAX_OPSET} '
                             f'(default {DEFAULT_OPSET})')
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
    example = normalized_inputs(model, scope, args.shape)
    module, names, description = exportable_part(model, scope, example, args.backbone_only)

    if osp.dirname(args.out):
        os.makedirs(osp.dirname(args.out), exist_ok=True)
    export_onnx(module, example, args.out, names, exporter=args.exporter, opset=args.opset)
    session = onnxruntime_session(args.out)

    checks = [(example, args.shape),
              (normalized_inputs(model, scope, args.second_shape, batch_size=2), args.second_shape)]
    differences = {}
    print('=' * 72)
    print(f'exported     {args.out} ({osp.getsize(args.out) / 2 ** 20:.1f} MiB), opset '
          f'{file_opset(args.out)}, '
          f'exporter {args.exporter} (torch {torch.__version__})')
    print(f'model        {description}')
    print(f'input        {INPUT_NAME}: (N, 3, H, W) float32, the image after the data preprocessor '
          f'(mean/std, RGB); N, H, W dynamic')
    print(f'outputs      {", ".join(names)}')
    for inputs, shape in checks:
        try:
            found = max_abs_differences(module, session, inputs, names)
        except (RuntimeError, ValueError) as err:
            raise SystemExit(f'error: {err}') from None
        differences.update({(name, shape, len(inputs)): value for name, value in found.items()})
        listed = ', '.join(f'{name} {value:.2e}' for name, value in found.items())
        print(f'max abs diff {len(inputs)}x3x{shape[0]}x{shape[1]}: {listed}')
    torch_ms = median_ms(lambda: run_pytorch(module, example), runs=args.runs)
    ort_ms = median_ms(lambda: run_onnxruntime(session, example), runs=args.runs)
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
