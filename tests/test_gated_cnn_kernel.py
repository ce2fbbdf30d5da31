"""The memory-lean GatedCNNBlock path (backbones.gated_cnn_kernel): gradients equal to the plain modules',
autocast, with_cp, the activations it keeps, and both depthwise-conv backward formulations."""
import pytest
import torch
from torch import nn

from backbones import GatedCNNBlock, gated_cnn_kernel


# A hand-written backward must give autograd's gradients, for the default block and the _rw variants'
# (SiLU, LayerScale, conv_ratio > 1).
BLOCKS = [dict(), dict(expansion_ratio=3.0, conv_ratio=1.5, act_layer=nn.SiLU, ls_init_value=0.5),
          dict(conv_ratio=8 / 3)]


def _grads(block, x, fn, grad_out, autocast=False):
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = fn(x)
    out.float().backward(grad_out)
    return [out.detach().float(), x.grad] + [p.grad for p in block.parameters()]


@pytest.mark.parametrize('kwargs', BLOCKS)
def test_block_gradients_match_plain_modules(kwargs):
    torch.manual_seed(0)
    block = GatedCNNBlock(16, **kwargs)
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    x, grad_out = torch.randn(2, 9, 11, 16), torch.randn(2, 9, 11, 16)
    expected = _grads(block, x, block._residual_plain, grad_out)
    for got, ref in zip(_grads(block, x, block.residual, grad_out), expected):
        assert (got - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())
    # bf16 autocast: the same maths in bfloat16, close to the fp32 result
    for got, ref in zip(_grads(block, x, block.residual, grad_out, autocast=True), expected):
        assert got.dtype == ref.dtype and (got - ref).abs().max() <= 0.05 * ref.abs().max()
    # with_cp recomputes the block, same gradients
    block.with_cp = True
    for got, ref in zip(_grads(block, x, lambda t: block(t) - t, grad_out), expected):
        assert (got - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())


def test_block_saves_about_half_the_activations():
    block = GatedCNNBlock(32)
    x = torch.randn(1, 16, 16, 32, requires_grad=True)

    def saved_widths(fn):
        sizes = []

        def pack(t):
            sizes.append(0 if isinstance(t, nn.Parameter) else t.numel())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sum(sizes) / x.numel()
    assert saved_widths(block.residual) <= 7.5 < 13 <= saved_widths(block._residual_plain)


@pytest.mark.parametrize('backward', ['_depthwise_conv_backward_as_convs', '_depthwise_conv_backward_aten'])
def test_depthwise_conv_backward_matches_autograd(backward):
    # The CPU formulation and the one CUDA takes (aten's conv backward, run here on CPU) must both give
    # autograd's gradients on the channels_last tensors the block passes them.
    torch.manual_seed(0)
    inp = torch.randn(3, 10, 12, 8).permute(0, 3, 1, 2).requires_grad_()  # NCHW view of NHWC
    weight = torch.randn(8, 1, 7, 7, requires_grad=True)
    grad = torch.randn(3, 10, 12, 8).permute(0, 3, 1, 2)
    torch.nn.functional.conv2d(inp, weight, padding=3, groups=8).backward(grad)
    grad_in, grad_weight = getattr(gated_cnn_kernel, backward)(grad, inp.detach(), weight.detach(), True)
    assert torch.allclose(grad_in, inp.grad, atol=1e-5) and torch.allclose(grad_weight, weight.grad, atol=1e-4)
    assert getattr(gated_cnn_kernel, backward)(grad, inp.detach(), weight.detach(), False)[1] is None
