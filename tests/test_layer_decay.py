"""Layer-wise learning-rate decay (MambaOutLearningRateDecayOptimizerConstructor) through mmengine's
build_optim_wrapper, as a config's ``optim_wrapper`` reaches it, in mmdet and in mmseg."""
import argparse
import os
import re

import pytest
import torch
from mmengine.config import DictAction
from mmengine.optim import build_optim_wrapper

from mambaout_tools.models import build_model, load_config

TOY = {'mmdet': 'configs/toy/mask_rcnn_mambaout_toy.py', 'mmseg': 'configs/toy/upernet_mambaout_toy.py'}
DEPTHS = (3, 3, 9, 3)  # femto, the toy configs' backbone
BASE_LR, BASE_WD = 1e-3, 0.05


def optim_wrapper(scope, **paramwise):
    model = build_model(load_config(TOY[scope]))
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
               constructor='MambaOutLearningRateDecayOptimizerConstructor',
               paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., **paramwise))
    return model, build_optim_wrapper(model, cfg)


def expected_layer_id(name, decay_type, num_layers):
    """Written out for the femto's 18 blocks, independently of the constructor."""
    if name.startswith('backbone.stem.'):
        return 0
    match = re.match(r'backbone\.stages\.(\d)\.(?:blocks\.(\d+)|downsample)\.', name)
    if match is None:
        return num_layers + 1
    stage, block = int(match.group(1)), int(match.group(2) or 0)
    if decay_type == 'stage_wise':
        return stage + 1
    return 1 + (sum(DEPTHS[:stage]) + block) * num_layers // sum(DEPTHS)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('decay_type, num_layers, expected_num_layers', [
    ('layer_wise', None, 18), ('layer_wise', 6, 6), ('stage_wise', None, 4)])
def test_lr_of_every_group_follows_its_layer(scope, decay_type, num_layers, expected_num_layers):
    rate = 0.7
    model, wrapper = optim_wrapper(scope, decay_rate=rate, decay_type=decay_type, num_layers=num_layers)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = wrapper.optimizer.param_groups
    grouped = [id(p) for group in groups for p in group['params']]
    # complete and disjoint: every trainable parameter in exactly one group
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert len(grouped) == len(set(grouped))
    seen_ids = set()
    for group in groups:
        for param in group['params']:
            name = names[id(param)]
            layer = expected_layer_id(name, decay_type, expected_num_layers)
            seen_ids.add(layer)
            assert group['lr'] == pytest.approx(BASE_LR * rate ** (expected_num_layers + 1 - layer)), name
            no_decay = name.endswith('.bias') or re.search(r'(^|\.)norm\d*\.|\.norm[12]?\.|\.bn\.|_norm\.', name)
            if no_decay:
                assert group['weight_decay'] == 0, name
            elif param.ndim > 1:
                assert group['weight_decay'] == BASE_WD, name
    assert seen_ids == set(range(expected_num_layers + 2))  # the stem (0) through the heads (top + 1)
    stem = next(g for g in groups if names[id(g['params'][0])] == 'backbone.stem.conv1.weight')
    assert stem['lr'] == pytest.approx(BASE_LR * rate ** (expected_num_layers + 1))


# mmdet's ConvNeXt-S Cascade Mask R-CNN 3x (configs/convnext/cascade-mask-rcnn_convnext-s-p4-w7_fpn_4conv1fc-giou_
# amp-ms-crop-3x_coco.py): no weight-decay keys of mmengine's, ConvNeXt's constructor decides alone.
CONVNEXT_PARAMWISE = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=12)
# The toy's femto with LayerScale (as timm's _rw variants have it), so that 1-D parameters other than biases and
# norms are there too.
WITH_LAYER_SCALE = dict(depths=DEPTHS, dims=(48, 96, 192, 288), ls_init_value=1e-6)


def toy_model_with_layer_scale(scope):
    cfg = load_config(TOY[scope])
    cfg.model.backbone.arch = WITH_LAYER_SCALE
    return build_model(cfg)


def convnext_weight_decay(model, paramwise_cfg):
    """Weight decay of each parameter as mmdet's ConvNeXt ``LearningRateDecayOptimizerConstructor`` gives it, run
    on ``model``. Its rule does not depend on the layer ids, which it computes for backbones whose class name says
    ConvNeXt only: run it under such a name, stage_wise (the ids it gives MambaOut's names with stage_wise do not
    matter here; its layer_wise ones need ConvNeXt's names)."""
    from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor
    backbone = model.backbone
    mambaout_class = type(backbone)
    backbone.__class__ = type('ConvNeXtNamedMambaOut', (mambaout_class,), {})
    try:
        constructor = LearningRateDecayOptimizerConstructor(
            dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD)),
            dict(paramwise_cfg, decay_type='stage_wise'))
        groups = []
        constructor.add_params(groups, model)
    finally:
        backbone.__class__ = mambaout_class
    return {name: group['weight_decay'] for group in groups for name in group['param_names']}


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_convnext_paramwise_cfg_decays_weights_as_convnext_does(scope):
    """ConvNeXt's own paramwise_cfg: no weight decay on 1-D parameters (biases, norms, LayerScale gamma) and the
    lr scale of each parameter's layer, as mmdet's ConvNeXt constructor gives them."""
    model = toy_model_with_layer_scale(scope)
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
               constructor='MambaOutLearningRateDecayOptimizerConstructor', paramwise_cfg=CONVNEXT_PARAMWISE)
    groups = build_optim_wrapper(model, cfg).optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    weight_decay = {names[id(p)]: group['weight_decay'] for group in groups for p in group['params']}
    lr_scale = {names[id(p)]: group['lr_scale'] for group in groups for p in group['params']}
    assert weight_decay == convnext_weight_decay(model, CONVNEXT_PARAMWISE)
    rate, num_layers = CONVNEXT_PARAMWISE['decay_rate'], CONVNEXT_PARAMWISE['num_layers']
    assert lr_scale == pytest.approx({name: rate ** (num_layers + 1 - expected_layer_id(name, 'layer_wise', num_layers))
                                      for name in names.values()})
    no_decay = {name for name, decay in weight_decay.items() if decay == 0}
    assert no_decay == {name for name, p in model.named_parameters() if p.ndim == 1 or name.endswith('.bias')}
    assert {'backbone.stages.0.blocks.0.ls.gamma', 'backbone.stages.0.blocks.0.norm.weight'} <= no_decay
    assert weight_decay['backbone.stages.0.blocks.0.fc1.weight'] == BASE_WD


@pytest.mark.parametrize('given, decayed', [
    (dict(norm_decay_mult=1.), {'backbone.stages.0.blocks.0.norm.weight', 'backbone.stages.0.blocks.0.norm.bias'}),
    (dict(bias_decay_mult=1.), {f'backbone.stages.0.blocks.0.{layer}.bias' for layer in ('conv', 'fc1', 'fc2')}),
    (dict(flat_decay_mult=1.), {'backbone.stages.0.blocks.0.ls.gamma'}),
    (dict(custom_keys={'.ls.gamma': dict(decay_mult=1.)}), {'backbone.stages.0.blocks.0.ls.gamma'}),
])
def test_mmengine_decay_keys_say_otherwise(given, decayed):
    """Each of mmengine's weight-decay keys, when given, decides for its kind of 1-D parameter; the others keep
    none."""
    model = toy_model_with_layer_scale('mmdet')
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
               constructor='MambaOutLearningRateDecayOptimizerConstructor',
               paramwise_cfg=dict(CONVNEXT_PARAMWISE, **given))
    groups = build_optim_wrapper(model, cfg).optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: group['weight_decay'] for group in groups for p in group['params']}
    block = {name: value for name, value in decay.items() if name.startswith('backbone.stages.0.blocks.0.')
             and (name.endswith(('.bias', '.gamma')) or '.norm.' in name)}
    assert {name for name, value in block.items() if value == BASE_WD} == decayed
    assert all(block[name] == 0 for name in set(block) - decayed)


def test_optimizer_without_weight_decay_builds():
    """SGD without weight decay: no decay keys are set for it (mmengine refuses them without a weight decay)."""
    model = build_model(load_config(TOY['mmdet']))
    cfg = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=BASE_LR),
               constructor='MambaOutLearningRateDecayOptimizerConstructor', paramwise_cfg=CONVNEXT_PARAMWISE)
    groups = build_optim_wrapper(model, cfg).optimizer.param_groups
    assert {group['weight_decay'] for group in groups} == {0}  # SGD's default


def test_decay_rate_one_is_the_plain_optimizer():
    _, wrapper = optim_wrapper('mmdet', decay_rate=1.0)
    assert {group['lr'] for group in wrapper.optimizer.param_groups} == {BASE_LR}


@pytest.mark.parametrize('paramwise, match', [
    (dict(), r'needs paramwise_cfg.decay_rate in \(0, 1\], got None'),
    (dict(decay_rate=1.5), r'decay_rate in \(0, 1\], got 1.5'),
    (dict(decay_rate=0.7, decay_type='block_wise'), r"decay_type must be one of \('layer_wise', 'stage_wise'\)"),
    (dict(decay_rate=0.7, num_layers=0), r'num_layers must be a positive int, got 0'),
])
def test_bad_settings_are_one_clear_error(paramwise, match):
    with pytest.raises(ValueError, match=match):
        optim_wrapper('mmseg', **paramwise)


def test_another_backbone_is_a_clear_error():
    import mmdet_plugin  # noqa: F401  (registers the constructor)
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(2, 2)
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR),
               constructor='MambaOutLearningRateDecayOptimizerConstructor', paramwise_cfg=dict(decay_rate=0.7))
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    with pytest.raises(TypeError, match='backbone is MambaOut, got Linear'):
        build_optim_wrapper(model, cfg)


def test_example_config_decays_as_documented():
    cfg = load_config('configs/upernet_mambaout_t_160k_ade20k_512_lr_decay.py')
    model = build_model(cfg)
    wrapper_cfg = dict(cfg.optim_wrapper, type='OptimWrapper')  # AmpOptimWrapper needs CUDA; the groups are the same
    wrapper_cfg.pop('loss_scale')
    groups = build_optim_wrapper(model, wrapper_cfg).optimizer.param_groups
    lr_of = {name: group['lr'] for group in groups for name, p in model.named_parameters() if p is group['params'][0]}
    lr = cfg.optim_wrapper.optimizer.lr
    assert lr_of['backbone.stem.conv1.weight'] == pytest.approx(lr * 0.9 ** 13)
    assert lr_of['backbone.stages.0.blocks.0.fc1.weight'] == pytest.approx(lr * 0.9 ** 12)
    assert lr_of['backbone.stages.3.downsample.conv.weight'] == pytest.approx(lr * 0.9 ** 9)
    assert lr_of['decode_head.conv_seg.weight'] == pytest.approx(lr)
    assert lr_of['backbone.stages.0.blocks.0.norm.weight'] == pytest.approx(lr * 0.9 ** 12)
    norm_group = next(g for g in groups if g['params'][0] is model.backbone.stages[0].blocks[0].norm.weight)
    assert norm_group['weight_decay'] == 0  # the paper recipe's weight-decay rules are kept
    weight_decay = cfg.optim_wrapper.optimizer.weight_decay
    assert all(group['weight_decay'] == (0 if group['params'][0].ndim == 1 else weight_decay) for group in groups)


def test_docs_convnext_cascade_options_on_the_cascade_config():
    """The ``--cfg-options`` of docs/schedules.md for ConvNeXt-T's Cascade values ("Longer schedules"), merged into
    the Cascade config as ``tools/train.py`` merges them: eight lr levels, 2e-4 * 0.7 ** (7 - layer_id)."""
    with open(os.path.join('docs', 'schedules.md')) as f:
        line = re.search(r'`--cfg-options (optim_wrapper\.constructor=MambaOut[^`]*)`', f.read()).group(1)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)  # as tools/train.py and mmdet's train.py
    cfg = load_config('configs/cascade_mask_rcnn_mambaout_t_3x_ms.py')
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *line.split()]).cfg_options)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    # mmengine's AmpOptimWrapper wants a GPU; the plain wrapper builds the same parameter groups
    cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.optim_wrapper.pop('loss_scale')
    model = build_model(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = sorted({group['lr'] for group in wrapper.optimizer.param_groups})
    assert lrs == pytest.approx(sorted(2e-4 * 0.7 ** (7 - layer_id) for layer_id in range(8)))
    heads = {id(p) for name, p in model.named_parameters() if not name.startswith('backbone.')}
    assert all(group['lr'] == pytest.approx(2e-4) for group in wrapper.optimizer.param_groups
               if any(id(p) in heads for p in group['params']))
