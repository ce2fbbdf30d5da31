# MambaOut-S and -B for the detection configs, as the paper sets them: arch, drop path (0.3 for S, the
# rate of the author's detection recipe; 0.6 for B), ImageNet-1k weights, and B's wider FPN input. The S and B
# configs (1x and 3x) merge one into their task base: `model = _base_.mambaout_small_det`. MambaOut-T is the task
# bases' default.
mambaout_small_det = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(
    checkpoint='https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_small.pth')))
mambaout_base_det = dict(
    backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(
        checkpoint='https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_base.pth')),
    neck=dict(in_channels=[128, 256, 512, 768]))
