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
