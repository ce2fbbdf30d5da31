"""Loading official, timm, wrapped and detector checkpoints; every mismatch is an error naming the keys."""
import logging
import os
import re

import pytest
import torch
from conftest import timm_to_official

from backbones import CheckpointMismatchError, MambaOut, load_pretrained
from backbones.checkpoint import CheckpointDamagedError
from tools.model_converters import convert_checkpoint


@pytest.fixture(scope='module')
def femto_states():
    """The same random femto weights in timm layout and in the official release layout."""
    timm = pytest.importorskip('timm')
    from conftest import randomize_
    reference = randomize_(timm.create_model('mambaout_femto'), seed=1)
    timm_state = reference.state_dict()
    return timm_state, timm_to_official(timm_state)


def outputs_after_loading(path, **kwargs):
    model = MambaOut('femto', init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0)))


def assert_same(outputs_a, outputs_b):
    for a, b in zip(outputs_a, outputs_b):
        assert (a - b).abs().max().item() <= 1e-5


def test_official_layout_matches_what_timm_expects(femto_states):
    # The helper that writes the official layout must be the inverse of timm's own filter.
    from timm.models.mambaout import checkpoint_filter_fn
    timm_state, official_state = femto_states
    assert any(k.startswith('downsample_layers.3.') for k in official_state)
    assert set(checkpoint_filter_fn(official_state, None)) == set(timm_state)


def test_official_and_timm_layouts_give_the_same_network(femto_states, tmp_path):
    timm_state, official_state = femto_states
    torch.save(timm_state, tmp_path / 'timm.pth')
    torch.save(official_state, tmp_path / 'mambaout_femto.pth')
    from_timm = outputs_after_loading(tmp_path / 'timm.pth')
    from_official = outputs_after_loading(tmp_path / 'mambaout_femto.pth')
    assert_same(from_timm, from_official)
    # and it is the timm network's output (norms off)
    import timm
    reference = timm.create_model('mambaout_femto')
    reference.load_state_dict(timm_state)
    with torch.no_grad():
        expected = reference.eval().forward_intermediates(
            torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0)), intermediates_only=True)
    assert_same(outputs_after_loading(tmp_path / 'timm.pth', with_output_norm=False), expected)


@pytest.mark.parametrize('wrap', ['state_dict', 'model', 'safetensors', 'detector', 'prefix'])
def test_wrapped_and_full_model_checkpoints(femto_states, tmp_path, wrap):
    timm_state, official_state = femto_states
    torch.save(official_state, tmp_path / 'plain.pth')
    expected = outputs_after_loading(tmp_path / 'plain.pth')
    kwargs = {}
    if wrap == 'safetensors':
        from safetensors.torch import save_file
        path = tmp_path / 'model.safetensors'
        save_file({k: v.contiguous() for k, v in timm_state.items()}, str(path))
    elif wrap in ('detector', 'prefix'):
        # a full detector checkpoint: backbone (with its output norms) plus other parts
        backbone = MambaOut('femto')
        backbone.init_weights()
        state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
        state.update({'neck.lateral_convs.0.conv.weight': torch.zeros(4, 48, 1, 1), 'rpn_head.x': torch.ones(1)})
        path = tmp_path / 'detector.pth'
        torch.save({'meta': {'epoch': 12}, 'state_dict': state}, path)
        expected = tuple(o for o in backbone.eval()(torch.randn(1, 3, 64, 80,
                                                                generator=torch.Generator().manual_seed(0))))
        if wrap == 'prefix':
            kwargs = dict(prefix='backbone.')
    else:
        path = tmp_path / f'{wrap}.pth'
        torch.save({wrap: official_state, 'epoch': 300}, path)
    model = MambaOut('femto', init_cfg=dict(type='Pretrained', checkpoint=str(path), **kwargs))
    model.init_weights()
    with torch.no_grad():
        got = model.eval()(torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0)))
    assert_same(got, expected)


def test_load_reports_dropped_head_and_new_output_norms(femto_states, tmp_path, caplog):
    torch.save(femto_states[1], tmp_path / 'official.pth')
    logger = logging.getLogger('mambaout-test')
    with caplog.at_level(logging.INFO, logger='mambaout-test'):
        load_pretrained(MambaOut('femto'), str(tmp_path / 'official.pth'), logger=logger)
    text = caplog.text
    assert 'dropped' in text and 'classifier keys' in text
    assert "['norm0', 'norm1', 'norm2', 'norm3']" in text and 'newly initialised' in text


@pytest.mark.parametrize('out_indices', [(0, 1, 2), (1,), (1, 3)])
def test_full_checkpoint_into_a_backbone_that_returns_fewer_stages(tmp_path, caplog, out_indices):
    full = MambaOut('femto')
    full.init_weights()
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in full.state_dict().items()}}, tmp_path / 'det.pth')
    logger = logging.getLogger('mambaout-test')
    model = MambaOut('femto', out_indices=out_indices)
    with caplog.at_level(logging.INFO, logger='mambaout-test'):
        load_pretrained(model, str(tmp_path / 'det.pth'), logger=logger)
    not_built = [f'stages.{i}' for i in range(max(out_indices) + 1, 4)]
    not_returned = [f'norm{i}' for i in range(4) if i not in out_indices]
    info = [r.getMessage() for r in caplog.records if 'does not use' in r.getMessage()]
    assert len(info) == 1 and str(sorted(not_built + not_returned)) in info[0]
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected, got = full.eval()(x), model.eval()(x)
    for i, out in zip(out_indices, got):
        torch.testing.assert_close(out, expected[i], rtol=0, atol=0)


def test_wrong_variant_raises_and_names_arch_and_keys(tmp_path):
    base = MambaOut('base', with_output_norm=False)
    torch.save(base.state_dict(), tmp_path / 'base.pth')
    with pytest.raises(CheckpointMismatchError, match=r"arch 'tiny'.*depths \(3, 3, 9, 3\).*(unexpected|wrong shape)"
                       r".*stages\.") as info:
        load_pretrained(MambaOut('tiny'), str(tmp_path / 'base.pth'))
    assert 'wrong shape' in str(info.value)


def test_missing_and_unexpected_keys_are_named(femto_states, tmp_path):
    state = dict(femto_states[0])
    del state['stages.2.blocks.4.fc2.weight']
    state['stages.0.blocks.0.extra'] = torch.zeros(1)
    torch.save(state, tmp_path / 'broken.pth')
    with pytest.raises(CheckpointMismatchError, match=r"missing: \['stages.2.blocks.4.fc2.weight'\].*"
                                                      r"unexpected: \['stages.0.blocks.0.extra'\]"):
        load_pretrained(MambaOut('femto'), str(tmp_path / 'broken.pth'))


def test_not_a_mambaout_checkpoint(tmp_path):
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'layer1.0.bn1.weight': torch.ones(64)},
               tmp_path / 'resnet.pth')
    with pytest.raises(CheckpointMismatchError, match=r'not a MambaOut checkpoint.*conv1.weight'):
        load_pretrained(MambaOut('femto'), str(tmp_path / 'resnet.pth'))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='MambaOut checkpoint not found'):
        load_pretrained(MambaOut('femto'), str(tmp_path / 'nope.pth'))


class _Payload:
    def __reduce__(self):
        return (os.system, ('touch PWNED',))


def test_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({'state_dict': {'stem.conv1.weight': torch.zeros(1)}, 'evil': _Payload()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointMismatchError, match='weights-only') as info:
        load_pretrained(MambaOut('femto'), str(tmp_path / 'evil.pth'))
    assert not isinstance(info.value, CheckpointDamagedError)
    assert not (tmp_path / 'PWNED').exists()


def test_damaged_local_file_is_named_with_the_fix(femto_states, tmp_path):
    path = tmp_path / 'copied_halfway.pth'
    torch.save(femto_states[0], path)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(CheckpointDamagedError, match=rf'^The MambaOut checkpoint {re.escape(str(path))} is damaged: '
                                                     r'truncated, or not a readable checkpoint \(.*\)\. Give another '
                                                     r'file: --cfg-options model\.backbone\.init_cfg\.checkpoint='):
        load_pretrained(MambaOut('femto'), str(path))


def test_convert_checkpoint_tool(femto_states, tmp_path, capsys):
    torch.save({'model': femto_states[1]}, tmp_path / 'mambaout_femto.pth')
    convert_checkpoint.main([str(tmp_path / 'mambaout_femto.pth'), str(tmp_path / 'converted.pth'), '--arch', 'femto'])
    assert 'loads strictly' in capsys.readouterr().out
    converted = torch.load(tmp_path / 'converted.pth', weights_only=True)
    assert set(converted) == {k for k in femto_states[0] if not k.startswith('head.')}
