# UperNet 160k, MambaOut-Tiny (its paper result: configs/metafile.yml).
_base_ = ['./_base_/upernet_mambaout_160k_ade20k_512.py']
