"""Parameters and FLOPs of a MambaOut detector or segmentor, from any mmdet or mmseg config.

    python tools/analysis_tools/get_flops.py configs/mask_rcnn_mambaout_t_1x.py              # 1280x800: H=800, W=1280
    python tools/analysis_tools/get_flops.py configs/upernet_mambaout_t_160k_ade20k_512.py   # 2048x512: H=512, W=2048
    python tools/analysis_tools/get_flops.py CONFIG --shape 256 256 [--cfg-options model.backbone.arch=small] [--verbose]

Prints the parameters of the whole model as built (every ``model.parameters()``, the auxiliary head of
a segmentor included) and of the backbone alone, in M (1e6), and the FLOPs of one image in G (1e9), in
the convention of the MambaOut, Swin and ConvNeXt papers: detection at 1280x800 (input H=800, W=1280),
segmentation at 2048x512 (H=512, W=2048); ``--shape H W`` (or ``--shape S`` for SxS) overrides it.

Counting is mmengine's ``get_model_complexity_info`` used the way mmdet's and mmseg's
``tools/analysis_tools/get_flops.py`` use it: a data batch goes through ``model.data_preprocessor`` and
the model's ``_forward`` (tensor mode: backbone, neck and heads, no post-processing) is traced. One
multiply-add counts as one FLOP (i.e. MACs, the papers' "FLOPs"); convolutions, linear layers,
matmuls, norms, upsampling and adaptive pooling are counted; element-wise ops (activations, the gating
product, residual additions), NMS and mmcv's compiled ops (RoIAlign) are not. For a two-stage detector
the RoI heads run, as in mmdet's ``_forward``, on the RPN's test-time proposals (``test_cfg.rpn.max_per_img``,
1000 for Mask R-CNN; the count actually reached is printed) and the mask head on the first 100 of them.
Cascade Mask R-CNN: mmdet 3.x's ``_forward`` runs each stage's mask head on every proposal; here, as in
mmdet 2.x's ``forward_dummy`` with which Swin and ConvNeXt counted their published FLOPs, on the first 100
(otherwise a MambaOut-T Cascade would count 2172 G instead of 741 G).
A segmentor's ``_forward`` runs the decode head only (no auxiliary head, no resize to the input size).

Why ours: mmdet's and mmseg's scripts each serve their own library only (this serves every config
under configs/), mmdet's needs the COCO val images (it averages over dataset pictures, whose shapes
vary, instead of using the paper's fixed size). The trace runs under ``torch.no_grad()``, the backbone
weights are not loaded (``init_cfg=None``: nothing is downloaded; weights do not change the counts) and
SyncBN is reverted to BN (no process group on CPU).
"""
import argparse
import logging
import sys

import torch
from mmengine.analysis import get_model_complexity_info
from mmengine.config import DictAction
from mmengine.logging import MMLogger

from mambaout_tools.models import build_model, load_config, synthetic_batch

# The paper's convention: (H, W) of the single input image, per OpenMMLab scope.
DEFAULT_SHAPES = {'mmdet': (800, 1280), 'mmseg': (512, 2048)}
# How many proposals the mask heads see (mmdet's StandardRoIHead._forward and 2.x's forward_dummy).
MASK_ROIS = 100


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='N',
                        help='input size "H W" (or "S" for SxS); default: 800 1280 for detection, 512 2048 for '
                             'segmentation')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.arch=small')
    parser.add_argument('--verbose', action='store_true',
                        help="show mmengine's warnings (operators it does not count, modules called functionally)")
    args = parser.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) not in (1, 2) or min(args.shape) < 1:
            parser.error(f'--shape takes H W or S (positive), got {args.shape}')
        args.shape = tuple(args.shape) * (3 - len(args.shape)) if len(args.shape) == 1 else tuple(args.shape)
    return args


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cascade_mask_forward_of_every_proposal(roi_head) -> bool:
    """Whether ``roi_head`` is mmdet's Cascade RoI head with masks, whose ``_mask_forward(stage, x, rois)`` is
    not overridden (HTC's and SCNet's are, with other arguments)."""
    from mmdet.models.roi_heads import CascadeRoIHead
    return (isinstance(roi_head, CascadeRoIHead) and roi_head.with_mask
            and type(roi_head)._mask_forward is CascadeRoIHead._mask_forward)


def complexity(model: torch.nn.Module, scope: str, shape, verbose: bool = False) -> dict:
    """Trace ``model._forward`` on one ``shape`` image and count; returns a dict of numbers (not strings)."""
    data = model.data_preprocessor(synthetic_batch(scope, [shape]), False)
    inputs, samples = data['inputs'], data['data_samples']
    result = dict(input_shape=tuple(inputs.shape[-2:]))

    num_proposals = []
    rpn_head = getattr(model, 'rpn_head', None)
    original_predict = rpn_head.predict if rpn_head is not None else None
    if rpn_head is not None:
        def predict(*args, **kwargs):  # records how many proposals the RoI heads get
            results = original_predict(*args, **kwargs)
            num_proposals.append(sum(len(r) for r in results))
            return results
        rpn_head.predict = predict

    mask_rois = []
    roi_head = getattr(model, 'roi_head', None)
    cascade = scope == 'mmdet' and _cascade_mask_forward_of_every_proposal(roi_head)
    if cascade:
        original_mask_forward = roi_head._mask_forward

        def mask_forward(stage, x, rois):  # the first MASK_ROIS; zeros for the rest keep mmdet's merge working
            results = original_mask_forward(stage, x, rois[:MASK_ROIS])
            preds = results['mask_preds']
            mask_rois.append(len(preds))
            results['mask_preds'] = torch.cat([preds, preds.new_zeros((len(rois) - len(preds), *preds.shape[1:]))])
            return results
        roi_head._mask_forward = mask_forward

    original_forward = model.forward
    # tensor mode (BaseModel.forward's default) = _forward(inputs, data_samples)
    model.forward = lambda x: original_forward(x, samples, mode='tensor')
    logger = MMLogger.get_current_instance()
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            info = get_model_complexity_info(model, inputs=(inputs, ), show_table=False, show_arch=False)
    finally:
        logger.setLevel(level)
        model.forward = original_forward
        if rpn_head is not None:
            rpn_head.predict = original_predict
        if cascade:
            roi_head._mask_forward = original_mask_forward

    result.update(flops=int(info['flops']), params=int(info['params']), backbone_params=count_parameters(
        model.backbone))
    if num_proposals:
        result['num_proposals'] = num_proposals[-1]
    if mask_rois:
        result['mask_rois'] = mask_rois[-roi_head.num_stages:]  # the counter may run the model more than once
    return result


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
    scope = cfg.default_scope
    shape = args.shape or DEFAULT_SHAPES[scope]
    model = build_model(cfg).eval()
    res = complexity(model, scope, shape, verbose=args.verbose)

    h, w = shape
    print('=' * 60)
    print(f'config            {args.config} ({scope}, {type(model).__name__}, '
          f'backbone {cfg.model.backbone.type} arch={cfg.model.backbone.get("arch")})')
    padded = '' if res['input_shape'] == (h, w) else f', padded to H={res["input_shape"][0]} W={res["input_shape"][1]}'
    print(f'input             {w}x{h} (H={h}, W={w}{padded}), 1 image')
    print(f'params            {res["params"] / 1e6:.2f} M  (whole model as built: {res["params"]:,})')
    print(f'backbone params   {res["backbone_params"] / 1e6:.2f} M  ({res["backbone_params"]:,})')
    if getattr(model, 'with_auxiliary_head', False):
        aux = count_parameters(model.auxiliary_head)
        print(f'without aux head  {(res["params"] - aux) / 1e6:.2f} M  (the auxiliary head, {aux / 1e6:.2f} M, '
              'is training-only)')
    print(f'FLOPs             {res["flops"] / 1e9:.1f} G  (1 multiply-add = 1 FLOP, mmengine counter)')
    if 'num_proposals' in res:
        stages = f' in each of {len(res["mask_rois"])} stages' if 'mask_rois' in res else ''
        print(f'RoI heads on      {res["num_proposals"]} proposals (mask head{stages} on the first '
              f'{min(MASK_ROIS, res["num_proposals"])}); RoIAlign and NMS are not counted')
    if scope == 'mmseg':
        print('                  decode head only (the auxiliary head does not run at inference)')
    print('=' * 60)
    sys.stdout.flush()
    return res


if __name__ == '__main__':
    main()
