# UperNet 160k, MambaOut-Tiny (paper: 47.4 mIoU single-scale / 48.6 multi-scale on ADE20K val).
_base_ = ['./_base_/upernet_mambaout_160k_ade20k_512.py']
