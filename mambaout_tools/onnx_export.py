"""ONNX export of a MambaOut segmentor (logits at input resolution), detector (backbone + neck) or backbone,
and its check against ONNX Runtime: what ``tools/export_onnx.py`` and the tests share.

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
import copy
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mambaout_tools.models import synthetic_batch

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
