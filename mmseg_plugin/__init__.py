"""Registers MambaOut in mmseg: ``custom_imports=dict(imports=['mmseg_plugin'])``
(see :func:`backbones.plugin.register_in`), and the dataset and visualizer classes that mmseg's own tools need (:mod:`mmseg_plugin.stock_tools`)."""
from backbones import MambaOut
from backbones.plugin import register_in

register_in('mmseg')

from mmseg.registry import DATASETS, VISUALIZERS  # noqa: E402  (after register_in's stack check)

from .stock_tools import ContiguousSegLocalVisualizer, MetainfoSegDataset  # noqa: E402

DATASETS.register_module(module=MetainfoSegDataset)
VISUALIZERS.register_module(module=ContiguousSegLocalVisualizer)

__all__ = ['MambaOut']
