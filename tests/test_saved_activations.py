"""mambaout_tools.saved_activations: what it counts and what it leaves out."""
import torch
import torch.nn.functional as F
from torch import nn

from mambaout_tools.saved_activations import CudaAutocastRules, saved_activation_bytes


def test_counts_each_saved_storage_once_and_no_parameter_or_weight_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4)).train()
    x = torch.randn(16, 8)
    # bf16 autocast: fc1 saves its input's bf16 cast (16x8), GELU its input (16x32), fc2 GELU's output
    # (16x32), 2 bytes each; the weights' bf16 copies (and their transposes) are parameters, not counted.
    assert saved_activation_bytes(lambda: model(x), model, 'cpu') == 2 * (16 * 8 + 16 * 32 + 16 * 32)
    # each exp keeps its fp32 output; the product keeps views of them: two storages, counted once each
    y = torch.randn(4, 6, requires_grad=True)
    assert saved_activation_bytes(lambda: y.exp()[:2] * y.exp()[2:], model, 'cpu') == 2 * 4 * (4 * 6)


def test_cpu_count_follows_cudas_autocast_rules_for_layer_norm():
    # CUDA's autocast runs layer_norm in fp32 (and keeps an fp32 copy of a bf16/fp16 input); CPU's does not.
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert F.layer_norm(x.bfloat16(), (16,)).dtype == torch.bfloat16
        with CudaAutocastRules():
            assert F.layer_norm(x.bfloat16(), (16,)).dtype == torch.float32
            assert F.linear(x, torch.randn(3, 16)).dtype == torch.bfloat16  # other ops untouched
    norm = nn.LayerNorm(16)
    # the input's fp32 copy (4 bytes) plus mean and rstd (4 each)
    assert saved_activation_bytes(lambda: norm(x.bfloat16()), norm, 'cpu') == 4 * (4 * 16 + 4 + 4)
