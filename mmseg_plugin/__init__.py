"""Registers MambaOut in mmseg: ``custom_imports=dict(imports=['mmseg_plugin'])`` (see :func:`backbones.plugin.register_in`)."""
from backbones import MambaOut
from backbones.plugin import register_in

register_in('mmseg')

__all__ = ['MambaOut']
