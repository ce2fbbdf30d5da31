"""The Gated CNN block's residual branch with a hand-written backward (memory-lean kernel).

Same forward numbers as the plain modules (timm's formulation, ``GatedCNNBlock._residual_plain``), about half
their activation memory for backward, and faster on CPU; docs/benchmarks.md has the design and the figures.
The branch is LayerNorm -> fc1 -> (gate, identity, conv part) -> depthwise conv on the conv part ->
fc2(act(gate) * cat(identity, conv)), NHWC, before LayerScale. It is described by a :class:`GatedCNNSpec`
and a :class:`GatedCNNParams`; no module enters the autograd graph.

How it enters autograd and torch.compile depends on torch (:data:`CUSTOM_OPS`):

- torch >= 2.4 (``torch.library.custom_op``, ``register_fake``, ``register_autograd``): three operators,
  ``torch.ops.mambaout.gated_cnn_forward`` (output and what backward keeps), ``gated_cnn_backward`` and
  ``gated_cnn_inference``, each with a fake (meta) function; the forward's autograd formula calls the backward
  operator. Eager runs and torch.compile (Dynamo, AOTAutograd, inductor) run them the same way: no graph
  break, nothing decomposed into the plain ops, the same numbers and the same saved tensors compiled as eager.
- torch 2.1-2.3: :class:`GatedCNNFunction`, an autograd Function, in eager runs; under torch.compile the
  blocks run the plain modules (Dynamo cannot keep the Function's hand-written backward), and the first
  compiled block warns so, once per process.

Either way the kernel steps aside for tracers and exporters (:func:`kernel_can_run`).

Two steps differ by device: the depthwise conv's backward (forward convs on CPU, aten's, i.e. cuDNN's,
elsewhere) and inference (in chunks of pixels on CPU only). :func:`emulate_device_branches` lets the tests run
the other devices' branches on a CPU. ``MambaOut(memory_efficient=False)`` runs the plain modules instead.
"""
import contextlib
import functools
import warnings
from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Pixels per chunk in the no-grad CPU path: a chunk's ~2 * hidden-wide intermediates stay in cache instead of
# going to memory and back several times (sizes measured in docs/benchmarks.md).
INFERENCE_CHUNK_PIXELS = 1024

# The device type whose branches the kernel takes instead of its tensors' own; None: their own. Set only by
# emulate_device_branches (tests), never from the environment.
_emulated_device_type: Optional[str] = None


@contextlib.contextmanager
def emulate_device_branches(device_type: str) -> Iterator[None]:
    """Within the ``with`` block, take the branches that tensors on ``device_type`` take, whatever device they
    are on: ``'cuda'`` makes a CPU run aten's depthwise-conv backward and unchunked inference, so that a CPU
    checks the code a GPU runs. For tests; not thread-safe.

    Args:
        device_type (str): ``'cpu'`` or another torch device type (``'cuda'``).
    """
    global _emulated_device_type
    previous, _emulated_device_type = _emulated_device_type, device_type
    try:
        yield
    finally:
        _emulated_device_type = previous


# torch.library's custom-operator API (custom_op, register_fake, register_autograd), torch >= 2.4: there the
# kernel runs as operators that torch.compile keeps in its graph, opaque, with their own autograd formula
# and shape functions (defined at the end of this module). Read at each call (tests switch it off).
CUSTOM_OPS = all(hasattr(torch.library, name) for name in ('custom_op', 'register_fake', 'register_autograd'))


def is_compiling() -> bool:
    """Whether torch.compile (Dynamo) is tracing the caller: ``torch.compiler.is_compiling`` (torch >= 2.3),
    ``torch._dynamo.is_compiling`` before it."""
    if hasattr(torch.compiler, 'is_compiling'):
        return torch.compiler.is_compiling()
    return torch._dynamo.is_compiling()


def is_exporting() -> bool:
    """Whether torch.export is tracing the caller: ``torch.compiler.is_exporting`` (torch >= 2.5); False on
    older torch, which cannot tell."""
    return hasattr(torch.compiler, 'is_exporting') and torch.compiler.is_exporting()


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """Autocast's dtype on ``device_type`` where autocast is on there, else None. torch < 2.4 has no
    per-device query: there CPU and CUDA autocast are asked (any other device type reads as CUDA's)."""
    if hasattr(torch, 'get_autocast_dtype'):
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == 'cpu':
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _branch_device_type(tensor: torch.Tensor) -> str:
    """The device type whose branch to take for ``tensor``: its own unless :func:`emulate_device_branches`."""
    return _emulated_device_type or tensor.device.type


@dataclass(frozen=True)
class GatedCNNSpec:
    """The shape of one block's branch.

    Args:
        hidden (int): fc1's output width per part, i.e. the gate's channels and fc2's input channels.
        identity_channels (int): channels of fc1's second part passed through ungated by the conv.
        conv_channels (int): channels of fc1's second part that go through the depthwise conv.
        act (str): the gate's activation, ``'gelu'`` or ``'silu'``.
        gelu_approximate (str): GELU's ``approximate`` (``'none'`` or ``'tanh'``). Default: ``'none'``.
        eps (float): the LayerNorm's eps. Default: 1e-6.
    """
    hidden: int
    identity_channels: int
    conv_channels: int
    act: str
    gelu_approximate: str = 'none'
    eps: float = 1e-6

    def __post_init__(self):
        if self.act not in ('gelu', 'silu'):
            raise ValueError(f"GatedCNNSpec act must be 'gelu' or 'silu', got {self.act!r}.")

    @property
    def split_sizes(self) -> Tuple[int, int, int]:
        """fc1's output parts: ``(gate, identity, conv)``."""
        return self.hidden, self.identity_channels, self.conv_channels

    @property
    def values(self) -> Tuple[int, int, int, str, str, float]:
        """The fields in order, as the operators take them: ``GatedCNNSpec(*spec.values) == spec``."""
        return self.hidden, self.identity_channels, self.conv_channels, self.act, self.gelu_approximate, self.eps

    @property
    def gate_identity_channels(self) -> int:
        """fc1's rows for ``[gate, identity]``; the rows after them produce the conv part."""
        return self.hidden + self.identity_channels


class GatedCNNParams(NamedTuple):
    """The branch's parameters (or, in backward, their gradients or whether each is needed)."""
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    fc1_weight: torch.Tensor
    fc1_bias: torch.Tensor
    conv_weight: torch.Tensor
    conv_bias: torch.Tensor
    fc2_weight: torch.Tensor
    fc2_bias: torch.Tensor


class GatedCNNSaved(NamedTuple):
    """What backward keeps from forward besides the block input: fc1's output as ``[gate, identity]`` and the
    conv input, NHWC, 2 * hidden channels per pixel. With the input, about 6.3 channel-widths for the default
    ratios instead of the ~14 that autograd keeps for the plain modules. The conv output is recomputed in
    backward (one depthwise conv: cheap next to keeping conv-channels more per pixel until backward)."""
    gate_id: torch.Tensor
    conv_in: torch.Tensor


def gated_cnn_branch(x: torch.Tensor, spec: GatedCNNSpec, params: GatedCNNParams) -> torch.Tensor:
    """The branch's output for NHWC ``x``, in autocast's dtype where autocast is on: :func:`gated_forward`
    with its hand-written backward when a gradient is wanted, else :func:`gated_inference`. On torch >= 2.4
    (:data:`CUSTOM_OPS`) as the operators ``torch.ops.mambaout.*``, which torch.compile keeps in its graph;
    before, as :class:`GatedCNNFunction`."""
    dtype = autocast_dtype(x.device.type) or x.dtype
    # A list, not a generator: Dynamo traces list comprehensions on every torch.
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or any([p.requires_grad for p in params]))
    if CUSTOM_OPS:
        args = (x, *params, *spec.values, dtype)
        if wants_grad:
            return torch.ops.mambaout.gated_cnn_forward(*args)[0]
        return torch.ops.mambaout.gated_cnn_inference(*args)
    if wants_grad:
        return GatedCNNFunction.apply(x, spec, dtype, *params)
    return gated_inference(spec, x, dtype, params)


def kernel_can_run() -> bool:
    """Whether the kernel may run where it is called; where not, the plain modules must:

    - jit tracing (TorchScript, ONNX's TorchScript exporter, FLOP counters): tracers record aten ops only;
    - torch.export (ONNX's dynamo exporter), where torch tells (``torch.compiler.is_exporting``, torch >= 2.5):
      exported graphs must be plain ops;
    - torch.compile on torch < 2.4, which has no ``torch.library.custom_op``: Dynamo cannot keep the custom
      autograd Function in its graph. The first time, one warning says so.
    """
    if torch.jit.is_tracing() or is_exporting():
        return False
    if not CUSTOM_OPS and is_compiling():
        # At trace time, inside the graph being traced: a plain call to warnings.warn would break it.
        torch._dynamo.comptime.comptime(_warn_plain_under_compile)
        return False
    return True


_warned_plain_under_compile = False


def _warn_plain_under_compile(_ctx=None) -> None:
    global _warned_plain_under_compile
    if not _warned_plain_under_compile:
        _warned_plain_under_compile = True
        warnings.warn(f'torch {torch.__version__} has no torch.library.custom_op (torch >= 2.4): under '
                      'torch.compile the Gated CNN blocks run the plain modules, without the memory-lean '
                      "kernel's activation savings.", stacklevel=2)


class GatedCNNFunction(torch.autograd.Function):
    """The branch with a hand-written backward as an autograd Function, for torch < 2.4: keeps the input and
    :class:`GatedCNNSaved` only, and recomputes LayerNorm, the depthwise conv and the gating in backward. The
    parameters are inputs so that they get gradients; ``dtype`` stands for autocast, which is off inside."""

    @staticmethod
    def forward(ctx, x, spec, dtype, *params):
        out, saved = gated_forward(spec, x, dtype, GatedCNNParams(*params))
        ctx.spec, ctx.dtype = spec, dtype
        # All through save_for_backward, so that with_cp's checkpoint can drop and recompute them.
        ctx.save_for_backward(x, *saved, *params)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, gate_id, conv_in, *params = ctx.saved_tensors
        grad_x, grads = gated_backward(ctx.spec, ctx.dtype, grad, x, GatedCNNSaved(gate_id, conv_in),
                                       GatedCNNParams(*params), ctx.needs_input_grad[0],
                                       GatedCNNParams(*ctx.needs_input_grad[3:]))
        return (grad_x, None, None, *grads)


# Forward.

def _act(spec: GatedCNNSpec, gate: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate=spec.gelu_approximate) if spec.act == 'gelu' else F.silu(gate)


def _norm_and_conv_part(spec: GatedCNNSpec, x: torch.Tensor, dtype: torch.dtype, params: GatedCNNParams):
    """LayerNorm, fc1's conv part and the depthwise conv, in ``dtype``: ``(y, fc1 weight and bias in dtype,
    conv input, conv output)``, the conv tensors NHWC.

    fc1 runs as two matmuls, this one and ``[gate, identity]`` (same numbers as one), so that the conv
    input is a contiguous NHWC tensor, i.e. a channels_last one that the depthwise conv takes without a
    layout copy.
    """
    split = spec.gate_identity_channels
    y = F.layer_norm(x, x.shape[-1:], params.norm_weight.to(x.dtype), params.norm_bias.to(x.dtype),
                     spec.eps).to(dtype)
    fc1_w, fc1_b = params.fc1_weight.to(dtype), params.fc1_bias.to(dtype)
    conv_in = F.linear(y, fc1_w[split:], fc1_b[split:])
    return y, fc1_w, fc1_b, conv_in, _depthwise_conv(spec, conv_in, dtype, params)


def _depthwise_conv(spec: GatedCNNSpec, conv_in: torch.Tensor, dtype: torch.dtype,
                    params: GatedCNNParams) -> torch.Tensor:
    """The depthwise conv on NHWC ``conv_in``, in ``dtype``; NHWC out."""
    conv_w = params.conv_weight
    return F.conv2d(conv_in.permute(0, 3, 1, 2), conv_w.to(dtype), params.conv_bias.to(dtype),
                    padding=conv_w.shape[-1] // 2, groups=spec.conv_channels).permute(0, 2, 3, 1)


def _gate(spec: GatedCNNSpec, gate_id: torch.Tensor, conv_out: torch.Tensor) -> torch.Tensor:
    """act(gate) * cat(identity, conv_out), in place in act's output: no torch.cat copy. act runs on a
    strided slice as in timm: CPU kernels round differently on contiguous data."""
    hidden, n_id = spec.hidden, spec.identity_channels
    gated = _act(spec, gate_id[..., :hidden])
    gated[..., :n_id].mul_(gate_id[..., hidden:])
    gated[..., n_id:].mul_(conv_out)
    return gated


def _autocast_off(fn):
    """``fn`` with autocast off on its tensors' device: the kernel makes autocast's casts itself (``dtype``)."""
    @functools.wraps(fn)
    def without_autocast(*args):
        device_type = next(arg for arg in args if isinstance(arg, torch.Tensor)).device.type
        with torch.autocast(device_type, enabled=False):
            return fn(*args)
    return without_autocast


@_autocast_off
def gated_forward(spec: GatedCNNSpec, x: torch.Tensor, dtype: torch.dtype,
                  params: GatedCNNParams) -> Tuple[torch.Tensor, GatedCNNSaved]:
    """The branch without autograd, in ``dtype`` (autocast's or x's): its output and what backward needs."""
    y, fc1_w, fc1_b, conv_in, conv_out = _norm_and_conv_part(spec, x, dtype, params)
    split = spec.gate_identity_channels
    gate_id = F.linear(y, fc1_w[:split], fc1_b[:split])
    gated = _gate(spec, gate_id, conv_out)
    out = F.linear(gated, params.fc2_weight.to(dtype), params.fc2_bias.to(dtype))
    return out, GatedCNNSaved(gate_id, conv_in)


@_autocast_off
def gated_inference(spec: GatedCNNSpec, x: torch.Tensor, dtype: torch.dtype, params: GatedCNNParams) -> torch.Tensor:
    """:func:`gated_forward`'s output without what backward needs, on CPU in chunks of pixels: only the
    depthwise conv needs whole feature maps; fc1's gate/identity part, the gating and fc2 run per chunk."""
    if _branch_device_type(x) != 'cpu':
        return gated_forward(spec, x, dtype, params)[0]
    y, fc1_w, fc1_b, _, conv_out = _norm_and_conv_part(spec, x, dtype, params)
    y, conv_out = y.reshape(-1, y.shape[-1]), conv_out.reshape(-1, spec.conv_channels)
    split = spec.gate_identity_channels
    gate_id_w, gate_id_b = fc1_w[:split], fc1_b[:split]
    fc2_wt, fc2_b = params.fc2_weight.to(dtype).t(), params.fc2_bias.to(dtype)
    out = y.new_empty(y.shape[0], fc2_wt.shape[1])
    bounds = [*range(0, y.shape[0], INFERENCE_CHUNK_PIXELS), y.shape[0]]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < INFERENCE_CHUNK_PIXELS // 2:
        # A short last chunk joins the one before: matmuls of a few rows take other MKL kernels, which
        # round differently from the whole-tensor matmul of the reference.
        del bounds[-2]
    for start, end in zip(bounds[:-1], bounds[1:]):
        gated = _gate(spec, F.linear(y[start:end], gate_id_w, gate_id_b), conv_out[start:end])
        torch.addmm(fc2_b, gated, fc2_wt, out=out[start:end])
    return out.view(*x.shape[:-1], -1)


# Backward, in the reverse order of the forward: fc2, gating, depthwise conv, fc1 and LayerNorm.

@_autocast_off
def gated_backward(spec: GatedCNNSpec, dtype: torch.dtype, grad: torch.Tensor, x: torch.Tensor,
                   saved: GatedCNNSaved, params: GatedCNNParams, need_x: bool,
                   needs: GatedCNNParams) -> Tuple[Optional[torch.Tensor], GatedCNNParams]:
    """Gradients of :func:`gated_forward` for ``x`` and ``params``, None where ``need_x``/``needs`` say so,
    each in the dtype of what it is the gradient of."""
    grad = grad.to(dtype).reshape(-1, x.shape[-1])
    # The same op on the same input as in forward: the same numbers.
    conv_out = _depthwise_conv(spec, saved.conv_in, dtype, params)
    act, buf, grad_gated, grad_fc2_w, grad_fc2_b = _fc2_backward(spec, dtype, grad, saved, conv_out, params,
                                                                 needs)
    grad_gate, grad_id, grad_conv_out = _gating_backward(spec, saved, conv_out, act, buf, grad_gated)
    del grad_gated, act, conv_out
    grad_conv_in, grad_conv_w, grad_conv_b = _depthwise_conv_backward(
        grad_conv_out.permute(0, 3, 1, 2), saved.conv_in.permute(0, 3, 1, 2), params.conv_weight.to(dtype),
        needs.conv_weight, needs.conv_bias)
    del grad_conv_out
    grad_x, grad_norm_w, grad_norm_b, grad_fc1_w, grad_fc1_b = _fc1_and_norm_backward(
        spec, dtype, x, (grad_gate, grad_id, grad_conv_in.permute(0, 2, 3, 1)), params, need_x, needs)
    grads = GatedCNNParams(grad_norm_w, grad_norm_b, grad_fc1_w, grad_fc1_b, grad_conv_w, grad_conv_b,
                           grad_fc2_w, grad_fc2_b)
    return grad_x, GatedCNNParams(*(None if g is None else g.to(p.dtype) for g, p in zip(grads, params)))


def _fc2_backward(spec, dtype, grad, saved, conv_out, params, needs):
    """fc2, with its input recomputed (elementwise, cheap) instead of kept from forward: ``(act(gate), a
    buffer of the gate's shape, d gated, d fc2 weight, d fc2 bias)``."""
    n_id = spec.identity_channels
    act = _act(spec, saved.gate_id[..., :spec.hidden])
    buf = torch.empty_like(act)
    torch.mul(act[..., :n_id], saved.gate_id[..., spec.hidden:], out=buf[..., :n_id])
    torch.mul(act[..., n_id:], conv_out, out=buf[..., n_id:])
    grad_fc2_w = grad.t().mm(buf.view(-1, spec.hidden)) if needs.fc2_weight else None
    grad_fc2_b = grad.sum(0) if needs.fc2_bias else None
    grad_gated = grad.mm(params.fc2_weight.to(dtype)).view(act.shape)
    return act, buf, grad_gated, grad_fc2_w, grad_fc2_b


def _gating_backward(spec, saved, conv_out, act, buf, grad_gated):
    """``(d gate, d identity, d conv out)``, each in a buffer backward holds already, so that this phase needs
    no new hidden-wide tensor: d gate = act'(gate) * d gated * cat(identity, conv_out) in ``buf``, then
    d conv out = d gated * act in ``conv_out`` (which d gate was the last to read) and d identity = d gated *
    act in act's identity channels (a view: fc1's backward reads it as a strided matrix)."""
    n_id = spec.identity_channels
    gate, identity = saved.gate_id[..., :spec.hidden], saved.gate_id[..., spec.hidden:]
    torch.mul(grad_gated[..., :n_id], identity, out=buf[..., :n_id])
    torch.mul(grad_gated[..., n_id:], conv_out, out=buf[..., n_id:])
    if spec.act == 'gelu':
        torch.ops.aten.gelu_backward.grad_input(buf, gate, approximate=spec.gelu_approximate, grad_input=buf)
    else:
        torch.ops.aten.silu_backward.grad_input(buf, gate, grad_input=buf)
    grad_conv_out = torch.mul(grad_gated[..., n_id:], act[..., n_id:], out=conv_out)
    grad_id = act[..., :n_id].mul_(grad_gated[..., :n_id])
    return buf, grad_id, grad_conv_out


def _fc1_and_norm_backward(spec, dtype, x, grad_parts, params, need_x, needs):
    """fc1, one matmul per part of its output (no 2 * hidden-wide gradient buffer; each part a row-major matrix,
    d identity's with act's row stride), then LayerNorm, recomputed: ``(d x, d norm weight, d norm bias,
    d fc1 weight, d fc1 bias)``."""
    dim = x.shape[-1]
    parts = [t.reshape(x.shape[:-1].numel(), t.shape[-1]) for t in grad_parts]  # no -1: a part may be empty
    norm_w, norm_b = params.norm_weight.to(x.dtype), params.norm_bias.to(x.dtype)
    y, mean, rstd = torch.ops.aten.native_layer_norm(x, [dim], norm_w, norm_b, spec.eps)
    y = y.to(dtype).view(-1, dim)
    grad_fc1_w = grad_fc1_b = None
    if needs.fc1_weight:
        grad_fc1_w = y.new_empty(params.fc1_weight.shape)
        for part, out in zip(parts, grad_fc1_w.split(spec.split_sizes)):
            torch.mm(part.t(), y, out=out)
    if needs.fc1_bias:
        grad_fc1_b = torch.cat([part.sum(0) for part in parts])
    fc1_ws = params.fc1_weight.to(dtype).split(spec.split_sizes)
    grad_y = parts[0].mm(fc1_ws[0]).addmm_(parts[1], fc1_ws[1]).addmm_(parts[2], fc1_ws[2])
    grad_x, grad_norm_w, grad_norm_b = torch.ops.aten.native_layer_norm_backward(
        grad_y.view(x.shape).to(x.dtype), x, [dim], mean, rstd, norm_w, norm_b,
        [need_x, needs.norm_weight, needs.norm_bias])
    return grad_x, grad_norm_w, grad_norm_b, grad_fc1_w, grad_fc1_b


# The depthwise conv's backward.

def _depthwise_conv_backward(grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, need_weight: bool,
                             need_bias: bool):
    """Input, weight and bias gradients of a stride-1, 'same'-padded depthwise conv. ``grad`` and ``inp``
    are NCHW views of NHWC tensors (channels_last memory)."""
    on_cpu = _branch_device_type(grad) == 'cpu'
    backward = _depthwise_conv_backward_as_convs if on_cpu else _depthwise_conv_backward_aten
    grad_in, grad_weight = backward(grad, inp, weight, need_weight)
    return grad_in, grad_weight, grad.sum((0, 2, 3)) if need_bias else None


def _depthwise_conv_backward_as_convs(grad, inp, weight, need_weight):
    """On CPU oneDNN's depthwise weight gradient takes several times its forward conv, so as forward convs
    (timings in docs/benchmarks.md): the input gradient is a conv with the flipped kernel, the weight
    gradient each sample's input convolved with its output gradient as the kernel."""
    pad, groups = weight.shape[-1] // 2, weight.shape[0]
    grad_in = F.conv2d(grad, weight.flip(2, 3), padding=pad, groups=groups)
    grad_weight = None
    if need_weight:
        for n in range(grad.shape[0]):
            part = F.conv2d(inp[n:n + 1], grad[n].unsqueeze(1).contiguous(), padding=pad, groups=groups)
            grad_weight = part if grad_weight is None else grad_weight.add_(part)
        grad_weight = grad_weight.view_as(weight)
    return grad_in, grad_weight


def _depthwise_conv_backward_aten(grad, inp, weight, need_weight):
    """The backend's own conv backward (cuDNN on CUDA)."""
    pad, groups = weight.shape[-1] // 2, weight.shape[0]
    grad_in, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad, inp, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], groups, [True, need_weight, False])
    return grad_in, grad_weight


# The operators (torch >= 2.4). Each takes the block input, the parameters in GatedCNNParams' order, the
# GatedCNNSpec's values and the dtype; each runs the functions above, so eager and compiled runs compute the
# same numbers. Their fake (meta) functions give the outputs' shapes, dtypes and (contiguous) layouts.

def _forward_op(x: Tensor, norm_weight: Tensor, norm_bias: Tensor, fc1_weight: Tensor, fc1_bias: Tensor,
                conv_weight: Tensor, conv_bias: Tensor, fc2_weight: Tensor, fc2_bias: Tensor, hidden: int,
                identity_channels: int, conv_channels: int, act: str, gelu_approximate: str, eps: float,
                dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`gated_forward`: the output, then :class:`GatedCNNSaved` (outputs, so that autograd can keep them)."""
    spec = GatedCNNSpec(hidden, identity_channels, conv_channels, act, gelu_approximate, eps)
    params = GatedCNNParams(norm_weight, norm_bias, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias)
    out, saved = gated_forward(spec, x, dtype, params)
    return (out, *saved)


def _forward_fake(x, *args):
    params, (hidden, identity_channels, conv_channels, *_), dtype = args[:8], args[8:-1], args[-1]
    channels = (params[-1].shape[0], hidden + identity_channels, conv_channels)  # out, gate_id, conv_in
    return tuple(x.new_empty((*x.shape[:-1], n), dtype=dtype) for n in channels)


def _inference_op(x: Tensor, norm_weight: Tensor, norm_bias: Tensor, fc1_weight: Tensor, fc1_bias: Tensor,
                  conv_weight: Tensor, conv_bias: Tensor, fc2_weight: Tensor, fc2_bias: Tensor, hidden: int,
                  identity_channels: int, conv_channels: int, act: str, gelu_approximate: str, eps: float,
                  dtype: torch.dtype) -> Tensor:
    """:func:`gated_inference`."""
    spec = GatedCNNSpec(hidden, identity_channels, conv_channels, act, gelu_approximate, eps)
    params = GatedCNNParams(norm_weight, norm_bias, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias)
    return gated_inference(spec, x, dtype, params)


def _inference_fake(x, *args):
    return _forward_fake(x, *args)[0]


def _backward_op(grad: Tensor, x: Tensor, gate_id: Tensor, conv_in: Tensor, norm_weight: Tensor,
                 norm_bias: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, conv_weight: Tensor, conv_bias: Tensor,
                 fc2_weight: Tensor, fc2_bias: Tensor, hidden: int, identity_channels: int, conv_channels: int,
                 act: str, gelu_approximate: str, eps: float, dtype: torch.dtype,
                 needs: List[bool]) -> List[Tensor]:
    """:func:`gated_backward`: the gradients of x and the parameters that ``needs`` (9 flags) asks for, in order."""
    spec = GatedCNNSpec(hidden, identity_channels, conv_channels, act, gelu_approximate, eps)
    params = GatedCNNParams(norm_weight, norm_bias, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias)
    grad_x, grads = gated_backward(spec, dtype, grad, x, GatedCNNSaved(gate_id, conv_in), params, needs[0],
                                   GatedCNNParams(*needs[1:]))
    # Contiguous, as the fake function declares (the depthwise conv's weight gradient comes channels_last).
    return [g.contiguous() for g in (grad_x, *grads) if g is not None]


def _backward_fake(grad, x, gate_id, conv_in, *args):
    inputs, needs = (x, *args[:8]), args[-1]
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t, need in zip(inputs, needs) if need]


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[1:])  # the saved tensors: outputs for autograd's sake only
    ctx.set_materialize_grads(False)
    ctx.arguments = inputs[9:]  # the spec's values and the dtype
    # All through save_for_backward, so that with_cp's checkpoint can drop and recompute them.
    ctx.save_for_backward(inputs[0], *output[1:], *inputs[1:9])


def _backward(ctx, grad, *_):
    x, gate_id, conv_in, *params = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:9])
    grads = iter(torch.ops.mambaout.gated_cnn_backward(grad, x, gate_id, conv_in, *params, *ctx.arguments, needs))
    return (*(next(grads) if need else None for need in needs), *(None for _ in ctx.arguments))


if CUSTOM_OPS:
    torch.library.custom_op('mambaout::gated_cnn_forward', _forward_op, mutates_args=())
    torch.library.register_fake('mambaout::gated_cnn_forward', _forward_fake)
    torch.library.register_autograd('mambaout::gated_cnn_forward', _backward, setup_context=_setup_context)
    torch.library.custom_op('mambaout::gated_cnn_inference', _inference_op, mutates_args=())
    torch.library.register_fake('mambaout::gated_cnn_inference', _inference_fake)
    torch.library.custom_op('mambaout::gated_cnn_backward', _backward_op, mutates_args=())
    torch.library.register_fake('mambaout::gated_cnn_backward', _backward_fake)
