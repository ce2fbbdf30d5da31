# Mask R-CNN 1x, MambaOut-Tiny (paper: 45.1 APb / 41.0 APm on COCO val2017).
_base_ = ['./_base_/mask_rcnn_mambaout_fpn_1x_coco.py']
