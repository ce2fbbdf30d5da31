# Mask R-CNN 1x, MambaOut-Tiny (its paper result: configs/metafile.yml).
_base_ = ['./_base_/mask_rcnn_mambaout_fpn_1x_coco.py']
