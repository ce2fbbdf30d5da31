"""The memory-lean GatedCNNBlock path (backbones.gated_cnn_kernel): gradients equal to the plain modules',
autocast (outputs, gradients, overflow), with_cp, the activations it keeps, and both depthwise-conv backward
formulations, through both wrappers (the torch.library operators, torch >= 2.4, and the autograd Function);
then under torch.compile: the operators in the graph, no graph break, the same numbers, and the plain modules
with one warning where torch has no custom operators. The branches the kernel takes on CUDA (aten's
depthwise-conv backward, unchunked inference) run here on the CPU through
``gated_cnn_kernel.emulate_device_branches('cuda')``."""
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


NO_CUSTOM_OPS = (f'torch {torch.__version__} has no torch.library.custom_op (torch >= 2.4): the kernel is an '
                 'autograd Function, and torch.compile runs the plain modules')
needs_custom_ops = pytest.mark.skipif(not gated_cnn_kernel.CUSTOM_OPS, reason=NO_CUSTOM_OPS)


@pytest.fixture(params=['custom_op', 'autograd_function'])
def wrapper(request, monkeypatch):
    """The kernel through the torch.library operators (where torch has them) or the autograd Function."""
    if request.param == 'custom_op' and not gated_cnn_kernel.CUSTOM_OPS:
        pytest.skip(NO_CUSTOM_OPS)
    monkeypatch.setattr(gated_cnn_kernel, 'CUSTOM_OPS', request.param == 'custom_op')
    return request.param


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
@pytest.mark.usefixtures('wrapper')
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


@pytest.mark.usefixtures('wrapper')
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
@pytest.mark.usefixtures('wrapper')
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
@pytest.mark.usefixtures('wrapper')
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
@pytest.mark.usefixtures('wrapper')
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


@pytest.mark.usefixtures('wrapper')
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


# Under torch.compile. The backend is AOTAutograd with eager graphs (aot_eager's, plus a look at the graphs):
# it runs Dynamo and AOTAutograd, i.e. everything that decides whether the kernel stays in the graph, its fake
# functions and its autograd formula, without inductor's C++ compilation (tens of seconds per graph on CPU;
# inductor only wraps the operators as extern kernels). The toy training below compiles with inductor.

def _aot_backend(graphs):
    """A torch.compile backend that records the forward and backward graphs AOTAutograd makes and runs them
    eagerly."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def record(kind):
        def compiler(graph, example_inputs):
            graphs.setdefault(kind, []).append(graph)
            return make_boxed_func(graph.forward)
        return compiler
    return aot_autograd(fw_compiler=record('forward'), bw_compiler=record('backward'),
                        inference_compiler=record('inference'))


def _compiled(fn, graphs=None):
    torch._dynamo.reset()
    # fullgraph: a graph break anywhere is an error
    return torch.compile(fn, backend=_aot_backend({} if graphs is None else graphs), fullgraph=True)


def _ops_in(graph):
    return {str(node.target) for node in graph.graph.nodes if node.op == 'call_function'}


@needs_custom_ops
@pytest.mark.parametrize('kwargs', BLOCKS)
def test_compiled_block_gives_the_eager_kernels_numbers(kwargs):
    block, x, grad_out = _random_block(**kwargs)
    plain = _grads(block, x, block._residual_plain, grad_out)
    eager = _grads(block, x, block.residual, grad_out)
    compiled = _grads(block, x, _compiled(block.residual), grad_out)
    for got, ref, same in zip(compiled, plain, eager):
        assert (got - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())
        assert torch.equal(got, same)  # the same functions run: the same numbers
    # with_cp: torch.utils.checkpoint around the operator, compiled too
    block.with_cp = True
    eager = _grads(block, x, lambda t: block(t) - t, grad_out)
    for got, same in zip(_grads(block, x, _compiled(lambda t: block(t) - t), grad_out), eager):
        assert torch.equal(got, same)


@needs_custom_ops
def test_compiled_graphs_hold_the_operators_not_the_plain_ops():
    block, x, grad_out = _random_block()
    explained = torch._dynamo.explain(block.residual)(x.requires_grad_())
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    assert 'mambaout.gated_cnn_forward' in _ops_in(explained.graphs[0])

    graphs = {}
    _grads(block, x, _compiled(block.residual, graphs), grad_out)
    with torch.no_grad():
        _compiled(block.residual, graphs)(x)
    plain_ops = ('aten.mm', 'aten.addmm', 'aten.convolution', 'aten.native_layer_norm', 'aten.gelu')
    for kind, op in (('forward', 'mambaout.gated_cnn_forward.default'),
                     ('backward', 'mambaout.gated_cnn_backward.default'),
                     ('inference', 'mambaout.gated_cnn_inference.default')):
        ops = _ops_in(graphs[kind][0])
        assert op in ops, (kind, ops)
        assert not [name for name in ops if name.startswith(plain_ops)], (kind, ops)


@needs_custom_ops
def test_compiled_block_keeps_what_the_eager_kernel_keeps():
    # Only the input, [gate, identity] and the conv input cross from the compiled forward to the backward.
    block = GatedCNNBlock(32)
    x = torch.randn(1, 16, 16, 32, requires_grad=True)
    param_storages = {p.untyped_storage().data_ptr() for p in block.parameters()}
    sizes = []

    def pack(t):
        sizes.append(0 if t.untyped_storage().data_ptr() in param_storages else t.numel())
        return t
    compiled = _compiled(block.residual)
    compiled(x)  # traced and compiled here, outside the hooks: torch 2.4 runs them on its tracing tensors too
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        compiled(x)
    assert 6 <= sum(sizes) / x.numel() <= 6.5  # 6.33 channel-widths, as eager


@needs_custom_ops
@pytest.mark.parametrize('dtype', [torch.bfloat16, pytest.param(torch.float16, marks=needs_cpu_fp16_autocast)])
def test_compiled_block_under_autocast_equals_eager(dtype):
    # autocast's dtype reaches the operator as an argument: a graph traced without autocast is not reused
    block, x, grad_out = _random_block()
    compiled = _compiled(block.residual)
    for autocast_dtype in (None, dtype):
        eager = _grads(block, x, block.residual, grad_out, autocast_dtype)
        for got, same in zip(_grads(block, x, compiled, grad_out, autocast_dtype), eager):
            assert got.dtype == same.dtype and torch.equal(got, same)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        out = compiled(x)
        assert out.dtype == dtype and torch.equal(out, block._residual_plain(x))


@needs_custom_ops
@pytest.mark.parametrize('branch', BRANCHES)
def test_compiled_inference_is_the_eager_inference(branch, monkeypatch):
    monkeypatch.setattr(gated_cnn_kernel, 'INFERENCE_CHUNK_PIXELS', 37)  # read when the operator runs
    block, x, _ = _random_block()
    with torch.no_grad(), gated_cnn_kernel.emulate_device_branches(branch):
        assert torch.equal(_compiled(block.residual)(x), block.residual(x))


@needs_custom_ops
def test_operators_pass_opcheck():
    # torch.library.opcheck: schema, fake functions against the real ones (shapes, dtypes, strides), the
    # autograd registration, and AOTAutograd with dynamic shapes.
    block, x, grad_out = _random_block(conv_ratio=8 / 3)
    params = [p.detach() for p in block.parameters()]
    for dtype in (torch.float32, torch.bfloat16):
        args = (x, *params, *block.kernel_spec.values, dtype)
        torch.library.opcheck(torch.ops.mambaout.gated_cnn_inference.default, args)
        trainable = (x.clone().requires_grad_(), *(p.clone().requires_grad_() for p in params), *args[9:])
        torch.library.opcheck(torch.ops.mambaout.gated_cnn_forward.default, trainable)
        _, gate_id, conv_in = torch.ops.mambaout.gated_cnn_forward(*args)
        for needs in ([True] * 9, [False, *[True] * 8], [True, *[False] * 8]):
            torch.library.opcheck(torch.ops.mambaout.gated_cnn_backward.default,
                                  (grad_out.to(dtype), x, gate_id, conv_in, *params, *args[9:], needs))


def test_compiled_without_custom_ops_runs_the_plain_modules_and_says_so_once(monkeypatch):
    # What torch < 2.4 does (forced here on newer torch): the plain graph, one warning per process.
    monkeypatch.setattr(gated_cnn_kernel, 'CUSTOM_OPS', False)
    monkeypatch.setattr(gated_cnn_kernel, '_warned_plain_under_compile', False)
    block, x, _ = _random_block()
    other, _, _ = _random_block(act_layer=nn.SiLU)
    with pytest.warns(UserWarning) as caught:
        torch._dynamo.reset()
        for _ in range(2):
            outputs = [torch.compile(b.residual, backend='eager', fullgraph=True)(x) for b in (block, other)]
    messages = [str(w.message) for w in caught if 'custom_op' in str(w.message)]
    assert len(messages) == 1 and 'plain modules' in messages[0], messages
    with torch.no_grad():
        for out, b in zip(outputs, (block, other)):
            assert torch.equal(out, b._residual_plain(x))


@pytest.mark.slow
@needs_custom_ops
def test_toy_segmentor_trained_with_mmengine_compile_learns_as_the_eager_one(tmp_path):
    # mmengine's compile=True: torch.compile with inductor of the model's train_step, the blocks as the
    # operators, and the optimizer's step over the recipe's paramwise_cfg groups
    # (backbones.runner_hooks.PlainParamGroupsHook). Compiling takes minutes on a 2-core CPU, so both
    # trainings stop after 30 iterations of the toy schedule, where the toy set is already learnt (mIoU about 77,
    # the threshold of tests/test_toy_training.py is 60), and validate there (eagerly: mmengine compiles the
    # train step only): same seed, same data order, so the compiled losses follow the eager ones up to float
    # reassociation.
    from test_toy_training import SEG, SEG_MIN_MIOU, logged_scalars, train_and_validate

    from tools.misc.make_toy_data import make_toy_data
    make_toy_data(str(tmp_path / 'data' / 'toy'))
    short = ['train_cfg.max_iters=30', 'train_cfg.val_interval=30']
    eager, compiled = (train_and_validate(SEG, tmp_path / name, tmp_path, train_options=short + options)['mIoU']
                       for name, options in (('seg_eager', []), ('seg_compiled', ['compile=True'])))
    train_log = next(path for path in sorted((tmp_path / 'seg_compiled').glob('*/*.log')))
    assert 'Model has been "compiled"' in train_log.read_text()
    eager_losses, compiled_losses = ({record['step']: record['loss'] for record in logged_scalars(tmp_path / name)
                                      if 'loss' in record} for name in ('seg_eager', 'seg_compiled'))
    assert sorted(compiled_losses) == sorted(eager_losses) == [10, 20, 30], (eager_losses, compiled_losses)
    for step, loss in eager_losses.items():
        assert abs(compiled_losses[step] - loss) <= 0.01 * loss, (step, eager_losses, compiled_losses)
    assert eager >= SEG_MIN_MIOU and compiled >= SEG_MIN_MIOU, (eager, compiled)
    assert abs(compiled - eager) <= 2.0, (eager, compiled)
