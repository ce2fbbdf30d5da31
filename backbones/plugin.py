"""What importing ``mmdet_plugin`` or ``mmseg_plugin`` does, in one place for both libraries."""
import importlib

from .layer_decay import MambaOutLearningRateDecayOptimizerConstructor
from .mambaout import MambaOut
from .stack import check_stack
from .runner_hooks import PlainParamGroupsHook, add_to_every_runner
from .training_checkpoint import WeightsOnlyCheckpointHook


def register_in(library: str) -> None:
    """Register MambaOut in ``library``'s ``MODELS`` and its layer-wise lr decay in its
    ``OPTIM_WRAPPER_CONSTRUCTORS`` ('mmdet' or 'mmseg'), and make every runner write training checkpoints that
    torch's weights-only ``torch.load`` (the library's own scripts) reads (:mod:`.training_checkpoint`) and
    train with ``compile=True`` whatever its ``paramwise_cfg`` (:class:`.runner_hooks.PlainParamGroupsHook`).

    The stack is checked before the library is imported, so that a broken mmcv is one message with its fix
    instead of an ImportError from deep inside it.
    """
    check_stack(library)
    registry = importlib.import_module(f'{library}.registry')
    registry.MODELS.register_module(module=MambaOut)
    registry.OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=MambaOutLearningRateDecayOptimizerConstructor)
    add_to_every_runner(WeightsOnlyCheckpointHook, PlainParamGroupsHook)
