# UperNet-MambaOut-T (the paper recipe, configs/upernet_mambaout_t_160k_ade20k_512.py) on your own folder of
# images and label maps. Copy this file, change the marked lines, train: docs/custom_dataset.md.
_base_ = ['../upernet_mambaout_t_160k_ade20k_512.py']

# ---- change these -------------------------------------------------------------------------------------
data_root = 'data/my_seg/'  # holds images/{train,val}/NAME.jpg and labels/{train,val}/NAME.png
classes = ('road', 'grass', 'water')  # class k is the label value k of your PNGs (k + 1 if reduce_zero_label)
reduce_zero_label = False  # True if 0 in your PNGs means "unlabelled" (as in ADE20K) and your classes start at 1
fp16 = True  # mixed precision (AmpOptimWrapper) needs a GPU: False to try a run on a CPU
# -------------------------------------------------------------------------------------------------------

# Drawing colours: add palette=[(R, G, B), ...] (one per class), else mmseg draws random ones (seed 42).
metainfo = dict(classes=classes)
num_classes = len(classes)
model = dict(decode_head=dict(num_classes=num_classes), auxiliary_head=dict(num_classes=num_classes))

# The pipelines of the paper config, with LoadAnnotations told about the label maps' zero.
train_pipeline = [dict(t, reduce_zero_label=reduce_zero_label) if t['type'] == 'LoadAnnotations' else t
                  for t in _base_.train_pipeline]
test_pipeline = [dict(t, reduce_zero_label=reduce_zero_label) if t['type'] == 'LoadAnnotations' else t
                 for t in _base_.test_pipeline]
# BaseSegDataset with the classes also as METAINFO, where mmseg's analysis_tools/confusion_matrix.py reads them
dataset = dict(type='MetainfoSegDataset', data_root=data_root, metainfo=metainfo, reduce_zero_label=reduce_zero_label,
               img_suffix='.jpg', seg_map_suffix='.png')
train_dataloader = dict(dataset=dict(
    dataset, data_prefix=dict(img_path='images/train', seg_map_path='labels/train'), pipeline=train_pipeline,
    _delete_=True))
val_dataloader = dict(dataset=dict(
    dataset, data_prefix=dict(img_path='images/val', seg_map_path='labels/val'), pipeline=test_pipeline,
    _delete_=True))
test_dataloader = val_dataloader

if not fp16:
    optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=_base_.optim_wrapper.optimizer,
                         paramwise_cfg=_base_.optim_wrapper.paramwise_cfg)
