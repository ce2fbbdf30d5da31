"""Export a MambaOut segmentor, detector or backbone to ONNX and check the file against PyTorch with ONNX Runtime.

    python tools/deployment/export_onnx.py CONFIG [--checkpoint CKPT] --out FILE [--shape H W]
                                           [--backbone-only | --neck-only] [--test-set]
                                           [--exporter dynamo|torchscript] [--opset N] [--atol 1e-4] [--runs N]

What is exported: for an mmseg config the segmentor end to end, its class
logits at the input's resolution (``logits``, ``(N, classes, H, W)``: backbone, neck, decode head and the
bilinear resize of mmseg's inference); for an mmdet Mask R-CNN config the detector end to end (``boxes``,
``scores``, ``labels``, ``masks``: backbone, FPN, RPN with its NMS, RoI heads with class-wise NMS and the mask
head, in standard ONNX operators, see :class:`TwoStageDetectorEndToEnd`; batch 1), since mmdeploy 1.3.1, which
exports detectors with mmcv's custom operators, does not run with torch 2.14 (docs/deployment.md);
with ``--neck-only`` a detector's backbone + neck (``neck0``...: the FPN feature maps); with ``--backbone-only``
the backbone's stage outputs (``stage0``...). The input ``input`` is the image after the config's data
preprocessor (mean/std, RGB, padding), as with mmdeploy; batch (1 for a whole detector), height and width are
dynamic.

The check of a whole detector: mmdet's own ``predict`` and the file on a random image of ``--shape`` and one of
another size (detections count, smallest IoU of each box with mmdet's, largest score difference, pasted mask
pixels that agree); with ``--test-set`` also the config's test set through mmdet's ``test_step`` and through the
file (boxes rescaled and masks pasted as mmdet does, :func:`onnx_instances`), and both bbox/segm mAP of the
config's evaluator. It exits 1 when counts differ, an IoU is below 0.99, a score differs by more than
``--atol``, masks agree on less than 99% of the pixels, or an mAP is more than 0.01 from mmdet's.

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
import contextlib
import copy
import importlib
import inspect
import io
import os
import os.path as osp
import pickle
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import DictAction
from mmengine.runner import load_checkpoint
from torch import nn

from mambaout_tools.models import build_model, load_config, synthetic_batch
from mambaout_tools.weights_only import load_checkpoints_weights_only, refused_checkpoint_error

INPUT_NAME = 'input'
EXPORTERS = ('dynamo', 'torchscript')
_EXPORT_PARAMETERS = inspect.signature(torch.onnx.export).parameters
# torch.onnx.export(dynamo=True) with torch.export.Dim.DYNAMIC: torch >= 2.6; older torch has the TorchScript
# exporter only (its torch.onnx.dynamo_export is an experimental API of another form).
HAS_DYNAMO_EXPORTER = 'dynamo' in _EXPORT_PARAMETERS and hasattr(getattr(torch, 'export', None), 'Dim') \
    and hasattr(torch.export.Dim, 'DYNAMIC')
DEFAULT_EXPORTER = 'dynamo' if HAS_DYNAMO_EXPORTER else 'torchscript'
NO_DYNAMO_EXPORTER = (f'torch {torch.__version__} has no dynamo ONNX exporter '
                      '(torch.onnx.export(dynamo=True), torch >= 2.6)')
# LayerNormalization is an ONNX operator from opset 17 on; 20 is the newest torch 2.14's TorchScript exporter
# writes, and where it is the only exporter (torch < 2.6) its own maximum (17 on torch 2.1) bounds the choice.
_TORCHSCRIPT_MAX_OPSET = getattr(getattr(torch.onnx, '_constants', None), 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', 17)
MIN_OPSET = 17
MAX_OPSET = 20 if HAS_DYNAMO_EXPORTER else max(MIN_OPSET, min(20, _TORCHSCRIPT_MAX_OPSET))
DEFAULT_OPSET = min(18, MAX_OPSET)
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

    Segmentors: the logits at input resolution (:class:`SegmentorLogits`). Detectors: backbone + neck (what
    ``--neck-only`` exports; the whole detector is :class:`TwoStageDetectorEndToEnd`). ``backbone_only``: the
    backbone's stage outputs.
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
                exporter: str = DEFAULT_EXPORTER, opset: int = DEFAULT_OPSET,
                dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None) -> None:
    """Write ``module`` (in eval mode) to the ONNX file ``path`` with one input, :data:`INPUT_NAME`, of dynamic
    batch, height and width, traced on ``example``. ``module`` itself is not changed (a copy with its adaptive
    pools replaced, :func:`replace_adaptive_avg_pools`, is exported). ``dynamic_axes``: which axes of the input
    and outputs are dynamic, ``{name: {axis: label}}`` (default: axes 0, 2 and 3 of each); the dynamo exporter
    reads the input's and finds the outputs' itself.

    Raises:
        ValueError: an unknown ``exporter``, or ``'dynamo'`` on a torch without it (:data:`HAS_DYNAMO_EXPORTER`).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    if exporter == 'dynamo' and not HAS_DYNAMO_EXPORTER:
        raise ValueError(f"{NO_DYNAMO_EXPORTER}: use exporter='torchscript' or torch >= 2.6")
    exportable = copy.deepcopy(module).eval()
    replace_adaptive_avg_pools(exportable)
    weight_bytes = sum(p.numel() * p.element_size() for p in exportable.parameters())
    options = dict(input_names=[INPUT_NAME], output_names=list(output_names), opset_version=opset)
    if 'external_data' in _EXPORT_PARAMETERS:  # older torch picks the external data format by size itself
        options['external_data'] = weight_bytes > PROTOBUF_LIMIT_BYTES
    if 'dynamo' in _EXPORT_PARAMETERS:
        options['dynamo'] = exporter == 'dynamo'
    if dynamic_axes is None:
        dynamic_axes = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}}
        dynamic_axes.update({name: {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} for name in output_names})
    with torch.no_grad():
        if exporter == 'dynamo':
            dynamic = torch.export.Dim.DYNAMIC
            torch.onnx.export(exportable, (example, ), path, verbose=False,
                              dynamic_shapes=({axis: dynamic for axis in dynamic_axes[INPUT_NAME]}, ), **options)
        else:
            torch.onnx.export(exportable, (example, ), path, dynamic_axes=dynamic_axes, **options)


def check_onnx_packages(exporter: str) -> None:
    """Exit with one line that names the packages the export and its check need and are not installed (onnx
    reads the file, onnxruntime runs it, onnxscript is what the dynamo exporter translates with), and the
    ``pip install`` that adds them; before anything is built."""
    needed = ('onnx', 'onnxruntime') + (('onnxscript', ) if exporter == 'dynamo' else ())
    missing = []
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        avoid = ' (or --exporter torchscript, which does not use onnxscript)' if missing == ['onnxscript'] else ''
        raise SystemExit(f'error: {", ".join(missing)} not installed: pip install {" ".join(missing)}{avoid}; '
                         'tested versions in requirements.txt')


def file_opset(path: str) -> int:
    """The default-domain opset that the ONNX file ``path`` declares (what a runtime must support)."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx'))


def onnxruntime_session(path: str):
    """An ``onnxruntime.InferenceSession`` on the CPU for the file ``path``."""
    import onnxruntime
    return onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])


def run_onnxruntime(ort_session, inputs: torch.Tensor) -> List[np.ndarray]:
    return ort_session.run(None, {INPUT_NAME: inputs.numpy()})


def run_pytorch(module: nn.Module, inputs: torch.Tensor) -> List[torch.Tensor]:
    with torch.no_grad():
        outputs = module(inputs)
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def max_abs_differences(module: nn.Module, ort_session, inputs: torch.Tensor,
                        output_names: Sequence[str]) -> Dict[str, float]:
    """The largest absolute difference between ONNX Runtime's and PyTorch's outputs on ``inputs``, per output.

    Raises:
        RuntimeError: ONNX Runtime fails on ``inputs`` (e.g. a graph that kept a size of the example input).
        ValueError: an output of another shape (or count) than PyTorch's.
    """
    expected = run_pytorch(module, inputs)
    try:
        got = run_onnxruntime(ort_session, inputs)
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


# ---------------------------------------------------------------------------------------------------------------
# Whole two-stage detectors (Mask R-CNN): mmdet 3.3's test-time path in ops that trace to standard ONNX operators.
# ---------------------------------------------------------------------------------------------------------------
DETECTOR_OUTPUTS = ('boxes', 'scores', 'labels', 'masks')


def _decode_deltas(priors: torch.Tensor, deltas: torch.Tensor, coder: nn.Module,
                   image_hw: torch.Tensor) -> torch.Tensor:
    """mmdet's ``DeltaXYWHBBoxCoder.decode`` (``delta2bbox``) of ``deltas`` ``(N, 4)`` on ``priors`` ``(N, 4)``:
    the coder's means/stds, dw/dh clamped to ``|log(wh_ratio_clip)|``, boxes clipped to ``image_hw`` (a
    tensor ``(h, w)`` read from the input's shape in the graph) when the coder clips."""
    if getattr(coder, 'add_ctr_clamp', False):
        raise ValueError('export_onnx: DeltaXYWHBBoxCoder(add_ctr_clamp=True) is not supported; '
                         'export with --neck-only')
    deltas = deltas * deltas.new_tensor(coder.stds) + deltas.new_tensor(coder.means)
    # the default of decode()'s wh_ratio_clip, which mmdet's heads never pass
    max_ratio = float(np.abs(np.log(inspect.signature(coder.decode).parameters['wh_ratio_clip'].default)))
    prior_xy = (priors[:, :2] + priors[:, 2:]) * 0.5
    prior_wh = priors[:, 2:] - priors[:, :2]
    center = prior_xy + prior_wh * deltas[:, :2]
    half = prior_wh * deltas[:, 2:].clamp(min=-max_ratio, max=max_ratio).exp() * 0.5
    boxes = torch.cat([center - half, center + half], dim=1)
    if coder.clip_border:
        # (x1, y1, x2, y2) each between 0 and the image's (w, h, w, h)
        limits = image_hw.flip(0).repeat(2).to(boxes.dtype)
        boxes = torch.min(boxes.clamp(min=0), limits)
    return boxes


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                 iou_threshold: float) -> torch.Tensor:
    """mmcv's ``batched_nms`` (the offset trick: boxes of different ``groups`` never overlap) with
    ``torchvision.ops.nms`` (ONNX NonMaxSuppression); the kept indices, best score first. Unlike
    torchvision's ``batched_nms`` it has no Python branch on the box count, so an image with no candidates
    traces to the same graph."""
    from torchvision.ops import nms
    largest = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes.dtype)[:, None] * (largest + 1)
    return nms(boxes + offsets, scores, iou_threshold)


class TwoStageDetectorEndToEnd(nn.Module):
    """A built mmdet ``TwoStageDetector`` (Mask R-CNN: RPN + ``StandardRoIHead`` with bbox and mask heads) from
    the normalized image to its detections, as mmdet 3.3's ``predict`` computes them, for batch 1; every
    step is written with ops that trace to standard ONNX operators (no mmcv ops), reading the model's own
    modules, prior generator, box coders and ``test_cfg``:

    backbone + neck; the RPN head's convolutions; anchors of the prior generator shifted over the feature
    maps' sizes as the graph computes them; per level the ``nms_pre`` best sigmoid scores; delta decoding;
    boxes wider and higher than ``min_bbox_size``; NMS per level (``nms.iou_threshold``); ``max_per_img``
    proposals. RoIAlign (``torchvision.ops.roi_align``, aligned) on the level that mmdet's
    ``SingleRoIExtractor.map_roi_levels`` assigns; the bbox head, softmax, class-wise decoding, scores above
    ``score_thr``, class-wise NMS, ``max_per_img`` detections; the mask head on those boxes and the sigmoid of
    each detection's class channel.

    Outputs (:data:`DETECTOR_OUTPUTS`): ``boxes`` ``(N, 4)`` (x1, y1, x2, y2 in input pixels), ``scores``
    ``(N,)``, ``labels`` ``(N,)`` int64, ``masks`` ``(N, 28, 28)`` mask probabilities in each box
    (:func:`paste_masks` pastes them into the image as mmdet does). Boxes are clipped to the input's size, the
    padded image (mmdeploy does the same): mmdet clips to the image before padding.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        roi_head = getattr(detector, 'roi_head', None)
        if not (getattr(detector, 'with_rpn', False) and getattr(roi_head, 'with_bbox', False)
                and getattr(roi_head, 'with_mask', False)):
            raise ValueError(f'export_onnx: the whole-detector export covers Mask R-CNN (an RPN and a '
                             f'StandardRoIHead with bbox and mask heads), not {type(detector).__name__}; '
                             'export with --neck-only')
        for name in ('rpn_head', 'roi_head'):
            if type(getattr(detector, name)).__name__ not in ('RPNHead', 'StandardRoIHead'):
                raise ValueError(f'export_onnx: {name} {type(getattr(detector, name)).__name__} is not '
                                 'supported by the whole-detector export (RPNHead, StandardRoIHead); '
                                 'export with --neck-only')
        self.detector = detector
        self.rpn_cfg = detector.test_cfg.rpn
        self.rcnn_cfg = detector.test_cfg.rcnn

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        # the input's height and width as a tensor computed in the graph: both exporters keep it dynamic (a
        # Python int, or a tensor made from one, would become a constant of the example's size)
        image_hw = torch.stack([torch.ones_like(inputs[0, 0, :, 0]).sum(), torch.ones_like(inputs[0, 0, 0]).sum()])
        feats = self.detector.extract_feat(inputs)
        proposals = self.proposals(feats, image_hw)
        boxes, scores, labels = self.detections(feats, proposals, image_hw)
        return boxes, scores, labels, self.mask_probabilities(feats, boxes, labels)

    def anchors(self, feat: torch.Tensor, level: int) -> torch.Tensor:
        """The prior generator's anchors of ``level`` over ``feat``'s grid, ``(H * W * A, 4)`` in mmdet's
        order (rows, columns, base anchors); the grid size is read in the graph."""
        generator = self.detector.rpn_head.prior_generator
        stride_w, stride_h = generator.strides[level]
        height, width = feat.shape[-2:]
        shift_x = torch.arange(width, dtype=feat.dtype) * stride_w
        shift_y = torch.arange(height, dtype=feat.dtype) * stride_h
        grid_x = shift_x[None, :] + torch.zeros_like(shift_y)[:, None]
        grid_y = shift_y[:, None] + torch.zeros_like(shift_x)[None, :]
        shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 1, 4)
        return (shifts + generator.base_anchors[level].to(feat.dtype)[None]).reshape(-1, 4)

    def proposals(self, feats: Sequence[torch.Tensor], image_hw: torch.Tensor) -> torch.Tensor:
        """mmdet's ``RPNHead.predict`` (``rescale=False``) for one image: the proposals ``(P, 4)``."""
        head, cfg = self.detector.rpn_head, self.rpn_cfg
        if not head.use_sigmoid_cls:
            raise ValueError('export_onnx: an RPN head with softmax scores is not supported; export with --neck-only')
        cls_scores, bbox_preds = head(feats)
        boxes, scores, levels = [], [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            level_scores = cls_score[0].permute(1, 2, 0).reshape(-1).sigmoid()
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, 4)
            priors = self.anchors(cls_score, level)
            if cfg.get('nms_pre', -1) > 0:
                # the nms_pre best; padded so that top-k never asks for more than there are (scores are > 0,
                # the padding's -1 marks it); padding with its copies of the first prior is dropped below
                padding = level_scores.new_full((cfg.nms_pre, ), -1.)
                level_scores, keep = torch.cat([level_scores, padding]).topk(cfg.nms_pre)
                keep = keep.clamp(max=deltas.shape[0] - 1)
                deltas, priors = deltas[keep], priors[keep]
            boxes.append(_decode_deltas(priors, deltas, head.bbox_coder, image_hw))
            scores.append(level_scores)
            levels.append(torch.full_like(level_scores, level, dtype=torch.int64))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        min_size = cfg.get('min_bbox_size', -1)
        valid = scores >= 0
        if min_size >= 0:
            valid = valid & (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)
        boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = _batched_nms(boxes, scores, levels, cfg.nms.iou_threshold)[:cfg.max_per_img]
        return boxes[keep]

    def roi_features(self, extractor: nn.Module, feats: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """mmdet's ``SingleRoIExtractor`` on the boxes of image 0: each box's RoIAlign on the level that
        ``map_roi_levels`` assigns (computed on every level and selected, which traces without scatter)."""
        from torchvision.ops import roi_align
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        feats = feats[:extractor.num_inputs]
        if len(feats) == 1:
            target_levels = torch.zeros_like(rois[:, 0], dtype=torch.int64)
        else:
            target_levels = extractor.map_roi_levels(rois, len(feats))
        roi_feats = None
        for level, (feat, layer) in enumerate(zip(feats, extractor.roi_layers)):
            if layer.pool_mode != 'avg':
                raise ValueError(f'export_onnx: RoIAlign pool_mode={layer.pool_mode!r} is not supported '
                                 '(avg); export with --neck-only')
            level_feats = roi_align(feat, rois, layer.output_size, spatial_scale=layer.spatial_scale,
                                    sampling_ratio=layer.sampling_ratio, aligned=layer.aligned)
            chosen = (target_levels == level)[:, None, None, None]
            roi_feats = torch.where(chosen, level_feats, 0. if roi_feats is None else roi_feats)
        return roi_feats

    def detections(self, feats: Sequence[torch.Tensor], proposals: torch.Tensor,
                   image_hw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mmdet's ``StandardRoIHead.predict_bbox`` (``rescale=False``, as with a mask head) for one image."""
        roi_head, cfg = self.detector.roi_head, self.rcnn_cfg
        bbox_head = roi_head.bbox_head
        cls_score, bbox_pred = bbox_head(self.roi_features(roi_head.bbox_roi_extractor, feats, proposals))
        scores = F.softmax(cls_score, dim=-1)[:, :-1]  # the last column is the background
        num_classes = scores.shape[1]
        per_class = 1 if bbox_head.reg_class_agnostic else num_classes
        priors = proposals.repeat_interleave(per_class, dim=0)
        boxes = _decode_deltas(priors, bbox_pred.reshape(-1, 4), bbox_head.bbox_coder, image_hw)
        boxes = boxes.reshape(-1, per_class, 4).expand(-1, num_classes, 4).reshape(-1, 4)
        labels = torch.arange(num_classes)[None, :].expand_as(scores).reshape(-1)
        scores = scores.reshape(-1)
        valid = scores > cfg.score_thr
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        keep = _batched_nms(boxes, scores, labels, cfg.nms.iou_threshold)
        if cfg.max_per_img > 0:
            keep = keep[:cfg.max_per_img]
        return boxes[keep], scores[keep], labels[keep]

    def mask_probabilities(self, feats: Sequence[torch.Tensor], boxes: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
        """mmdet's ``StandardRoIHead.predict_mask`` before pasting: the mask head on the detections' boxes and
        the sigmoid of each detection's class, ``(N, 28, 28)``."""
        roi_head = self.detector.roi_head
        mask_logits = roi_head.mask_head(self.roi_features(roi_head.mask_roi_extractor, feats, boxes))
        if mask_logits.shape[1] > 1:  # class-wise masks: the label's channel
            index = labels[:, None, None, None].expand(-1, 1, *mask_logits.shape[2:])
            mask_logits = mask_logits.gather(1, index)
        return mask_logits[:, 0].sigmoid()


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float = 0.5) -> torch.Tensor:
    """Binary ``(N, height, width)`` masks from the graph's ``masks`` ``(N, 28, 28)`` probabilities in
    ``boxes`` (already in the ``height`` x ``width`` image's pixels), with mmdet's ``_do_paste_mask`` and
    ``mask_thr_binary`` ``threshold`` (mmdet's ``FCNMaskHead`` pasting, as mmdeploy does after the runtime)."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    if masks.shape[0] == 0:
        return masks.new_zeros((0, height, width), dtype=torch.bool)
    pasted, _ = _do_paste_mask(masks[:, None].float(), boxes.float(), height, width, skip_empty=False)
    return pasted >= threshold


def onnx_instances(outputs: Sequence[np.ndarray], sample, mask_threshold: float = 0.5):
    """mmdet's ``pred_instances`` of one image from the four outputs of the ONNX file: boxes divided by the
    sample's ``scale_factor`` (to ``ori_shape``, as mmdet's ``predict(rescale=True)``) and masks pasted there."""
    from mmengine.structures import InstanceData
    boxes, scores, labels, masks = (torch.from_numpy(np.asarray(output)) for output in outputs)
    scale_w, scale_h = sample.metainfo.get('scale_factor', (1., 1.))
    boxes = boxes / boxes.new_tensor([scale_w, scale_h, scale_w, scale_h])
    height, width = sample.metainfo['ori_shape'][:2]
    return InstanceData(bboxes=boxes, scores=scores, labels=labels,
                        masks=paste_masks(masks, boxes, height, width, mask_threshold))


def box_iou_matches(ours, reference) -> Tuple[float, float, float]:
    """``(smallest IoU, largest coordinate difference, largest score difference)`` of each box of ``ours`` and
    the best-overlapping box of the same label in ``reference`` (two ``InstanceData``); ``(1, 0, 0)`` when
    both are empty."""
    from torchvision.ops import box_iou
    if len(ours) == 0 or len(reference) == 0:
        return (1., 0., 0.) if len(ours) == len(reference) else (0., float('inf'), float('inf'))
    iou = box_iou(ours.bboxes.float(), reference.bboxes.float())
    iou = iou * (ours.labels[:, None] == reference.labels[None, :])
    best_iou, best = iou.max(dim=1)
    return (float(best_iou.min()), float((ours.bboxes - reference.bboxes[best]).abs().max()),
            float((ours.scores - reference.scores[best]).abs().max()))


def mask_agreement(ours, reference) -> float:
    """The fraction of mask pixels (of all detections, matched by order) on which two ``InstanceData``'s
    binary masks agree; 1 when both are empty."""
    if len(ours) != len(reference) or len(ours) == 0:
        return float(len(ours) == len(reference))
    return float((ours.masks == reference.masks.bool()).float().mean())


def compare_detector_on_random_image(model: nn.Module, ort_session,
                                     shape: Tuple[int, int]) -> Dict[str, float]:
    """A random image of ``shape`` through the data preprocessor, then mmdet's ``model.predict`` and the ONNX
    file: detections count of each, smallest box IoU, largest score difference, mask pixel agreement."""
    batch = model.data_preprocessor(synthetic_batch('mmdet', [shape]), False)
    inputs, samples = batch['inputs'], batch['data_samples']
    with torch.no_grad():
        reference = model.predict(inputs, samples)[0].pred_instances
    try:
        got = run_onnxruntime(ort_session, inputs)
    except Exception as err:  # onnxruntime's errors share no base class but Exception
        raise RuntimeError(f'ONNX Runtime fails on an input of shape {tuple(inputs.shape)}: '
                           f'{" ".join(str(err).split())[:300]}') from err
    ours = onnx_instances(got, samples[0], model.test_cfg.rcnn.get('mask_thr_binary', 0.5))
    min_iou, box_diff, score_diff = box_iou_matches(ours, reference)
    return dict(count=len(ours), reference_count=len(reference), min_iou=min_iou, max_box_diff=box_diff,
                max_score_diff=score_diff, mask_agreement=mask_agreement(ours, reference))


def evaluate_detector_on_test_set(model: nn.Module, cfg, ort_session) -> Tuple[dict, dict]:
    """The config's test set (``test_dataloader``, its ``test_evaluator``) through mmdet's ``model.test_step``
    and through the ONNX file, one image at a time: ``(PyTorch metrics, ONNX Runtime metrics)``."""
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg)
    evaluators = {name: Evaluator(copy.deepcopy(cfg.test_evaluator)) for name in ('pytorch', 'onnxruntime')}
    for evaluator in evaluators.values():
        evaluator.dataset_meta = loader.dataset.metainfo
    threshold = model.test_cfg.rcnn.get('mask_thr_binary', 0.5)
    for data in loader:
        with torch.no_grad():
            reference = model.test_step(data)
            batch = model.data_preprocessor(data, False)
        evaluators['pytorch'].process(data_samples=reference, data_batch=data)
        sample = copy.deepcopy(batch['data_samples'][0])
        sample.pred_instances = onnx_instances(run_onnxruntime(ort_session, batch['inputs']), sample, threshold)
        evaluators['onnxruntime'].process(data_samples=[sample], data_batch=data)
    return tuple(evaluators[name].evaluate(len(loader.dataset)) for name in ('pytorch', 'onnxruntime'))


DETECTOR_SHAPES = {'boxes': '(N, 4)', 'scores': '(N,)', 'labels': '(N,)', 'masks': '(N, 28, 28)'}
DETECTOR_AXES = {INPUT_NAME: {2: 'height', 3: 'width'}, **{name: {0: 'detections'} for name in DETECTOR_OUTPUTS}}
MIN_BOX_IOU = 0.99  # each ONNX Runtime box against mmdet's of the same label
MIN_MASK_AGREEMENT = 0.99  # fraction of pasted mask pixels equal to mmdet's
MAX_MAP_DIFFERENCE = 0.01  # test set: bbox/segm mAP of ONNX Runtime against mmdet's


def onnx_operators(path: str) -> List[str]:
    """The operator types of the ONNX file ``path``'s graph (``onnx.load(path).graph.node``), sorted.

    Raises:
        ValueError: a node of another domain than the standard ``ai.onnx`` (a custom operator).
    """
    import onnx
    nodes = onnx.load(path, load_external_data=False).graph.node
    custom = sorted({f'{node.domain}::{node.op_type}' for node in nodes if node.domain not in ('', 'ai.onnx')})
    if custom:
        raise ValueError(f'{path} uses operators outside the standard ONNX domain: {", ".join(custom)}')
    return sorted({node.op_type for node in nodes})


def export_whole_detector(args, model: nn.Module) -> dict:
    """``main`` for a whole mmdet detector (:class:`TwoStageDetectorEndToEnd`): export, the operators, then
    mmdet's ``predict`` against ONNX Runtime on random images of two sizes and, with ``--test-set``, the
    config's test metrics of both."""
    try:
        module = TwoStageDetectorEndToEnd(model).eval()
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    example = normalized_inputs(model, 'mmdet', args.shape)
    if osp.dirname(args.out):
        os.makedirs(osp.dirname(args.out), exist_ok=True)
    export_onnx(module, example, args.out, DETECTOR_OUTPUTS, exporter=args.exporter, opset=args.opset,
                dynamic_axes=DETECTOR_AXES)
    try:
        operators = onnx_operators(args.out)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    ort_session = onnxruntime_session(args.out)
    print('=' * 72)
    print(f'exported     {args.out} ({osp.getsize(args.out) / 2 ** 20:.1f} MiB), opset {file_opset(args.out)}, '
          f'exporter {args.exporter} (torch {torch.__version__})')
    print(f'model        {type(model).__name__} end to end: {type(model.backbone).__name__} + '
          f'{type(model.neck).__name__}, {type(model.rpn_head).__name__} with NMS, '
          f'{type(model.roi_head).__name__} (boxes, class-wise NMS, masks)')
    print(f'input        {INPUT_NAME}: (1, 3, H, W) float32, the image after the data preprocessor '
          '(mean/std, RGB, padding); batch 1, H, W dynamic')
    print(f'outputs      {", ".join(f"{name} {DETECTOR_SHAPES[name]}" for name in DETECTOR_OUTPUTS)}; '
          'N detections, boxes in input pixels, masks as probabilities in each box')
    print(f'operators    {", ".join(operators)} (all ai.onnx)')
    failures = []
    checks = {}
    for shape in (args.shape, args.second_shape):
        try:
            found = compare_detector_on_random_image(model, ort_session, shape)
        except RuntimeError as err:
            raise SystemExit(f'error: {err}') from None
        checks[shape] = found
        print(f'random 1x3x{shape[0]}x{shape[1]}: {found["count"]} detections (mmdet {found["reference_count"]}), '
              f'smallest box IoU {found["min_iou"]:.5f}, largest box diff {found["max_box_diff"]:.1e} px, largest score diff {found["max_score_diff"]:.2e}, '
              f'mask pixels equal {100 * found["mask_agreement"]:.2f}%')
        if (found['count'] != found['reference_count'] or found['min_iou'] < MIN_BOX_IOU
                or found['mask_agreement'] < MIN_MASK_AGREEMENT or found['max_score_diff'] > args.atol):
            failures.append(f'random {shape[0]}x{shape[1]}: {found["count"]} detections against mmdet\'s '
                            f'{found["reference_count"]}, box IoU {found["min_iou"]:.4f} (>= {MIN_BOX_IOU} needed), '
                            f'score diff {found["max_score_diff"]:.2e} (<= --atol {args.atol:g}), mask pixels '
                            f'{100 * found["mask_agreement"]:.2f}% (>= {100 * MIN_MASK_AGREEMENT:g}%)')
    metrics = None
    if args.test_set:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' tables: the summary follows
                metrics = evaluate_detector_on_test_set(model, args.cfg, ort_session)
        except FileNotFoundError as err:
            raise SystemExit(f'error: --test-set: the config\'s test set is not there ({err}); make the toy set '
                             'with python tools/misc/make_toy_data.py or run from the folder holding data/') from None
        for key in sorted(key for key in metrics[0] if key.endswith('_mAP')):
            difference = metrics[1][key] - metrics[0][key]
            print(f'test set     {key}: PyTorch {metrics[0][key]:.4f}   ONNX Runtime {metrics[1][key]:.4f}   '
                  f'(diff {difference:+.4f})')
            if abs(difference) > MAX_MAP_DIFFERENCE:
                failures.append(f'test set {key}: ONNX Runtime {metrics[1][key]:.4f} against PyTorch '
                                f'{metrics[0][key]:.4f}, more than {MAX_MAP_DIFFERENCE} apart')
    torch_ms = median_ms(lambda: run_pytorch(module, example), runs=args.runs)
    ort_ms = median_ms(lambda: run_onnxruntime(ort_session, example), runs=args.runs)
    print(f'PyTorch      {torch_ms:.1f} ms/img   ONNX Runtime {ort_ms:.1f} ms/img   (1x3x{args.shape[0]}x'
          f'{args.shape[1]}, median of {args.runs} after 1 warm-up, CPU, {torch.get_num_threads()} torch threads)')
    print('=' * 72)
    sys.stdout.flush()
    if failures:
        raise SystemExit(f'error: ONNX Runtime differs from mmdet: {"; ".join(failures)}')
    print('ok           ONNX Runtime gives mmdet\'s detections')
    return dict(checks=checks, metrics=metrics, operators=operators, output_names=list(DETECTOR_OUTPUTS),
                torch_ms=torch_ms, ort_ms=ort_ms)


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
    parser.add_argument('--neck-only', action='store_true',
                        help='a detector: export its backbone + neck (the FPN feature maps) instead of the whole '
                             'detector')
    parser.add_argument('--test-set', action='store_true',
                        help='a whole detector: also run the config\'s test set (test_dataloader, relative to the '
                             'current folder) through mmdet and the file and compare their bbox/segm mAP')
    parser.add_argument('--exporter', choices=EXPORTERS, default=DEFAULT_EXPORTER,
                        help='torch.onnx.export(dynamo=True) (torch.export; the default on torch >= 2.6) or the '
                             'TorchScript tracer (dynamo=False; faster to export, deprecated by torch; the default '
                             'and the only exporter on older torch, where dynamo falls back to it with a note) '
                             f'(default here: {DEFAULT_EXPORTER})')
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
    if args.exporter == 'dynamo' and not HAS_DYNAMO_EXPORTER:
        print(f'note: {NO_DYNAMO_EXPORTER}; exporting with the TorchScript exporter', file=sys.stderr)
        args.exporter = 'torchscript'
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        parser.error(f'--checkpoint: file not found: {args.checkpoint}')
    if osp.isdir(args.out):
        parser.error(f'--out names a folder: {args.out} (give a file name, e.g. {osp.join(args.out, "model.onnx")})')
    try:
        args.cfg = load_config(args.config, args.cfg_options)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if args.backbone_only and args.neck_only:
        parser.error('--backbone-only and --neck-only exclude each other: give one')
    args.whole_detector = args.cfg.default_scope == 'mmdet' and not (args.backbone_only or args.neck_only)
    if args.neck_only and args.cfg.default_scope != 'mmdet':
        parser.error('--neck-only is for mmdet detectors; an mmseg config exports its segmentor (or --backbone-only)')
    if args.test_set and not args.whole_detector:
        parser.error('--test-set compares a whole detector\'s mAP: leave out --backbone-only/--neck-only, and give '
                     'an mmdet config')
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
    """``checkpoint``'s weights into ``model`` (strict: a key missing or left over is an error), unpickled
    weights-only on every torch as in tools/test.py."""
    load_checkpoints_weights_only()
    try:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
    except pickle.UnpicklingError as err:
        raise refused_checkpoint_error(checkpoint, err) from None
    except RuntimeError as err:  # mmengine lists the keys that do not match
        raise SystemExit(f'error: {checkpoint} does not fit the config\'s model: '
                         f'{" ".join(str(err).split())[:400]}') from None


def main(argv=None):
    args = parse_args(argv)
    check_onnx_packages(args.exporter)
    cfg, scope = args.cfg, args.cfg.default_scope
    model = build_model(cfg).eval()
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    if args.whole_detector:
        return export_whole_detector(args, model)
    example = normalized_inputs(model, scope, args.shape)
    module, names, description = exportable_part(model, scope, example, args.backbone_only)

    if osp.dirname(args.out):
        os.makedirs(osp.dirname(args.out), exist_ok=True)
    export_onnx(module, example, args.out, names, exporter=args.exporter, opset=args.opset)
    ort_session = onnxruntime_session(args.out)

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
            found = max_abs_differences(module, ort_session, inputs, names)
        except (RuntimeError, ValueError) as err:
            raise SystemExit(f'error: {err}') from None
        differences.update({(name, shape, len(inputs)): value for name, value in found.items()})
        listed = ', '.join(f'{name} {value:.2e}' for name, value in found.items())
        print(f'max abs diff {len(inputs)}x3x{shape[0]}x{shape[1]}: {listed}')
    torch_ms = median_ms(lambda: run_pytorch(module, example), runs=args.runs)
    ort_ms = median_ms(lambda: run_onnxruntime(ort_session, example), runs=args.runs)
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
