# Mask R-CNN 1x, MambaOut-Small (paper: 47.4 APb / 42.7 APm on COCO val2017).
_base_ = ['./_base_/mask_rcnn_mambaout_fpn_1x_coco.py']
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_small.pth')))
