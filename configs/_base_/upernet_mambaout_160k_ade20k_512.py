# UperNet + auxiliary FCN head, 160k iterations on ADE20K with 512x512 crops, with a MambaOut backbone:
# the recipe of the MambaOut paper. mmseg's own bases supply the heads, the ADE20K pipeline
# (random resize 0.5-2.0 of 2048x512, crop, flip, photometric distortion) and mIoU evaluation.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py', './mambaout_recipe.py'
]
custom_imports = dict(imports=['mmseg_plugin'], allow_failed_imports=False)
# mmseg's SegLocalVisualizer on a contiguous copy of the image, which mmseg's tools/analysis_tools/browse_dataset.py
# needs (mmseg_plugin/stock_tools.py).
visualizer = dict(type='ContiguousSegLocalVisualizer')

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=_base_.mambaout_backbone,
    decode_head=dict(in_channels=[96, 192, 384, 576], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

# Multi-scale + flip test (`tools/test.py --tta`) as in the paper's protocol (mmseg 0.x MultiScaleFlipAug):
# ratios 0.5-1.75 of the 2048x512 test scale. mmseg 1.x's ade20k.py scales the original image instead,
# so that its ratio 1.0 is not the single-scale input.
test_scale = (2048, 512)
tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(test_scale[0] * r), int(test_scale[1] * r)), keep_ratio=True)
         for r in tta_ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]

# 4 GPUs x 4 crops = 16; auto_scale_lr rescales the lr linearly for other totals.
train_dataloader = dict(batch_size=4)
auto_scale_lr = dict(enable=True, base_batch_size=16)

# The shared optimizer (mambaout_recipe.py); linear warm-up for 1500 iterations, then poly decay to 0.
optim_wrapper = _base_.mambaout_optim_wrapper
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
