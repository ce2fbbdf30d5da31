# Mask R-CNN 3x multi-scale, MambaOut-Small (no published AP; params and FLOPs in configs/metafile.yml).
_base_ = ['./_base_/mask_rcnn_mambaout_fpn_3x_ms_coco.py', './_base_/mambaout_det_sizes.py']
model = _base_.mambaout_small_det
