"""The MambaOut backbone: one implementation, registered into mmdet by ``mmdet_plugin`` and into mmseg by
``mmseg_plugin``."""
from .checkpoint import CheckpointMismatchError, load_pretrained, to_backbone_state_dict
from .mambaout import ARCH_DEFAULTS, GatedCNNBlock, MambaOut, arch_settings, resolve_arch

__all__ = ['MambaOut', 'GatedCNNBlock', 'arch_settings', 'ARCH_DEFAULTS', 'resolve_arch', 'load_pretrained',
           'to_backbone_state_dict', 'CheckpointMismatchError']
