"""FP16 done right: the paper configs' AmpOptimWrapper uses a dynamic loss scale, and a step whose
gradients overflow is skipped (weights untouched and finite) while the scale is lowered.

mmengine's AmpOptimWrapper refuses to start without CUDA; on CPU the test gives it torch's CPU
GradScaler, which implements the same skip-and-rescale logic. Its autocast is bfloat16 on CPU (mmengine
allows no other there): the fp16 case runs the forward under torch's CPU fp16 autocast, as the wrapper's
context does on CUDA, with the kernel's CUDA branches emulated too."""
import functools
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.optim.optimizer import amp_optimizer_wrapper

from backbones import MambaOut, gated_cnn_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def amp_on_this_device(monkeypatch):
    if not torch.cuda.is_available():
        if not hasattr(torch.amp, 'GradScaler'):
            pytest.skip(f'torch {torch.__version__} has no CPU GradScaler (torch.amp.GradScaler, torch >= 2.3): '
                        'needs CUDA here')
        monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
        monkeypatch.setattr(amp_optimizer_wrapper, 'GradScaler', functools.partial(torch.amp.GradScaler, 'cpu'))
    return 'cuda' if torch.cuda.is_available() else 'cpu'


TINY_ARCH = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))


def _paper_wrapper(config, model):
    wrapper = build_optim_wrapper(model, Config.fromfile(os.path.join(ROOT, 'configs', config)).optim_wrapper)
    assert type(wrapper).__name__ == 'AmpOptimWrapper'
    return wrapper


@pytest.mark.parametrize('config', ['mask_rcnn_mambaout_t_1x.py', 'upernet_mambaout_t_160k_ade20k_512.py'])
def test_overflowing_step_is_skipped_and_scale_lowered(config, amp_on_this_device):
    device = amp_on_this_device
    model = MambaOut(TINY_ARCH).to(device)
    wrapper = _paper_wrapper(config, model)
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


@pytest.mark.parametrize('branch', ['cpu', 'cuda'])
def test_fp16_overflow_inside_backward_skips_the_step(branch, amp_on_this_device):
    # Unlike the test above, the scaled loss and its fp32 gradients are finite: only fp16 cannot hold the
    # backward's values (the fp32 gradients reach 2.4e6, fp16 stops at 65504). The memory-lean backward
    # must hand the scaler inf/nan, so that the step is skipped, as it is for the plain modules.
    device = amp_on_this_device
    torch.manual_seed(0)
    model = MambaOut(TINY_ARCH).to(device)
    x = torch.randn(2, 3, 64, 64, device=device)

    def loss_of(model, dtype):
        with torch.autocast(device, dtype=dtype or torch.float16, enabled=dtype is not None):
            return sum(o.float().square().mean() for o in model(x)) * 100

    fp32_loss = loss_of(model, None) * 2.0 ** 16  # what the scaler will multiply the loss by
    fp32_loss.backward()
    assert torch.isfinite(fp32_loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)

    wrapper = _paper_wrapper('mask_rcnn_mambaout_t_1x.py', model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with gated_cnn_kernel.emulate_device_branches(branch):
        wrapper.update_params(loss_of(model, torch.float16))
    assert wrapper.loss_scaler.get_scale() == 2.0 ** 15
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f'{name} changed on an overflowing step'
