# Mask R-CNN 3x multi-scale, MambaOut-Tiny (no published AP; params and FLOPs in configs/metafile.yml).
_base_ = ['./_base_/mask_rcnn_mambaout_fpn_3x_ms_coco.py']
