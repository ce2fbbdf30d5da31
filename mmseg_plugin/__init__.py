"""Registers the MambaOut backbone in mmseg's ``MODELS``: ``custom_imports=dict(imports=['mmseg_plugin'])``."""
from backbones.stack import check_stack

check_stack('mmseg')

from mmseg.registry import MODELS  # noqa: E402  (after the stack check, which explains a broken mmcv)

from backbones import MambaOut  # noqa: E402

MODELS.register_module(module=MambaOut)

__all__ = ['MambaOut']
