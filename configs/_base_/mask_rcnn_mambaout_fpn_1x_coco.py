# Mask R-CNN + FPN, 1x schedule, with a MambaOut backbone: the recipe of the MambaOut paper.
# mmdet's own Mask R-CNN config supplies the detector, the COCO pipeline (resize to 1333x800, flip 0.5),
# bbox + segm evaluation and the 1x schedule (12 epochs, steps at 8 and 11, 500-iter linear warm-up).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='MambaOut',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        with_output_norm=True,  # a LayerNorm on each stage output
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_tiny.pth')),
    neck=dict(in_channels=[96, 192, 384, 576]))

# 4 GPUs x 4 images = 16; auto_scale_lr rescales the lr linearly for other totals.
train_dataloader = dict(batch_size=4, num_workers=4)
auto_scale_lr = dict(enable=True, base_batch_size=16)

# AdamW, no weight decay on norms and biases, no layer-wise lr decay; FP16 with a dynamic loss scale
# (a step whose gradients overflow is skipped and the scale lowered).
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
