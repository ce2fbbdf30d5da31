# Cascade Mask R-CNN + FPN, 3x schedule with multi-scale training, with a MambaOut backbone: the recipe of Swin's
# and ConvNeXt's Cascade Mask R-CNN 3x results. mmdet's own ConvNeXt-T config supplies everything but the
# backbone and the optimizer: three cascade stages whose box heads are 4conv1fc (four 3x3 convs with SyncBN, one
# fc) regressing decoded boxes with a GIoU loss (weight 10), the same augmentation and schedule as the Mask R-CNN
# 3x base (flip; shorter side 480-800, or 400-600 + a 384-600 crop + 480-800; 36 epochs, steps at 27 and 33).
_base_ = [
    'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
    './mambaout_recipe.py'
]
# replaces the mmpretrain import of the ConvNeXt config
custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)

model = dict(backbone=_base_.mambaout_backbone, neck=dict(in_channels=[96, 192, 384, 576]))

# 8 GPUs x 2 images = 16, as Swin and ConvNeXt trained; auto_scale_lr rescales the lr linearly for other totals.
train_dataloader = dict(batch_size=2, num_workers=2)
auto_scale_lr = dict(enable=True, base_batch_size=16)

# AdamW lr 1e-4 without layer-wise lr decay, FP16: Swin's Cascade optimizer and the paper's. ConvNeXt's Cascade
# recipe uses lr 2e-4 with layer-wise decay 0.7 (T, S) / 0.8 (B); the plugin's
# MambaOutLearningRateDecayOptimizerConstructor gives that (docs/schedules.md, "Layer-wise learning-rate decay").
optim_wrapper = _base_.mambaout_optim_wrapper
