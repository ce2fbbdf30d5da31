"""Distributed data parallel with any ``out_indices``: two gloo processes, ``find_unused_parameters=False``
(mmengine's default), as users train on many GPUs.

DDP's reducer raises at the second iteration when a parameter got no gradient in the first one, so each
run takes three steps; the ranks must end with the same weights."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from backbones import MambaOut

pytestmark = pytest.mark.slow  # 2-process launches

TINY_ARCH = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
WORLD_SIZE, STEPS = 2, 3


def train_a_few_steps(rank, out_indices, init_file, result_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(MambaOut(TINY_ARCH, out_indices=out_indices, drop_path_rate=0.1),
                                        find_unused_parameters=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(rank)
        for _ in range(STEPS):
            optimizer.zero_grad()
            outputs = model(torch.randn(2, 3, 64, 64, generator=generator))
            sum(o.pow(2).mean() for o in outputs).backward()
            optimizer.step()
        torch.save(model.module.state_dict(), os.path.join(result_dir, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('out_indices', [(0, 1, 2), (0,), (1, 3)])
def test_ddp_trains_with_any_out_indices(tmp_path, out_indices):
    mp.spawn(train_a_few_steps, args=(out_indices, str(tmp_path / 'init'), str(tmp_path)), nprocs=WORLD_SIZE)
    first, second = (torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(WORLD_SIZE))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=key)
    torch.manual_seed(0)
    initial = MambaOut(TINY_ARCH, out_indices=out_indices, drop_path_rate=0.1).state_dict()
    assert not torch.equal(first['stem.conv1.weight'], initial['stem.conv1.weight'])  # it did train
