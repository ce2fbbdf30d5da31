# Mask R-CNN + FPN, 1x schedule, with a MambaOut backbone: the recipe of the MambaOut paper.
# mmdet's own Mask R-CNN config supplies the detector, the COCO pipeline (resize to 1333x800, flip 0.5),
# bbox + segm evaluation and the 1x schedule (12 epochs, steps at 8 and 11, 500-iter linear warm-up).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './mambaout_recipe.py']
custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)

model = dict(
    backbone=_base_.mambaout_backbone,
    neck=dict(in_channels=[96, 192, 384, 576]))

# 4 GPUs x 4 images = 16; auto_scale_lr rescales the lr linearly for other totals.
train_dataloader = dict(batch_size=4, num_workers=4)
auto_scale_lr = dict(enable=True, base_batch_size=16)

optim_wrapper = _base_.mambaout_optim_wrapper
