"""The bytes autograd keeps for backward during one training forward (``tools/analysis_tools/benchmark.py --saved-activations``).

Every tensor that autograd saves is seen through ``torch.autograd.graph.saved_tensors_hooks``; each storage is
counted once (views and tensors saved by several ops share one), and the module's parameters and buffers, and
autocast's low-precision copies of its parameters, are left out: what remains is the activation memory that
a training step holds between forward and backward.

The count runs under autocast and is meant to be the same on any device, so that a CPU measures what a GPU will
hold: bfloat16 (CPU) and float16 (CUDA) both take 2 bytes. The two autocasts differ in one way that matters
here: CUDA's runs LayerNorm, GroupNorm and softmax in float32 (the op keeps a float32 copy of its input), CPU's
runs them in their input's dtype. On CPU, :class:`CudaAutocastRules` applies CUDA's rule to those ops, so that
the bytes are the GPU's.
"""
import contextlib
from typing import Any, Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from backbones.gated_cnn_kernel import autocast_dtype

# Ops that CUDA's autocast runs in float32 and CPU's does not, as a model calls them (functional and method).
FP32_ON_CUDA = frozenset({F.layer_norm, F.group_norm, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
                          torch.Tensor.softmax, torch.Tensor.log_softmax})

AUTOCAST_DTYPES = {'cuda': torch.float16, 'cpu': torch.bfloat16}


class CudaAutocastRules(TorchFunctionMode):
    """While CPU autocast is on, run :data:`FP32_ON_CUDA` in float32 as CUDA's autocast does: their
    floating-point tensor arguments cast to float32 (through autograd, as autocast casts), autocast off."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in FP32_ON_CUDA or autocast_dtype('cpu') is None:
            return func(*args, **kwargs)

        def to_fp32(value):
            low_precision = isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16)
            return value.float() if low_precision else value
        args, kwargs = tree_map(to_fp32, (args, kwargs))
        with torch.autocast('cpu', enabled=False):
            return func(*args, **kwargs)


def _storage_key(tensor: torch.Tensor):
    return tensor.device, tensor.untyped_storage().data_ptr()


def _is_derived_from_parameter(tensor: torch.Tensor, param_keys) -> bool:
    """Whether ``tensor`` was computed from one parameter alone: autocast's cast of a weight, maybe then
    transposed or reshaped (what linear and conv save), i.e. a chain of one-input autograd nodes from a
    parameter's gradient accumulator."""
    node = tensor.grad_fn
    for _ in range(8):  # a cast and a few views; an activation's history is longer or has two inputs
        if node is None:
            return False
        variable = getattr(node, 'variable', None)  # AccumulateGrad: a leaf
        if variable is not None:
            return _storage_key(variable) in param_keys
        inputs = [next_node for next_node, _ in node.next_functions if next_node is not None]
        if len(inputs) != 1:
            return False
        node = inputs[0]
    return False


def saved_activation_bytes(forward: Callable[[], Any], module: nn.Module, device_type: str) -> int:
    """Bytes of the tensors that autograd saves for backward while ``forward()`` runs under autocast (float16
    on CUDA; bfloat16 with :class:`CudaAutocastRules` elsewhere), each storage counted once, ``module``'s
    parameters, buffers and tensors computed from one parameter alone (autocast's weight copies) excluded.

    Args:
        forward: one training forward of ``module`` (train mode, gradients on); what it returns is kept
            until the count is done, so that the graph, and what it saves, lives as long as in training.
        module: the model run by ``forward``.
        device_type (str): ``'cuda'`` or ``'cpu'``.
    """
    param_keys = {_storage_key(t) for t in (*module.parameters(), *module.buffers())}
    # Holding the storages keeps their addresses from being reused by a later tensor during the forward.
    storages: Dict[tuple, torch.UntypedStorage] = {}

    def pack(tensor):
        key = _storage_key(tensor)
        if key not in param_keys and not _is_derived_from_parameter(tensor, param_keys):
            storages[key] = tensor.untyped_storage()
        return tensor

    dtype = AUTOCAST_DTYPES.get(device_type, torch.bfloat16)
    # CUDA's autocast has CUDA's rules already.
    rules = CudaAutocastRules() if device_type == 'cpu' else contextlib.nullcontext()
    with torch.enable_grad(), torch.autocast(device_type, dtype=dtype), rules, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = forward()
    total = sum(storage.nbytes() for storage in storages.values())
    del outputs, storages
    return total
