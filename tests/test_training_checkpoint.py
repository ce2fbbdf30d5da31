"""Runner state in weights-only-safe types: the round trip of backbones.training_checkpoint, in process.

The end-to-end path (mmdet's and mmseg's own scripts on checkpoints our configs write) is in
tests/test_stock_scripts.py."""
import io
import logging
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner import Runner

from backbones import training_checkpoint
from backbones.runner_hooks import add_to_every_runner
from backbones.training_checkpoint import (LOG_SCALARS_KEY, WeightsOnlyCheckpointHook,
                                           restore_runner_state)


def runner_checkpoint():
    """A checkpoint as mmengine 0.10.7's Runner.save_checkpoint builds it."""
    hub = MessageHub(f'test_{id(object())}')
    for step in range(5):
        hub.update_scalar('train/loss', 1.0 / (step + 1))
        hub.update_scalar('train/lr', 1e-4 * step)
    hub.update_info('best_score', np.float32(17.22))
    hub.update_info('keep_ckpt_ids', [1, 2])
    meta = dict(epoch=0, iter=5, seed=3, dataset_meta=dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)],
                                                           weights=np.array([0.5, 2.0])))
    schedulers = [dict(start_factor=0.001, by_epoch=False), dict(milestones=Counter([8, 11]), gamma=0.1)]  # MultiStepLR
    return dict(meta=meta, state_dict=OrderedDict(w=torch.ones(2)), message_hub=hub.state_dict(),
                param_schedulers=schedulers)


def weights_only_round_trip(checkpoint):
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_mmengine_checkpoints_need_the_conversion():
    with pytest.raises(Exception, match='Weights only load failed'):
        weights_only_round_trip(runner_checkpoint())


def test_saved_state_loads_weights_only_and_is_restored_exactly():
    original = runner_checkpoint()
    expected = {key: buffer.data for key, buffer in original['message_hub']['log_scalars'].items()}
    checkpoint = runner_checkpoint()
    WeightsOnlyCheckpointHook().before_save_checkpoint(None, checkpoint)
    loaded = weights_only_round_trip(checkpoint)

    assert loaded['message_hub']['log_scalars'] == {}  # a runner without the hook still resumes it
    assert loaded['message_hub']['runtime_info']['best_score'] == pytest.approx(17.22)
    assert loaded['meta']['dataset_meta']['weights'] == [0.5, 2.0]
    assert loaded['meta']['dataset_meta']['palette'] == [(1, 2, 3), (4, 5, 6)]  # tuples stay tuples
    assert type(loaded['param_schedulers'][1]['milestones']) is dict  # torch 2.1's weights-only load has no Counter

    WeightsOnlyCheckpointHook().after_load_checkpoint(None, loaded)
    assert LOG_SCALARS_KEY not in loaded
    assert loaded['param_schedulers'] == original['param_schedulers']
    assert type(loaded['param_schedulers'][1]['milestones']) is Counter
    restored = loaded['message_hub']['log_scalars']
    assert restored.keys() == expected.keys()
    for key, (log, count) in expected.items():
        assert isinstance(restored[key], HistoryBuffer)
        np.testing.assert_array_equal(restored[key].data[0], log)
        np.testing.assert_array_equal(restored[key].data[1], count)
        assert restored[key].mean(3) == pytest.approx(float(np.mean(log[-3:])))
    hub = MessageHub(f'resumed_{id(loaded)}')
    hub.load_state_dict(loaded['message_hub'])
    hub.update_scalar('train/loss', 0.1)  # the resumed buffer keeps growing
    assert len(hub.get_scalar('train/loss').data[0]) == 6


def test_checkpoints_without_the_converted_state_are_left_alone():
    checkpoint = runner_checkpoint()
    assert restore_runner_state(checkpoint) is checkpoint
    assert all(isinstance(v, HistoryBuffer) for v in checkpoint['message_hub']['log_scalars'].values())


def test_an_entry_that_stays_unloadable_is_named_in_one_warning(monkeypatch):
    class Custom:
        pass

    logged = []
    monkeypatch.setattr(training_checkpoint, 'print_log', lambda message, **kwargs: logged.append((message, kwargs)))
    checkpoint = runner_checkpoint()
    checkpoint['meta']['custom'] = Custom()
    WeightsOnlyCheckpointHook().before_save_checkpoint(None, checkpoint)
    assert len(logged) == 1
    message, kwargs = logged[0]
    assert kwargs['level'] == logging.WARNING
    assert "checkpoint['meta']['custom'] (" in message and 'Custom)' in message
    assert 'weights_only=True' in message


def test_every_runner_gets_the_hook_once(tmp_path):
    add_to_every_runner(WeightsOnlyCheckpointHook)
    add_to_every_runner(WeightsOnlyCheckpointHook)  # idempotent: one wrapper, one hook

    def hooks_of(**kwargs):
        runner = Runner(model=torch.nn.Linear(1, 1), work_dir=str(tmp_path), **kwargs)
        return [h for h in runner.hooks if isinstance(h, WeightsOnlyCheckpointHook)]

    assert len(hooks_of()) == 1
    own = WeightsOnlyCheckpointHook()
    assert hooks_of(custom_hooks=[own]) == [own]
