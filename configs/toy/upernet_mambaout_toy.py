# The paper's UperNet recipe (configs/upernet_mambaout_t_160k_ade20k_512.py) shrunk to the embedded toy
# dataset (tools/misc/make_toy_data.py) so that it trains and evaluates on a laptop CPU in minutes. Only what
# must shrink does: crop and image scale (128 px), iterations, the backbone size (femto, from scratch:
# nothing is downloaded) and head widths, fp32 instead of FP16 (no AMP on CPU), plain BN instead of
# SyncBN (CPU), the lr for the short schedule, and data-loader workers. The multi-scale + flip TTA of
# the base config is kept, at the toy image scale (`tools/test.py --tta`).
_base_ = ['../upernet_mambaout_t_160k_ade20k_512.py', './_base_/toy_metainfo.py']

data_root = 'data/toy/ade'
metainfo = _base_.toy_metainfo  # label 0 of the PNGs (background) is ignored via reduce_zero_label
num_classes = len(metainfo.classes)
crop_size = (128, 128)
image_scale = (512, 128)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='femto', drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(in_channels=[48, 96, 192, 288], channels=128, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=64, num_classes=num_classes, norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(image_scale[0] * r), int(image_scale[1] * r)), keep_ratio=True)
         for r in _base_.tta_ratios],
        *_base_.tta_pipeline[1].transforms[1:],
    ]),
]
# BaseSegDataset with the classes also as METAINFO, where mmseg's analysis_tools/confusion_matrix.py reads them
dataset = dict(type='MetainfoSegDataset', data_root=data_root, metainfo=metainfo, reduce_zero_label=True,
               img_suffix='.jpg', seg_map_suffix='.png')
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline, _delete_=True))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(dataset, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline, _delete_=True))
test_dataloader = val_dataloader

max_iters = 150  # mIoU about 82 on the toy set, as much as 300 iterations reach (docs/demo.md)
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=30, end=max_iters),
]
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(_base_.optim_wrapper.optimizer, lr=1e-3),
                     paramwise_cfg=_base_.optim_wrapper.paramwise_cfg)
auto_scale_lr = dict(enable=False)

default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100, max_keep_ckpts=3),
                     visualization=dict(draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
