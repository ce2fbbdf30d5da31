"""Registers the MambaOut backbone in mmdet's ``MODELS``: ``custom_imports=dict(imports=['mmdet_plugin'])``.

Importing it also makes the training checkpoints of this process loadable by mmdet's own scripts under
torch's weights-only ``torch.load`` (:mod:`backbones.training_checkpoint`)."""
from backbones.stack import check_stack

check_stack('mmdet')

from mmdet.registry import MODELS  # noqa: E402  (after the stack check, which explains a broken mmcv)

from backbones import MambaOut  # noqa: E402
from backbones.training_checkpoint import add_to_every_runner  # noqa: E402

MODELS.register_module(module=MambaOut)
add_to_every_runner()

__all__ = ['MambaOut']
