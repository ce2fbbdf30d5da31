# The paper's Mask R-CNN recipe (configs/mask_rcnn_mambaout_t_1x.py) shrunk to the embedded toy dataset
# (tools/misc/make_toy_data.py) so that it trains and evaluates on a laptop CPU in minutes. Only what must
# shrink does: image scale (128 px), schedule, the backbone size (femto, from scratch: nothing is
# downloaded) and the head widths and RoI counts (Mask R-CNN's heads dominate a CPU step), fp32
# instead of FP16 (no AMP on CPU), the lr for the small batch and short schedule, and data-loader workers.
_base_ = ['../mask_rcnn_mambaout_t_1x.py', './_base_/toy_metainfo.py']

data_root = 'data/toy/coco/'
metainfo = _base_.toy_metainfo
num_classes = len(metainfo.classes)
image_scale = (128, 128)

width = 64  # FPN and head channels (256 in the paper's model)
model = dict(
    backbone=dict(arch='femto', drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[48, 96, 192, 288], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=num_classes)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=300), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 6  # bbox/segm mAP 0.52 / 0.53-0.55 on the toy set (docs/demo.md)
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[4, 5], gamma=0.1),
]
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(_base_.optim_wrapper.optimizer, lr=1e-3),
                     paramwise_cfg=_base_.optim_wrapper.paramwise_cfg)
auto_scale_lr = dict(enable=False)

default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=4, max_keep_ckpts=3))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
