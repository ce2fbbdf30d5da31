# UperNet 160k, MambaOut-Base (its paper result: configs/metafile.yml).
_base_ = ['./_base_/upernet_mambaout_160k_ade20k_512.py']
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_base.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 768]),
    auxiliary_head=dict(in_channels=512))
