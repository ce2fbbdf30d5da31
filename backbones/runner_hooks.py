"""Hooks that every mmengine Runner gets once ``mmdet_plugin`` or ``mmseg_plugin`` is imported.

mmengine has no way for a plugin to add a hook to every runner; :func:`add_to_every_runner` (called by
:func:`backbones.plugin.register_in`) makes each :class:`~mmengine.runner.Runner` built afterwards register
the hooks it names, unless the runner's config already lists one of that type.
"""
import functools
from typing import List, Type

from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.runner import Runner

_hook_types: List[Type[Hook]] = []


def add_to_every_runner(*hook_types: Type[Hook]) -> None:
    """Make every :class:`~mmengine.runner.Runner` built from now on register one hook of each of
    ``hook_types`` that its config does not list yet. Idempotent: one wrapper, each type once."""
    _hook_types.extend(hook_type for hook_type in hook_types if hook_type not in _hook_types)
    if getattr(Runner.register_hooks, '_adds_plugin_hooks', False):
        return
    register_hooks = Runner.register_hooks

    @functools.wraps(register_hooks)
    def register_hooks_and_the_plugins(self, *args, **kwargs):
        register_hooks(self, *args, **kwargs)
        for hook_type in _hook_types:
            if not any(isinstance(hook, hook_type) for hook in self.hooks):
                self.register_hook(hook_type())

    register_hooks_and_the_plugins._adds_plugin_hooks = True
    Runner.register_hooks = register_hooks_and_the_plugins


class PlainParamGroupsHook(Hook):
    """Makes the optimizers' param groups plain dicts before training, so that mmengine's ``compile=True``
    (torch.compile of ``train_step``, the optimizer step included) works with a ``paramwise_cfg``.

    mmengine's optimizer constructor builds the groups that ``paramwise_cfg`` describes as ``ConfigDict``s (its
    registry converts the dicts it is given), and Dynamo's optimizer support (torch 2.14) fails on a dict
    subclass: ``InternalTorchDynamoError: AttributeError: 'UserDefinedDictVariable' object has no attribute
    'items'``. Keys and values stay as they are; the list object too, so what holds it sees the new groups.
    Runs before training, after a resume, before the first (lazily compiled) step.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        wrappers = runner.optim_wrapper.values() if isinstance(runner.optim_wrapper, OptimWrapperDict) \
            else [runner.optim_wrapper]
        for wrapper in wrappers:
            groups = wrapper.optimizer.param_groups
            groups[:] = [dict(group) for group in groups]
