"""MambaOut backbone: exactness against timm, pyramid shapes, options, and errors."""
import re

import pytest
import torch
from torch import nn

from backbones import MambaOut, arch_settings, to_backbone_state_dict

ALL_ARCHS = sorted(arch_settings)
TINY_ARCH = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
# Float32 rounding between two computations of the same network that sum in another order (the kernel's
# chunked matrix products, timm's modules; the CPU's GEMM and conv kernels pick their blocking per CPU): through
# a few dozen blocks it stays within 64 float32 epsilons of the outputs' scale (measured: up to ~30 at
# magnitude ~7, i.e. 2.4e-5 absolute). A wrong weight, mask or chunk boundary is off by orders of magnitude more.
FLOAT32_ROUNDING = 64 * torch.finfo(torch.float32).eps


def assert_same_up_to_rounding(got, ref):
    """max|got - ref| <= FLOAT32_ROUNDING * max|ref|."""
    error, bound = (got - ref).abs().max().item(), FLOAT32_ROUNDING * ref.abs().max().item()
    assert error <= bound, f'max abs difference {error:.3g} > {bound:.3g} (64 eps x max|ref|)'


def conv_out(size):  # one 3x3, stride-2, padding-1 conv
    return (size - 1) // 2 + 1


def expected_sizes(h, w):
    sizes, h, w = [], conv_out(conv_out(h)), conv_out(conv_out(w))
    for _ in range(4):
        sizes.append((h, w))
        h, w = conv_out(h), conv_out(w)
    return sizes


# base_short_rw, base_tall_rw and base_plus_rw are base_wide_rw's code at other depths and ratios (4-12 s each
# on 2 cores): the slow tier's.
@pytest.mark.parametrize('arch', [pytest.param(a, marks=pytest.mark.slow) if a in ('base_short_rw', 'base_tall_rw',
                                                                                 'base_plus_rw') else a
                                  for a in ALL_ARCHS])
def test_same_network_as_timm(arch, timm_model):
    reference = timm_model(arch)
    model = MambaOut(arch, with_output_norm=False).eval()
    state, dropped = to_backbone_state_dict(reference.state_dict())
    model.load_state_dict(state, strict=True)
    assert dropped and all(k.startswith('head.') for k in dropped)

    x = torch.randn(1, 3, 67, 90)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        outputs = model(x)
    assert len(outputs) == 4
    for out, ref in zip(outputs, expected):
        assert out.shape == ref.shape
        assert_same_up_to_rounding(out, ref)

    head_params = sum(p.numel() for p in reference.head.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) - head_params


@pytest.mark.parametrize('arch', ['tiny', 'base_wide_rw'])  # GELU and SiLU
@pytest.mark.parametrize('chunk, shape', [
    (37, (2, 3, 67, 90)),  # 782 pixels at stride 4: 21 chunks, a short remainder merged into the last
    (None, (1, 3, 240, 320)),  # the real chunk size: 4800 = 4 x 1024 + 704, then 1200 = 1024 + 176 merged
])
def test_chunked_cpu_inference_is_the_same_network(arch, chunk, shape, timm_model, monkeypatch):
    # The exactness test above fits in one chunk; here chunks split the feature maps unevenly.
    from backbones import gated_cnn_kernel
    if chunk is not None:
        monkeypatch.setattr(gated_cnn_kernel, 'INFERENCE_CHUNK_PIXELS', chunk)
    reference = timm_model(arch)
    model = MambaOut(arch, with_output_norm=False).eval()
    model.load_state_dict(to_backbone_state_dict(reference.state_dict())[0], strict=True)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        outputs = model(x)
    with_grad = model(x)  # the training path (custom autograd Function), unchunked
    for out, ref, grad_out in zip(outputs, expected, with_grad):
        assert_same_up_to_rounding(out, ref)
        assert_same_up_to_rounding(grad_out.detach(), ref)


@pytest.mark.parametrize('size', [(224, 224), (511, 511), (112, 137), (33, 65)])
def test_pyramid_shapes_follow_conv_arithmetic(size):
    model = MambaOut(TINY_ARCH).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *size))
    assert [tuple(o.shape[2:]) for o in outputs] == expected_sizes(*size)
    assert [o.shape[1] for o in outputs] == list(TINY_ARCH['dims']) == list(model.out_channels)
    assert all(o.shape[0] == 2 for o in outputs)


def test_outputs_are_contiguous_nchw():
    # mmcv's RoIAlign reads raw NCHW memory: a channels_last output would give scrambled RoI features
    with torch.no_grad():
        outputs = MambaOut(TINY_ARCH).eval()(torch.randn(1, 3, 64, 96))
    assert all(o.is_contiguous() for o in outputs)


def test_strides_4_8_16_32():
    with torch.no_grad():
        outputs = MambaOut(TINY_ARCH).eval()(torch.randn(1, 3, 256, 320))
    assert [tuple(o.shape[2:]) for o in outputs] == [(256 // s, 320 // s) for s in (4, 8, 16, 32)]


def test_every_parameter_gets_a_gradient_and_no_nan():
    model = MambaOut(dict(TINY_ARCH, ls_init_value=1e-2), drop_path_rate=0.1).train()
    outputs = model(torch.randn(2, 3, 64, 48))
    sum(o.float().pow(2).mean() for o in outputs).backward()
    for out in outputs:
        assert torch.isfinite(out).all()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


@pytest.mark.parametrize('out_indices, built', [((0, 1, 2), 3), ((0,), 1), ((1, 3), 4)])
def test_stages_after_the_last_output_are_not_built_and_all_get_gradients(out_indices, built):
    model = MambaOut(TINY_ARCH, out_indices=out_indices).train()
    assert len(model.stages) == built
    outputs = model(torch.randn(2, 3, 64, 48))
    assert [o.shape[1] for o in outputs] == [TINY_ARCH['dims'][i] for i in out_indices]
    sum(o.pow(2).mean() for o in outputs).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_truncated_backbone_computes_what_the_full_one_does():
    full = MambaOut(TINY_ARCH).eval()
    truncated = MambaOut(TINY_ARCH, out_indices=(0, 2)).eval()
    missing, unexpected = truncated.load_state_dict(full.state_dict(), strict=False)
    assert missing == [] and all(k.startswith(('stages.3.', 'norm1.', 'norm3.')) for k in unexpected)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = full(x), truncated(x)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[2], rtol=0, atol=0)


def test_frozen_stages_beyond_the_built_ones_freeze_all_that_is_built():
    model = MambaOut(TINY_ARCH, out_indices=(0, 1), frozen_stages=4).train()
    assert all(not p.requires_grad for p in model.parameters())
    parts = [model.stem, *model.stages, model.norm0, model.norm1]
    assert all(not m.training for part in parts for m in part.modules())


@pytest.mark.parametrize('shape', [(3, 64, 64), (1, 1, 3, 64, 64), (1, 4, 64, 64), (2, 1, 64, 64)])
def test_input_that_is_not_n_3_h_w_is_one_clear_error(shape):
    with pytest.raises(ValueError, match=r'\(N, C, H, W\) tensor with C = in_channels = 3, got a tensor of '
                                         rf'shape {re.escape(str(shape))}'):
        MambaOut(TINY_ARCH)(torch.randn(shape))


def test_output_norms_only_for_out_indices_and_switchable():
    model = MambaOut(TINY_ARCH, out_indices=(1, 3))
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3')
    assert not hasattr(model, 'norm0') and not hasattr(model, 'norm2')
    outputs = model.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outputs] == [16, 32]

    plain = MambaOut(TINY_ARCH, with_output_norm=False)
    # strict: the switch removes exactly the output norms, nothing else moves
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('norm')})
    with torch.no_grad():
        raw = plain.eval()(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        normed = model(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    expected = [nn.functional.layer_norm(raw[i].permute(0, 2, 3, 1), (c,), getattr(model, f'norm{i}').weight,
                                         getattr(model, f'norm{i}').bias, eps=1e-6).permute(0, 3, 1, 2)
                for i, c in ((1, 16), (3, 32))]
    for got, want in zip(normed, expected):
        torch.testing.assert_close(got, want)


def test_output_norm_is_a_layernorm_over_channels():
    model = MambaOut(TINY_ARCH, out_indices=(3,)).eval()
    plain = MambaOut(TINY_ARCH, out_indices=(3,), with_output_norm=False).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        normed, raw = model(x)[0], plain(x)[0]
    expected = nn.functional.layer_norm(raw.permute(0, 2, 3, 1), (32,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(normed, expected)


def test_negative_out_indices_and_callers_list_untouched():
    requested = [-1, 0]
    model = MambaOut(TINY_ARCH, out_indices=requested)
    assert model.out_indices == (0, 3)
    assert requested == [-1, 0]


def test_with_cp_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = MambaOut(TINY_ARCH).train()
    checkpointed = MambaOut(TINY_ARCH, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    losses = []
    for model in (plain, checkpointed):
        loss = sum(o.pow(2).mean() for o in model(x))
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p1), (_, p2) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=name)


@pytest.mark.parametrize('arch', [TINY_ARCH, dict(TINY_ARCH, act='silu', ls_init_value=0.5, expansion_ratio=3.0,
                                                  conv_ratio=1.5)])
def test_memory_efficient_off_runs_the_plain_modules_with_same_outputs_and_gradients(arch, monkeypatch):
    torch.manual_seed(0)
    lean = MambaOut(arch)
    plain = MambaOut(arch, memory_efficient=False)
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 3, 61, 70)
    results = {}
    for name, model in (('lean', lean), ('plain', plain)):
        model.train()  # drop_path_rate 0: train mode is deterministic
        inp = x.clone().requires_grad_()
        outputs = model(inp)
        sum((o * torch.linspace(-1, 1, o.shape[-1])).pow(2).mean() for o in outputs).backward()
        with torch.no_grad():
            eval_outputs = model.eval()(x)
        results[name] = [*outputs, *eval_outputs, inp.grad, *(p.grad for p in model.parameters())]
        if name == 'lean':
            # from here on the kernel cannot run: the plain model must not need it
            monkeypatch.setattr('backbones.mambaout.gated_cnn_branch', None)
    assert len(results['lean']) == len(results['plain']) == 8 + 1 + len(list(lean.parameters()))
    for got, ref in zip(results['lean'], results['plain']):
        assert got is not None and ref is not None
        assert (got - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())


def test_drop_path_increases_linearly_over_blocks():
    model = MambaOut(TINY_ARCH, drop_path_rate=0.3)
    rates = [getattr(block.drop_path, 'drop_prob', 0.) for stage in model.stages for block in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, sum(TINY_ARCH['depths'])))


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages_get_no_gradient_and_stay_in_eval(frozen_stages):
    model = MambaOut(TINY_ARCH, frozen_stages=frozen_stages)
    model.train()
    frozen = ([model.stem] if frozen_stages >= 0 else []) + \
        [m for i in range(max(frozen_stages, 0)) for m in (model.stages[i], getattr(model, f'norm{i}'))]
    trainable = [m for m in [model.stem, *model.stages, *(getattr(model, f'norm{i}') for i in range(4))]
                 if all(m is not f for f in frozen)]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for module in trainable:
        assert all(p.requires_grad for p in module.parameters())
        assert module.training
    if trainable:
        sum(o.mean() for o in model(torch.randn(1, 3, 64, 64))).backward()
        assert all(p.grad is None for m in frozen for p in m.parameters())


def test_norm_eval_keeps_norms_in_eval_mode():
    model = MambaOut(TINY_ARCH, norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(not m.training for m in norms)
    assert model.stages[0].blocks[0].fc1.training


def test_in_channels_and_custom_arch():
    model = MambaOut(dict(depths=(1, 1, 1), dims=(8, 16, 32), act='silu', conv_ratio=0.5), in_channels=1,
                     out_indices=(0, 1, 2)).eval()
    outputs = model(torch.randn(1, 1, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 8, 16, 16), (1, 16, 8, 8), (1, 32, 4, 4)]
    assert isinstance(model.stages[0].blocks[0].act, nn.SiLU)
    assert model.stages[0].blocks[0].conv.in_channels == 4


def test_default_init_is_truncated_normal_and_unit_norms():
    model = MambaOut(TINY_ARCH)
    model.init_weights()
    fc1 = model.stages[2].blocks[1].fc1
    # std 0.02 as in timm/official (torch's default for this fan-in would be about 0.12)
    assert 0.015 < fc1.weight.std().item() < 0.025
    assert torch.all(fc1.bias == 0)
    assert torch.all(model.norm0.weight == 1) and torch.all(model.norm0.bias == 0)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(arch='huge'), ValueError, r"Unknown MambaOut arch 'huge'.*'femto'.*'tiny'"),
    (dict(arch=dict(depths=(1, 1))), ValueError, r'needs "depths" and "dims"'),
    (dict(arch=dict(depths=(1, 1), dims=(8,))), ValueError, r'equal length'),
    (dict(arch=dict(depths=(1,), dims=(8,), act='relu')), ValueError, r"act 'relu' is not one of"),
    (dict(arch=dict(depths=(1,), dims=(8,), mlp_ratio=4)), ValueError, r'may set'),
    (dict(arch=dict(depths=(1,), dims=(8,), downsample='pool')), ValueError, r"downsample 'pool'"),
    (dict(out_indices=(0, 4)), ValueError, r'out_indices \(0, 4\) has 4, out of range.*0\.\.3'),
    (dict(out_indices=(-5,)), ValueError, r'has -5, out of range'),
    (dict(out_indices=(1, -3)), ValueError, r'names a stage twice'),
    (dict(out_indices=()), TypeError, r'non-empty sequence'),
    (dict(frozen_stages=5), ValueError, r'frozen_stages must be an int in \[-1, 4\].*got 5'),
    (dict(frozen_stages=-2), ValueError, r'got -2'),
    (dict(drop_path_rate=1.5), ValueError, r'drop_path_rate must be in \[0, 1\)'),
    (dict(memory_efficient='no'), TypeError, r"memory_efficient must be True or False, got 'no'"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    kwargs.setdefault('arch', TINY_ARCH)
    with pytest.raises(error, match=match):
        MambaOut(**kwargs)
