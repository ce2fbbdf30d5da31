"""The hooks every Runner gets from the plugins (backbones.runner_hooks): registered once, and the param groups
that mmengine's compile=True can trace."""
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.optim import OptimWrapperDict, build_optim_wrapper
from torch import nn

from backbones import gated_cnn_kernel
from backbones.runner_hooks import PlainParamGroupsHook

RECIPE_OPTIM_WRAPPER = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                            paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))


def model_and_optim_wrapper():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    return model, build_optim_wrapper(model, ConfigDict(RECIPE_OPTIM_WRAPPER))


def test_param_groups_become_plain_dicts_with_the_same_settings():
    _, wrapper = model_and_optim_wrapper()
    groups = wrapper.optimizer.param_groups
    assert all(isinstance(group, ConfigDict) for group in groups)  # what mmengine builds from paramwise_cfg
    before = [dict(group) for group in groups]
    PlainParamGroupsHook().before_train(SimpleNamespace(optim_wrapper=wrapper))
    assert wrapper.optimizer.param_groups is groups  # the same list, new groups
    assert [type(group) for group in groups] == [dict] * len(before)
    assert groups == before
    assert sorted(group['weight_decay'] for group in groups) == [0.] * (len(groups) - 1) + [0.05]


def test_every_optimizer_of_an_optim_wrapper_dict():
    _, first = model_and_optim_wrapper()
    _, second = model_and_optim_wrapper()
    PlainParamGroupsHook().before_train(SimpleNamespace(optim_wrapper=OptimWrapperDict(a=first, b=second)))
    for wrapper in (first, second):
        assert all(type(group) is dict for group in wrapper.optimizer.param_groups)


@pytest.mark.skipif(not gated_cnn_kernel.CUSTOM_OPS, reason='the Dynamo failure and mmengine compile=True with the '
                    'lean kernel are of torch >= 2.4 here')
def test_compiled_step_with_the_recipes_param_groups():
    model, wrapper = model_and_optim_wrapper()
    PlainParamGroupsHook().before_train(SimpleNamespace(optim_wrapper=wrapper))

    def train_step(x):
        loss = model(x).square().mean()
        wrapper.update_params(loss)
        return loss

    weight = model[0].weight.detach().clone()
    torch.compile(train_step, backend='eager')(torch.randn(2, 4))  # without the hook: InternalTorchDynamoError
    assert not torch.equal(model[0].weight, weight)  # the compiled step updated the weights
