# What the paper's detection and segmentation recipes share: the MambaOut-T backbone (a LayerNorm on each stage
# output, the official ImageNet-1k weights) and the optimizer. Only new names are defined here: mmengine refuses
# a key that two `_base_` files both define, so the task bases take these as `_base_.mambaout_backbone` and
# `_base_.mambaout_optim_wrapper`.
mambaout_backbone = dict(
    _delete_=True,
    type='MambaOut',
    arch='tiny',
    out_indices=(0, 1, 2, 3),
    with_output_norm=True,  # a LayerNorm on each stage output
    drop_path_rate=0.3,
    init_cfg=dict(
        type='Pretrained',
        checkpoint='https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_tiny.pth'))

# AdamW lr 1e-4, no weight decay on norms and biases, no layer-wise lr decay; FP16 with a dynamic loss scale
# (a step whose gradients overflow is skipped and the scale lowered).
mambaout_optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
