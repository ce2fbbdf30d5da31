# Mask R-CNN 1x, MambaOut-Base (paper: 47.4 APb / 43.0 APm on COCO val2017).
_base_ = ['./_base_/mask_rcnn_mambaout_fpn_1x_coco.py']
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_base.pth')),
    neck=dict(in_channels=[128, 256, 512, 768]))
