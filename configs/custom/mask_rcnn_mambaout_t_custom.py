# Mask R-CNN-MambaOut-T (the paper recipe, configs/mask_rcnn_mambaout_t_1x.py) on your own COCO-format
# instance-segmentation set. Copy this file, change the three marked lines, train: docs/custom_dataset.md.
_base_ = ['../mask_rcnn_mambaout_t_1x.py']

# ---- change these -------------------------------------------------------------------------------------
data_root = 'data/my_coco/'  # holds annotations/instances_{train,val}.json and the images in train/, val/
classes = ('cat', 'dog')  # the category names of your json, in the order the model numbers them
fp16 = True  # mixed precision (AmpOptimWrapper) needs a GPU: False to try a run on a CPU
# -------------------------------------------------------------------------------------------------------

# Drawing colours: add palette=[(R, G, B), ...] (one per class), else mmdet takes COCO's first ones.
metainfo = dict(classes=classes)
num_classes = len(classes)
model = dict(roi_head=dict(bbox_head=dict(num_classes=num_classes), mask_head=dict(num_classes=num_classes)))

dataset = dict(data_root=data_root, metainfo=metainfo)
train_dataloader = dict(dataset=dict(dataset, ann_file='annotations/instances_train.json',
                                     data_prefix=dict(img='train/')))
val_dataloader = dict(dataset=dict(dataset, ann_file='annotations/instances_val.json', data_prefix=dict(img='val/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

if not fp16:
    optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=_base_.optim_wrapper.optimizer,
                         paramwise_cfg=_base_.optim_wrapper.paramwise_cfg)
