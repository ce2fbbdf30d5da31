"""Registers the MambaOut backbone in mmdet's ``MODELS``: ``custom_imports=dict(imports=['mmdet_plugin'])``.

Importing it also makes the training checkpoints of this process loadable by mmdet's own scripts under
torch's weights-only ``torch.load`` (:mod:`backbones.training_checkpoint`)."""
from backbones.stack import check_stack

check_stack('mmdet')  # before mmdet is imported: a broken mmcv is explained, not a deep ImportError

from mmdet.registry import MODELS  # noqa: E402

from backbones import MambaOut, training_checkpoint  # noqa: E402

MODELS.register_module(module=MambaOut)
training_checkpoint.add_to_every_runner()
