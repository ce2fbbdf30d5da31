"""FP16 done right: the paper configs' AmpOptimWrapper uses a dynamic loss scale, and a step whose
gradients overflow is skipped (weights untouched and finite) while the scale is lowered.

mmengine's AmpOptimWrapper refuses to start without CUDA; on CPU the test gives it torch's CPU
GradScaler, which implements the same skip-and-rescale logic."""
import functools
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.optim.optimizer import amp_optimizer_wrapper

from backbones import MambaOut

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def amp_on_this_device(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
        monkeypatch.setattr(amp_optimizer_wrapper, 'GradScaler', functools.partial(torch.amp.GradScaler, 'cpu'))
    return 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.mark.parametrize('config', ['mask_rcnn_mambaout_t_1x.py', 'upernet_mambaout_t_160k_ade20k_512.py'])
def test_overflowing_step_is_skipped_and_scale_lowered(config, amp_on_this_device):
    device = amp_on_this_device
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', config))
    model = MambaOut(dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))).to(device)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(wrapper).__name__ == 'AmpOptimWrapper'
    scale_before = wrapper.loss_scaler.get_scale()
    assert scale_before == 2.0 ** 16  # dynamic scaling starts at 65536

    x = torch.randn(2, 3, 64, 64, device=device)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with wrapper.optim_context(model):
        loss = sum(o.float().mean() for o in model(x)) * 1e36  # x 65536 overflows fp32 in backward
    wrapper.update_params(loss)
    for name, value in model.state_dict().items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(value, before[name]), f'{name} changed on an overflowing step'
    assert wrapper.loss_scaler.get_scale() == scale_before / 2

    # the next, normal step does update the weights
    with wrapper.optim_context(model):
        loss = sum(o.float().mean() for o in model(x))
    wrapper.update_params(loss)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(v).all() for v in model.state_dict().values())
