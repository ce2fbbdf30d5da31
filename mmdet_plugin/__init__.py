"""Registers MambaOut in mmdet: ``custom_imports=dict(imports=['mmdet_plugin'])`` (see :func:`backbones.plugin.register_in`)."""
from backbones import MambaOut
from backbones.plugin import register_in

register_in('mmdet')

__all__ = ['MambaOut']
