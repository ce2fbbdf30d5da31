"""Every config loads, builds (no pretrained download), computes a training loss on CPU, and carries the
paper's recipe, so that a later edit cannot drift silently."""
import glob
import os
import re

import pytest
import torch
from mmengine.config import Config

from mambaout_tools.models import build_model, load_config, num_classes_of, synthetic_batch
from tools.analysis_tools.results_table import OURS, Metafile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)
RELEASE = 'https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_{}.pth'
SIZES = {'t': ('tiny', 0.3, [96, 192, 384, 576]), 's': ('small', 0.3, [96, 192, 384, 576]),
         'b': ('base', 0.6, [128, 256, 512, 768])}
PAPER_DET = {s: f'mask_rcnn_mambaout_{s}_1x.py' for s in SIZES}
PAPER_SEG = {s: f'upernet_mambaout_{s}_160k_ade20k_512.py' for s in SIZES}
# the peers' 3x recipes (Swin's and ConvNeXt's), no MambaOut paper numbers
LONG_DET = {(task, s): f'{task}_mambaout_{s}_3x_ms.py' for task in ('mask_rcnn', 'cascade_mask_rcnn') for s in SIZES}
# DETR-style multi-scale training of mmdet's Swin/ConvNeXt 3x configs: shorter side 480, 512, ..., 800
MULTI_SCALE = [(short, 1333) for short in range(480, 801, 32)]


METAFILE = Metafile()


def load(name):
    return Config.fromfile(os.path.join(ROOT, 'configs', name))


def test_all_paper_configs_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, 'configs')) for p in CONFIGS}
    assert set(PAPER_DET.values()) | set(PAPER_SEG.values()) | set(LONG_DET.values()) <= names
    assert {'toy/mask_rcnn_mambaout_toy.py', 'toy/upernet_mambaout_toy.py'} <= names


def test_every_experiment_config_is_in_the_metafile_and_back():
    """configs/*.py (the experiments; not _base_/, toy/, custom/) are exactly the metafile's MambaOut models, each
    named by its config, so that every config has its params and FLOPs (and paper result, if any) there."""
    experiments = {os.path.relpath(p, ROOT) for p in CONFIGS if os.path.dirname(p) == os.path.join(ROOT, 'configs')}
    models = METAFILE.of(OURS)
    assert {m['Config'] for m in models} == experiments
    assert all(m['Name'] == os.path.splitext(os.path.basename(m['Config']))[0] for m in models)


def _slow_to_build(path):
    """Cascade Mask R-CNN (three box heads, 10-15 s a config on 2 cores) and the S and B sizes (5-9 s: the T
    configs' code at other depths and widths) are the slow tier's; the fast tier builds the T, toy and custom ones."""
    name = os.path.basename(path)
    return 'cascade' in name or re.search(r'_mambaout_[sb]_', name) is not None


@pytest.mark.parametrize('path', [pytest.param(p, marks=pytest.mark.slow) if _slow_to_build(p) else p
                                  for p in CONFIGS], ids=lambda p: os.path.relpath(p, os.path.join(ROOT, 'configs')))
def test_config_builds_and_computes_a_loss(path):
    cfg = load_config(path)
    if cfg.default_scope == 'mmseg':
        cfg.model.data_preprocessor.size = (128, 128)
    rcnn = cfg.model.get('train_cfg', {}).get('rcnn') or []  # a list of stages for Cascade R-CNN
    for stage in rcnn if isinstance(rcnn, list) else [rcnn]:
        # 64 RoIs per image instead of 512: the same heads, a fifth of the time (Cascade's 4conv1fc heads)
        stage.sampler.num = 64
    model = build_model(cfg)  # random weights: nothing is downloaded in tests
    listed = METAFILE.ours(os.path.splitext(os.path.basename(path))[0])
    if listed is not None:  # configs/metafile.yml's count, which the README's model zoo shows
        assert sum(p.numel() for p in model.parameters()) == listed['Metadata']['Parameters']
    model.init_weights()
    model.train()
    # two images of other shapes: the data preprocessor pads them into one batch
    batch = synthetic_batch(cfg.default_scope, [(96, 128), (128, 96)], num_classes_of(cfg), num_objects=3)
    data = model.data_preprocessor(batch, training=True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.backbone.stem.conv1.weight.grad is not None
    assert type(model.backbone).__name__ == 'MambaOut'


def _types(pipeline):
    return [t['type'] for t in pipeline]


def check_paper_backbone(backbone, size):
    """The paper's backbone settings for ``size``; returns its output channels."""
    arch, drop_path, dims = SIZES[size]
    assert backbone.type == 'MambaOut' and backbone.arch == arch and backbone.drop_path_rate == drop_path
    assert backbone.with_output_norm is True and tuple(backbone.get('out_indices', (0, 1, 2, 3))) == (0, 1, 2, 3)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=RELEASE.format(arch))
    return dims


def check_paper_optimizer(optim):
    """AdamW 1e-4, wd 0.05, none on norms/biases, no layer-wise decay; FP16 with a dynamic loss scale."""
    assert optim.type == 'AmpOptimWrapper' and optim.loss_scale == 'dynamic'
    assert optim.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert optim.paramwise_cfg == dict(norm_decay_mult=0., bias_decay_mult=0.)
    assert 'constructor' not in optim


@pytest.mark.parametrize('size', SIZES)
def test_detection_recipe(size):
    cfg = load(PAPER_DET[size])
    dims = check_paper_backbone(cfg.model.backbone, size)
    assert cfg.model.neck.in_channels == dims and cfg.model.type == 'MaskRCNN'
    assert cfg.custom_imports == dict(imports=['mmdet_plugin'], allow_failed_imports=False)
    check_paper_optimizer(cfg.optim_wrapper)
    # 1x: 12 epochs, steps at 8 and 11, linear warm-up
    assert cfg.train_cfg.max_epochs == 12
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and not warmup.by_epoch and warmup.end == 500
    assert steps.type == 'MultiStepLR' and steps.milestones == [8, 11] and steps.gamma == 0.1
    # batch 16 = 4 GPUs x 4, lr scaled for other totals
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    # data: 1333x800, flip, COCO bbox + segm
    pipeline = cfg.train_dataloader.dataset.pipeline
    resize = next(t for t in pipeline if t['type'] == 'Resize')
    assert tuple(resize.scale) == (1333, 800) and resize.keep_ratio
    assert next(t for t in pipeline if t['type'] == 'RandomFlip').prob == 0.5
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.val_evaluator.type == 'CocoMetric' and cfg.val_evaluator.metric == ['bbox', 'segm']


@pytest.mark.parametrize('task, size', LONG_DET)
def test_3x_multi_scale_recipes(task, size):
    cfg = load(LONG_DET[task, size])
    dims = check_paper_backbone(cfg.model.backbone, size)  # the same backbone as the 1x config
    assert cfg.model.neck.in_channels == dims
    assert cfg.custom_imports == dict(imports=['mmdet_plugin'], allow_failed_imports=False)
    check_paper_optimizer(cfg.optim_wrapper)
    # 3x: 36 epochs, steps at 27 and 33, 1000-iteration linear warm-up
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and not warmup.by_epoch and warmup.end == 1000
    assert steps.type == 'MultiStepLR' and steps.milestones == [27, 33] and steps.gamma == 0.1 and steps.end == 36
    # batch 16 = 8 GPUs x 2
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    # flip, then shorter side 480-800 (long side <= 1333), or 400-600 + a 384-600 crop + 480-800
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert _types(pipeline) == ['LoadImageFromFile', 'LoadAnnotations', 'RandomFlip', 'RandomChoice', 'PackDetInputs']
    assert pipeline[2].prob == 0.5
    resize_only, resize_crop_resize = pipeline[3].transforms
    assert _types(resize_only) == ['RandomChoiceResize'] and resize_only[0].keep_ratio
    assert [tuple(scale) for scale in resize_only[0].scales] == MULTI_SCALE
    assert _types(resize_crop_resize) == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert [tuple(scale) for scale in resize_crop_resize[0].scales] == [(400, 1333), (500, 1333), (600, 1333)]
    crop = resize_crop_resize[1]
    assert crop.crop_type == 'absolute_range' and tuple(crop.crop_size) == (384, 600)
    assert [tuple(scale) for scale in resize_crop_resize[2].scales] == MULTI_SCALE
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.val_evaluator.type == 'CocoMetric' and cfg.val_evaluator.metric == ['bbox', 'segm']
    if task == 'mask_rcnn':
        assert cfg.model.type == 'MaskRCNN'
        return
    # Cascade: three stages of 4conv1fc box heads regressing decoded boxes with a GIoU loss
    assert cfg.model.type == 'CascadeRCNN' and cfg.model.roi_head.num_stages == 3
    heads = cfg.model.roi_head.bbox_head
    assert len(heads) == 3
    for head in heads:
        assert head.type == 'ConvFCBBoxHead' and (head.num_shared_convs, head.num_shared_fcs) == (4, 1)
        assert head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0) and head.reg_decoded_bbox
        assert head.norm_cfg.type == 'SyncBN'


@pytest.mark.parametrize('size', SIZES)
def test_segmentation_recipe(size):
    cfg = load(PAPER_SEG[size])
    dims = check_paper_backbone(cfg.model.backbone, size)
    assert cfg.custom_imports == dict(imports=['mmseg_plugin'], allow_failed_imports=False)
    assert cfg.model.type == 'EncoderDecoder' and cfg.model.pretrained is None
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.decode_head.in_channels == dims
    assert cfg.model.auxiliary_head.type == 'FCNHead' and cfg.model.auxiliary_head.in_channels == dims[2]
    assert cfg.model.decode_head.num_classes == 150
    check_paper_optimizer(cfg.optim_wrapper)
    # 160k iterations: 1500-iteration linear warm-up, then poly decay
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 160000
    warmup, poly = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and (warmup.begin, warmup.end) == (0, 1500)
    assert poly.type == 'PolyLR' and (poly.begin, poly.end) == (1500, 160000) and poly.power == 1.0
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    # 512x512 crops of ADE20K
    crop = next(t for t in cfg.train_dataloader.dataset.pipeline if t['type'] == 'RandomCrop')
    assert tuple(crop.crop_size) == (512, 512) and tuple(cfg.model.data_preprocessor.size) == (512, 512)
    assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    # mIoU, single-scale and multi-scale (0.5-1.75 of the 2048x512 test scale) + flip through mmseg's TTA
    assert cfg.val_evaluator.type == 'IoUMetric' and cfg.val_evaluator.iou_metrics == ['mIoU']
    assert cfg.tta_model.type == 'SegTTAModel'
    scales, flips = cfg.tta_pipeline[1].transforms[:2]
    assert [tuple(t['scale']) for t in scales] == [(int(2048 * r), int(512 * r)) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    assert tuple(next(t for t in cfg.test_pipeline if t['type'] == 'Resize').scale) == (2048, 512)
    assert sorted(t['prob'] for t in flips) == [0.0, 1.0]


@pytest.mark.parametrize('toy, paper', [('toy/mask_rcnn_mambaout_toy.py', PAPER_DET['t']),
                                        ('toy/upernet_mambaout_toy.py', PAPER_SEG['t'])])
def test_toy_configs_run_the_paper_pipeline(toy, paper):
    toy_cfg, paper_cfg = load(toy), load(paper)
    assert toy_cfg.model.type == paper_cfg.model.type
    assert toy_cfg.model.backbone.type == 'MambaOut' and toy_cfg.model.backbone.init_cfg is None
    assert toy_cfg.model.backbone.with_output_norm is True
    assert toy_cfg.optim_wrapper.optimizer.type == paper_cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert toy_cfg.optim_wrapper.paramwise_cfg == paper_cfg.optim_wrapper.paramwise_cfg
    assert _types(toy_cfg.train_dataloader.dataset.pipeline) == _types(paper_cfg.train_dataloader.dataset.pipeline)
    assert [s['type'] for s in toy_cfg.param_scheduler] == [s['type'] for s in paper_cfg.param_scheduler]
    assert toy_cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert toy_cfg.train_dataloader.dataset.data_root.startswith('data/toy')
