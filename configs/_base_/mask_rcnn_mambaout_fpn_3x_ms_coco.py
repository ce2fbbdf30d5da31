# Mask R-CNN + FPN, 3x schedule with multi-scale training, with a MambaOut backbone: the recipe of Swin's and
# ConvNeXt's Mask R-CNN 3x results. mmdet's own Swin-T config supplies everything but the backbone and the
# optimizer: the detector, the DETR-style augmentation (flip 0.5, then either a resize of the shorter side to one
# of 480, 512, ..., 800 (longer side <= 1333), or a resize to 400/500/600, a random 384-600 crop and that
# 480-800 resize), the 1333x800 test scale, bbox + segm evaluation and the schedule (36 epochs, lr x0.1 at 27 and
# 33, 1000-iteration linear warm-up).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py', './mambaout_recipe.py']
custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)

model = dict(backbone=_base_.mambaout_backbone, neck=dict(in_channels=[96, 192, 384, 576]))

# 8 GPUs x 2 images = 16, as Swin and ConvNeXt trained; auto_scale_lr rescales the lr linearly for other totals.
train_dataloader = dict(batch_size=2, num_workers=2)
auto_scale_lr = dict(enable=True, base_batch_size=16)

# AdamW lr 1e-4 (Swin's and ConvNeXt-T's 3x value) with the paper's weight-decay rules, FP16
optim_wrapper = _base_.mambaout_optim_wrapper
