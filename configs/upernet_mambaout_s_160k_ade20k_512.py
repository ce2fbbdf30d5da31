# UperNet 160k, MambaOut-Small (its paper result: configs/metafile.yml).
_base_ = ['./_base_/upernet_mambaout_160k_ade20k_512.py']
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_small.pth')))
