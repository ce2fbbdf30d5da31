# Mask R-CNN 1x, MambaOut-Small (its paper result: configs/metafile.yml).
_base_ = ['./_base_/mask_rcnn_mambaout_fpn_1x_coco.py', './_base_/mambaout_det_sizes.py']
model = _base_.mambaout_small_det
