"""Training checkpoints that torch's weights-only ``torch.load`` reads: what makes mmdet's and mmseg's own
``tools/test.py`` and ``tools/train.py --resume`` (and ``mim``) work on checkpoints our runs write.

torch >= 2.6 unpickles checkpoints weights-only by default: plain containers, numbers, strings and tensors,
nothing that calls arbitrary code. mmengine 0.10.7 predates that and saves its message hub's
``HistoryBuffer`` objects (numpy arrays, and a class-level dict of unbound methods) and numpy scalars
(e.g. ``best_score`` from mmseg's IoUMetric) into every checkpoint, so the stock scripts fail with
``Unsupported global: GLOBAL mmengine.logging.history_buffer.HistoryBuffer``.

:class:`WeightsOnlyCheckpointHook` converts that runner state into plain types just before a checkpoint is
written and rebuilds it right after one is read, so that a resumed run continues with the same logging
history. Nothing is added to what torch's unpickler may call: every ``torch.load`` in the process stays as
strict as torch makes it. The log history is kept under its own key (:data:`LOG_SCALARS_KEY`), next to a
message hub with no log scalars, so that a runner without this hook still resumes such a checkpoint (its
log history then starts afresh).

Importing ``mmdet_plugin`` or ``mmseg_plugin`` (any config that imports them) registers the hook in every
:class:`~mmengine.runner.Runner` built afterwards that does not have one yet
(:func:`backbones.runner_hooks.add_to_every_runner`).
"""
import logging
from collections import Counter, OrderedDict
from typing import Any, Iterator, Tuple

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer, print_log

LOG_SCALARS_KEY = 'message_hub_log_scalars'

# What the weights-only unpickler of every supported torch (2.1 on) rebuilds without an allowlist
# (torch.serialization._get_allowed_globals and the pickle opcodes it handles). torch 2.1's has no Counter
# (what MultiStepLR keeps its milestones in: saved as a dict, see :func:`to_weights_only`), torch.device,
# nor sets.
_PLAIN_LEAVES = (str, bytes, int, float, bool, type(None), torch.Tensor, torch.Size)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple)


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python numbers and numpy arrays into lists, in any nesting
    of dicts, lists and tuples; everything else as it is."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if type(value) in (dict, OrderedDict):
        return type(value)((key, _plain(item)) for key, item in value.items())
    if type(value) in (list, tuple):
        return type(value)(_plain(item) for item in value)
    return value


def not_weights_only_loadable(value: Any, path: str = 'checkpoint') -> Iterator[Tuple[str, str]]:
    """Yield ``(path, type name)`` for each entry of ``value`` that weights-only unpickling refuses."""
    if isinstance(value, _PLAIN_LEAVES):
        return
    if type(value) not in _PLAIN_CONTAINERS:
        yield path, type(value).__qualname__
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, _PLAIN_LEAVES):
                yield f'{path} (key {key!r})', type(key).__qualname__
            yield from not_weights_only_loadable(item, f'{path}[{key!r}]')
    else:
        for index, item in enumerate(value):
            yield from not_weights_only_loadable(item, f'{path}[{index}]')


def to_weights_only(checkpoint: dict) -> dict:
    """Turn the runner state of an mmengine checkpoint into plain types, in place (see the module doc).

    Each ``HistoryBuffer`` of the message hub becomes ``dict(log_history=float64 tensor,
    count_history=int64 tensor, max_length=int)`` under ``checkpoint[LOG_SCALARS_KEY]``; numpy values in
    the message hub's runtime info and in ``meta`` become Python numbers or lists; the ``Counter`` of
    milestones of each parameter scheduler (MultiStepLR) becomes a dict.
    """
    message_hub = checkpoint.get('message_hub')
    if isinstance(message_hub, dict) and 'log_scalars' in message_hub:
        history = OrderedDict()
        for key, buffer in message_hub['log_scalars'].items():
            if isinstance(buffer, HistoryBuffer):
                log, count = buffer.data
                history[key] = dict(log_history=torch.from_numpy(np.array(log)),
                                    count_history=torch.from_numpy(np.array(count)), max_length=buffer.max_length)
        checkpoint[LOG_SCALARS_KEY] = history
        message_hub['log_scalars'] = OrderedDict(
            (key, value) for key, value in message_hub['log_scalars'].items() if key not in history)
        message_hub['runtime_info'] = _plain(message_hub.get('runtime_info', OrderedDict()))
    if 'meta' in checkpoint:
        checkpoint['meta'] = _plain(checkpoint['meta'])
    for scheduler in _scheduler_states(checkpoint):
        if isinstance(scheduler.get('milestones'), Counter):
            scheduler['milestones'] = dict(scheduler['milestones'])
    return checkpoint


def _scheduler_states(checkpoint: dict) -> Iterator[dict]:
    """The state dicts of the checkpoint's parameter schedulers: mmengine saves a list of them, or a dict of
    such lists for several optimizers."""
    schedulers = checkpoint.get('param_schedulers')
    groups = schedulers.values() if isinstance(schedulers, dict) else [schedulers or []]
    for group in groups:
        yield from (state for state in group if isinstance(state, dict))


def restore_runner_state(checkpoint: dict) -> dict:
    """Undo :func:`to_weights_only` on a loaded checkpoint, in place: the message hub gets its
    ``HistoryBuffer`` objects back (checkpoints without :data:`LOG_SCALARS_KEY` keep theirs as they are), the
    schedulers their ``Counter`` of milestones."""
    for scheduler in _scheduler_states(checkpoint):
        if type(scheduler.get('milestones')) is dict:
            scheduler['milestones'] = Counter(scheduler['milestones'])
    history = checkpoint.pop(LOG_SCALARS_KEY, None)
    message_hub = checkpoint.get('message_hub')
    if history is None or not isinstance(message_hub, dict):
        return checkpoint
    log_scalars = message_hub.setdefault('log_scalars', OrderedDict())
    for key, state in history.items():
        log_scalars[key] = HistoryBuffer(state['log_history'].numpy(), state['count_history'].numpy(),
                                         state['max_length'])
    return checkpoint


class WeightsOnlyCheckpointHook(Hook):
    """Writes checkpoints that ``torch.load(weights_only=True)`` reads and restores their runner state on
    load (see the module doc). Runs after every other hook before a save (they may add to the checkpoint)
    and, on load, before the runner reads the message hub."""

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        to_weights_only(checkpoint)
        refused = list(not_weights_only_loadable(checkpoint))
        if refused:
            shown = ', '.join(f'{path} ({kind})' for path, kind in refused[:5])
            print_log(f'This checkpoint holds {len(refused)} entries that torch.load(weights_only=True) refuses: '
                      f'{shown}. mmdet\'s/mmseg\'s own tools (torch >= 2.6) will not load it; store plain '
                      'types (numbers, strings, lists, dicts, tensors) there.', logger='current', level=logging.WARNING)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        restore_runner_state(checkpoint)
