"""MambaOut backbone (Yu & Wang, "MambaOut: Do We Really Need Mamba for Vision?", CVPR 2025).

The one implementation used by both plugins. Module names follow timm's ``mambaout.py``
(``stem`` / ``stages.i.downsample`` / ``stages.i.blocks.j``) so that timm state dicts load as they
are; the official release layout (``downsample_layers.i`` / ``stages.i.j``) is converted by
:mod:`backbones.checkpoint`. Inside the network features stay channels-last (NHWC), as in the
reference, and are returned as NCHW.
"""
import copy
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from timm.layers import DropPath, LayerScale
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import load_pretrained
from .gated_cnn_kernel import GatedCNNParams, GatedCNNSpec, gated_cnn_branch, kernel_can_run

# Fields every variant has, with the reference's defaults (official MambaOut / timm ``MambaOut``).
ARCH_DEFAULTS = dict(
    expansion_ratio=8 / 3,
    kernel_size=7,
    conv_ratio=1.0,
    stem_mid_norm=True,
    downsample='conv',  # 'conv': conv then norm (official); 'conv_nf': norm then conv (timm _rw)
    ls_init_value=None,  # LayerScale init value; None disables it (official variants)
    act='gelu',
)

# Depths/dims exactly as the official repository and timm 1.0.x's ``mambaout_*`` entry points.
_RW = dict(stem_mid_norm=False, downsample='conv_nf', ls_init_value=1e-6)
arch_settings: Dict[str, dict] = {
    'femto': dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 288)),
    'kobe': dict(depths=(3, 3, 15, 3), dims=(48, 96, 192, 288)),
    'tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576)),
    'small': dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576)),
    'base': dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768)),
    'small_rw': dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576), **_RW),
    'base_short_rw': dict(depths=(3, 3, 25, 3), dims=(128, 256, 512, 768),
                          expansion_ratio=3.0, conv_ratio=1.25, **_RW),
    'base_tall_rw': dict(depths=(3, 4, 30, 3), dims=(128, 256, 512, 768),
                         expansion_ratio=2.5, conv_ratio=1.25, **_RW),
    'base_wide_rw': dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768),
                         expansion_ratio=3.0, conv_ratio=1.5, act='silu', **_RW),
    'base_plus_rw': dict(depths=(3, 4, 30, 3), dims=(128, 256, 512, 768),
                         expansion_ratio=3.0, conv_ratio=1.5, act='silu', **_RW),
}

ACTIVATIONS = {'gelu': nn.GELU, 'silu': nn.SiLU}
DOWNSAMPLE_MODES = ('conv', 'conv_nf')


def resolve_arch(arch: Union[str, dict]) -> dict:
    """Return the full settings of a variant name or a custom ``dict(depths=..., dims=..., ...)``."""
    if isinstance(arch, str):
        if arch not in arch_settings:
            raise ValueError(f'Unknown MambaOut arch {arch!r}; valid names: {sorted(arch_settings)}, '
                             'or a dict with at least "depths" and "dims".')
        arch = arch_settings[arch]
    elif not isinstance(arch, dict):
        raise TypeError(f'MambaOut arch must be a name or a dict, got {type(arch).__name__}.')
    unknown = set(arch) - set(ARCH_DEFAULTS) - {'depths', 'dims'}
    if unknown or not {'depths', 'dims'} <= set(arch):
        raise ValueError(f'A custom MambaOut arch needs "depths" and "dims" and may set {sorted(ARCH_DEFAULTS)}; '
                         f'got keys {sorted(arch)}.')
    settings = {**ARCH_DEFAULTS, **copy.deepcopy(arch)}
    depths, dims = tuple(settings['depths']), tuple(settings['dims'])
    if len(depths) != len(dims) or not depths:
        raise ValueError(f'MambaOut arch "depths" {depths} and "dims" {dims} must be non-empty and of equal length.')
    if settings['act'] not in ACTIVATIONS:
        raise ValueError(f'MambaOut arch act {settings["act"]!r} is not one of {sorted(ACTIVATIONS)}.')
    if settings['downsample'] not in DOWNSAMPLE_MODES:
        raise ValueError(f'MambaOut arch downsample {settings["downsample"]!r} is not one of {DOWNSAMPLE_MODES}.')
    settings.update(depths=depths, dims=dims)
    return settings


def _layer_norm(dim: int) -> nn.LayerNorm:
    # eps=1e-6 as in the official model and timm's LayerNorm.
    return nn.LayerNorm(dim, eps=1e-6)


def _conv3x3_s2(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)


class Stem(nn.Module):
    """Two stride-2 3x3 convs (stride 4 in all); NCHW in, NHWC out."""

    def __init__(self, in_channels: int, out_channels: int, mid_norm: bool = True, act_layer=nn.GELU):
        super().__init__()
        self.conv1 = _conv3x3_s2(in_channels, out_channels // 2)
        # The _rw variants have no norm here; keep the name free so timm keys line up.
        self.norm1 = _layer_norm(out_channels // 2) if mid_norm else None
        self.act = act_layer()
        self.conv2 = _conv3x3_s2(out_channels // 2, out_channels)
        self.norm2 = _layer_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.norm1 is not None:
            x = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.conv2(self.act(x))
        return self.norm2(x.permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """Stride-2 3x3 conv between stages, NHWC in and out; LayerNorm after it (official) or before it
    (``norm_first``, timm's ``_rw`` variants)."""

    def __init__(self, in_channels: int, out_channels: int, norm_first: bool = False):
        super().__init__()
        self.norm_first = norm_first
        self.norm = _layer_norm(in_channels if norm_first else out_channels)
        self.conv = _conv3x3_s2(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = self.norm(x)
        x = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x if self.norm_first else self.norm(x)


class GatedCNNBlock(nn.Module):
    """Gated CNN block: LayerNorm -> fc1 -> (gate, identity, conv) -> 7x7 depthwise conv on the conv
    part -> fc2(act(gate) * cat(identity, conv)) -> LayerScale -> drop path, plus the shortcut.

    NHWC in and out. Disabled parts are ``nn.Identity`` so checkpoint keys never move. With
    ``memory_efficient`` and GELU or SiLU, the branch runs as :mod:`backbones.gated_cnn_kernel`: the same
    forward numbers as the plain modules (:meth:`_residual_plain`), about half their activation memory for
    backward, and faster on CPU; under torch.compile too on torch >= 2.4 (as torch.library operators). The
    plain modules run instead under jit tracing and torch.export, and under torch.compile on torch < 2.4
    (:func:`~backbones.gated_cnn_kernel.kernel_can_run`).

    Args:
        dim (int): input and output channels.
        expansion_ratio (float): fc1's hidden width per part, times ``dim``. Default: 8/3.
        kernel_size (int): the depthwise conv's kernel size. Default: 7.
        conv_ratio (float): channels through the depthwise conv, times ``dim``. Default: 1.0.
        ls_init_value (float, optional): LayerScale's init value; None disables it. Default: None.
        act_layer (type): the gate's activation. Default: ``nn.GELU``.
        drop_path (float): stochastic depth rate. Default: 0.
        with_cp (bool): recompute the block in backward (activation checkpointing). Default: False.
        memory_efficient (bool): run the branch as the memory-lean kernel where it can; False always runs
            the plain modules (timm's formulation, autograd through every op). Default: True.
    """

    def __init__(self, dim: int, expansion_ratio: float = 8 / 3, kernel_size: int = 7, conv_ratio: float = 1.0,
                 ls_init_value=None, act_layer=nn.GELU, drop_path: float = 0., with_cp: bool = False,
                 memory_efficient: bool = True):
        super().__init__()
        self.with_cp = with_cp
        self.memory_efficient = memory_efficient
        self.norm = _layer_norm(dim)
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden * 2)
        self.act = act_layer()
        self.split_indices = (hidden, hidden - conv_channels, conv_channels)
        self.conv = nn.Conv2d(conv_channels, conv_channels, kernel_size=kernel_size, padding=kernel_size // 2,
                              groups=conv_channels)
        self.fc2 = nn.Linear(hidden, dim)
        self.ls = LayerScale(dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        # The kernel knows GELU and SiLU; other activations run the plain modules.
        self.kernel_spec = None
        if isinstance(self.act, (nn.GELU, nn.SiLU)):
            act = 'gelu' if isinstance(self.act, nn.GELU) else 'silu'
            self.kernel_spec = GatedCNNSpec(*self.split_indices, act=act, eps=self.norm.eps,
                                            gelu_approximate=getattr(self.act, 'approximate', 'none'))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        if not self.memory_efficient or self.kernel_spec is None or not kernel_can_run():
            return self._residual_plain(x)
        params = GatedCNNParams(self.norm.weight, self.norm.bias, self.fc1.weight, self.fc1.bias,
                                self.conv.weight, self.conv.bias, self.fc2.weight, self.fc2.bias)
        return self.ls(gated_cnn_branch(x, self.kernel_spec, params))

    def _residual_plain(self, x: torch.Tensor) -> torch.Tensor:
        """The reference formulation (timm's), with autograd through every op."""
        gate, identity, conv_in = torch.split(self.fc1(self.norm(x)), self.split_indices, dim=-1)
        conv_out = self.conv(conv_in.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.ls(self.fc2(self.act(gate) * torch.cat((identity, conv_out), dim=-1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            # Recompute the block in backward: keeps only the block input per block.
            residual = cp.checkpoint(self.residual, x, use_reentrant=False)
        else:
            residual = self.residual(x)
        return x + self.drop_path(residual)


class MambaOutStage(nn.Module):
    """Optional downsampling followed by ``depth`` Gated CNN blocks (NHWC)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, downsample: str = '',
                 drop_path: Sequence[float] = (), **block_kwargs):
        super().__init__()
        if downsample:
            self.downsample = Downsample(in_channels, out_channels, norm_first=downsample == 'conv_nf')
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            GatedCNNBlock(out_channels, drop_path=drop_path[j], **block_kwargs) for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class MambaOut(BaseModule):
    """MambaOut backbone for detection and segmentation.

    Args:
        arch (str | dict): a variant of :data:`arch_settings` (``femto``, ``kobe``, ``tiny``,
            ``small``, ``base``, ``small_rw``, ``base_short_rw``, ``base_tall_rw``,
            ``base_wide_rw``, ``base_plus_rw``) or a dict with ``depths`` and ``dims`` and, optionally,
            any field of :data:`ARCH_DEFAULTS`. Default: ``'tiny'``.
        in_channels (int): input image channels. Default: 3.
        out_indices (Sequence[int]): stages whose outputs are returned (negative indices count from
            the end). Default: ``(0, 1, 2, 3)``, strides 4/8/16/32. Stages after the last returned one
            are not built (as timm's ``features_only``), so that every parameter gets a gradient, as DDP
            with ``find_unused_parameters=False`` requires; their keys in a full checkpoint are dropped.
        with_output_norm (bool): apply a LayerNorm ``norm{i}`` to each returned stage output (the
            paper's detection/segmentation recipe). Default: True.
        drop_path_rate (float): stochastic depth rate, increasing linearly over the blocks. Default: 0.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k >= 1 the stem and stages 0..k-1 (with
            their output norms; stages that are not built are skipped). Frozen parts get no gradient and
            stay in eval mode. Default: -1.
        norm_eval (bool): keep normalization layers in eval mode while training. LayerNorm has no
            running statistics, so this only matters for BatchNorm-like layers; kept for mm* API
            compatibility. Default: False.
        with_cp (bool): activation checkpointing per block (saves memory, costs a second forward of
            each block). Default: False.
        memory_efficient (bool): run the Gated CNN blocks' branch as the memory-lean kernel
            (:mod:`backbones.gated_cnn_kernel`: same outputs and gradients, about half the activation
            memory; compiled too on torch >= 2.4). False runs the plain modules (timm's formulation)
            everywhere: a way out if the kernel misbehaves on some device, and the graph that torch.compile
            fuses and rematerializes itself. Default: True.
        init_cfg (dict | list[dict], optional): mmengine init config. ``dict(type='Pretrained',
            checkpoint=PATH_OR_URL[, prefix=...])`` loads official, timm, or mmdet/mmseg checkpoints
            (see :func:`backbones.checkpoint.load_pretrained`).
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 with_output_norm: bool = True,
                 drop_path_rate: float = 0.,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 memory_efficient: bool = True,
                 init_cfg=(dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
                           dict(type='Constant', layer='LayerNorm', val=1., bias=0.))):
        super().__init__(init_cfg=copy.deepcopy(list(init_cfg)) if isinstance(init_cfg, tuple) else init_cfg)
        self.arch_name = arch if isinstance(arch, str) else 'custom'
        self.arch = resolve_arch(arch)
        depths, dims = self.arch['depths'], self.arch['dims']
        self.num_stages = len(depths)
        self.out_indices = self._check_out_indices(out_indices, self.num_stages)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_stages}] (-1: none, 0: stem, '
                             f'k: stem and the first k stages), got {frozen_stages!r}.')
        if not 0. <= drop_path_rate < 1.:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}.')
        if not isinstance(memory_efficient, bool):
            raise TypeError(f'memory_efficient must be True or False, got {memory_efficient!r}.')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_output_norm = with_output_norm
        self.in_channels = in_channels
        self.dims = dims
        self.memory_efficient = memory_efficient

        act_layer = ACTIVATIONS[self.arch['act']]
        self.stem = Stem(in_channels, dims[0], mid_norm=self.arch['stem_mid_norm'], act_layer=act_layer)
        dp_rates = torch.linspace(0, drop_path_rate, sum(depths)).split(list(depths))
        self.stages = nn.Sequential(*[
            MambaOutStage(
                dims[i - 1] if i > 0 else dims[0], dims[i], depths[i],
                downsample=self.arch['downsample'] if i > 0 else '',
                drop_path=dp_rates[i].tolist(),
                expansion_ratio=self.arch['expansion_ratio'],
                kernel_size=self.arch['kernel_size'],
                conv_ratio=self.arch['conv_ratio'],
                ls_init_value=self.arch['ls_init_value'],
                act_layer=act_layer,
                with_cp=with_cp,
                memory_efficient=memory_efficient,
            ) for i in range(self.out_indices[-1] + 1)])
        # Output norms only for returned stages, so that every parameter receives a gradient.
        if with_output_norm:
            for i in self.out_indices:
                self.add_module(f'norm{i}', _layer_norm(dims[i]))
        self._freeze_stages()

    @staticmethod
    def _check_out_indices(out_indices, num_stages: int) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)) or not out_indices:
            raise TypeError(f'out_indices must be a non-empty sequence of ints, got {out_indices!r}.')
        resolved = []
        for index in out_indices:
            if not isinstance(index, int) or not -num_stages <= index < num_stages:
                raise ValueError(f'out_indices {tuple(out_indices)} has {index!r}, out of range for a '
                                 f'{num_stages}-stage MambaOut: valid indices are 0..{num_stages - 1} '
                                 f'(or -{num_stages}..-1).')
            resolved.append(index % num_stages)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f'out_indices {tuple(out_indices)} names a stage twice.')
        return tuple(sorted(resolved))

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of the returned feature maps, in order (for necks' ``in_channels``)."""
        return tuple(self.dims[i] for i in self.out_indices)

    def init_weights(self):
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            load_pretrained(self, self.init_cfg['checkpoint'], prefix=self.init_cfg.get('prefix'),
                            logger=MMLogger.get_current_instance())
            self._is_init = True
            return
        super().init_weights()

    def _frozen_modules(self):
        if self.frozen_stages >= 0:
            yield self.stem
        for i in range(min(self.frozen_stages, len(self.stages))):
            yield self.stages[i]
            if hasattr(self, f'norm{i}'):
                yield getattr(self, f'norm{i}')

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        # Not while tracing (ONNX export, FLOP counters): there shapes are traced values, not ints.
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != self.in_channels):
            raise ValueError(f'MambaOut expects images as a (N, C, H, W) tensor with C = in_channels = '
                             f'{self.in_channels}, got a tensor of shape {tuple(x.shape)}.')
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x) if self.with_output_norm else x
                # Contiguous NCHW, not a channels_last view: mmcv's RoIAlign kernels index raw NCHW
                # memory and silently read a channels_last tensor scrambled.
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
