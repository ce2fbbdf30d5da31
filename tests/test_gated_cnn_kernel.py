"""The memory-lean GatedCNNBlock path (backbones.gated_cnn_kernel): gradients equal to the plain modules',
autocast (outputs, gradients, overflow), with_cp, the activations it keeps, and both depthwise-conv backward
formulations. The branches the kernel takes on CUDA (aten's depthwise-conv backward, unchunked inference)
run here on the CPU through ``gated_cnn_kernel.emulate_device_branches('cuda')``."""
import warnings

import pytest
import torch
from torch import nn

from backbones import GatedCNNBlock, gated_cnn_kernel


# A hand-written backward must give autograd's gradients, for the default block and the _rw variants'
# (SiLU, LayerScale, conv_ratio > 1).
BLOCKS = [dict(), dict(expansion_ratio=3.0, conv_ratio=1.5, act_layer=nn.SiLU, ls_init_value=0.5),
          dict(conv_ratio=8 / 3)]


BRANCHES = ['cpu', 'cuda']  # the device whose branches the kernel takes (emulated on this CPU)


def _cpu_autocast_has(dtype):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch 2.1 warns that it disables autocast, then raises on entering
        try:
            with torch.autocast('cpu', dtype=dtype):
                return True
        except RuntimeError:
            return False


# The CUDA branches are emulated under CPU autocast too, so float16 cases need it on the CPU.
needs_cpu_fp16_autocast = pytest.mark.skipif(
    not _cpu_autocast_has(torch.float16), reason='no float16 CPU autocast in this torch (torch 2.1: bfloat16 only)')


def _random_block(**kwargs):
    torch.manual_seed(0)
    block = GatedCNNBlock(16, **kwargs)
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    return block, torch.randn(2, 9, 11, 16), torch.randn(2, 9, 11, 16)


def _grads(block, x, fn, grad_out, autocast_dtype=None):
    """[output, d x, d params...] of ``fn`` (fp32 unless ``autocast_dtype``)."""
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = fn(x)
    out.float().backward(grad_out)
    return [out.detach().float(), x.grad] + [p.grad for p in block.parameters()]


def _relative_error(got, ref):
    return ((got - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize('branch', BRANCHES)
@pytest.mark.parametrize('kwargs', BLOCKS)
def test_block_gradients_match_plain_modules(kwargs, branch):
    block, x, grad_out = _random_block(**kwargs)
    with gated_cnn_kernel.emulate_device_branches(branch):
        expected = _grads(block, x, block._residual_plain, grad_out)
        for got, ref in zip(_grads(block, x, block.residual, grad_out), expected):
            assert (got - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())
        # with_cp recomputes the block, same gradients
        block.with_cp = True
        for got, ref in zip(_grads(block, x, lambda t: block(t) - t, grad_out), expected):
            assert (got - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())


def test_emulated_cuda_takes_the_cuda_branches(monkeypatch):
    # The switch must change the branches, else the 'cuda' cases above test the CPU path twice.
    calls = []
    for name in ('_depthwise_conv_backward_as_convs', '_depthwise_conv_backward_aten', 'gated_forward'):
        original = getattr(gated_cnn_kernel, name)
        monkeypatch.setattr(gated_cnn_kernel, name,
                            lambda *args, _name=name, _original=original: calls.append(_name) or _original(*args))
    monkeypatch.setattr(gated_cnn_kernel, 'INFERENCE_CHUNK_PIXELS', 37)
    block, x, grad_out = _random_block()
    taken = {}
    for branch in BRANCHES:
        calls.clear()
        with gated_cnn_kernel.emulate_device_branches(branch):
            _grads(block, x, block.residual, grad_out)
            with torch.no_grad():
                block.residual(x)
        taken[branch] = calls[:]
    # training: forward then the conv backward; inference: chunked on CPU (no gated_forward), whole elsewhere
    assert taken == {'cpu': ['gated_forward', '_depthwise_conv_backward_as_convs'],
                     'cuda': ['gated_forward', '_depthwise_conv_backward_aten', 'gated_forward']}
    assert gated_cnn_kernel._emulated_device_type is None  # restored on leaving


@pytest.mark.parametrize('kwargs', BLOCKS)
def test_chunked_and_unchunked_inference_match_plain_modules(kwargs, monkeypatch):
    # 198 pixels in chunks of 37: five full chunks and a short remainder merged into the last one
    monkeypatch.setattr(gated_cnn_kernel, 'INFERENCE_CHUNK_PIXELS', 37)
    block, x, _ = _random_block(**kwargs)
    with torch.no_grad():
        plain = block._residual_plain(x)
        outputs = {}
        for branch in BRANCHES:
            with gated_cnn_kernel.emulate_device_branches(branch):
                outputs[branch] = block.residual(x)
    for out in outputs.values():
        assert (out - plain).abs().max() <= 1e-5 * (1 + plain.abs().max())
    # the same ops on the same rows, only split: chunked and whole give the same numbers
    assert (outputs['cpu'] - outputs['cuda']).abs().max() <= 1e-6 * plain.abs().max()


@pytest.mark.parametrize('branch', BRANCHES)
@pytest.mark.parametrize('dtype', [torch.bfloat16, pytest.param(torch.float16, marks=needs_cpu_fp16_autocast)])
@pytest.mark.parametrize('kwargs', BLOCKS)
def test_autocast_outputs_equal_plain_and_gradients_as_close_to_fp32(kwargs, dtype, branch):
    # Mixed precision: the kernel makes autocast's casts itself, so its output is the plain modules' bit
    # for bit. Its gradients round in other places than autograd's, so they are compared with the fp32
    # gradients: the worst relative error over output, d x and d params. Measured (these seeds): bf16
    # plain 0.0094-0.0099, ours 0.0094-0.0116 (at most 1.2x plain's); fp16 plain 0.0012-0.0018, ours
    # 0.0007-0.0018 (0.6-1.02x plain's). Bound: ours <= 1.5x plain's.
    block, x, grad_out = _random_block(**kwargs)
    with gated_cnn_kernel.emulate_device_branches(branch):
        reference = _grads(block, x, block._residual_plain, grad_out)
        plain = _grads(block, x, block._residual_plain, grad_out, autocast_dtype=dtype)
        ours = _grads(block, x, block.residual, grad_out, autocast_dtype=dtype)
    assert torch.equal(ours[0], plain[0])
    assert all(got.dtype == ref.dtype for got, ref in zip(ours, reference))
    plain_error = max(_relative_error(got, ref) for got, ref in zip(plain, reference))
    ours_error = max(_relative_error(got, ref) for got, ref in zip(ours, reference))
    assert plain_error <= (0.012 if dtype == torch.bfloat16 else 0.002)  # the comparison means something
    assert ours_error <= 1.5 * plain_error


@needs_cpu_fp16_autocast
@pytest.mark.parametrize('branch', BRANCHES)
def test_overflowing_fp16_backward_gives_inf_never_a_clipped_or_zero_gradient(branch):
    # Output gradients x 3000 (a loss scale): fc1's and fc2's weight gradients exceed fp16's 65504 in fp32
    # and overflow when computed in fp16; the loss scaler must see inf/nan there to skip the step. Every
    # gradient that is finite must be the right one (within fp16 rounding of the fp32 gradient).
    block, x, grad_out = _random_block()
    with gated_cnn_kernel.emulate_device_branches(branch):
        reference = _grads(block, x, block._residual_plain, grad_out * 3000)[1:]
        plain = _grads(block, x, block._residual_plain, grad_out * 3000, autocast_dtype=torch.float16)[1:]
        ours = _grads(block, x, block.residual, grad_out * 3000, autocast_dtype=torch.float16)[1:]
    names = ['x', *(name for name, _ in block.named_parameters())]
    assert all(torch.isfinite(ref).all() for ref in reference)

    def non_finite(grads):
        return {name for name, grad in zip(names, grads) if not torch.isfinite(grad).all()}
    assert {'fc1.weight', 'fc2.weight'} <= non_finite(ours) == non_finite(plain)
    for name, got, ref in zip(names, ours, reference):
        if name not in non_finite(ours):
            assert _relative_error(got, ref) <= 3e-3, name


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
    assert saved_widths(block.residual) <= 6.5 < 13 <= saved_widths(block._residual_plain)  # 6.33 vs 13.9


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


def test_autocast_dtype_reads_the_devices_own_autocast():
    assert gated_cnn_kernel.autocast_dtype('cpu') is None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert gated_cnn_kernel.autocast_dtype('cpu') == torch.bfloat16
        assert gated_cnn_kernel.autocast_dtype('cuda') is None


def test_is_compiling_only_under_torch_compile():
    assert not gated_cnn_kernel.is_compiling()
    compiled = torch.compile(lambda t: t + 1 if gated_cnn_kernel.is_compiling() else t, backend='eager')
    assert compiled(torch.zeros(1)).item() == 1
