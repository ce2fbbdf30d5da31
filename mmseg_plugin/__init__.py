"""Registers the MambaOut backbone in mmseg's ``MODELS``: ``custom_imports=dict(imports=['mmseg_plugin'])``.

Importing it also makes the training checkpoints of this process loadable by mmseg's own scripts under
torch's weights-only ``torch.load`` (:mod:`backbones.training_checkpoint`)."""
from backbones.stack import check_stack

check_stack('mmseg')  # before mmseg is imported: a broken mmcv is explained, not a deep ImportError

from mmseg.registry import MODELS  # noqa: E402

from backbones import MambaOut, training_checkpoint  # noqa: E402

MODELS.register_module(module=MambaOut)
training_checkpoint.add_to_every_runner()
