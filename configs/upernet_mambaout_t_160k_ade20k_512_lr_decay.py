# UperNet 160k, MambaOut-Tiny, with the stage-wise lr decay of mmseg's ConvNeXt UperNet recipe (decay 0.9, 12 layer
# ids, stage i has id i + 1: the heads train at lr 1e-4, stage 3 at 0.9^9x, ..., stage 0 at 0.9^12x, the stem at
# 0.9^13x). Weight decay as in the base config: none on norms, biases and other 1-D parameters.
# Not the paper's recipe, which trains without lr decay (configs/upernet_mambaout_t_160k_ade20k_512.py); for
# comparisons with backbones trained this way. decay_type='layer_wise' gives each block its own id instead.
_base_ = ['./upernet_mambaout_t_160k_ade20k_512.py']
optim_wrapper = dict(
    constructor='MambaOutLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))
