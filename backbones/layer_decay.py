"""Layer-wise learning-rate decay for MambaOut, as mmdet's and mmseg's ConvNeXt recipes use it.

The stem gets layer id 0, then each block (``layer_wise``) or each stage (``stage_wise``) the next ids up to
``num_layers``; the neck, the heads and the backbone's output norms (new parameters, as ConvNeXt's) get
``num_layers + 1``. A parameter with layer id ``i`` trains with ``lr * decay_rate ** (num_layers + 1 - i)``: the
full lr at the top, less towards the stem.

Weight decay is ConvNeXt's rule by default: none on 1-D parameters (biases, norms, LayerScale ``gamma``), as
mmdet's/mmseg's ``LearningRateDecayOptimizerConstructor`` does. mmengine's ``paramwise_cfg`` keys say otherwise
where given: ``norm_decay_mult`` (norm layers), ``bias_decay_mult`` (biases), ``flat_decay_mult`` (any other 1-D
parameter) and ``custom_keys`` (whose ``decay_mult`` wins over all) apply as in mmengine.
"""
import re
from typing import List

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

DECAY_TYPES = ('layer_wise', 'stage_wise')
# mmengine's weight-decay multipliers that, left unset, give ConvNeXt's "no decay on 1-D parameters"
ONE_DIM_DECAY_MULTS = ('norm_decay_mult', 'bias_decay_mult', 'flat_decay_mult')


class MambaOutLearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """``optim_wrapper=dict(constructor='MambaOutLearningRateDecayOptimizerConstructor', paramwise_cfg=dict(
    decay_rate=0.7, decay_type='layer_wise', num_layers=None))``.

    Args (in ``paramwise_cfg``, besides mmengine's):
        decay_rate (float): lr factor per layer id below the top, in (0, 1].
        decay_type (str): ``'layer_wise'`` (an id per block) or ``'stage_wise'`` (an id per stage).
            Default: ``'layer_wise'``.
        num_layers (int, optional): how many ids the blocks (or stages) share, from 1 to ``num_layers``;
            with fewer ids than blocks, consecutive blocks share one. Default: the number of blocks
            (``layer_wise``) or of stages (``stage_wise``) of the backbone.
        norm_decay_mult, bias_decay_mult, flat_decay_mult (float): mmengine's weight-decay multipliers of norm
            layers, biases and other 1-D parameters. Default: 0 each (ConvNeXt's rule), when the optimizer has
            a weight decay.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.decay_rate = paramwise_cfg.pop('decay_rate', None)
        self.decay_type = paramwise_cfg.pop('decay_type', 'layer_wise')
        self.num_layers = paramwise_cfg.pop('num_layers', None)
        if not isinstance(self.decay_rate, (int, float)) or not 0 < self.decay_rate <= 1:
            raise ValueError(f'{type(self).__name__} needs paramwise_cfg.decay_rate in (0, 1], got '
                             f'{self.decay_rate!r}.')
        if self.decay_type not in DECAY_TYPES:
            raise ValueError(f'paramwise_cfg.decay_type must be one of {DECAY_TYPES}, got {self.decay_type!r}.')
        if self.num_layers is not None and (not isinstance(self.num_layers, int) or self.num_layers < 1):
            raise ValueError(f'paramwise_cfg.num_layers must be a positive int, got {self.num_layers!r}.')
        # mmengine skips add_params (where the lr is scaled) when paramwise_cfg is empty
        paramwise_cfg.setdefault('bypass_duplicate', False)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.base_wd is not None:  # mmengine refuses decay multipliers for an optimizer without weight decay
            for key in ONE_DIM_DECAY_MULTS:
                self.paramwise_cfg.setdefault(key, 0.)

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        if prefix:  # mmengine's recursion over submodules
            return super().add_params(params, module, prefix, **kwargs)
        first = len(params)
        super().add_params(params, module, prefix, **kwargs)  # one group per parameter
        backbone = _backbone_of(module)
        layer_id = _LayerIds(backbone, self.decay_type, self.num_layers)
        names = {id(param): name for name, param in module.named_parameters()}
        for group in params[first:]:
            layer = layer_id(names[id(group['params'][0])])
            scale = self.decay_rate ** (layer_id.num_layers + 1 - layer)
            group.update(lr=group.get('lr', self.base_lr) * scale, layer_id=layer, lr_scale=scale)
        print_log(f'{type(self).__name__}: {self.decay_type} decay {self.decay_rate} over '
                  f'{layer_id.num_layers} layers (stem: lr x {self.decay_rate ** (layer_id.num_layers + 1):.3g})',
                  logger='current')


def _backbone_of(model: nn.Module) -> nn.Module:
    model = getattr(model, 'module', model)  # a DDP wrapper
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not hasattr(backbone, 'stages') or not hasattr(backbone, 'stem'):
        raise TypeError('MambaOutLearningRateDecayOptimizerConstructor needs a model whose backbone is MambaOut, '
                        f'got {type(backbone).__name__}.')
    return backbone


class _LayerIds:
    """Parameter name -> layer id (see the module doc)."""

    def __init__(self, backbone, decay_type: str, num_layers: int = None):
        depths = [len(stage.blocks) for stage in backbone.stages]
        self.decay_type = decay_type
        self.num_blocks = sum(depths)
        self.num_layers = num_layers or (self.num_blocks if decay_type == 'layer_wise' else len(depths))
        self.first_block = [sum(depths[:i]) for i in range(len(depths))]

    def _block_id(self, global_index: int) -> int:
        return 1 + global_index * self.num_layers // self.num_blocks

    def __call__(self, name: str) -> int:
        name = name[len('module.'):] if name.startswith('module.') else name
        if name.startswith('backbone.stem.'):
            return 0
        stage = re.match(r'^backbone\.stages\.(\d+)\.(?:blocks\.(\d+)|downsample)\.', name)
        if stage is None:  # neck, heads, the backbone's output norms
            return self.num_layers + 1
        index = int(stage.group(1))
        if self.decay_type == 'stage_wise':
            return min(index + 1, self.num_layers)
        block = int(stage.group(2)) if stage.group(2) is not None else 0  # a downsample goes with the first block
        return self._block_id(self.first_block[index] + block)
